//! What the uploader's store tests share: an in-process s3s-fs server (SigV4 checked, plain
//! files under a temp dir) and an SDK interceptor that records every request sent.

#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

pub const AK: &str = "AKIDTESTKEY";
pub const SK: &str = "test-secret-key-value";
pub const BUCKET: &str = "backup-1250000000";

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

/// Method, URI, lower-cased header names.
pub type Recorded = (String, String, Vec<String>);

/// Records every request the SDK is about to send.
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Recorded>>>);

impl Recorder {
    pub fn requests(&self) -> Vec<Recorded> {
        self.0.lock().expect("test mutex").clone()
    }

    /// The requests so far, forgetting them.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.0.lock().expect("test mutex"))
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let req = context.request();
        let headers = req
            .headers()
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        self.0.lock().expect("test mutex").push((
            req.method().to_string(),
            req.uri().to_string(),
            headers,
        ));
        Ok(())
    }
}

/// Replaces the integrity header (`content-md5` / `x-amz-checksum-crc32c`) of every request
/// with the checksum of other bytes, before signing: the request is validly signed, and only
/// the store's own check of the bytes can refuse it.
#[derive(Debug, Clone, Default)]
pub struct TamperChecksums;

impl Intercept for TamperChecksums {
    fn name(&self) -> &'static str {
        "tamper-checksums"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let headers = context.request_mut().headers_mut();
        if headers.contains_key("content-md5") {
            // MD5 of "other bytes", base64.
            headers.insert("content-md5", "0HWGhHTsTyGuGuvIGJ57kA==");
        }
        if headers.contains_key("x-amz-checksum-crc32c") {
            headers.insert("x-amz-checksum-crc32c", "AAAAAA==");
        }
        Ok(())
    }
}

/// Requests between being sent and their response arriving: the most ever open at once. (A
/// request whose transmission fails stays counted; use it where none fail.)
#[derive(Debug, Clone, Default)]
pub struct OpenRequests {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl OpenRequests {
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Intercept for OpenRequests {
    fn name(&self) -> &'static str {
        "open-requests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let open = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(open, Ordering::SeqCst);
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}
