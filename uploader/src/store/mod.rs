//! Object stores: S3-compatible servers (COS, MinIO, ...) and the embedded `file://` store.
//!
//! A closed enum rather than a trait object: there are exactly two backends and the enum keeps
//! the async methods free of boxing. [`StoreRouter`] picks (and caches) the backend for each
//! segment from the uploader's override, the rule's endpoint or the rule's COS region.

pub mod file;
pub mod list_parts_root;
pub mod part_budget;
pub mod part_buffers;
pub mod s3;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::config::{Credentials, UploaderConfig};
use crate::error::UploadError;
pub use file::FileStore;
use part_budget::PartBudget;
use part_buffers::PartBuffers;
pub use s3::S3Store;

/// An object's content as it arrives. The stream must be read to its end before the object is
/// made visible: the last item is where a length or checksum mismatch is reported.
pub type Body = BoxStream<'static, Result<Bytes, UploadError>>;

/// What to write. `total_len` is the announced size: above the multipart threshold an S3 object
/// must go up through [`crate::multipart::upload`]; [`S3Store::put_object`] refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    pub bucket: String,
    pub key: String,
    /// User metadata (`x-amz-meta-<name>`), names without the prefix.
    pub metadata: Vec<(String, String)>,
    pub content_type: String,
    pub total_len: u64,
    /// Create the object only if its key is free (`If-None-Match: *`): a fenced segment's key
    /// may be another ingester's ([`UploadError::KeyTaken`] when it is).
    pub if_absent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub etag: String,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// As the store lists it (quoted on S3); empty when the store keeps none.
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: String,
    pub metadata: BTreeMap<String, String>,
}

/// Content type for a segment's object, by its key (Parquet) or its content encoding.
/// Deliberately never a `Content-Encoding: gzip` header: HTTP clients would then decompress on
/// download and users would get `.gz` files that are not gzip.
pub fn content_type_for(content_encoding: &str, key: &str) -> &'static str {
    if proto::types::Format::from_key(key) == proto::types::Format::Parquet {
        // The media type IANA registered for Parquet in 2024.
        return "application/vnd.apache.parquet";
    }
    match content_encoding {
        "gzip" => "application/gzip",
        // RFC 8878's media type for a zstd frame.
        "zstd" => "application/zstd",
        _ => "application/x-ndjson",
    }
}

/// An endpoint as configured: the uploader's `endpoint` key or a rule's `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreEndpoint {
    /// `http(s)://host[:port]`, without a trailing slash.
    S3 {
        url: String,
    },
    File {
        dir: PathBuf,
    },
}

impl StoreEndpoint {
    pub fn parse(text: &str) -> Result<StoreEndpoint, String> {
        if let Some(dir) = text.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(format!(
                    "{text:?} names no directory (use file:///path/to/dir)"
                ));
            }
            return Ok(StoreEndpoint::File {
                dir: PathBuf::from(dir),
            });
        }
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
            .ok_or_else(|| format!("{text:?} must start with http://, https:// or file://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(format!("{text:?} has no host"));
        }
        // Keys in a URL would end up in logs and in the status reply; they belong in the env.
        if authority.contains('@') {
            return Err(format!(
                "{} must not hold credentials; use COS_SECRET_ID/COS_SECRET_KEY",
                text.split('@').next_back().unwrap_or_default()
            ));
        }
        if !path.is_empty() {
            return Err(format!(
                "{text:?} must be just scheme://host[:port], without a path"
            ));
        }
        Ok(StoreEndpoint::S3 {
            url: text.trim_end_matches('/').to_string(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            StoreEndpoint::S3 { url } => url.clone(),
            StoreEndpoint::File { dir } => format!("file://{}", dir.display()),
        }
    }
}

/// One S3 client's identity: clients are cached per target. Serializable: a resumable upload's
/// state records where its upload id lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct S3Target {
    pub endpoint: String,
    /// The SigV4 signing region.
    pub region: String,
    pub path_style: bool,
    /// How the store checks each request's bytes. Absent in resume records written before the
    /// key existed, which were all uploaded with Content-MD5.
    #[serde(default)]
    pub checksum: RequestChecksum,
}

/// The integrity header sent with every PutObject and UploadPart; the store recomputes it over
/// the bytes it received and refuses the request on a mismatch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RequestChecksum {
    /// `Content-MD5`: the one COS honours, and every S3-compatible server knows it. MD5 runs at
    /// about 0.6 GB/s per core, so it is most of the uploader's CPU time.
    #[default]
    Md5,
    /// `x-amz-checksum-crc32c` (hardware CRC, ~20x cheaper than MD5): AWS S3, MinIO, Ceph RGW,
    /// s3s. COS ignores it, so COS endpoints never get it under `auto`.
    Crc32c,
}

