//! S3-compatible stores (Tencent COS first). One `aws_sdk_s3::Client` per (endpoint, region,
//! path style), built by [`client_config`] with the settings COS needs:
//!
//! - `WhenRequired` request checksums and response validation: COS rejects or ignores the SDK's
//!   default flexible checksums (`x-amz-checksum-*`, aws-chunked trailers);
//! - an integrity header on PutObject and UploadPart instead, computed here over the buffered
//!   bytes ([`RequestChecksum`]): `Content-MD5`, the one COS honours, or — for other S3
//!   servers under `request_checksum = "auto"` — `x-amz-checksum-crc32c`, which they check just
//!   as strictly at a twentieth of the CPU. A CRC32C multipart upload is created with that
//!   algorithm, and CompleteMultipartUpload names every part's CRC32C;
//! - over HTTPS, `UNSIGNED-PAYLOAD` instead of a SHA-256 of the body in the signature (see
//!   [`S3Store`]'s `sign_payload`);
//! - virtual-hosted addressing unless path style is asked for (local test servers need it).

use std::collections::{BTreeMap, HashMap};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::client::customize::CustomizableOperation;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

mod request_count;
mod sdk_errors;

use super::list_parts_root::ListPartsRootFix;
use super::part_buffers::PartBuffers;
use super::{
    Body, ListedObject, ObjectHead, PayloadSigning, PutOutcome, PutRequest, RequestChecksum,
    S3Target, FALLBACK_REGION,
};
use crate::config::Credentials;
use crate::error::UploadError;
pub use request_count::RequestCounts;
pub use sdk_errors::describe_sdk_error;
use sdk_errors::{answered_unusably, is_key_taken, is_no_such_upload, sdk_error, start_over};

/// S3 and COS both stop at 10,000 parts.
pub const MAX_PARTS: usize = 10_000;

/// Idle part buffers a store keeps when no router shares its pool (the default concurrency).
const DEFAULT_IDLE_BUFFERS: usize = 4;

/// The shared part of every client: credentials (static from the environment, or the standard
/// chain), retry and timeout defaults. Endpoint and region are set per client.
pub async fn load_shared_config(credentials: &Credentials) -> SdkConfig {
    // A region here only stops the loader probing the environment/IMDS for one; each client
    // sets its own signing region.
    let loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(FALLBACK_REGION));
    let loader = match credentials {
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
            ..
        } => loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            access_key_id.expose(),
            secret_access_key.expose(),
            session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "tdmq-backup-uploader-env",
        )),
        Credentials::DefaultChain => loader,
    };
    loader.load().await
}

/// The client settings for one target; tests add interceptors before `build()`.
pub fn client_config(shared: &SdkConfig, target: &S3Target) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(shared)
        .region(Region::new(target.region.clone()))
        .endpoint_url(&target.endpoint)
        .force_path_style(target.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
}

/// A multipart upload in progress: what CompleteMultipartUpload needs. The resumable driver
/// ([`crate::multipart`]) persists it in `state_dir` after every part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartState {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub part_size: u64,
    pub parts: Vec<UploadedPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    pub part_number: i32,
    pub etag: String,
    pub size: u64,
    /// Base64 CRC32C of the part, as sent in `x-amz-checksum-crc32c`: CompleteMultipartUpload
    /// must repeat it for an upload created with that algorithm. None for Content-MD5 uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_crc32c: Option<String>,
}

