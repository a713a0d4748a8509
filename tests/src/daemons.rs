//! Finding and running the project's own binaries (ingester, uploader, `tdmq-backup`).
//!
//! `CARGO_BIN_EXE_*` only exists for binaries of the test's own package, so, like ripgrep's
//! `tests/util.rs`, the harness looks for them next to the test executable: `current_exe()` is
//! `target/debug/deps/e2e-…` and the binaries are in `target/debug/`.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::daemon_log;
use crate::ports::PortKeeper;

/// Path of the workspace binary `name`. Panics with the command to run if it was not built, since
/// a test cannot do anything useful without it.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_in(&bin_dir(), name);
    if !path.is_file() {
        panic!(
            "binary {} not found: run `cargo build --workspace --bins` first \
             (cargo test --workspace builds them)",
            path.display()
        );
    }
    path
}

/// The path binary `name` has in `dir` (whether or not it is there).
pub fn bin_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `target/<profile>/`, derived from the running executable: where the workspace's binaries are
/// when the caller was built with them (a test, or the bench in `target/release/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path is readable");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Waits until the log at `log_path`, from byte `from` on (what one run of a process wrote),
/// holds what `find` looks for, and returns it. Fails early, with the log, when `exited` says the
/// process is gone, and after `timeout`.
pub async fn wait_for_log<T>(
    log_path: &Path,
    from: u64,
    what: &str,
    timeout: Duration,
    mut find: impl FnMut(&str) -> Option<T>,
    mut exited: impl FnMut() -> anyhow::Result<Option<ExitStatus>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let log = read_from(log_path, from);
        if let Some(found) = find(&log) {
            return Ok(found);
        }
        if let Some(status) = exited()? {
            // It may have written the line just before exiting.
            let log = read_from(log_path, from);
            if let Some(found) = find(&log) {
                return Ok(found);
            }
            bail!("exited ({status}) before its log showed {what}; its log:\n{log}");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("its log did not show {what} within {timeout:?}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The file's bytes from `from` on, lossily decoded (empty if unreadable).
fn read_from(path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs the `tdmq-backup` CLI to completion and returns its output.
pub fn ctl(args: &[&str]) -> Output {
    let bin = bin_path("tdmq-backup");
    Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()))
}

/// A running daemon. Dropping it kills it with SIGKILL, so a failing test leaves nothing behind.
pub struct Daemon {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// The log's length when this run started: what this run reports comes after it.
    log_start: u64,
    /// The address it reported listening on, once [`Daemon::wait_ready`] has seen it.
    listen: Option<SocketAddr>,
    /// Holds `listen` once the daemon is gone (see [`Daemon::keep_port_when_gone`]).
    keeper: Option<PortKeeper>,
}

impl Daemon {
    /// Spawns workspace binary `name` with `args` and extra `envs`; stdout and stderr are appended
    /// to `log_path` (appending keeps the logs of earlier runs across a kill-and-restart).
    ///
    /// Start a daemon on `--listen 127.0.0.1:0` and learn its address from
    /// [`Daemon::wait_ready`]; its log must show INFO lines (the ready line is one).
    pub fn spawn(
        name: &str,
        args: &[String],
        envs: &[(String, String)],
        log_path: PathBuf,
    ) -> anyhow::Result<Daemon> {
        Self::spawn_bin(&bin_path(name), name, args, envs, log_path)
    }

    /// [`Daemon::spawn`] of the binary at `bin` (another build's, e.g. the bench's `--bin-dir`),
    /// named `name` in errors and ready lines.
    pub fn spawn_bin(
        bin: &Path,
        name: &str,
        args: &[String],
        envs: &[(String, String)],
        log_path: PathBuf,
    ) -> anyhow::Result<Daemon> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cloning the handle of {}", log_path.display()))?;
        let log_start = log
            .metadata()
            .with_context(|| format!("reading the length of {}", log_path.display()))?
            .len();
        let child = Command::new(bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log_path,
            log_start,
            listen: None,
            keeper: None,
        })
    }

    /// Waits until this run of the daemon logs what `find` looks for (in this run's part of the
    /// log); fails early, with the log, if it exits first.
    pub async fn wait_for_log<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for_log(&self.log_path, self.log_start, what, timeout, find, || {
            child.try_wait().with_context(|| format!("polling {name}"))
        })
        .await
        .with_context(|| format!("{} ({})", self.name, self.log_path.display()))
    }

    /// Waits until the daemon says it is ready ("ingester ready listen=ADDR", "uploader ready
    /// listen=ADDR") and returns the address it is bound to: started on port 0, this is how the
    /// caller learns its port. Its listener is bound before that line is written, so it accepts
    /// connections from then on.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let name = self.name.clone();
        let addr = self
            .wait_for_log("its ready line (listen=ADDR)", timeout, |log| {
                daemon_log::listen_addr(&name, log)
            })
            .await?;
        self.listen = Some(addr);
        Ok(addr)
    }

    /// The address its `/metrics` listener is bound to, as it logs it ("serving /metrics
    /// metrics=ADDR"); for a daemon started with `--metrics-listen 127.0.0.1:0`.
    pub async fn wait_metrics_addr(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        self.wait_for_log(
            "its /metrics address (serving /metrics)",
            timeout,
            daemon_log::metrics_addr,
        )
        .await
    }

    /// The address it reported listening on ([`Daemon::wait_ready`]).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Once the daemon is gone (killed, exited, dropped), `keeper` holds the address it listened
    /// on, so that it can be started again there (its clients know that address) without
    /// another process taking the port meanwhile.
    pub fn keep_port_when_gone(&mut self, keeper: PortKeeper) {
        self.keeper = Some(keeper);
    }

    /// Called whenever the process has been reaped.
    fn gone(&mut self) {
        if let (Some(keeper), Some(addr)) = (self.keeper.take(), self.listen) {
            keeper.hold(addr);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's log so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILL and reap: the crash the tests simulate.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        // kill() fails only if the process was already reaped; wait() still reports its status.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for {} to exit", self.name))?;
        self.gone();
        Ok(status)
    }

    /// Sends SIGTERM (a graceful shutdown request) without waiting. Uses the `kill` command
    /// because the workspace forbids `unsafe` (and so direct `libc::kill`).
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running `kill -TERM`")?;
        if !status.success() && self.try_status()?.is_none() {
            bail!("`kill -TERM {}` failed: {status}", self.pid());
        }
        Ok(())
    }

    /// The exit status if the daemon has exited.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))?;
        if status.is_some() {
            self.gone();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the daemon to exit (blocking); `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Daemon::wait_timeout`] without blocking the async runtime's thread (which may be
    /// serving the in-process S3 server).
    pub async fn wait_timeout_async(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.gone();
    }
}