/// The `payload_signing` setting: whether SigV4 covers a SHA-256 of each request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PayloadSigning {
    /// `UNSIGNED-PAYLOAD` over HTTPS (TLS protects the body; boto3 and the AWS CLI do the same),
    /// a signed SHA-256 over plain HTTP.
    #[default]
    Auto,
    /// Always a signed SHA-256, for S3-compatible stores that refuse `UNSIGNED-PAYLOAD`.
    Always,
}

impl PayloadSigning {
    pub fn parse(text: &str) -> Result<PayloadSigning, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(PayloadSigning::Auto),
            "always" => Ok(PayloadSigning::Always),
            _ => Err(format!("{text:?} must be auto or always")),
        }
    }

    /// Whether requests to `endpoint_url` sign their payload.
    pub fn signs(self, endpoint_url: &str) -> bool {
        self == PayloadSigning::Always || !endpoint_url.starts_with("https://")
    }
}

/// The `request_checksum` setting: a fixed [`RequestChecksum`], or `auto` — MD5 for COS hosts,
/// CRC32C for every other S3 endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChecksumChoice {
    #[default]
    Auto,
    Fixed(RequestChecksum),
}

impl ChecksumChoice {
    pub fn parse(text: &str) -> Result<ChecksumChoice, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ChecksumChoice::Auto),
            "md5" | "content-md5" => Ok(ChecksumChoice::Fixed(RequestChecksum::Md5)),
            "crc32c" => Ok(ChecksumChoice::Fixed(RequestChecksum::Crc32c)),
            _ => Err(format!("{text:?} must be auto, md5 or crc32c")),
        }
    }

    /// The checksum for requests to `endpoint_url`.
    pub fn for_endpoint(self, endpoint_url: &str) -> RequestChecksum {
        match self {
            ChecksumChoice::Fixed(checksum) => checksum,
            ChecksumChoice::Auto if is_cos_endpoint(endpoint_url) => RequestChecksum::Md5,
            ChecksumChoice::Auto => RequestChecksum::Crc32c,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ChecksumChoice::Auto => "auto",
            ChecksumChoice::Fixed(RequestChecksum::Md5) => "md5",
            ChecksumChoice::Fixed(RequestChecksum::Crc32c) => "crc32c",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    S3(S3Target),
    File(PathBuf),
}

/// Region used for signing when neither the uploader nor the rule names one (S3's default).
pub const FALLBACK_REGION: &str = "us-east-1";

/// COS hosts refuse path-style requests for buckets created since 2024, so a COS endpoint
/// (`*.myqcloud.com`, or `*.tencentcos.cn`, the domain COS also serves every bucket under) is
/// always addressed virtual-hosted, whatever `path_style` says (that key exists for local S3
/// servers, which need path style); it also gets COS's checksum and overwrite-guard headers.
pub fn is_cos_endpoint(url: &str) -> bool {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = host.split(['/', ':']).next().unwrap_or_default();
    let host = host.to_ascii_lowercase();
    host.ends_with(".myqcloud.com") || host.ends_with(".tencentcos.cn")
}

/// The uploader's `allowed_endpoints`: S3 endpoints a rule may name. A `file://` entry is
/// refused: the embedded store writes to this host's disk and is only ever chosen by the
/// uploader's own `endpoint`.
pub fn parse_allowed_endpoints(entries: &[String]) -> Result<Vec<String>, String> {
    let mut allowed = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        match StoreEndpoint::parse(entry)? {
            StoreEndpoint::S3 { url } => allowed.push(url),
            StoreEndpoint::File { .. } => {
                return Err(format!(
                    "{entry:?}: a file:// store is never taken from a rule; set the uploader's \
                     own endpoint to use it"
                ))
            }
        }
    }
    Ok(allowed)
}

/// A rule's own endpoint, if this uploader may write there: one listed in `allowed_endpoints`,
/// or the COS endpoint of the rule's own region (what the region alone would pick for the seven
/// known regions, and the way to reach any other COS region). A rule chooses where the
/// uploader's signed requests and the backup go, so nothing else is honoured.
fn rule_endpoint(
    text: &str,
    region: &str,
    allowed: &[String],
) -> Result<StoreEndpoint, UploadError> {
    let endpoint = StoreEndpoint::parse(text)
        .map_err(|m| UploadError::Segment(format!("rule endpoint: {m}")))?;
    match &endpoint {
        StoreEndpoint::File { .. } => Err(UploadError::EndpointNotAllowed(format!(
            "the rule's endpoint {text} is refused: a file:// store is never taken from a rule \
             (it would write anywhere on the uploader's host); only the uploader's own endpoint \
             key may name one"
        ))),
        StoreEndpoint::S3 { url }
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(url))
                || url.eq_ignore_ascii_case(&format!("https://cos.{region}.myqcloud.com")) =>
        {
            Ok(endpoint)
        }
        StoreEndpoint::S3 { url } => Err(UploadError::EndpointNotAllowed(format!(
            "the rule's endpoint {url} is not in the uploader's allowed_endpoints; add it there \
             (or set the uploader's endpoint) to let rules write to it"
        ))),
    }
}

