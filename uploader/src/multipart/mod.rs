//! Resumable multipart uploads: a segment larger than `multipart_threshold` goes up in parts of
//! `part_size`, streamed from the sealed file or the ingester's ReadSegment, and a crash —
//! `kill -9` included — resumes the same multipart upload instead of starting over.
//!
//! Parts are sent while the next one is read. The uploader holds at most `2 × concurrency`
//! parts (`2 × part_size × concurrency` segment bytes): with every upload slot busy that is one
//! part sending and one being read per upload, and an upload running alone may keep up to seven
//! parts in flight ([`crate::store::part_budget`]).
//!
//! # The state
//!
//! One JSON file per upload in progress, `state_dir/multipart/{rule}-{segment_no}.json`
//! ([`ResumeRecord`]): the segment's identity (rule, segment number, bucket, key, `file_bytes`,
//! `content_crc32c`, `part_size` and the S3 target — endpoint, signing region, path style), the
//! upload id, and every part the store has confirmed (number, ETag, size). It is written when the
//! upload is created and again after every completed part, atomically: a temporary file is
//! written, fsynced and renamed over the old one, and the directory is fsynced. A crash therefore
//! leaves either the previous or the new version, never a torn file; at worst the last part
//! uploaded is missing from the record (it is then uploaded again).
//!
//! # Resuming
//!
//! When a segment is uploaded and a record for it exists:
//!
//! 1. the record must match the segment exactly (identity above). If anything differs — the
//!    segment was rewritten with other content, the rule now points elsewhere, `part_size`
//!    changed — the old upload is aborted, the record deleted, and a new upload is started;
//! 2. ListParts asks the store which parts it holds. The store's list is the truth: a part is
//!    reused only if the store lists it with the size the part must have. If the record has the
//!    part too, the ETags (where the store lists one) and sizes must agree; a part the store
//!    lists but the record lacks (a crash between UploadPart and the record's write) is reused
//!    only if the store gives its ETag. Everything else is sent again. A store that no longer
//!    knows the upload id (NoSuchUpload: completed, aborted, expired) means starting over. A
//!    store that answers ListParts with something unusable (an answer the SDK cannot read, a
//!    4xx) fails the attempt, and the record counts it: the [`MAX_RESUME_FAILURES`]th such
//!    attempt in a row aborts the upload and sends the object from scratch, so a store the
//!    resume does not work with costs a few retries, never the segment. (An unreachable store
//!    or a 5xx is not counted: it says nothing about resuming.) moto's server was one such
//!    store until [`crate::store::list_parts_root`];
//! 3. the whole segment is streamed from the ingester again. Bytes of reused parts are read and
//!    dropped (after checking their MD5 against the part's ETag when the ETag is a plain MD5,
//!    as on S3 and COS, and their CRC32C when the upload was created with `request_checksum`
//!    CRC32C — Complete names every part's CRC32C then, so a part whose CRC32C is unknown is
//!    sent again; a part that fails a check is sent again), missing parts are sent,
//!    and the full-stream length and CRC32C check ([`crate::verify`]) still runs over every
//!    byte before CompleteMultipartUpload is sent. So the object is complete only if the bytes
//!    of this attempt match the segment's checksum and every reused part matches those bytes.
//!
//! After CompleteMultipartUpload succeeds the record is deleted. A crash between the two leaves
//! a record for a stored object: the next attempt finds the object with HEAD (size and
//! `content-crc32c` metadata match), commits it, and [`forget`]s the record.
//!
//! # Abandoned uploads
//!
//! An upload is aborted (AbortMultipartUpload) and its record deleted when:
//!
//! - the stream fails its length/CRC32C check, or the ingester quarantines the segment;
//! - the store refuses the part list at Complete (InvalidPart, InvalidPartOrder,
//!   EntityTooSmall) or no longer knows the upload id;
//! - the record no longer matches the segment (see above);
//! - ListParts was answered unusably [`MAX_RESUME_FAILURES`] times in a row (see above; then a
//!   new upload starts in the same attempt);
//! - [`sweep`] finds that the ingester no longer offers the segment as sealed (it was committed,
//!   the rule was deleted, the segment quarantined). The puller runs the sweep after its first
//!   successful ListSealed and then every [`SWEEP_INTERVAL`]. It lists with a large `max`
//!   ([`SWEEP_LIST_MAX`]) and sweeps only when the answer is shorter than that (so the list is
//!   complete); uploads in flight are never swept. Rules that are paused are still listed by the
//!   ingester, so their uploads are kept.
//!
//! Any other failure (store or ingester unreachable, 5xx, timeouts) keeps the record, and the
//! next attempt resumes. Uploads whose record is lost (state_dir wiped) are left to the bucket's
//! lifecycle rule (`AbortIncompleteMultipartUpload`); they are never visible as objects.
//!
//! # Failpoints
//!
//! For the kill -9 tests (`TDMQ_BACKUP_FAILPOINTS`, see `proto::failpoint`):
//!
//! - `uploader:after_part` — after a part is uploaded and the record holding it is persisted;
//! - `uploader:after_put` — after PutObject / CompleteMultipartUpload succeeded (record deleted),
//!   before the commit (in [`crate::upload`]);
//! - `uploader:before_commit` — just before CommitSegment is sent (also on the path where HEAD
//!   found the object already stored).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proto::v1::SegmentInfo;
use serde::{Deserialize, Serialize};

