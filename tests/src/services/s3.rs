//! An in-process S3 server (s3s-fs) on a temporary directory, over plain HTTP or (with
//! [`S3Server::start_tls`]) HTTPS with a throwaway CA.
//!
//! s3s-fs checks SigV4, flexible checksums and bucket names like S3 does, so configuration bugs in
//! the uploader show up in tests (docs/dependencies.md §9). The server runs as a task on the
//! caller's tokio runtime; the e2e tests therefore use a multi-threaded runtime so it keeps
//! serving while a test awaits other work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::ports::PortHold;

/// Access key every test server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// Secret key every test server accepts.
pub const SECRET_KEY: &str = "test-secret-key-123";
/// Region the clients sign for (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// A running (or stopped) s3s-fs server. Dropping it stops serving; the data dir is deleted.
pub struct S3Server {
    addr: SocketAddr,
    /// Keeps the port while the server is stopped, so that `restart` finds it free (see
    /// [`crate::ports`]): clients get "connection refused" in between, as from a store that is
    /// down, and no other process can take the port.
    hold: PortHold,
    task: Option<JoinHandle<()>>,
    /// Removed on drop; holds `data/` and, over HTTPS, `ca.pem`.
    _dir: TempDir,
    /// `dir/data`: the buckets.
    data: PathBuf,
    tls: Option<ServerTls>,
}

/// HTTPS: the acceptor, and the CA that signed the server's certificate.
struct ServerTls {
    acceptor: TlsAcceptor,
    ca_pem: String,
    ca_file: PathBuf,
}

impl S3Server {
    /// Starts a server on a loopback port the kernel picks, with an empty data directory.
    pub async fn start() -> anyhow::Result<S3Server> {
        Self::start_with(false).await
    }

    /// Like [`S3Server::start`], over HTTPS: the certificate (for 127.0.0.1 and localhost) is
    /// signed by a CA made for this server, whose PEM is at [`S3Server::ca_file`]. Processes
    /// trust it with `SSL_CERT_FILE` (the SDK's default client reads it through
    /// rustls-native-certs); [`S3Server::client`] trusts it directly.
    pub async fn start_tls() -> anyhow::Result<S3Server> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> anyhow::Result<S3Server> {
        let dir = tempfile::Builder::new()
            .prefix("s3s-fs-")
            .tempdir()
            .context("creating the S3 data dir")?;
        // Objects live in `data/`, so the CA file next to it is not a bucket.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).context("creating the S3 data dir")?;
        let tls = if tls {
            Some(server_tls(dir.path()).context("making the S3 server's certificate")?)
        } else {
            None
        };
        // Port 0, kept: the hold first, then the listener on the held port.
        let mut hold = PortHold::any().context("binding the S3 server's port")?;
        hold.make_bindable();
        let addr = hold.addr();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the S3 server on {addr}"))?;
        let task = serve(listener, &data, tls.as_ref().map(|t| t.acceptor.clone()))?;
        Ok(S3Server {
            addr,
            hold,
            task: Some(task),
            _dir: dir,
            data,
            tls,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a server started with `start_tls`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM file of the CA that signed an HTTPS server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
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
        &self.data
    }

    /// Whether the server is currently serving.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops serving: closes the listener and every open connection (clients see connection
    /// errors, as with a store outage). The data stays, and so does the port (held, not
    /// listening: connections are refused). Waits until the listener is closed so that
    /// [`S3Server::restart`] can listen there again.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The listener is dropped when the aborted task is; awaiting guarantees that happened.
            let _ = task.await;
        }
    }

    /// Serves again on the same port with the same data (stops first if still running). The
    /// port was held meanwhile, so nothing else can have taken it.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.hold.make_bindable();
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("re-binding the S3 server on {}", self.addr))?;
        let acceptor = self.tls.as_ref().map(|t| t.acceptor.clone());
        self.task = Some(serve(listener, &self.data, acceptor)?);
        Ok(())
    }

    /// Same as [`S3Server::restart`]; the name says what it guarantees.
    pub async fn start_on_same_port(&mut self) -> anyhow::Result<()> {
        self.restart().await
    }

    /// An S3 client for this server: path style, static credentials, region us-east-1 (and,
    /// over HTTPS, trusting the server's CA only).
    pub fn client(&self) -> aws_sdk_s3::Client {
        match &self.tls {
            None => client_for(&self.endpoint(), ACCESS_KEY, SECRET_KEY),
            Some(tls) => {
                let config = config_for(&self.endpoint(), ACCESS_KEY, SECRET_KEY)
                    .http_client(https_client(&tls.ca_pem))
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            }
        }
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
    aws_sdk_s3::Client::from_conf(config_for(endpoint, access_key, secret_key).build())
}

fn config_for(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "static",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
}

/// The SDK's rustls client, trusting only `ca_pem`.
fn https_client(ca_pem: &str) -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::empty().with_pem_certificate(ca_pem.as_bytes()))
        .build();
    let builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::AwsLc,
    ));
    match context {
        Ok(context) => builder.tls_context(context).build_https(),
        // Building the context only collects the PEM; nothing here can fail today.
        Err(_) => builder.build_https(),
    }
}

/// A CA (written to `dir/ca.pem`) and a certificate it signed for 127.0.0.1 and localhost.
fn server_tls(dir: &Path) -> anyhow::Result<ServerTls> {
    let certs = crate::certs::TestCerts::generate("tdmq-backup test S3 CA", "s3s-fs")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![certs.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certs.key_der.clone().into()),
        )?;
    let ca_file = certs.write(dir)?.ca;
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: certs.ca_pem,
        ca_file,
    })
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
fn serve(
    listener: TcpListener,
    root: &Path,
    tls: Option<TlsAcceptor>,
) -> anyhow::Result<JoinHandle<()>> {
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
            let _ = socket.set_nodelay(true);
            let (http, service) = (http.clone(), service.clone());
            match tls.clone() {
                None => {
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service)
                        .into_owned();
                    connections.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Some(acceptor) => {
                    connections.spawn(async move {
                        let Ok(stream) = acceptor.accept(socket).await else {
                            return;
                        };
                        let _ = http
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned()
                            .await;
                    });
                }
            }
        }
    }))
}