/// Where a segment goes: the uploader's override, else the rule's endpoint if allowed (see
/// [`rule_endpoint`]), else the COS endpoint of the rule's region.
pub fn resolve_target(
    override_endpoint: Option<&StoreEndpoint>,
    allowed_endpoints: &[String],
    region_override: Option<&str>,
    path_style: bool,
    checksum: ChecksumChoice,
    segment_endpoint: &str,
    segment_region: &str,
) -> Result<Target, UploadError> {
    let endpoint = match override_endpoint {
        Some(e) => e.clone(),
        None if !segment_endpoint.is_empty() => {
            rule_endpoint(segment_endpoint, segment_region, allowed_endpoints)?
        }
        None => match proto::types::rule::cos_endpoint(segment_region) {
            Some(url) => StoreEndpoint::S3 { url },
            None => {
                return Err(UploadError::Segment(format!(
                    "region {segment_region:?} is not a known COS region and neither the rule nor \
                     the uploader names an endpoint"
                )))
            }
        },
    };
    Ok(match endpoint {
        StoreEndpoint::File { dir } => Target::File(dir),
        StoreEndpoint::S3 { url } => {
            let region = region_override
                .filter(|r| !r.is_empty())
                .or(Some(segment_region).filter(|r| !r.is_empty()))
                .unwrap_or(FALLBACK_REGION)
                .to_string();
            let path_style = path_style && !is_cos_endpoint(&url);
            Target::S3(S3Target {
                checksum: checksum.for_endpoint(&url),
                endpoint: url,
                region,
                path_style,
            })
        }
    })
}

#[derive(Clone)]
pub enum Store {
    S3(S3Store),
    File(FileStore),
}

impl Store {
    /// Writes the object in one request and returns only once the store has confirmed it
    /// (PutObject succeeded, or the file is renamed into place). An S3 object above the multipart
    /// threshold is refused ([`UploadError::TooLargeForSinglePut`]): it goes through
    /// [`crate::multipart::upload`], as [`crate::upload::put_segment`] sends it.
    pub async fn put_object(
        &self,
        req: &PutRequest,
        body: Body,
    ) -> Result<PutOutcome, UploadError> {
        match self {
            Store::S3(s) => s.put_object(req, body).await,
            Store::File(f) => f.put_object(req, body).await,
        }
    }

    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectHead>, UploadError> {
        match self {
            Store::S3(s) => s.head_object(bucket, key).await,
            Store::File(f) => f.head_object(bucket, key).await,
        }
    }

    /// Every object whose key starts with `prefix`, ordered by key (all pages).
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ListedObject>, UploadError> {
        match self {
            Store::S3(s) => s.list_objects(bucket, prefix).await,
            Store::File(f) => f.list_objects(bucket, prefix).await,
        }
    }

    /// The object's bytes as they arrive; `None` when there is no such object.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Body>, UploadError> {
        match self {
            Store::S3(s) => s.get_object(bucket, key).await,
            Store::File(f) => f.get_object(bucket, key).await,
        }
    }

    /// The whole object, refused above `limit` bytes (for small documents such as the
    /// manifest's); `None` when there is no such object.
    pub async fn get_small_object(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Option<Bytes>, UploadError> {
        use futures::StreamExt as _;
        let Some(mut body) = self.get_object(bucket, key).await? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if data.len() + chunk.len() > limit {
                return Err(UploadError::Store {
                    op: "GetObject",
                    message: format!("{key} is larger than {limit} bytes"),
                });
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(data)))
    }

    /// Deleting an object that is not there succeeds.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), UploadError> {
        match self {
            Store::S3(s) => s.delete_object(bucket, key).await,
            Store::File(f) => f.delete_object(bucket, key).await,
        }
    }
}

/// The settings every backend shares, taken from the config.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub endpoint: Option<StoreEndpoint>,
    /// S3 endpoints a rule may name (normalized URLs).
    pub allowed_endpoints: Vec<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub request_checksum: ChecksumChoice,
    pub payload_signing: PayloadSigning,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub credentials: Credentials,
    /// Segments uploaded at once: as many idle part buffers are kept for reuse.
    pub concurrency: usize,
}

impl StoreSettings {
    pub fn from_config(config: &UploaderConfig) -> StoreSettings {
        StoreSettings {
            endpoint: config.endpoint.clone(),
            allowed_endpoints: config.allowed_endpoints.clone(),
            region: config.region.clone(),
            path_style: config.path_style,
            request_checksum: config.request_checksum,
            payload_signing: config.payload_signing,
            part_size: config.part_size,
            multipart_threshold: config.multipart_threshold,
            credentials: config.credentials.clone(),
            concurrency: config.concurrency,
        }
    }