use crate::error::UploadError;
use crate::store::part_budget::RunningUpload;
use crate::store::part_buffers::PartBuffers;
use crate::store::s3::{
    checksum_crc32c, etag_is_md5, md5_hex, must_start_over, normalize_etag, ListedPart,
    MultipartState, PartList, PartReader, S3Store, UploadedPart, MAX_PARTS,
};
use crate::store::{Body, PutOutcome, PutRequest, RequestChecksum, S3Target, StoreRouter};

/// Subdirectory of `state_dir` holding one record per multipart upload in progress.
pub const DIR: &str = "multipart";
/// Format version of [`ResumeRecord`]; a record of another version is treated as unreadable.
pub const VERSION: u32 = 1;
/// How often the puller looks for abandoned uploads (besides once at start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// `max` of the sweep's ListSealed; a reply this long may be partial, and then nothing is swept.
pub const SWEEP_LIST_MAX: u32 = 100_000;
/// After this many attempts in a row that could not resume an upload (see
/// [`ResumeRecord::resume_failures`]), it is aborted and the object is sent again from scratch.
pub const MAX_RESUME_FAILURES: u32 = 3;

/// What a record must match to be resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub rule: String,
    pub segment_no: u64,
    pub bucket: String,
    pub key: String,
    pub file_bytes: u64,
    pub content_crc32c: String,
    pub part_size: u64,
    pub target: S3Target,
}

impl Identity {
    pub fn new(seg: &SegmentInfo, target: &S3Target, part_size: u64) -> Identity {
        Identity {
            rule: seg.rule.clone(),
            segment_no: seg.segment_no,
            bucket: seg.bucket.clone(),
            key: seg.object_key.clone(),
            file_bytes: seg.file_bytes,
            content_crc32c: seg.content_crc32c.clone(),
            part_size,
            target: target.clone(),
        }
    }

    /// The parts the object has: `ceil(file_bytes / part_size)`.
    pub fn part_count(&self) -> u64 {
        self.file_bytes.div_ceil(self.part_size.max(1))
    }

    /// The size part `n` (1-based) must have; 0 for a number outside the object.
    pub fn expected_part_size(&self, n: i32) -> u64 {
        let count = self.part_count();
        match u64::try_from(n) {
            Ok(n) if n >= 1 && n < count => self.part_size,
            Ok(n) if n >= 1 && n == count => self.file_bytes - self.part_size * (count - 1),
            _ => 0,
        }
    }
}

