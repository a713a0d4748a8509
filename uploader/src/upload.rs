//! One attempt at one segment: stream it from the ingester into the store, verifying as it
//! goes, and commit it once the store has confirmed the object.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use proto::v1::SegmentInfo;

use crate::committer::{self, Commit};
use crate::error::UploadError;
use crate::ingester::{self, Client};
use crate::local_read::LocalReads;
use crate::manifest;
use crate::multipart::{self, Journal};
use crate::status::StatusState;
use crate::store::{
    content_type_for, Body, FileStore, ObjectHead, PutOutcome, PutRequest, Store, StoreRouter,
    Target,
};
use crate::verify::{self, Expected};

pub struct UploadContext {
    /// The ingester whose sealed segments this context uploads (one pipeline per ingester).
    pub ingester: String,
    /// Shared by every ingester's pipeline: one part budget bounds the uploader's memory.
    pub stores: Arc<StoreRouter>,
    pub status: Arc<StatusState>,
    /// Resumable multipart state in `state_dir/multipart/` (a folder per ingester when there
    /// are several: their segment numbers overlap).
    pub journal: Journal,
    /// Sealed files read from this host's disk instead of over ReadSegment.
    pub local_reads: LocalReads,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and committed.
    Committed,
    /// To be retried after a backoff; the message is what was reported.
    Failed(String),
    /// Stored, but the ingester could not take the commit yet: retried soon (see
    /// [`UploadError::CommitDeferred`]); the message is what was reported.
    Uncommitted(String),
    /// The ingester quarantined the segment; nothing more to do here.
    Quarantined(String),
}

/// The object's user metadata (`x-amz-meta-*`): enough to tell, from the object alone, which
/// rule and messages it holds and whether its content is intact.
pub fn object_metadata(seg: &SegmentInfo) -> Vec<(String, String)> {
    vec![
        ("rule".into(), seg.rule.clone()),
        ("cluster".into(), seg.cluster.clone()),
        ("message-count".into(), seg.messages.to_string()),
        ("first-message-id".into(), seg.first_message_id.clone()),
        ("last-message-id".into(), seg.last_message_id.clone()),
        ("content-crc32c".into(), seg.content_crc32c.clone()),
        ("window-start".into(), seg.window_start.clone()),
        ("record-bytes".into(), seg.record_bytes.to_string()),
    ]
}

pub async fn upload_segment(
    ctx: &UploadContext,
    client: &mut Client,
    seg: &SegmentInfo,
    attempt: u32,
    progress: Arc<AtomicU64>,
) -> Outcome {
    let started = Instant::now();
    let stored = store_segment(ctx, client, seg, progress).await;
    let result = match stored {
        Ok(placed) => {
            let upload_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            edge::failpoint::hit("uploader:before_commit");
            let (etag, covered_through) = match &placed {
                Placed::Ours { etag, .. } => (etag, None),
                Placed::Theirs { etag, through } => (etag, Some(through.as_str())),
            };
            let commit = Commit {
                segment: seg,
                etag,
                upload_ms,
                attempts: attempt,
                covered_through,
            };
            committer::commit(client, commit)
                .await
                .map(|outcome| (outcome, upload_ms, placed))
        }
        Err(err) => Err(err),
    };
    match result {
        Ok((outcome, _, Placed::Theirs { through, .. })) => {
            ctx.local_reads.forget(seg);
            ctx.status.record_fenced(&seg.rule);
            tracing::info!(
                key = %seg.object_key,
                through = %through,
                outcome = %outcome,
                "the key holds another ingester's object; what it holds is dropped here"
            );
            Outcome::Committed
        }
        Ok((outcome, upload_ms, Placed::Ours { source, .. })) => {
            ctx.local_reads.forget(seg);
            ctx.status.record_stored(&seg.rule, seg.file_bytes);
            ctx.status.observe_upload(started.elapsed());
            tracing::info!(
                key = %seg.object_key,
                bytes = seg.file_bytes,
                messages = seg.messages,
                upload_ms,
                source = %source.as_str(),
                attempt,
                outcome = %outcome,
                "segment stored and committed"
            );
            Outcome::Committed
        }
        Err(UploadError::Quarantined { message, .. }) => {
            ctx.local_reads.forget(seg);
            tracing::warn!(error = %message, "segment quarantined by the ingester; skipping it");
            Outcome::Quarantined(message)
        }
        Err(err) => failed(ctx, client, seg, attempt, err).await,
    }
}

