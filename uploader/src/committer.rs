//! Tells the ingester how an upload went: `CommitSegment` once the store has confirmed the
//! object (the ingester then acknowledges the messages on Pulsar), `ReportUploadFailure`
//! otherwise (recorded in the rule's history).

use std::time::Duration;

use proto::v1::{CommitSegmentRequest, SegmentInfo, UploadFailure};

use crate::backoff::Backoff;
use crate::error::{status_text, UploadError};
use crate::ingester::Client;

const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// A commit is idempotent and cheap, so a blip is retried here rather than by re-running the
/// whole upload.
const COMMIT_TRIES: u32 = 3;

pub struct Commit<'a> {
    pub segment: &'a SegmentInfo,
    pub etag: &'a str,
    pub upload_ms: u64,
    pub attempts: u32,
    /// A fenced segment's key is another ingester's object: its last message id.
    pub covered_through: Option<&'a str>,
}

/// Returns the ingester's outcome as it says it (a newer ingester may name one this version does
/// not know; the segment is committed all the same).
pub async fn commit(client: &mut Client, c: Commit<'_>) -> Result<String, UploadError> {
    let request = CommitSegmentRequest {
        rule: c.segment.rule.clone(),
        segment_no: c.segment.segment_no,
        object_key: c.segment.object_key.clone(),
        etag: c.etag.to_string(),
        upload_ms: c.upload_ms,
        attempts: c.attempts,
        // The ingester checks these against what it sealed before it frees the segment.
        file_bytes: c.segment.file_bytes,
        content_crc32c: c.segment.content_crc32c.clone(),
        covered_through: c.covered_through.unwrap_or_default().to_string(),
    };
    let backoff = Backoff::new(Duration::from_secs(2));
    let mut last = String::new();
    for try_no in 1..=COMMIT_TRIES {
        match tokio::time::timeout(RPC_TIMEOUT, client.commit_segment(request.clone())).await {
            Ok(Ok(reply)) => return Ok(reply.into_inner().outcome),
            // Only transport-level trouble is worth repeating; a refusal will not change.
            Ok(Err(status)) if !is_transient(status.code()) => {
                return Err(UploadError::Ingester(format!(
                    "CommitSegment: {}",
                    status_text(&status)
                )))
            }
            Ok(Err(status)) => last = status_text(&status),
            Err(_) => last = format!("no answer in {RPC_TIMEOUT:?}"),
        }
        if try_no < COMMIT_TRIES {
            tokio::time::sleep(backoff.delay_now(try_no)).await;
        }
    }
    Err(UploadError::CommitDeferred(format!(
        "CommitSegment: {last}"
    )))
}

fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            // The ingester's disk is full: it frees space as segments are stored.
            | tonic::Code::ResourceExhausted
    )
}

/// Best effort: if the ingester cannot even take the report, the failure is still logged here
/// and in the uploader's status.
pub async fn report_failure(client: &mut Client, segment: &SegmentInfo, error: &str, attempt: u32) {
    let request = UploadFailure {
        rule: segment.rule.clone(),
        segment_no: segment.segment_no,
        error: error.to_string(),
        attempt,
    };
    match tokio::time::timeout(RPC_TIMEOUT, client.report_upload_failure(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            tracing::warn!(error = %status_text(&status), "ReportUploadFailure failed")
        }
        Err(_) => tracing::warn!("ReportUploadFailure: no answer in {RPC_TIMEOUT:?}"),
    }
}
