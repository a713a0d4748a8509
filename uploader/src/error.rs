//! The library's error type. Every message is safe to log and to send over RPC: no variant ever
//! holds a credential (keys live only in `proto::types::Secret`, which never prints).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A configuration value is invalid; `field` is the config key (or env var) at fault.
    #[error("invalid {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },

    /// An RPC to the ingester failed (unreachable, refused, timed out).
    #[error("ingester: {0}")]
    Ingester(String),

    /// The store holds the object, but the ingester could not take its commit for now: it
    /// asked to try again (its disk is full, its database is being reopened) or did not answer.
    /// Only the commit is left (the next attempt finds the object with HEAD), so it is retried
    /// soon rather than after the growing upload backoff.
    #[error("ingester: {0}")]
    CommitDeferred(String),

    /// The ingester refused to stream the segment with DATA_LOSS: it quarantined it. Not retried.
    #[error("segment {rule}/{segment_no} quarantined by the ingester: {message}")]
    Quarantined {
        rule: String,
        segment_no: u64,
        message: String,
    },

    /// The bytes received do not match the segment's announced length or checksum.
    #[error("integrity check failed: {0}")]
    Integrity(String),

    /// The segment description from the ingester cannot be uploaded as is.
    #[error("invalid segment: {0}")]
    Segment(String),

    /// The rule names an endpoint this uploader does not write to (`allowed_endpoints`, or a
    /// `file://` endpoint, which only the uploader's own `endpoint` may choose).
    #[error("{0}")]
    EndpointNotAllowed(String),

    /// A single PutObject was asked for an object above the multipart threshold. Such objects go
    /// up through the resumable multipart upload ([`crate::multipart::upload`]); a caller that
    /// gets this sent one down the wrong path, and nothing of the body was read or sent.
    #[error(
        "an object of {len} bytes is above the multipart threshold ({threshold} bytes): it must \
         go up as a multipart upload, not one PutObject"
    )]
    TooLargeForSinglePut { len: u64, threshold: u64 },

    /// A conditional create (`If-None-Match: *`) found the key taken: another writer's object
    /// is there (HTTP 412, or 409 when the two writes overlapped).
    #[error("{op}: the key is taken by another object")]
    KeyTaken { op: &'static str },

    /// An object-store request failed although the store answered (a refusal below 500, an
    /// answer of no use); `message` is the SDK's display chain.
    #[error("{op} failed: {message}")]
    Store { op: &'static str, message: String },

    /// An object-store request found no working store: it could not be reached, did not answer
    /// in time, cut its answer off, or failed on its side (5xx). What the readiness probes call
    /// "store unreachable".
    #[error("{op} failed: {message}")]
    StoreUnreachable { op: &'static str, message: String },

    /// An object key or bucket the embedded file store refuses (e.g. a `..` component).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UploadError {
    pub fn config(field: &'static str, message: impl Into<String>) -> UploadError {
        UploadError::Config {
            field,
            message: message.into(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> UploadError {
        UploadError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `outer: cause: root cause` — transport errors often say only "transport error" at the top.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some libraries repeat their cause in their own message; don't print it twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A tonic status as one line: code and message (tonic's Display also dumps metadata and details).
pub fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