/// Reports a failed attempt (logs, status, the ingester's history).
async fn failed(
    ctx: &UploadContext,
    client: &mut Client,
    seg: &SegmentInfo,
    attempt: u32,
    err: UploadError,
) -> Outcome {
    let text = crate::error::error_chain(&err);
    tracing::warn!(error = %text, attempt, "upload failed");
    ctx.status.record_failure(
        &seg.rule,
        &format!("{}/{}: {text}", seg.rule, seg.segment_no),
    );
    committer::report_failure(client, seg, &text, attempt).await;
    if matches!(err, UploadError::CommitDeferred(_)) {
        Outcome::Uncommitted(text)
    } else {
        Outcome::Failed(text)
    }
}

/// What the store holds at the segment's key once the attempt is done with it.
enum Placed {
    /// This segment's object: written now, or found there.
    Ours { etag: String, source: Source },
    /// A fenced segment's key holds another ingester's object, whose last message is `through`.
    Theirs { etag: String, through: String },
}

/// Whether the object at the segment's key is this segment's: same size and checksum.
fn is_ours(head: &ObjectHead, seg: &SegmentInfo) -> bool {
    head.size == seg.file_bytes && head.metadata.get("content-crc32c") == Some(&seg.content_crc32c)
}

/// Another writer's object at a fenced segment's key, by the last message id it holds.
fn theirs(seg: &SegmentInfo, head: &ObjectHead) -> Result<Placed, UploadError> {
    match head.metadata.get("last-message-id") {
        Some(through) if !through.is_empty() => Ok(Placed::Theirs {
            etag: head.etag.clone(),
            through: through.clone(),
        }),
        _ => Err(UploadError::Store {
            op: "HeadObject",
            message: format!(
                "{} already holds an object without last-message-id metadata (not written by \
                 tdmq-backup?), so which messages it holds cannot be told; the segment stays in \
                 the spool until that object is moved away",
                seg.object_key
            ),
        }),
    }
}

/// Where a stored segment's bytes came from (logged with the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// ReadSegment.
    Ingester,
    /// The sealed file on this host ([`crate::local_read`]).
    LocalFile,
    /// Nothing was read: HEAD found the object already stored.
    AlreadyStored,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Ingester => "ingester",
            Source::LocalFile => "local_file",
            Source::AlreadyStored => "already_stored",
        }
    }
}

