//! A whole backup stack: pulsar-lite (behind the relay), the in-process s3s-fs server with its
//! bucket, the real ingester and uploader binaries as processes, and the `tdmq-backup` CLI to
//! drive them. The e2e tests and the bench both run on it; [`StackBuilder`] holds what differs
//! between them (broker settings, HTTPS, which build's binaries, where the data goes).
//!
//! Every daemon starts on port 0 and reports the port it got (see [`Daemon::wait_ready`]); only
//! the ingester's restarts go back to the port it had, kept for it meanwhile, because the
//! uploader knows that URL.

mod builder;
mod ctl;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::daemons::{bin_in, Daemon};
use crate::ports::PortKeeper;
use crate::services::pulsar_lite::PulsarLite;
use crate::services::s3::S3Server;

pub use builder::StackBuilder;

/// The bucket rules write to unless the builder names another.
pub const BUCKET: &str = "backup-bucket";

/// How long a daemon may take to say it is ready, unless the builder says otherwise.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Stack {
    pub pulsar: PulsarLite,
    pub s3: S3Server,
    /// The daemons' data dirs and logs.
    pub dir: StackDir,
    pub ingester: Option<Daemon>,
    pub uploader: Option<Daemon>,
    /// The ports the daemons reported listening on: 0 until first started (their URLs then name
    /// port 0, where connections are refused). Both start on port 0; see `start_ingester` and
    /// `start_uploader` for restarts.
    pub ingester_port: u16,
    pub uploader_port: u16,
    /// Holds the ingester's port while it is down, for its restart there.
    pub ingester_port_keeper: PortKeeper,
    /// Added to the next `start_ingester` / `start_uploader` (failpoints, quotas, ...).
    pub ingester_extra: Extra,
    pub uploader_extra: Extra,
    /// Control-plane token file `ctl` passes (`--token-file`) when the daemons require one.
    pub ctl_token_file: Option<PathBuf>,
    /// Where the uploader sends objects, if not straight to `s3` (e.g. a fault proxy).
    pub store_endpoint: Option<String>,
    /// Start the uploader without its own `endpoint`, so each rule's endpoint or region decides
    /// (what the uploader's `allowed_endpoints` governs).
    pub uploader_without_endpoint: bool,
    /// How the daemons' URLs are written: `http://127.0.0.1:PORT` unless changed (TLS tests use
    /// `https` and `localhost`, the certificate's name).
    pub scheme: &'static str,
    pub host: &'static str,
    /// Global flags `ctl` passes before the command (e.g. `--ca-file`).
    pub ctl_extra_args: Vec<String>,
    /// The bucket [`Stack::create_rule`] names.
    pub bucket: String,
    /// Where the ingester, uploader and `tdmq-backup` binaries are.
    pub bin_dir: PathBuf,
    /// How long a daemon may take to say it is ready.
    pub ready_timeout: Duration,
}

/// Where a stack keeps its daemons' data and logs: a temporary directory removed with it, or
/// one the caller chose and keeps (the bench's `--keep`).
pub enum StackDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl StackDir {
    pub fn path(&self) -> &Path {
        match self {
            StackDir::Temp(dir) => dir.path(),
            StackDir::Kept(dir) => dir,
        }
    }
}

