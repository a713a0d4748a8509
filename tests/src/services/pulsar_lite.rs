//! A pulsar-lite broker in a temporary directory, with a [`Relay`] in front of it.
//!
//! Each test starts its own broker on its own port so tests run in parallel and leave nothing
//! behind (docs/dependencies.md §3). Clients must use [`PulsarLite::url`], the relay's URL:
//! pulsar-rs cannot read pulsar-lite's MESSAGE frames directly (see the relay's module doc).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use std::sync::Arc;

use super::relay::{Faults, FlowAccounting, Relay};
use crate::ports::PortHold;

/// Environment variable naming the pulsar-lite binary; overrides the `.venv` lookup.
pub const PULSAR_LITE_BIN_ENV: &str = "PULSAR_LITE_BIN";

/// How long a broker may take to accept TCP connections (it usually takes ~0.2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running pulsar-lite broker plus relay. Dropping it kills the broker and stops the relay.
pub struct PulsarLite {
    // Field order matters for Drop: the relay stops before the directory goes away.
    relay: Relay,
    child: Option<Child>,
    binary: PathBuf,
    addr: SocketAddr,
    /// The broker's port, held for as long as this guard lives (see [`crate::ports`]).
    /// pulsar-lite binds `--addr 127.0.0.1:0` but logs "listening on 127.0.0.1:0", not the port
    /// it got, so the harness picks the port instead: bound to port 0 and kept, handed to the
    /// broker (which binds it with SO_REUSEADDR, as the hold allows), and still held while the
    /// broker is down, so a restart gets it back and no other process can take it meanwhile.
    hold: PortHold,
    dir: TempDir,
    /// `--log-level`, kept across restarts.
    log_level: String,
}

/// How the relay passes flow permits on: `PULSAR_LITE_RELAY_PERMITS=passthrough` leaves
/// pulsar-lite's per-entry count (to reproduce figures measured before the relay counted per
/// message); unset or `per-message`, the Apache Pulsar way (`relay::FlowAccounting`).
fn relay_accounting() -> anyhow::Result<FlowAccounting> {
    match std::env::var("PULSAR_LITE_RELAY_PERMITS").as_deref() {
        Err(_) | Ok("per-message") => Ok(FlowAccounting::PerMessage),
        Ok("passthrough") => Ok(FlowAccounting::Passthrough),
        Ok(other) => anyhow::bail!(
            "PULSAR_LITE_RELAY_PERMITS={other:?}: expected `per-message` or `passthrough`"
        ),
    }
}

impl PulsarLite {
    /// Starts a broker whose new topics are non-partitioned.
    pub async fn start() -> anyhow::Result<PulsarLite> {
        Self::start_with_partitions(0).await
    }

    /// Starts a broker whose new topics get `partitions` partitions (`0` = non-partitioned).
    pub async fn start_with_partitions(partitions: u32) -> anyhow::Result<PulsarLite> {
        Self::start_with(partitions, None, "").await
    }

    /// Like [`PulsarLite::start_with_partitions`], logging at `debug` whatever
    /// PULSAR_LITE_LOG_LEVEL says: for a test that reads what the broker saw (a consumer's
    /// priority level) in its log.
    pub async fn start_with_debug_log(partitions: u32) -> anyhow::Result<PulsarLite> {
        Self::start_logging(partitions, None, "", "debug".into()).await
    }

    /// Starts a broker with `settings` (top-level `broker.toml` lines, `\n`-separated) besides
    /// the harness's own.
    pub async fn start_with_settings(settings: &str) -> anyhow::Result<PulsarLite> {
        Self::start_with(0, None, settings).await
    }

    /// [`PulsarLite::start_with_partitions`] and [`PulsarLite::start_with_settings`] at once.
    pub async fn start_with_partitions_and_settings(
        partitions: u32,
        settings: &str,
    ) -> anyhow::Result<PulsarLite> {
        Self::start_with(partitions, None, settings).await
    }

    /// Starts a broker whose relay damages entries as `faults` says.
    pub async fn start_with_faults(
        partitions: u32,
        faults: Arc<Faults>,
    ) -> anyhow::Result<PulsarLite> {
        Self::start_with(partitions, Some(faults), "").await
    }