impl MultipartState {
    pub fn bytes_done(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// A part as ListParts reports it. Some stores (s3s-fs) list no ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub part_number: i32,
    pub size: u64,
    pub etag: Option<String>,
    /// The part's CRC32C (base64) when the upload was created with that algorithm.
    pub checksum_crc32c: Option<String>,
}

/// What ListParts found out about a multipart upload.
#[derive(Debug)]
pub enum PartList {
    /// The parts the store holds, in part-number order.
    Listed(Vec<ListedPart>),
    /// The store no longer knows the upload (completed, aborted, removed by a lifecycle rule).
    UploadGone,
    /// The store answered, but not with a part list that can be used: an answer the SDK
    /// cannot read, or a refusal other than NoSuchUpload (4xx). Asking again is unlikely to
    /// help, unlike an unreachable store or a 5xx, which are returned as errors.
    Unusable(UploadError),
}

/// Starts the message of a [`UploadError::Store`] after which the multipart upload cannot go on
/// (the store forgot the upload id, or refuses the part list): the next attempt starts over.
const START_OVER: &str = "the multipart upload must start over: ";

/// Whether `err` means the multipart upload cannot be resumed (see [`START_OVER`]).
pub fn must_start_over(err: &UploadError) -> bool {
    matches!(err, UploadError::Store { message, .. } if message.starts_with(START_OVER))
}

/// ETags come quoted (`"abc"`) from most calls; compare them without the quotes.
pub fn normalize_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// Whether `etag` is a plain MD5 (32 hex digits), as S3 and COS return for parts uploaded
/// without SSE-KMS: then a part's bytes can be checked against it.
pub fn etag_is_md5(etag: &str) -> bool {
    let e = normalize_etag(etag);
    e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hex MD5 of `data`, the plain ETag of a part holding it.
pub fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", Md5::digest(data))
}

/// Base64 of the big-endian CRC32C, as `x-amz-checksum-crc32c` wants it.
pub fn checksum_crc32c(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    part_size: usize,
    multipart_threshold: u64,
    checksum: RequestChecksum,
    /// SigV4 over a SHA-256 of the body, or `UNSIGNED-PAYLOAD`. Over HTTPS, TLS already keeps
    /// the body intact against tampering and the signed checksum header against bugs, so the
    /// SHA-256 (the uploader's largest CPU cost after MD5) buys nothing; the AWS SDK for Java v1
    /// and the AWS CLI skip it there too. Over plain HTTP a CRC32C could be forged by whoever
    /// rewrites the body, so the payload stays signed; `payload_signing = "always"` signs it
    /// everywhere, for stores that refuse `UNSIGNED-PAYLOAD`.
    sign_payload: bool,
    endpoint: String,
    /// Whether a conditional create also carries `x-cos-forbid-overwrite: true`: COS documents
    /// that header (answering 409 `FileAlreadyExists`) on PUT Object and Complete Multipart
    /// Upload, and not `If-None-Match` on writes, so a fenced upload to COS sends both. On by
    /// default for COS endpoints only: other stores have no use for a header they do not know.
    cos_forbid_overwrite: bool,
    /// Where parts are gathered; shared by every client of one uploader.
    buffers: PartBuffers,
}

impl S3Store {
    pub fn new(
        shared: &SdkConfig,
        target: &S3Target,
        part_size: u64,
        multipart_threshold: u64,
    ) -> S3Store {
        S3Store::from_client_config(
            client_config(shared, target).build(),
            target,
            part_size,
            multipart_threshold,
        )
    }

    /// `config` must be [`client_config`] for `target` (tests add interceptors to it).
    pub fn from_client_config(
        config: aws_sdk_s3::Config,
        target: &S3Target,
        part_size: u64,
        multipart_threshold: u64,
    ) -> S3Store {
        S3Store {
            client: Client::from_conf(config),
            // Config validation caps part_size at 5 GiB, which fits usize on 64-bit targets.
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            multipart_threshold,
            checksum: target.checksum,
            sign_payload: PayloadSigning::Auto.signs(&target.endpoint),
            endpoint: target.endpoint.clone(),
            cos_forbid_overwrite: super::is_cos_endpoint(&target.endpoint),
            buffers: PartBuffers::new(
                usize::try_from(part_size).unwrap_or(usize::MAX),
                DEFAULT_IDLE_BUFFERS,
            ),
        }
    }

    /// Gathers parts in `buffers` (the router shares one pool among all its clients).
    pub fn with_part_buffers(mut self, buffers: PartBuffers) -> S3Store {
        self.buffers = buffers;
        self
    }

    /// The pool parts are gathered in; a part handed back here after its upload is reused.
    pub fn part_buffers(&self) -> &PartBuffers {
        &self.buffers
    }

