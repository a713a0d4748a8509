//! Finding and running the project's own binaries (ingester, uploader, `tdmq-backup`).
//!
//! `CARGO_BIN_EXE_*` only exists for binaries of the test's own package, so, like ripgrep's
//! `tests/util.rs`, the harness looks for them next to the test executable: `current_exe()` is
//! `target/debug/deps/e2e-…` and the binaries are in `target/debug/`.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Path of the workspace binary `name`. Panics with the command to run if it was not built, since
/// a test cannot do anything useful without it.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {} not found: run `cargo build --workspace --bins` first \
             (cargo test --workspace builds them)",
            path.display()
        );
    }
    path
}

/// `target/<profile>/`, derived from the running executable.
fn bin_dir() -> PathBuf {
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

/// A free TCP port on 127.0.0.1 (bound and released, so another process could take it before
/// use; callers that can bind port 0 themselves should).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
}

impl Daemon {
    /// Spawns workspace binary `name` with `args` and extra `envs`; stdout and stderr are appended
    /// to `log_path` (appending keeps the logs of earlier runs across a kill-and-restart).
    pub fn spawn(
        name: &str,
        args: &[String],
        envs: &[(String, String)],
        log_path: PathBuf,
    ) -> anyhow::Result<Daemon> {
        let bin = bin_path(name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cloning the handle of {}", log_path.display()))?;
        let child = Command::new(&bin)
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
        })
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
        self.child
            .wait()
            .with_context(|| format!("waiting for {} to exit", self.name))
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
        self.child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))
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
    }
}