/// Returns the object's ETag once the store has it, and where its bytes were read from; or, for
/// a fenced segment whose key another ingester's object holds, what that object holds.
async fn store_segment(
    ctx: &UploadContext,
    client: &mut Client,
    seg: &SegmentInfo,
    progress: Arc<AtomicU64>,
) -> Result<Placed, UploadError> {
    check_segment(seg)?;
    let expected = Expected {
        len: seg.file_bytes,
        crc32c: verify::parse_crc32c(&seg.content_crc32c)?,
    };
    let target = ctx.stores.target_for(&seg.endpoint, &seg.region)?;
    let store = match &target {
        Target::File(dir) => Store::File(FileStore::new(dir.clone())),
        Target::S3(t) => Store::S3(ctx.stores.s3_store(t).await),
    };

    // A crash (or a failed commit) after the store confirmed the object leaves it in place; the
    // same key with the same size and checksum is this segment, so commit it without re-sending.
    let head = store.head_object(&seg.bucket, &seg.object_key).await;
    if head.is_ok() {
        ctx.status.store_reachable();
    }
    match head {
        Ok(Some(head)) if is_ours(&head, seg) => {
            return already_stored(ctx, &store, seg, head).await;
        }
        Ok(Some(head)) if seg.fenced => return theirs(seg, &head),
        Ok(_) => {}
        // HEAD may be denied by a put-only policy; the upload itself is what matters.
        Err(err) => tracing::debug!(error = %err, "HEAD before upload failed; uploading"),
    }

    let (body, source) = match ctx.local_reads.open(seg).await {
        Some(body) => (body, Source::LocalFile),
        None => (ingester::read_segment(client, seg).await?, Source::Ingester),
    };
    let body = verify::verifying(body, expected, progress);
    let outcome = put_segment(&ctx.stores, &ctx.journal, &store, &target, seg, body).await;
    match store_reached(&target, &outcome) {
        Some(true) => ctx.status.store_reachable(),
        Some(false) => ctx.status.store_unreachable(),
        None => {}
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(UploadError::KeyTaken { op }) => {
            // Written first by another ingester (or by an earlier attempt of this one).
            return match store.head_object(&seg.bucket, &seg.object_key).await? {
                Some(head) if is_ours(&head, seg) => already_stored(ctx, &store, seg, head).await,
                Some(head) => theirs(seg, &head),
                None => Err(UploadError::Store {
                    op,
                    message: format!(
                        "{} was refused as taken, but HEAD finds no object there",
                        seg.object_key
                    ),
                }),
            };
        }
        Err(err) => {
            if source == Source::LocalFile {
                ctx.local_reads.refuse(seg);
            }
            return Err(err);
        }
    };
    edge::failpoint::hit("uploader:after_put");
    // Before the commit: every segment Pulsar acknowledges has its entry in the manifest.
    manifest::write_entry(&store, seg, &outcome.etag).await?;
    Ok(Placed::Ours {
        etag: outcome.etag,
        source,
    })
}

/// The segment's object is there already (a crash, or a failed commit, after the store confirmed
/// it): commit it without sending it again.
async fn already_stored(
    ctx: &UploadContext,
    store: &Store,
    seg: &SegmentInfo,
    head: ObjectHead,
) -> Result<Placed, UploadError> {
    tracing::info!(key = %seg.object_key, "object already stored; committing it");
    // A crash between CompleteMultipartUpload and removing the state leaves a record.
    multipart::forget(&ctx.stores, &ctx.journal, &seg.rule, seg.segment_no).await;
    // The crash may also have come before the manifest entry was written.
    manifest::write_entry(store, seg, &head.etag).await?;
    Ok(Placed::Ours {
        etag: head.etag,
        source: Source::AlreadyStored,
    })
}

/// Whether writing the object reached the store, for the readiness probes: yes when it was
/// stored or refused, no when it could not reach a working store (a file:// store's disk
/// failing included); `None` when the failure was elsewhere (the segment's bytes, the ingester).
fn store_reached(target: &Target, outcome: &Result<PutOutcome, UploadError>) -> Option<bool> {
    match outcome {
        Ok(_) | Err(UploadError::Store { .. }) => Some(true),
        Err(UploadError::StoreUnreachable { .. }) => Some(false),
        Err(UploadError::Io { .. }) if matches!(target, Target::File(_)) => Some(false),
        Err(_) => None,
    }
}

/// What the segment's object is written as: its key, user metadata and content type.
pub fn put_request(seg: &SegmentInfo) -> PutRequest {
    PutRequest {
        bucket: seg.bucket.clone(),
        key: seg.object_key.clone(),
        metadata: object_metadata(seg),
        content_type: content_type_for(&seg.content_encoding, &seg.object_key).to_string(),
        total_len: seg.file_bytes,
        // A fenced segment's key may be another ingester's: whoever stores it first is the
        // only one that does.
        if_absent: seg.fenced,
    }
}