    /// The uploader's `payload_signing` setting (the default is [`PayloadSigning::Auto`]).
    pub fn with_payload_signing(mut self, signing: PayloadSigning) -> S3Store {
        self.sign_payload = signing.signs(&self.endpoint);
        self
    }

    /// Sends COS's `x-cos-forbid-overwrite: true` with every conditional create, or not (the
    /// default follows the endpoint: COS hosts get it).
    pub fn with_cos_forbid_overwrite(mut self, send: bool) -> S3Store {
        self.cos_forbid_overwrite = send;
        self
    }

    pub fn part_size(&self) -> u64 {
        self.part_size as u64
    }

    /// `op` with COS's overwrite guard added when it creates only where the key is free.
    fn guard_create<T, E, B>(
        &self,
        op: CustomizableOperation<T, E, B>,
        if_absent: bool,
    ) -> CustomizableOperation<T, E, B> {
        if if_absent && self.cos_forbid_overwrite {
            // Added before signing, so the header is signed like the rest.
            op.mutate_request(|req| {
                req.headers_mut().insert("x-cos-forbid-overwrite", "true");
            })
        } else {
            op
        }
    }

    /// Whether an object of `total_len` bytes goes up as a multipart upload.
    pub fn uses_multipart(&self, total_len: u64) -> bool {
        total_len > self.multipart_threshold
    }

    /// The raw SDK client (tests use it to look at the bucket).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One PutObject, the body buffered whole: its checksum goes in a header, so it must be known
    /// before the first byte is sent, and the body is read to its end (where a length or CRC32C
    /// mismatch shows) before anything is. An object above the multipart threshold is refused
    /// ([`UploadError::TooLargeForSinglePut`]) before any of it is read: it goes up through the
    /// resumable [`crate::multipart::upload`] (as [`crate::upload::put_segment`] sends it), and
    /// buffering it here would hold the whole object in memory.
    pub async fn put_object(
        &self,
        req: &PutRequest,
        body: Body,
    ) -> Result<PutOutcome, UploadError> {
        if self.uses_multipart(req.total_len) {
            return Err(UploadError::TooLargeForSinglePut {
                len: req.total_len,
                threshold: self.multipart_threshold,
            });
        }
        // The announced length bounds the buffer: a longer body is refused.
        let limit = usize::try_from(req.total_len).unwrap_or(usize::MAX);
        let data = PartReader::new(body, self.buffers.clone())
            .read_to_end(limit)
            .await?;
        let sent = data.clone();
        let request = self
            .client
            .put_object()
            .bucket(&req.bucket)
            .key(&req.key)
            .set_metadata(Some(metadata_map(req)))
            .content_type(&req.content_type)
            .set_if_none_match(req.if_absent.then(|| "*".to_string()));
        let request = match self.checksum {
            RequestChecksum::Md5 => request.content_md5(content_md5(&data)),
            RequestChecksum::Crc32c => request
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .checksum_crc32_c(checksum_crc32c(&data)),
        };
        let request = request
            .content_length(len_i64(data.len()))
            .body(ByteStream::from(data))
            .customize();
        let request = self.guard_create(request, req.if_absent);
        let request = if self.sign_payload {
            request
        } else {
            request.disable_payload_signing()
        };
        let out = request.send().await;
        self.buffers.give_back(sent);
        let out = out.map_err(|e| {
            if req.if_absent && is_key_taken(&e) {
                UploadError::KeyTaken { op: "PutObject" }
            } else {
                sdk_error("PutObject", e)
            }
        })?;
        Ok(PutOutcome {
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    /// CreateMultipartUpload with the object's metadata (and the CRC32C algorithm when the parts
    /// carry one); returns the upload id.
    pub async fn create_multipart(&self, req: &PutRequest) -> Result<String, UploadError> {
        let algorithm = match self.checksum {
            RequestChecksum::Md5 => None,
            RequestChecksum::Crc32c => Some(ChecksumAlgorithm::Crc32C),
        };
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&req.bucket)
            .key(&req.key)
            .set_metadata(Some(metadata_map(req)))
            .content_type(&req.content_type)
            .set_checksum_algorithm(algorithm)
            .send()
            .await
            .map_err(|e| sdk_error("CreateMultipartUpload", e))?;
        Ok(created
            .upload_id()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| UploadError::Store {
                op: "CreateMultipartUpload",
                message: "the store returned no upload id".into(),
            })?
            .to_string())
    }

    /// UploadPart with the store's integrity header; returns the part as Complete must name it.
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        part: Bytes,
    ) -> Result<UploadedPart, UploadError> {
        let size = part.len() as u64;
        let request = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number);
        let (request, checksum) = match self.checksum {
            RequestChecksum::Md5 => (request.content_md5(content_md5(&part)), None),
            RequestChecksum::Crc32c => {
                let crc = checksum_crc32c(&part);
                let request = request
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_crc32_c(crc.clone());
                (request, Some(crc))
            }
        };
        let request = request
            .content_length(len_i64(part.len()))
            .body(ByteStream::from(part))
            .customize();
        let request = if self.sign_payload {
            request
        } else {
            request.disable_payload_signing()
        };
        let out = request.send().await.map_err(|e| {
            if is_no_such_upload(&e) {
                start_over("UploadPart", e)
            } else {
                sdk_error("UploadPart", e)
            }
        })?;
        Ok(UploadedPart {
            part_number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            size,
            checksum_crc32c: checksum,
        })
    }

