//! The S3 servers under test: an in-process s3s-fs server (SigV4 checked, plain files under a
//! temp dir) or moto's server (a second, independent S3 implementation, run as a process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

use super::{AK, BUCKET, SK};

pub struct Server {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// s3s-fs with one key pair and the bucket `BUCKET`, on 127.0.0.1:0, for the test's lifetime.
pub async fn serve() -> Server {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
    let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        while let Ok((socket, _)) = listener.accept().await {
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Server { root, addr }
}

/// Which S3 implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// s3s-fs in this process.
    S3sFs,
    /// moto's server, a Python process from the checkout's `.venv/`.
    Moto,
}

/// A running S3 server holding the bucket `BUCKET`, stopped when dropped.
pub enum TestStore {
    S3sFs(Server),
    Moto(MotoServer),
}

impl TestStore {
    pub async fn start(kind: StoreKind) -> TestStore {
        match kind {
            StoreKind::S3sFs => TestStore::S3sFs(serve().await),
            StoreKind::Moto => TestStore::Moto(MotoServer::start().await),
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            TestStore::S3sFs(_) => StoreKind::S3sFs,
            TestStore::Moto(_) => StoreKind::Moto,
        }
    }

    pub fn endpoint(&self) -> String {
        match self {
            TestStore::S3sFs(server) => server.endpoint(),
            TestStore::Moto(server) => server.endpoint(),
        }
    }
}

/// Environment variable naming moto's `moto_server`; overrides the `.venv` lookup.
pub const MOTO_SERVER_BIN_ENV: &str = "MOTO_SERVER_BIN";

/// How long moto's server may take to listen (about 2 s here, more under load).
const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `moto_server` on 127.0.0.1, port chosen by the kernel, with the bucket `BUCKET`. Dropping it
/// kills the process. moto keeps everything in memory and checks no signatures.
pub struct MotoServer {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the server's log (removed with the server).
    _log_dir: tempfile::TempDir,
}

impl MotoServer {
    pub async fn start() -> MotoServer {
        let binary = find_moto_server().unwrap_or_else(|why| panic!("{why}"));
        let dir = tempfile::Builder::new()
            .prefix("moto-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto.log");
        let log_err = log.try_clone().expect("moto.log handle");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut server = MotoServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _log_dir: dir,
        };
        // Port 0: the server prints where it listens (" * Running on http://127.0.0.1:PORT").
        let deadline = Instant::now() + MOTO_READY_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(port) = text
                .split("Running on http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                server.addr.set_port(port);
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited ({status}) before listening: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within {MOTO_READY_TIMEOUT:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.create_bucket().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn create_bucket(&self) {
        let client = plain_client(&self.endpoint());
        client
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CreateBucket on moto: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why moto's server cannot be used here, when nobody asked for it: `MOTO_SERVER_BIN` is unset
/// and the checkout has no `.venv/bin/moto_server`. Tests that may be skipped then print this
/// and return. Once the variable is set (CI and `scripts/test.sh` set it) a missing or broken
/// server is a failure, never a skip.
pub fn moto_not_installed() -> Option<String> {
    let default = workspace_root().join(".venv/bin/moto_server");
    if std::env::var_os(MOTO_SERVER_BIN_ENV).is_some() || default.is_file() {
        return None;
    }
    Some(format!(
        "{MOTO_SERVER_BIN_ENV} is unset and {} does not exist \
         (scripts/setup-test-services.sh installs it)",
        default.display()
    ))
}

/// `$MOTO_SERVER_BIN`, else the checkout's `.venv/bin/moto_server`; either way the Python next
/// to it must have `crc32c` (without it moto silently stores CRC32 under the CRC32C name).
pub fn find_moto_server() -> Result<PathBuf, String> {
    const HOW: &str = "run `scripts/setup-test-services.sh` (it installs moto[server] and crc32c \
                       from PyPI into the checkout's .venv/)";
    let binary = match std::env::var_os(MOTO_SERVER_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(".venv/bin/moto_server"),
    };
    if !binary.is_file() {
        return Err(format!(
            "moto's S3 server not found at {} (set {MOTO_SERVER_BIN_ENV} or {HOW})",
            binary.display()
        ));
    }
    let python = binary.with_file_name("python");
    if python.is_file() {
        let has_crc32c = Command::new(&python)
            .args(["-c", "import crc32c"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_crc32c {
            return Err(format!(
                "{} has no `crc32c` package, so moto would store wrong CRC32C checksums; {HOW}",
                python.display()
            ));
        }
    }
    Ok(binary)
}

fn workspace_root() -> PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A client with no interceptors, for a test to look at the store without being recorded.
pub fn plain_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            AK, SK, None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