/// Writes the segment's object from `body` (already verifying) and returns once the store has
/// confirmed it: above the multipart threshold an S3 object goes up as a resumable multipart
/// upload ([`multipart::upload`], journalled in `journal`), anything else with one request
/// ([`Store::put_object`]). `store` must be the store of `target`.
pub async fn put_segment(
    stores: &StoreRouter,
    journal: &Journal,
    store: &Store,
    target: &Target,
    seg: &SegmentInfo,
    body: Body,
) -> Result<PutOutcome, UploadError> {
    let request = put_request(seg);
    match (store, target) {
        (Store::S3(s3), Target::S3(t)) if s3.uses_multipart(request.total_len) => {
            let identity = multipart::Identity::new(seg, t, s3.part_size());
            multipart::upload(s3, stores, journal, identity, &request, body).await
        }
        _ => {
            // One buffer, but it counts against the other uploads' share of the part budget.
            let _running = stores.part_budget().begin();
            store.put_object(&request, body).await
        }
    }
}

fn check_segment(seg: &SegmentInfo) -> Result<(), UploadError> {
    if seg.object_key.is_empty() || seg.object_key.starts_with('/') {
        return Err(UploadError::Segment(format!(
            "object key {:?} is not usable",
            seg.object_key
        )));
    }
    if seg.bucket.is_empty() {
        return Err(UploadError::Segment("no bucket".into()));
    }
    // The contract promises never to write an empty object.
    if seg.file_bytes == 0 {
        return Err(UploadError::Segment(
            "the segment is empty (0 bytes)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_to_reach_a_working_store_make_it_unreachable() {
        let s3 = Target::S3(crate::store::S3Target {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: true,
            checksum: crate::store::RequestChecksum::Crc32c,
        });
        let file = Target::File("/tmp/store".into());
        let disk = || UploadError::io("writing", "/tmp/store/x", std::io::Error::other("full"));
        let stored: Result<PutOutcome, UploadError> = Ok(PutOutcome { etag: "e".into() });
        let refused = Err(UploadError::Store {
            op: "PutObject",
            message: "the store answered HTTP 403 AccessDenied".into(),
        });
        let unreachable = || {
            Err(UploadError::StoreUnreachable {
                op: "PutObject",
                message: "could not reach the store: connection refused".into(),
            })
        };
        assert_eq!(store_reached(&s3, &stored), Some(true));
        assert_eq!(store_reached(&s3, &refused), Some(true));
        assert_eq!(store_reached(&s3, &unreachable()), Some(false));
        assert_eq!(store_reached(&file, &unreachable()), Some(false));
        assert_eq!(store_reached(&file, &Err(disk())), Some(false));
        // The multipart journal's disk is the uploader's, not the store's.
        assert_eq!(store_reached(&s3, &Err(disk())), None);
        for elsewhere in [
            UploadError::Integrity("length".into()),
            UploadError::Ingester("ReadSegment: Unavailable".into()),
        ] {
            assert_eq!(store_reached(&s3, &Err(elsewhere)), None);
        }
    }

    #[test]
    fn metadata_names_rule_messages_and_checksum() {
        let seg = SegmentInfo {
            rule: "orders".into(),
            cluster: "pulsar-x".into(),
            messages: 42,
            first_message_id: "1:0:-1:-1".into(),
            last_message_id: "1:41:-1:-1".into(),
            content_crc32c: "0a0b0c0d".into(),
            window_start: "2026-11-24T02:40:00.000Z".into(),
            record_bytes: 1234,
            ..SegmentInfo::default()
        };
        let m: std::collections::BTreeMap<_, _> = object_metadata(&seg).into_iter().collect();
        assert_eq!(m["rule"], "orders");
        assert_eq!(m["message-count"], "42");
        assert_eq!(m["content-crc32c"], "0a0b0c0d");
        assert_eq!(m["record-bytes"], "1234");
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn refuses_empty_or_keyless_segments() {
        let ok = SegmentInfo {
            object_key: "a/b.jsonl.gz".into(),
            bucket: "b-1".into(),
            file_bytes: 1,
            ..SegmentInfo::default()
        };
        assert!(check_segment(&ok).is_ok());
        assert!(check_segment(&SegmentInfo {
            file_bytes: 0,
            ..ok.clone()
        })
        .is_err());
        assert!(check_segment(&SegmentInfo {
            object_key: String::new(),
            ..ok.clone()
        })
        .is_err());
        assert!(check_segment(&SegmentInfo {
            bucket: String::new(),
            ..ok
        })
        .is_err());
    }
}