/// The file `state_dir/multipart/{rule}-{segment_no}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub version: u32,
    #[serde(flatten)]
    pub identity: Identity,
    pub upload_id: String,
    /// Parts the store confirmed, by part number.
    pub parts: Vec<UploadedPart>,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Attempts in a row whose ListParts the store answered with something unusable; at
    /// [`MAX_RESUME_FAILURES`] the upload is aborted and the object sent from scratch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resume_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ResumeRecord {
    fn multipart_state(&self) -> MultipartState {
        MultipartState {
            bucket: self.identity.bucket.clone(),
            key: self.identity.key.clone(),
            upload_id: self.upload_id.clone(),
            part_size: self.identity.part_size,
            parts: self.parts.clone(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The records on disk.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Records live in `state_dir/multipart/` (created on the first write).
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.join(DIR),
        }
    }

    /// The records of one of several ingesters' uploads: `state_dir/multipart/{ingester}/`
    /// (the URL with every character but letters and digits as `_`), since two ingesters'
    /// segment numbers overlap.
    pub fn for_ingester(state_dir: &Path, url: &str) -> Journal {
        let name: String = url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Journal {
            dir: state_dir.join(DIR).join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `{rule}-{segment_no}.json`; rule names are `[a-z0-9_-]`, anything else is %-escaped so
    /// the name can never leave the directory.
    pub fn path_for(&self, rule: &str, segment_no: u64) -> PathBuf {
        let mut name = String::with_capacity(rule.len() + 26);
        for b in rule.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        self.dir.join(format!("{name}-{segment_no}.json"))
    }

    /// The record for a segment; `None` if there is none or it is unreadable (then it is removed:
    /// its upload, if any, is left to the bucket's lifecycle rule).
    pub async fn load(&self, rule: &str, segment_no: u64) -> Option<ResumeRecord> {
        let path = self.path_for(rule, segment_no);
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read multipart state; starting over");
                return None;
            }
        };
        match serde_json::from_slice::<ResumeRecord>(&text) {
            Ok(rec)
                if rec.version == VERSION
                    && rec.identity.rule == rule
                    && rec.identity.segment_no == segment_no =>
            {
                Some(rec)
            }
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "unreadable multipart state; removing it and starting over");
                let _ = tokio::fs::remove_file(&path).await;
                None
            }
        }
    }

    /// Every readable record (for the sweep).
    pub async fn list(&self) -> Vec<ResumeRecord> {
        let mut out = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return out;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            if let Ok(text) = tokio::fs::read(entry.path()).await {
                if let Ok(rec) = serde_json::from_slice::<ResumeRecord>(&text) {
                    if rec.version == VERSION {
                        out.push(rec);
                    }
                }
            }
        }
        out
    }

    /// Writes `rec` atomically: tmp file, fsync, rename, fsync of the directory.
    pub async fn save(&self, rec: &ResumeRecord) -> Result<(), UploadError> {
        let path = self.path_for(&rec.identity.rule, rec.identity.segment_no);
        let dir = self.dir.clone();
        let json = serde_json::to_vec_pretty(rec).map_err(|e| UploadError::Store {
            op: "writing multipart state",
            message: e.to_string(),
        })?;
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &json))
            .await
            .map_err(|e| {
                UploadError::io(
                    "writing multipart state in",
                    &self.dir,
                    std::io::Error::other(e.to_string()),
                )
            })?
    }

    /// Deletes the record (a missing one is fine).
    pub async fn remove(&self, rule: &str, segment_no: u64) -> Result<(), UploadError> {
        let path = self.path_for(rule, segment_no);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(UploadError::io("removing", &path, e)),
            }
            sync_dir(&dir)
        })
        .await
        .map_err(|e| {
            UploadError::io(
                "removing multipart state in",
                &self.dir,
                std::io::Error::other(e.to_string()),
            )
        })?
    }
}