    async fn start_with(
        partitions: u32,
        faults: Option<Arc<Faults>>,
        settings: &str,
    ) -> anyhow::Result<PulsarLite> {
        // A failure to understand from the broker's side: PULSAR_LITE_LOG_LEVEL=debug.
        let level = std::env::var("PULSAR_LITE_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
        Self::start_logging(partitions, faults, settings, level).await
    }

    async fn start_logging(
        partitions: u32,
        faults: Option<Arc<Faults>>,
        settings: &str,
        log_level: String,
    ) -> anyhow::Result<PulsarLite> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("pulsar-lite-")
            .tempdir()
            .context("creating the broker's temp dir")?;
        // Top-level keys must come before the [metrics] table.
        let settings = if settings.is_empty() {
            String::new()
        } else {
            format!("{settings}\n")
        };
        std::fs::write(
            dir.path().join("broker.toml"),
            format!("{settings}default_partitions = {partitions}\n[metrics]\nenabled = false\n"),
        )
        .context("writing broker.toml")?;

        let mut hold = PortHold::any().context("holding a port for pulsar-lite")?;
        hold.make_bindable();
        let addr = hold.addr();
        let mut child = spawn_broker(&binary, dir.path(), addr, &log_level)?;
        if let Err(error) = wait_ready(&mut child, addr, &log_path(dir.path())).await {
            kill_and_wait(&mut child);
            return Err(error);
        }
        let relay = match &faults {
            Some(faults) => Relay::start_with_faults(addr, faults.clone()),
            None => Relay::start_with_accounting(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                addr,
                relay_accounting()?,
            ),
        }
        .context("starting the relay")?;
        Ok(PulsarLite {
            relay,
            child: Some(child),
            binary,
            addr,
            hold,
            dir,
            log_level,
        })
    }

    /// The URL clients use: the relay's, not the broker's.
    pub fn url(&self) -> String {
        self.relay.url()
    }

    /// The relay's address (the host:port of [`PulsarLite::url`]).
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay.listen_addr()
    }

    /// The broker's own address (clients cannot consume from it directly with pulsar-rs).
    pub fn broker_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temporary directory holding `broker.toml`, `broker.log` and `data/`.
    /// The broker process's id, while it runs (for /proc readings such as CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        log_path(self.dir.path())
    }

    /// Kills the broker with SIGKILL and waits for it to exit; the relay keeps running and
    /// closes the clients' connections. A no-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Starts the broker again on the same port (held meanwhile) with the same data, and waits
    /// until it accepts connections. Kills it first if it is still running.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.hold.make_bindable();
        let mut child = spawn_broker(&self.binary, self.dir.path(), self.addr, &self.log_level)?;
        if let Err(error) = wait_ready(&mut child, self.addr, &self.log_path()).await {
            kill_and_wait(&mut child);
            return Err(error.context("restarting pulsar-lite"));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the broker, deletes everything it stored and starts it again on the same port: to
    /// its clients, every topic was deleted and created again (message ids start over).
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.kill();
        // `--db-path data` makes pulsar-lite keep its store in `data.rocksdb`.
        for name in ["data", "data.rocksdb"] {
            let data = self.dir.path().join(name);
            match std::fs::remove_dir_all(&data) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("removing {}", data.display()))
                }
            }
        }
        self.restart().await
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `max_bytes` of the broker's log, for failure messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log_path(), max_bytes)
    }
}

impl Drop for PulsarLite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds the pulsar-lite binary: `$PULSAR_LITE_BIN`, else the workspace's `.venv`.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(PULSAR_LITE_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{PULSAR_LITE_BIN_ENV}={} does not name a file; run `scripts/setup-test-services.sh` \
                 or unset it",
                path.display()
            );
        }
        return Ok(path);
    }
    let venv_lib = workspace_root().join(".venv").join("lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/pulsar_lite/bin/pulsar-lite"))
            .filter(|p| p.is_file())
            .collect();
        candidates.sort();
        if let Some(path) = candidates.pop() {
            return Ok(path);
        }
    }
    bail!(
        "pulsar-lite not found: set {PULSAR_LITE_BIN_ENV} or run `scripts/setup-test-services.sh` \
         (it installs pulsar-lite into {}/.venv)",
        workspace_root().display()
    )
}

/// The workspace root, known at compile time from this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("broker.log")
}

fn spawn_broker(
    binary: &Path,
    dir: &Path,
    addr: SocketAddr,
    log_level: &str,
) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .context("opening broker.log")?;
    let log_err = log.try_clone().context("cloning the broker.log handle")?;
    Command::new(binary)
        .arg("--config")
        .arg(dir.join("broker.toml"))
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--db-path")
        .arg(dir.join("data"))
        .arg("--log-level")
        .arg(log_level)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))
}

/// Polls until `addr` accepts TCP connections, failing early if the process exits. The port is
/// held for the broker, so whatever accepts there is this broker.
async fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("polling pulsar-lite")? {
            bail!(
                "pulsar-lite exited ({status}) before accepting connections on {addr}; log tail:\n{}",
                log_tail(log, 4096)
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "pulsar-lite did not accept connections on {addr} within {READY_TIMEOUT:?}; \
                 log tail:\n{}",
                log_tail(log, 4096)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn kill_and_wait(child: &mut Child) {
    // Errors mean it has already exited, which is what we want.
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `max_bytes` of a file, lossily decoded; a note instead if it cannot be read.
pub(crate) fn log_tail(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| format!("<cannot read {}: {error}>", path.display()))
}