    /// For the status reply: where objects go, never how we authenticate beyond the source name.
    pub fn describe(&self) -> String {
        let target = match &self.endpoint {
            Some(StoreEndpoint::File { dir }) => {
                return format!("file://{} (embedded store)", dir.display())
            }
            Some(StoreEndpoint::S3 { url }) => format!(
                "{url} ({}, region {}, {} request checksums)",
                if self.path_style && !is_cos_endpoint(url) {
                    "path-style"
                } else {
                    "virtual-hosted"
                },
                self.region.as_deref().unwrap_or("of each rule"),
                match self.request_checksum.for_endpoint(url) {
                    RequestChecksum::Md5 => "Content-MD5",
                    RequestChecksum::Crc32c => "CRC32C",
                }
            ),
            None => format!(
                "per rule: https://cos.<region>.myqcloud.com, or the rule's endpoint if \
                 allowed ({}) (request checksums: {})",
                if self.allowed_endpoints.is_empty() {
                    "allowed_endpoints is empty".to_string()
                } else {
                    self.allowed_endpoints.join(", ")
                },
                self.request_checksum.describe()
            ),
        };
        format!("{target}; credentials from {}", self.credentials.describe())
    }
}

/// Picks the backend for a segment and caches S3 clients (building one loads credentials and
/// sets up a connection pool; doing that per segment would waste both).
pub struct StoreRouter {
    settings: StoreSettings,
    shared: tokio::sync::OnceCell<aws_config::SdkConfig>,
    clients: Mutex<HashMap<S3Target, S3Store>>,
    /// One pool for every client, so the memory parts are gathered in is bounded per uploader.
    buffers: PartBuffers,
    /// `2 × concurrency` parts held at once, shared by the uploads running.
    budget: PartBudget,
    /// Every client's requests, for `/metrics`.
    requests: s3::RequestCounts,
}

impl StoreRouter {
    pub fn new(settings: StoreSettings) -> StoreRouter {
        let buffers = PartBuffers::new(
            usize::try_from(settings.part_size).unwrap_or(usize::MAX),
            settings.concurrency.max(1),
        );
        StoreRouter {
            buffers,
            budget: PartBudget::new(settings.concurrency.max(1).saturating_mul(2)),
            settings,
            shared: tokio::sync::OnceCell::new(),
            clients: Mutex::new(HashMap::new()),
            requests: s3::RequestCounts::default(),
        }
    }

    /// The requests every S3 client of this router sent, by operation.
    pub fn request_counts(&self) -> &s3::RequestCounts {
        &self.requests
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// How many parts each upload may keep in flight ([`part_budget`]).
    pub fn part_budget(&self) -> &PartBudget {
        &self.budget
    }

    /// Where a segment's object goes (see [`resolve_target`]).
    pub fn target_for(
        &self,
        segment_endpoint: &str,
        segment_region: &str,
    ) -> Result<Target, UploadError> {
        resolve_target(
            self.settings.endpoint.as_ref(),
            &self.settings.allowed_endpoints,
            self.settings.region.as_deref(),
            self.settings.path_style,
            self.settings.request_checksum,
            segment_endpoint,
            segment_region,
        )
    }

    pub async fn store_for(
        &self,
        segment_endpoint: &str,
        segment_region: &str,
    ) -> Result<Store, UploadError> {
        match self.target_for(segment_endpoint, segment_region)? {
            Target::File(dir) => Ok(Store::File(FileStore::new(dir))),
            Target::S3(t) => Ok(Store::S3(self.s3_store(&t).await)),
        }
    }

    /// The (cached) client for an S3 target, e.g. one recorded in a resumable upload's state.
    pub async fn s3_store(&self, s3_target: &S3Target) -> S3Store {
        if let Some(store) = self.cached(s3_target) {
            return store;
        }
        let shared = self
            .shared
            .get_or_init(|| s3::load_shared_config(&self.settings.credentials))
            .await;
        let store = S3Store::from_client_config(
            s3::client_config(shared, s3_target)
                .interceptor(self.requests.clone())
                .build(),
            s3_target,
            self.settings.part_size,
            self.settings.multipart_threshold,
        )
        .with_payload_signing(self.settings.payload_signing)
        .with_part_buffers(self.buffers.clone());
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(s3_target.clone(), store.clone());
        store
    }

    fn cached(&self, target: &S3Target) -> Option<S3Store> {
        // A poisoned cache only means another task panicked mid-insert; the map is still usable.
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(target)
            .cloned()
    }
}

#[cfg(test)]
mod tests;