    /// The parts the store holds for `upload_id` (see [`PartList`]); an error if the store
    /// could not be reached or failed on its side (5xx), which is worth asking again.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<PartList, UploadError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        // A page holds up to 1,000 parts; 10,000 parts at most means at most 10 pages. The
        // bound keeps a store that never stops saying "truncated" from looping forever.
        for _ in 0..=MAX_PARTS / 1000 {
            let out = match self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .customize()
                .interceptor(ListPartsRootFix)
                .send()
                .await
            {
                Ok(out) => out,
                Err(err) if is_no_such_upload(&err) => return Ok(PartList::UploadGone),
                Err(err) if answered_unusably(&err) => {
                    return Ok(PartList::Unusable(sdk_error("ListParts", err)))
                }
                Err(err) => return Err(sdk_error("ListParts", err)),
            };
            for p in out.parts() {
                let (Some(part_number), Some(size)) = (p.part_number(), p.size()) else {
                    continue;
                };
                parts.push(ListedPart {
                    part_number,
                    size: u64::try_from(size).unwrap_or(0),
                    etag: p.e_tag().filter(|e| !e.is_empty()).map(str::to_string),
                    checksum_crc32c: p
                        .checksum_crc32_c()
                        .filter(|c| !c.is_empty())
                        .map(str::to_string),
                });
            }
            match out.next_part_number_marker() {
                Some(next) if out.is_truncated() == Some(true) && !next.is_empty() => {
                    marker = Some(next.to_string());
                }
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.part_number);
        parts.dedup_by_key(|p| p.part_number);
        Ok(PartList::Listed(parts))
    }

    /// CompleteMultipartUpload with `state.parts` (which must be 1..=n in order); with
    /// `if_absent` only if no object has the key ([`UploadError::KeyTaken`] when one has).
    pub async fn complete_multipart(
        &self,
        state: &MultipartState,
        if_absent: bool,
    ) -> Result<PutOutcome, UploadError> {
        let parts = state
            .parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.part_number)
                    .e_tag(&p.etag)
                    .set_checksum_crc32_c(p.checksum_crc32c.clone())
                    .build()
            })
            .collect::<Vec<_>>();
        let complete = self
            .client
            .complete_multipart_upload()
            .bucket(&state.bucket)
            .key(&state.key)
            .upload_id(&state.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_none_match(if_absent.then(|| "*".to_string()))
            .customize();
        let out = self
            .guard_create(complete, if_absent)
            .send()
            .await
            .map_err(|e| {
                if if_absent && is_key_taken(&e) {
                    return UploadError::KeyTaken {
                        op: "CompleteMultipartUpload",
                    };
                }
                let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                let refused = matches!(code, "InvalidPart" | "InvalidPartOrder" | "EntityTooSmall");
                if is_no_such_upload(&e) || refused {
                    start_over("CompleteMultipartUpload", e)
                } else {
                    sdk_error("CompleteMultipartUpload", e)
                }
            })?;
        Ok(PutOutcome {
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    /// AbortMultipartUpload; an upload the store no longer knows counts as aborted.
    pub async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), UploadError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_no_such_upload(&err) => Ok(()),
            Err(err) => Err(sdk_error("AbortMultipartUpload", err)),
        }
    }

    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectHead>, UploadError> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectHead {
                size: out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                etag: out.e_tag().unwrap_or_default().to_string(),
                metadata: out
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_else(BTreeMap::new),
            })),
            Err(err) => {
                let not_found = err.as_service_error().is_some_and(|e| e.is_not_found())
                    || err
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404);
                if not_found {
                    Ok(None)
                } else {
                    Err(sdk_error("HeadObject", err))
                }
            }
        }
    }
}