pub(crate) fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<(), UploadError> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(|e| UploadError::io("creating", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| UploadError::io("creating", &tmp, e))?;
    file.write_all(data)
        .map_err(|e| UploadError::io("writing", &tmp, e))?;
    file.sync_all()
        .map_err(|e| UploadError::io("syncing", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| UploadError::io("renaming", &tmp, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), UploadError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| UploadError::io("syncing", dir, e))
}

/// Uploads `body` as a resumable multipart upload (see the module doc) and returns once the
/// store has completed the object.
pub async fn upload(
    store: &S3Store,
    router: &StoreRouter,
    journal: &Journal,
    identity: Identity,
    req: &PutRequest,
    body: Body,
) -> Result<PutOutcome, UploadError> {
    let running = router.part_budget().begin();
    let (mut rec, reusable) = prepare(store, router, journal, identity, req).await?;
    match send_parts(
        store,
        journal,
        &mut rec,
        &reusable,
        body,
        &running,
        req.if_absent,
    )
    .await
    {
        Ok(outcome) => {
            if let Err(err) = journal
                .remove(&rec.identity.rule, rec.identity.segment_no)
                .await
            {
                // Harmless: the next look at this segment finds the object and forgets it.
                tracing::warn!(error = %err, "could not remove the multipart state");
            }
            Ok(outcome)
        }
        Err(err) => {
            // A taken key will stay taken: the parts are of no use any more.
            let discard = matches!(
                err,
                UploadError::Integrity(_)
                    | UploadError::Quarantined { .. }
                    | UploadError::KeyTaken { .. }
            ) || must_start_over(&err);
            if discard {
                tracing::warn!(
                    upload_id = %rec.upload_id,
                    error = %err,
                    "aborting the multipart upload; the next attempt starts over"
                );
                abort_and_remove(store, journal, &rec).await;
            } else {
                tracing::info!(
                    upload_id = %rec.upload_id,
                    parts = rec.parts.len(),
                    error = %err,
                    "multipart upload interrupted; the next attempt resumes it"
                );
            }
            Err(err)
        }
    }
}

/// The record to continue (resumed, or a new upload) and the parts that may be reused.
async fn prepare(
    store: &S3Store,
    router: &StoreRouter,
    journal: &Journal,
    identity: Identity,
    req: &PutRequest,
) -> Result<(ResumeRecord, BTreeMap<i32, UploadedPart>), UploadError> {
    if let Some(old) = journal.load(&identity.rule, identity.segment_no).await {
        if old.identity == identity {
            match store
                .list_parts(&identity.bucket, &identity.key, &old.upload_id)
                .await?
            {
                PartList::Listed(listed) => {
                    let reusable = reconcile(&old, &listed);
                    let mut rec = old;
                    rec.parts = reusable.values().cloned().collect();
                    rec.updated_at_ms = now_ms();
                    rec.resume_failures = 0;
                    journal.save(&rec).await?;
                    tracing::info!(
                        upload_id = %rec.upload_id,
                        parts_reused = rec.parts.len(),
                        parts_total = rec.identity.part_count(),
                        bytes_reused = rec.parts.iter().map(|p| p.size).sum::<u64>(),
                        "resuming the multipart upload"
                    );
                    return Ok((rec, reusable));
                }
                PartList::UploadGone => {
                    tracing::info!(upload_id = %old.upload_id, "the store no longer knows the multipart upload; starting over");
                    journal.remove(&identity.rule, identity.segment_no).await?;
                }
                // Counted in the record, so that neither retries nor restarts can make this go
                // on forever: a store whose part list cannot be used would otherwise keep the
                // segment from ever being stored.
                PartList::Unusable(err) => {
                    let mut rec = old;
                    rec.resume_failures = rec.resume_failures.saturating_add(1);
                    rec.updated_at_ms = now_ms();
                    if rec.resume_failures < MAX_RESUME_FAILURES {
                        tracing::warn!(
                            upload_id = %rec.upload_id,
                            failures = rec.resume_failures,
                            error = %err,
                            "could not resume the multipart upload; trying again later"
                        );
                        journal.save(&rec).await?;
                        return Err(err);
                    }
                    tracing::warn!(
                        upload_id = %rec.upload_id,
                        failures = rec.resume_failures,
                        error = %err,
                        "could not resume the multipart upload {MAX_RESUME_FAILURES} times in a row; aborting it and sending the object again from scratch"
                    );
                    abort_and_remove(store, journal, &rec).await;
                }
            }
        } else {
            tracing::warn!(
                upload_id = %old.upload_id,
                "the segment no longer matches its multipart state; aborting the old upload"
            );
            let old_store = router.s3_store(&old.identity.target).await;
            abort_and_remove(&old_store, journal, &old).await;
        }
    }

    let upload_id = store.create_multipart(req).await?;
    let now = now_ms();
    let rec = ResumeRecord {
        version: VERSION,
        identity,
        upload_id,
        parts: Vec::new(),
        created_at_ms: now,
        updated_at_ms: now,
        resume_failures: 0,
    };
    // Recorded before any part goes up, so even a crash right now leaves something to resume
    // (or to abort).
    journal.save(&rec).await?;
    Ok((rec, BTreeMap::new()))
}

/// The parts of `rec` to reuse, given what the store lists (the store is the truth).
pub fn reconcile(rec: &ResumeRecord, listed: &[ListedPart]) -> BTreeMap<i32, UploadedPart> {
    let mut reusable = BTreeMap::new();
    for lp in listed {
        let expected = rec.identity.expected_part_size(lp.part_number);
        if expected == 0 || lp.size != expected {
            continue;
        }
        let recorded = rec.parts.iter().find(|p| p.part_number == lp.part_number);
        let mut part = match (recorded, &lp.etag) {
            (Some(r), Some(etag)) => {
                if normalize_etag(&r.etag) != normalize_etag(etag) || r.size != lp.size {
                    tracing::warn!(
                        part_number = lp.part_number,
                        "the store's part differs from the recorded one; sending it again"
                    );
                    continue;
                }
                r.clone()
            }
            (Some(r), None) if r.size == lp.size => r.clone(),
            (Some(_), None) => continue,
            (None, Some(etag)) => UploadedPart {
                part_number: lp.part_number,
                etag: etag.clone(),
                size: lp.size,
                checksum_crc32c: None,
            },
            // Without an ETag the part cannot be named in CompleteMultipartUpload.
            (None, None) => continue,
        };
        if rec.identity.target.checksum == RequestChecksum::Crc32c {
            // Complete must repeat each part's CRC32C; a part whose CRC32C is known neither to
            // the record nor to the store cannot be named, so it is sent again.
            match (&part.checksum_crc32c, &lp.checksum_crc32c) {
                (Some(recorded), Some(listed)) if recorded != listed => {
                    tracing::warn!(
                        part_number = lp.part_number,
                        "the store's part has another CRC32C than the recorded one; sending it again"
                    );
                    continue;
                }
                (None, None) => continue,
                (None, Some(listed)) => part.checksum_crc32c = Some(listed.clone()),
                (Some(_), _) => {}
            }
        }
        reusable.insert(lp.part_number, part);
    }
    reusable
}

async fn send_parts(
    store: &S3Store,
    journal: &Journal,
    rec: &mut ResumeRecord,
    reusable: &BTreeMap<i32, UploadedPart>,
    body: Body,
    running: &RunningUpload,
    if_absent: bool,
) -> Result<PutOutcome, UploadError> {
    let part_size = usize::try_from(rec.identity.part_size).unwrap_or(usize::MAX);
    let mut reader = PartReader::new(body, store.part_buffers().clone());
    let mut part_number: i32 = 0;
    let mut sent_bytes = 0u64;
    // Parts upload while the next is read from the segment: up to this upload's share of the
    // part budget at once (one while every upload slot is busy). They are confirmed and
    // recorded in order, so a crash re-sends at most the parts in flight at that moment.
    let mut uploading: VecDeque<InFlightPart> = VecDeque::new();
    loop {
        // `next_part` returns None only once the body has ended and passed its length and
        // CRC32C checks, so Complete is never reached with a short or corrupt body.
        let next = reader.next_part(part_size).await;
        // Parts in flight are confirmed and recorded even when reading the next one failed:
        // they are stored, and a resume should not send them again.
        let ending = !matches!(next, Ok(Some(_)));
        while !uploading.is_empty() && (ending || uploading.len() >= running.parts_in_flight()) {
            let Some(in_flight) = uploading.pop_front() else {
                break;
            };
            let uploaded = in_flight.finish().await?;
            sent_bytes += uploaded.size;
            rec.parts.retain(|p| p.part_number != uploaded.part_number);
            rec.parts.push(uploaded);
            rec.parts.sort_by_key(|p| p.part_number);
            rec.updated_at_ms = now_ms();
            journal.save(rec).await?;
            edge::failpoint::hit("uploader:after_part");
        }
        let Some(part) = next? else {
            break;
        };
        part_number = part_number.saturating_add(1);
        if usize::try_from(part_number).unwrap_or(usize::MAX) > MAX_PARTS {
            return Err(UploadError::Integrity(format!(
                "more than {MAX_PARTS} parts of {part_size} bytes"
            )));
        }
        if let Some(reused) = reusable.get(&part_number) {
            if reuse_ok(reused, &part) {
                store.part_buffers().give_back(part);
                continue;
            }
            tracing::warn!(
                part_number,
                "a stored part does not match the segment's bytes; sending it again"
            );
        }
        uploading.push_back(InFlightPart::start(
            store,
            &rec.identity,
            &rec.upload_id,
            part_number,
            part,
        ));
    }

    // Every part 1..=n exactly once, adding up to the object: anything else is a bug or a
    // record from another upload, and must not become an object.
    let numbers_ok = rec
        .parts
        .iter()
        .enumerate()
        .all(|(i, p)| usize::try_from(p.part_number).ok() == Some(i + 1));
    let total: u64 = rec.parts.iter().map(|p| p.size).sum();
    if !numbers_ok
        || u64::try_from(part_number).ok() != Some(rec.parts.len() as u64)
        || total != rec.identity.file_bytes
    {
        return Err(UploadError::Integrity(format!(
            "the multipart upload holds {} parts / {total} bytes, the segment has {} parts / {} bytes",
            rec.parts.len(),
            part_number,
            rec.identity.file_bytes
        )));
    }
    tracing::debug!(
        sent_bytes,
        parts = rec.parts.len(),
        "completing the multipart upload"
    );
    store
        .complete_multipart(&rec.multipart_state(), if_absent)
        .await
}

/// An UploadPart running on its own task while the next part is read; aborted if dropped
/// (an error elsewhere ends the upload).
struct InFlightPart {
    task: tokio::task::JoinHandle<Result<UploadedPart, UploadError>>,
    /// The part's bytes, handed back to the pool once the upload is over.
    part: Bytes,
    buffers: PartBuffers,
}

impl InFlightPart {
    fn start(
        store: &S3Store,
        identity: &Identity,
        upload_id: &str,
        part_number: i32,
        part: Bytes,
    ) -> InFlightPart {
        let buffers = store.part_buffers().clone();
        let (store, bucket, key, upload_id, sending) = (
            store.clone(),
            identity.bucket.clone(),
            identity.key.clone(),
            upload_id.to_string(),
            part.clone(),
        );
        let task = tokio::spawn(async move {
            store
                .upload_part(&bucket, &key, &upload_id, part_number, sending)
                .await
        });
        InFlightPart {
            task,
            part,
            buffers,
        }
    }

    /// The part as the store confirmed it.
    async fn finish(mut self) -> Result<UploadedPart, UploadError> {
        let joined = (&mut self.task).await;
        self.buffers.give_back(std::mem::take(&mut self.part));
        joined.map_err(|e| UploadError::Store {
            op: "UploadPart",
            message: format!("the upload task failed: {e}"),
        })?
    }
}

impl Drop for InFlightPart {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listed part is reused if its size matches and the bytes match what is known of it: its
/// CRC32C when the upload has one, its ETag when that is a plain MD5.
fn reuse_ok(reused: &UploadedPart, part: &Bytes) -> bool {
    reused.size == part.len() as u64
        && reused
            .checksum_crc32c
            .as_ref()
            .is_none_or(|crc| *crc == checksum_crc32c(part))
        && (!etag_is_md5(&reused.etag)
            || normalize_etag(&reused.etag).eq_ignore_ascii_case(&md5_hex(part)))
}

/// Best effort: aborts the upload and deletes its record; logs what fails.
async fn abort_and_remove(store: &S3Store, journal: &Journal, rec: &ResumeRecord) {
    if let Err(err) = store
        .abort_multipart(&rec.identity.bucket, &rec.identity.key, &rec.upload_id)
        .await
    {
        tracing::warn!(upload_id = %rec.upload_id, error = %err, "could not abort the multipart upload");
    }
    if let Err(err) = journal
        .remove(&rec.identity.rule, rec.identity.segment_no)
        .await
    {
        tracing::warn!(error = %err, "could not remove the multipart state");
    }
}

/// The segment's object is stored (found by HEAD): drop its record and abort its upload if the
/// store still has it (a crash after Complete leaves a record for an upload that is gone).
pub async fn forget(router: &StoreRouter, journal: &Journal, rule: &str, segment_no: u64) {
    if let Some(rec) = journal.load(rule, segment_no).await {
        let store = router.s3_store(&rec.identity.target).await;
        abort_and_remove(&store, journal, &rec).await;
    }
}

/// Aborts the uploads of segments the ingester no longer offers. `sealed` must be the complete
/// list of sealed segments; `busy` the segments being uploaded right now (never touched).
/// Returns how many uploads were aborted.
pub async fn sweep(
    router: &StoreRouter,
    journal: &Journal,
    sealed: &[SegmentInfo],
    busy: &HashSet<(String, u64)>,
) -> usize {
    let mut aborted = 0;
    for rec in journal.list().await {
        let id = &rec.identity;
        if busy.contains(&(id.rule.clone(), id.segment_no)) {
            continue;
        }
        let offered = sealed
            .iter()
            .find(|s| s.rule == id.rule && s.segment_no == id.segment_no);
        let reason = match offered {
            None => "the ingester no longer offers the segment",
            Some(s)
                if s.bucket != id.bucket
                    || s.object_key != id.key
                    || s.file_bytes != id.file_bytes
                    || s.content_crc32c != id.content_crc32c =>
            {
                "the segment no longer matches its multipart state"
            }
            Some(_) => continue,
        };
        tracing::info!(
            rule = %id.rule,
            segment_no = id.segment_no,
            upload_id = %rec.upload_id,
            reason,
            "aborting an abandoned multipart upload"
        );
        let store = router.s3_store(&id.target).await;
        abort_and_remove(&store, journal, &rec).await;
        aborted += 1;
    }
    aborted
}

#[cfg(test)]
mod tests;