/// Extra command-line arguments and environment for a daemon.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Extra {
    pub fn failpoint(spec: &str) -> Extra {
        Extra {
            args: Vec::new(),
            env: vec![(proto::failpoint::ENV.to_string(), spec.to_string())],
        }
    }
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// Broker, S3 server and bucket; daemons are started by the caller.
    pub async fn services() -> anyhow::Result<Stack> {
        Self::builder().services().await
    }

    /// Like [`Stack::services`] with the S3 server on HTTPS (its own CA; the uploader is told to
    /// trust it with `SSL_CERT_FILE`).
    pub async fn services_with_https_s3() -> anyhow::Result<Stack> {
        Self::builder().https_s3().services().await
    }

    /// Like [`Stack::services`] with a broker the caller started (partitions, relay faults).
    pub async fn services_with_pulsar(pulsar: PulsarLite) -> anyhow::Result<Stack> {
        Self::builder().pulsar(pulsar).services().await
    }

    /// Services, ingester and uploader.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::builder().start().await
    }

    pub fn ingester_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.ingester_port)
    }

    pub fn uploader_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.uploader_port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path of the workspace binary `name` this stack runs.
    pub fn bin(&self, name: &str) -> PathBuf {
        bin_in(&self.bin_dir, name)
    }

    /// Spawns an ingester (with `ingester_extra`) whose data dir is `{dir}/{name}` and whose log
    /// is `{dir}/{name}.log`, listening on 127.0.0.1:`port` (0: a port it picks and reports).
    /// The stack's own is [`Stack::start_ingester`]; this also starts others (a standby).
    pub fn spawn_ingester(&self, name: &str, port: u16) -> anyhow::Result<Daemon> {
        self.spawn_ingester_with(name, port, &[])
    }

    /// [`Stack::spawn_ingester`] with more arguments (`--node-id b`: several ingesters of one
    /// host told apart by the broker).
    pub fn spawn_ingester_with(
        &self,
        name: &str,
        port: u16,
        more: &[&str],
    ) -> anyhow::Result<Daemon> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.path(name).to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(self.ingester_extra.args.iter().cloned());
        args.extend(more.iter().map(|a| a.to_string()));
        let mut envs = vec![("RUST_LOG".to_string(), "info,pulsar=warn".to_string())];
        envs.extend(self.ingester_extra.env.iter().cloned());
        Daemon::spawn_bin(
            &self.bin("tdmq-backup-ingester"),
            "tdmq-backup-ingester",
            &args,
            &envs,
            self.path(&format!("{name}.log")),
        )
    }

    /// Spawns an uploader (with `uploader_extra`) of the ingester at `ingester_url`, storing to
    /// this stack's S3 server (or `store_endpoint`), whose state dir is `{dir}/{name}` and whose
    /// log is `{dir}/{name}.log`, on a port it picks and reports.
    pub fn spawn_uploader(&self, name: &str, ingester_url: &str) -> anyhow::Result<Daemon> {
        let mut args = vec![
            "--ingester".to_string(),
            ingester_url.to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            self.path(name).to_string_lossy().into_owned(),
            "--path-style".into(),
            "true".into(),
        ];
        if !self.uploader_without_endpoint {
            args.push("--endpoint".into());
            args.push(
                self.store_endpoint
                    .clone()
                    .unwrap_or_else(|| self.s3.endpoint()),
            );
        }
        let mut envs = vec![
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                self.s3.access_key().to_string(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                self.s3.secret_key().to_string(),
            ),
            ("RUST_LOG".to_string(), "info".to_string()),
        ];
        if let Some(ca) = self.s3.ca_file() {
            envs.push((
                "SSL_CERT_FILE".to_string(),
                ca.to_string_lossy().into_owned(),
            ));
        }
        args.extend(self.uploader_extra.args.iter().cloned());
        envs.extend(self.uploader_extra.env.iter().cloned());
        Daemon::spawn_bin(
            &self.bin("tdmq-backup-uploader"),
            "tdmq-backup-uploader",
            &args,
            &envs,
            self.path(&format!("{name}.log")),
        )
    }

    /// Starts the ingester: the first time on port 0 (it reports the port it got), again
    /// (after a kill -9, a SIGTERM) on the port it had, since the uploader keeps that URL. That
    /// re-bind is of the ingester's own port, held by `ingester_port_keeper` since its previous
    /// run exited, so no other process can have taken it meanwhile.
    pub async fn start_ingester(&mut self) -> anyhow::Result<()> {
        // A previous run still here is killed now (its port then held).
        drop(self.ingester.take());
        self.ingester_port_keeper.make_bindable();
        let daemon = self.spawn_ingester("ingester", self.ingester_port)?;
        let ingester = self.ingester.insert(daemon);
        let addr = ingester
            .wait_ready(self.ready_timeout)
            .await
            .context("the ingester did not start listening")?;
        self.ingester_port_keeper.release();
        ingester.keep_port_when_gone(self.ingester_port_keeper.clone());
        self.ingester_port = addr.port();
        Ok(())
    }

    /// Starts the uploader on port 0 (it reports the port it got), a restart too: only `ctl`
    /// (through this stack) needs its address.
    pub async fn start_uploader(&mut self) -> anyhow::Result<()> {
        if self.ingester_port == 0 {
            bail!("start the ingester first: the uploader is given its URL");
        }
        let uploader = self.spawn_uploader("uploader", &self.ingester_url())?;
        self.adopt_uploader(uploader).await
    }

    /// Waits for an uploader a test spawned itself to be ready, and makes it this stack's.
    pub async fn adopt_uploader(&mut self, uploader: Daemon) -> anyhow::Result<()> {
        let uploader = self.uploader.insert(uploader);
        self.uploader_port = uploader
            .wait_ready(self.ready_timeout)
            .await
            .context("the uploader did not start listening")?
            .port();
        Ok(())
    }

    /// The last 3000 bytes of the log `name` in the stack's directory (`ingester.log`, ...).
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or("").to_string()
    }
}