impl S3Store {
    /// ListObjectsV2, every page.
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ListedObject>, UploadError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error("ListObjectsV2", e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                out.push(ListedObject {
                    key: key.to_string(),
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    etag: object.e_tag().unwrap_or_default().to_string(),
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Body>, UploadError> {
        match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let stream = futures::stream::unfold(Some(out.body), |body| async move {
                    let mut body = body?;
                    match body.next().await {
                        Some(Ok(bytes)) => Some((Ok(bytes), Some(body))),
                        Some(Err(err)) => Some((
                            Err(UploadError::StoreUnreachable {
                                op: "GetObject",
                                message: format!("reading the object failed: {err}"),
                            }),
                            None,
                        )),
                        None => None,
                    }
                });
                Ok(Some(stream.boxed()))
            }
            Err(err) => {
                let not_found = err.as_service_error().is_some_and(|e| e.is_no_such_key())
                    || err
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404);
                if not_found {
                    Ok(None)
                } else {
                    Err(sdk_error("GetObject", err))
                }
            }
        }
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), UploadError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("DeleteObject", e))
    }
}

fn metadata_map(req: &PutRequest) -> HashMap<String, String> {
    req.metadata.iter().cloned().collect()
}

/// Base64 of the MD5 digest, as the `Content-MD5` header wants it.
pub fn content_md5(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// Cuts a body stream into parts of a fixed size, holding at most one part (plus one chunk).
pub struct PartReader {
    body: Body,
    /// What is left of the last chunk read from the body, for the next part.
    carry: Bytes,
    ended: bool,
    buffers: PartBuffers,
}

impl PartReader {
    pub fn new(body: Body, buffers: PartBuffers) -> PartReader {
        PartReader {
            body,
            carry: Bytes::new(),
            ended: false,
            buffers,
        }
    }

    /// The next part of `size` bytes (the last may be shorter); None once the body has ended.
    /// A body error (including a failed length/checksum check at the end) is returned as is.
    pub async fn next_part(&mut self, size: usize) -> Result<Option<Bytes>, UploadError> {
        let mut part = self.buffers.take(size);
        while part.len() < size {
            if self.carry.is_empty() {
                if self.ended {
                    break;
                }
                match self.body.next().await {
                    Some(Ok(chunk)) => self.carry = chunk,
                    Some(Err(err)) => return Err(err),
                    None => self.ended = true,
                }
                continue;
            }
            let n = (size - part.len()).min(self.carry.len());
            part.extend_from_slice(&self.carry.split_to(n));
        }
        if part.is_empty() {
            // Only reached once the end was really seen (and its checks passed).
            self.buffers.give_back(part.freeze());
            return Ok(None);
        }
        Ok(Some(part.freeze()))
    }

    /// The whole body, which must end within `limit` bytes.
    pub async fn read_to_end(mut self, limit: usize) -> Result<Bytes, UploadError> {
        let data = self.next_part(limit).await?.unwrap_or_default();
        // The body must end here: anything more is larger than announced.
        while self.carry.is_empty() && !self.ended {
            match self.body.next().await {
                Some(Ok(chunk)) => self.carry = chunk,
                Some(Err(err)) => return Err(err),
                None => self.ended = true,
            }
        }
        if !self.carry.is_empty() {
            return Err(UploadError::Integrity(format!(
                "body is larger than the announced {limit} bytes"
            )));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests;
