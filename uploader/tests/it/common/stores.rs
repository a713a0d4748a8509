//! The uploader's store as the tests build it: credentials for the test servers, the router
//! (which also budgets the parts in flight), an S3 store whose client runs the tests'
//! interceptors, and a look at what s3s-fs keeps on disk.

use std::path::Path;

use aws_sdk_s3::config::SharedInterceptor;
use proto::types::Secret;
use uploader::config::Credentials;
use uploader::store::s3::{client_config, load_shared_config, S3Store};
use uploader::store::{
    ChecksumChoice, PayloadSigning, RequestChecksum, S3Target, StoreEndpoint, StoreRouter,
    StoreSettings,
};

use super::{AK, SK};

/// The test servers' key pair.
fn credentials() -> Credentials {
    Credentials::Static {
        source: "test",
        access_key_id: Secret::new(AK),
        secret_access_key: Secret::new(SK),
        session_token: None,
    }
}

/// An S3 target at `endpoint` (region us-east-1, path style) sending `checksum`.
pub fn s3_target(endpoint: &str, checksum: RequestChecksum) -> S3Target {
    S3Target {
        endpoint: endpoint.to_string(),
        region: "us-east-1".into(),
        path_style: true,
        checksum,
    }
}

/// The uploader's router: path style, `checksum` for every request, `part` as both the part size
/// and the multipart threshold, `concurrency` as the upload concurrency (which sizes the part
/// budget). With `endpoint`, that is the uploader's own endpoint (region us-east-1); without,
/// each caller names its target and the router only budgets parts.
pub fn router(
    endpoint: Option<&str>,
    checksum: RequestChecksum,
    part: u64,
    concurrency: usize,
) -> StoreRouter {
    StoreRouter::new(StoreSettings {
        endpoint: endpoint.map(|e| StoreEndpoint::parse(e).expect("endpoint")),
        allowed_endpoints: Vec::new(),
        region: endpoint.map(|_| "us-east-1".into()),
        path_style: true,
        request_checksum: ChecksumChoice::Fixed(checksum),
        payload_signing: PayloadSigning::Auto,
        part_size: part,
        multipart_threshold: part,
        credentials: credentials(),
        concurrency,
    })
}

/// The S3 store for `target` with `part` as part size and multipart threshold, its client
/// running `interceptors` (recorders, fault injectors) in order.
pub async fn s3_store(
    target: &S3Target,
    part: u64,
    interceptors: Vec<SharedInterceptor>,
) -> S3Store {
    let shared = load_shared_config(&credentials()).await;
    let mut config = client_config(&shared, target);
    for interceptor in interceptors {
        config.push_interceptor(interceptor);
    }
    S3Store::from_client_config(config.build(), target, part, part)
}

/// The names of what `dir` holds (nothing if it cannot be read).
pub fn file_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What s3s-fs keeps in its root for open multipart uploads: `.upload-ID.json` per upload and
/// `.upload_id-ID.part-N` per part (it does not implement ListMultipartUploads).
pub fn s3s_fs_uploads(root: &Path) -> Vec<String> {
    file_names(root)
        .into_iter()
        .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
        .collect()
}
