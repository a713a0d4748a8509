//! An in-process S3 server (s3s-fs) on a temporary directory.
//!
//! s3s-fs checks SigV4, flexible checksums and bucket names like S3 does, so configuration bugs in
//! the uploader show up in tests (STACK.md, "S3 test server"). The server runs as a task on the
//! caller's tokio runtime; the e2e tests therefore use a multi-threaded runtime so it keeps
//! serving while a test awaits other work.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Access key every test server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// Secret key every test server accepts.
pub const SECRET_KEY: &str = "test-secret-key-123";
/// Region the clients sign for (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// A running (or stopped) s3s-fs server. Dropping it stops serving; the data dir is deleted.
pub struct S3Server {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    dir: TempDir,
}

impl S3Server {
    /// Starts a server on a free loopback port with an empty data directory.
    pub async fn start() -> anyhow::Result<S3Server> {
        let dir = tempfile::Builder::new()
            .prefix("s3s-fs-")
            .tempdir()
            .context("creating the S3 data dir")?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the S3 server")?;
        let addr = listener
            .local_addr()
            .context("reading the S3 server address")?;
        let task = serve(listener, dir.path())?;
        Ok(S3Server {
            addr,
            task: Some(task),
            dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on (also while stopped: `restart` reuses it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn access_key(&self) -> &'static str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &'static str {
        SECRET_KEY
    }

    /// The directory holding the objects: object `K` of bucket `B` is the file `data_dir/B/K`.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server is currently serving.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving: closes the listener and every open connection (clients see connection
    /// errors, as with a store outage). The data stays. Waits until the port is released so that
    /// [`S3Server::restart`] can bind it again.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The listener is dropped when the aborted task is; awaiting guarantees that happened.
            let _ = task.await;
        }
    }

    /// Serves again on the same port with the same data (stops first if still running).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("re-binding the S3 server on {}", self.addr))?;
        self.task = Some(serve(listener, self.dir.path())?);
        Ok(())
    }

    /// Same as [`S3Server::restart`]; the name says what it guarantees.
    pub async fn start_on_same_port(&mut self) -> anyhow::Result<()> {
        self.restart().await
    }

    /// An S3 client for this server: path style, static credentials, region us-east-1.
    pub fn client(&self) -> aws_sdk_s3::Client {
        client_for(&self.endpoint(), ACCESS_KEY, SECRET_KEY)
    }

    /// Creates a bucket (names follow S3 rules: at least 3 characters, no `_`).
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An S3 client for a local test server. Built without `aws_config::load`, so nothing from the
/// environment or `~/.aws` can leak into the tests.
pub fn client_for(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "static",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn build_service(root: &Path) -> anyhow::Result<S3Service> {
    // s3s_fs::Error implements neither std::error::Error nor Display, hence the Debug formatting.
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| anyhow!("opening s3s-fs on {}: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    Ok(builder.build())
}

/// Spawns the accept loop (as in s3s-fs's own `main.rs`). Connections live in a `JoinSet` owned by
/// the loop, so aborting the loop also closes them.
fn serve(listener: TcpListener, root: &Path) -> anyhow::Result<JoinHandle<()>> {
    let service = build_service(root)?;
    Ok(tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, "s3 test server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            connections.spawn(async move {
                let _ = conn.await;
            });
        }
    }))
}
