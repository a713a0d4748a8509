//! The durable spool of one rule: THE state machine of tdmq-backup.
//!
//! # States of a segment
//!
//! ```text
//!   open ──close──▶ closed ──seal──▶ sealed ──commit──▶ stored ──ack+free──▶ (gone)
//!                     ▲                 │
//!                     └──quarantine─────┘   (file failed its checksum: rewritten from records)
//! ```
//!
//! - **open**: records are appended. At most one per rule. Its window, caps and counters live in
//!   its meta entry, written in the same sled batch as the records it describes.
//! - **closed**: the record range `[first_seq, last_seq]` is final and the object key is fixed.
//! - **sealed**: the segment file (the exact object content, gzip JSON Lines) is written, fsynced
//!   and renamed into place; its size and CRC32C are in the meta entry.
//! - **stored**: the uploader reported the object stored. Nothing has been acknowledged yet.
//! - **gone**: the consumer task acknowledged the segment's messages on Pulsar (cumulatively, in
//!   segment order), then removed records, meta and file in one batch.
//!
//! # On-disk layout
//!
//! Records live in one append-only file per segment, `segments/<rule>/<segment_no>.log`, in
//! consumption order and in a compact binary form (`crate::log_record`; segments from
//! before it hold the JSON lines themselves, see [`LogFormat`]). Sealing turns the log into the
//! object's JSON lines and gzips them into `<segment_no>.jsonl.gz`; freeing unlinks both.
//! Everything else is in one sled tree `spool`, keys `[tag][rule]\0[suffix]`:
//!
//! | tag | suffix | value |
//! | --- | --- | --- |
//! | `s` | segment_no (u64 BE) | [`SegmentMeta`] as JSON, with its log's length and CRC32C |
//! | `w` | partition (flipped i32 BE) | highest message id spooled for the partition + topic |
//! | `a` | partition | highest message id acknowledged for the partition + topic |
//! | `n` | (none) | the rule's counters: next seq, next segment number |
//! | `r` | seq (u64 BE) | only in spools written before record logs: moved into logs at open |
//!
//! # Invariants and crash behaviour
//!
//! 1. A message is spooled before anything else happens to it: its record is appended to the
//!    segment's log and the log synced (one `write` + one `fdatasync` per batch of received
//!    messages), then watermark and open meta go to sled in one `apply_batch`. sled persists that
//!    batch later (its own flush, or the next state change's), so sled never describes log bytes
//!    that are not durable. A crash before sled persisted the batch cuts the log back to the
//!    length sled knows at the next start; the watermark is the older one too, and Pulsar
//!    redelivers the batch because nothing was acknowledged.
//! 2. Redeliveries are recognised by message id: within a partition Pulsar delivers in id order to
//!    the one active consumer of a Failover/Exclusive subscription, so an id at or below the
//!    partition's watermark has been spooled before and is dropped.
//! 3. Records stay in the spool until their segment is acknowledged, so a segment file that fails
//!    its checksum is quarantined and rewritten from the log: nothing is lost. The log itself is
//!    checked against its length, CRC32C and record count as it is sealed.
//! 4. Acknowledgement follows segment order: the acknowledgeable prefix is the run of `stored`
//!    segments from the oldest one; an older segment still waiting holds back every newer one.
//!    Per partition the ack position is the last record that completes its Pulsar entry, so a
//!    batch split across two segments is acknowledged only once both are stored.
//! 5. Data is deleted only after its acknowledgement was sent. A crash between the ack and the
//!    delete leaves `stored` segments behind, which are acknowledged again after the restart
//!    (cumulative acks are idempotent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::log_record::LogEncoder;
use chrono::{TimeZone, Utc};
use proto::types::segment_files;
use proto::types::{object_key, Compression, MessageId, RuleConfig, SegmentName, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::debug;

use crate::cutter::{CutPolicy, OpenStats, Placement};
use crate::db::Database;
use crate::error::{IngesterError, Result};
use crate::record_log::{sync_dir, LogWrite, RecordLogs};
use crate::segment_writer::{SegmentWriter, Written};

/// An open segment's log is compressed while it grows once it holds this much: below it,
/// sealing after the close takes a few milliseconds anyway.
const PRESEAL_MIN_BYTES: u64 = 4 << 20;
/// Most segments being presealed at once per rule (each holds an open file and a compressor).
const MAX_PRESEALS: usize = 4;

/// A presealing writer, taken out (`None`) by the seal that finishes it.
type Preseal = Arc<Mutex<Option<SegmentWriter>>>;

const RECORD: u8 = b'r';
const SEGMENT: u8 = b's';
const WATERMARK: u8 = b'w';
const ACKED: u8 = b'a';
const COUNTERS: u8 = b'n';

const SPOOL_TREE: &str = "spool";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentState {
    Open,
    Closed,
    Sealed,
    Stored,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::Open => "open",
            // Closed means its file is being written (or waits to be): what an operator sees.
            SegmentState::Closed => "sealing",
            SegmentState::Sealed => "sealed",
            SegmentState::Stored => "stored",
        }
    }
}

/// Where a partition's acknowledgement goes: the topic the consumer knows it by, and the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub id: MessageId,
}

/// Where a segment's object goes; copied from the rule when the segment is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub cluster: String,
    pub prefix: String,
    pub topic: String,
    pub compression: Option<Compression>,
}

impl Target {
    pub fn of(rule: &RuleConfig) -> Target {
        Target {
            bucket: rule.bucket.clone(),
            region: rule.region.clone(),
            endpoint: rule.endpoint.clone(),
            cluster: rule.cluster.clone(),
            prefix: rule.prefix.clone(),
            topic: rule.topic.clone(),
            compression: Some(rule.compression),
        }
    }

    pub fn compression(&self) -> Compression {
        self.compression.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub segment_no: u64,
    pub state: SegmentState,
    pub window_start_ms: u64,
    pub opened_at_ms: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub record_bytes: u64,
    pub first_id: Option<MessageId>,
    pub last_id: Option<MessageId>,
    pub oldest_publish_ms: u64,
    /// Per partition, the last record of this segment that completes its Pulsar entry.
    pub ack_positions: BTreeMap<i32, Position>,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub object_key: String,
    #[serde(default)]
    pub file_bytes: u64,
    #[serde(default)]
    pub crc32c: u32,
    #[serde(default)]
    pub sealed_at_ms: u64,
    #[serde(default)]
    pub stored_at_ms: u64,
    #[serde(default)]
    pub etag: String,
    #[serde(default)]
    pub upload_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub times_quarantined: u32,
    /// CRC32C of the record log's first `log_len()` bytes.
    #[serde(default)]
    pub log_crc32c: u32,
    /// Whether the records are in a record log (false only in spools from before record logs,
    /// whose records are sled keys until `open` moves them).
    #[serde(default)]
    pub records_in_log: bool,
    /// How the record log holds the records (segments from before the compact form: JSON lines).
    #[serde(default)]
    pub log_format: LogFormat,
    /// The record log's length in bytes, for compact logs (a JSON-lines log is `record_bytes`
    /// long).
    #[serde(default)]
    pub log_bytes: u64,
}

/// What a segment's record log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// The object's JSON lines, as versions before the compact log wrote them.
    #[default]
    JsonLines,
    /// `crate::log_record` frames, turned into JSON lines when the segment is sealed.
    Compact,
}

impl SegmentMeta {
    /// The length of the segment's record log that the spool knows to be durable.
    pub fn log_len(&self) -> u64 {
        match self.log_format {
            LogFormat::JsonLines => self.record_bytes,
            LogFormat::Compact => self.log_bytes,
        }
    }

    fn stats(&self) -> OpenStats {
        OpenStats {
            window_start_ms: self.window_start_ms,
            messages: self.messages,
            record_bytes: self.record_bytes,
        }
    }

    pub fn to_proto(&self, rule: &str) -> proto::v1::SegmentInfo {
        use proto::types::time::rfc3339_from_millis;
        let compression = self.target.compression();
        proto::v1::SegmentInfo {
            rule: rule.to_string(),
            segment_no: self.segment_no,
            state: self.state.as_str().to_string(),
            window_start: rfc3339_from_millis(self.window_start_ms),
            messages: self.messages,
            record_bytes: self.record_bytes,
            file_bytes: self.file_bytes,
            first_message_id: self.first_id.map(|id| id.to_string()).unwrap_or_default(),
            last_message_id: self.last_id.map(|id| id.to_string()).unwrap_or_default(),
            content_crc32c: if self.state >= SegmentState::Sealed {
                format!("{:08x}", self.crc32c)
            } else {
                String::new()
            },
            object_key: self.object_key.clone(),
            bucket: self.target.bucket.clone(),
            region: self.target.region.clone(),
            endpoint: self.target.endpoint.clone(),
            cluster: self.target.cluster.clone(),
            content_encoding: compression.content_encoding().into(),
            sealed_at: if self.sealed_at_ms > 0 {
                rfc3339_from_millis(self.sealed_at_ms)
            } else {
                String::new()
            },
            // Only ListSealed names it (for an uploader on this host).
            file_path: String::new(),
        }
    }
}

impl PartialOrd for SegmentState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SegmentState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Counters {
    next_seq: u64,
    next_segment: u64,
    /// How many times the rule's source changed (see [`RuleSpool::reset_positions`]); part of
    /// the object names from then on.
    #[serde(default)]
    source_changes: u32,
}

/// One consumed message, already encoded.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub id: MessageId,
    /// The topic the consumer received it on (a partition's name for partitioned topics).
    pub topic: String,
    /// `num_messages_in_batch` of its entry; 0 when not batched.
    pub batch_size: i32,
    pub publish_time_ms: u64,
    pub producer_name: String,
    /// The record in the log's compact form, without topic and producer name
    /// (`crate::log_record::encode_body`).
    pub body: Vec<u8>,
    /// The length of the record's JSON line: what it adds to the object (and to `max_bytes`).
    pub json_len: u64,
}

impl Incoming {
    /// Whether this message is the last one of its Pulsar entry.
    fn completes_entry(&self) -> bool {
        self.batch_size <= 0
            || self.id.batch_index < 0
            || self.id.batch_index + 1 >= self.batch_size
    }
}

#[cfg(test)]
impl Incoming {
    /// The message with `payload` (text), its body and JSON length made as the consumer does.
    pub(crate) fn with_payload(mut self, payload: String) -> Incoming {
        let fields = proto::types::RecordFields {
            message_id: self.id,
            topic: &self.topic,
            publish_time_ms: self.publish_time_ms,
            event_time_ms: None,
            key: None,
            properties: &[],
            producer_name: &self.producer_name,
            sequence_id: self.id.entry,
            payload: payload.as_bytes(),
            chunk: None,
            encryption: None,
        };
        let mut body = Vec::new();
        crate::log_record::encode_body(&fields, &mut body);
        self.json_len = proto::types::record::record_json_len(&fields);
        self.body = body;
        self
    }

    /// The payload (text) back from the body.
    pub(crate) fn payload_for_tests(&self) -> String {
        let line = crate::log_record::json_line(&self.topic, &self.producer_name, &self.body)
            .expect("a valid body");
        let record: serde_json::Value = serde_json::from_slice(&line).expect("a JSON record");
        record["payload"]
            .as_str()
            .expect("a text payload")
            .to_string()
    }
}

/// Whether a received message was spooled before (redeliveries are recognised by id: see
/// invariant 2).
#[derive(Debug, PartialEq, Eq)]
pub enum Redelivery<'a> {
    New,
    /// Spooled already: drop it.
    Spooled,
    /// Spooled and acknowledged already: drop it and acknowledge this position again, so the
    /// broker stops redelivering.
    Acknowledged(&'a Position),
}

fn redelivery<'a>(
    id: &MessageId,
    watermark: Option<&MessageId>,
    acked: Option<&'a Position>,
) -> Redelivery<'a> {
    match watermark {
        Some(mark) if !id.is_after(mark) => match acked {
            Some(acked) if !id.is_after(&acked.id) => Redelivery::Acknowledged(acked),
            _ => Redelivery::Spooled,
        },
        _ => Redelivery::New,
    }
}

/// A snapshot of what a spool has seen, so the consumer drops redeliveries before it spends
/// any work encoding them (after a reconnect the broker sends every unacknowledged message
/// again). Watermarks only move forward while a consumer runs, so what the snapshot has seen
/// the spool has seen; `append` checks again anyway.
#[derive(Debug, Default)]
pub struct Seen {
    watermarks: BTreeMap<i32, MessageId>,
    acked: BTreeMap<i32, Position>,
}

impl Seen {
    #[cfg(test)]
    pub(crate) fn for_tests(watermarks: BTreeMap<i32, MessageId>) -> Seen {
        Seen {
            watermarks,
            acked: BTreeMap::new(),
        }
    }

    /// The highest message id of `partition` ever spooled.
    pub fn last(&self, partition: i32) -> Option<MessageId> {
        self.watermarks.get(&partition).copied()
    }

    pub fn check(&self, id: &MessageId) -> Redelivery<'_> {
        redelivery(
            id,
            self.watermarks.get(&id.partition),
            self.acked.get(&id.partition),
        )
    }
}

#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    /// Segments closed by this batch, to be sealed.
    pub closed: Vec<u64>,
    /// Duplicates of messages already acknowledged: acknowledge these positions again so the
    /// broker stops redelivering them.
    pub reack: Vec<Position>,
}

/// The acknowledgeable prefix: cumulative acks to send, then the segments to free.
#[derive(Debug, Clone)]
pub struct AckPlan {
    pub positions: Vec<Position>,
    pub segments: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    AlreadyCommitted,
}

/// A snapshot for `status` and the tests.
#[derive(Debug, Clone, Default)]
pub struct SpoolStats {
    pub spooled_messages: u64,
    pub spooled_bytes: u64,
    pub open_segment_messages: u64,
    pub open_segment_opened_at_ms: u64,
    pub waiting_segments: u64,
    pub oldest_publish_ms: u64,
    /// Record bytes of the open and closed segments: about what sealing them will write (the
    /// JSON lines; compressed they are smaller), on top of their logs.
    pub unsealed_bytes: u64,
    /// Segments other than the open one (closed, sealed or stored): what uploads can free.
    pub closed_segments: u64,
}

struct State {
    counters: Counters,
    policy: CutPolicy,
    target: Target,
    watermarks: BTreeMap<i32, Position>,
    acked: BTreeMap<i32, Position>,
    open: Option<SegmentMeta>,
    /// Every segment that is not open, by number (= consumption order).
    segments: BTreeMap<u64, SegmentMeta>,
    /// The open segment's number and what its log last wrote of topic and producer name. Reset
    /// whenever the log may have been cut back: a fresh encoder writes both again.
    encoder: Option<(u64, LogEncoder)>,
}

pub struct RuleSpool {
    rule: String,
    /// This data dir's id, part of every object name (see `proto::types::object_key`).
    spool_id: String,
    /// Asked for the `spool` tree at each use, never kept: see `db.rs`.
    db: Arc<Database>,
    /// The database generation the in-memory state was read from. After a reopen the database
    /// may hold less than the state says, and a write made from the state would mix the two:
    /// nothing is written until [`RuleSpool::reread`].
    read_generation: AtomicU64,
    segments_dir: PathBuf,
    quarantine_dir: PathBuf,
    logs: RecordLogs,
    state: Mutex<State>,
    /// Writers compressing segments ahead of their seal, by segment number, with the
    /// generation they started in. Lock order: this before `state`.
    presealing: Mutex<BTreeMap<u64, (u64, Preseal)>>,
    /// Bumped whenever the in-memory state is re-read from disk after a failed write (the open
    /// segment's log may have been cut back): writers of an older generation are thrown away.
    generation: AtomicU64,
    /// A feed job is queued (see `SealerHandle::feed`).
    feed_queued: AtomicBool,
    /// Woken when a segment becomes sealed (the uploader's long poll waits on it).
    sealed_notify: Arc<Notify>,
    /// Held from an append's plan until its batch is durable (see [`RuleSpool::append`]).
    appending: Arc<tokio::sync::Mutex<()>>,
}

/// What a seal's flush does in a test on this thread, instead of flushing.
#[cfg(test)]
type SealFlush = Box<dyn Fn(&RuleSpool) -> Result<()>>;
#[cfg(test)]
thread_local! {
    static SEAL_FLUSH: std::cell::RefCell<Option<SealFlush>> = const { std::cell::RefCell::new(None) };
}

/// Numbers each seal's temporary file: two seals of one segment (a retry overlapping a seal that
/// is still writing) must never write into the same file.
static SEAL_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

fn key(tag: u8, rule: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + rule.len() + suffix.len());
    k.push(tag);
    k.extend_from_slice(rule.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn partition_suffix(partition: i32) -> [u8; 4] {
    ((partition as u32) ^ 0x8000_0000).to_be_bytes()
}

fn partition_from_suffix(bytes: &[u8]) -> Option<i32> {
    let arr: [u8; 4] = bytes.try_into().ok()?;
    Some((u32::from_be_bytes(arr) ^ 0x8000_0000) as i32)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IngesterError::Corrupt(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| IngesterError::Corrupt(format!("{what}: {e}")))
}

impl RuleSpool {
    /// Opens (or recovers) a rule's spool. Returns the spool and the closed segments that still
    /// need sealing.
    pub fn open(
        db: &Arc<Database>,
        spool_id: &str,
        data_dir: &Path,
        rule: &RuleConfig,
        sealed_notify: Arc<Notify>,
    ) -> Result<(Arc<RuleSpool>, Vec<u64>)> {
        let generation = db.generation();
        let tree = db.open_tree(SPOOL_TREE)?;
        let name = rule.name.clone();
        let segments_dir = segment_files::segments_dir(data_dir, &name);
        let quarantine_dir = segment_files::quarantine_dir(data_dir, &name);
        std::fs::create_dir_all(&segments_dir)
            .map_err(|e| IngesterError::io(format!("creating {}", segments_dir.display()), e))?;

        let counters = match tree.get(key(COUNTERS, &name, &[]))? {
            Some(v) => from_json("counters", &v)?,
            None => Counters::default(),
        };
        let load_positions = |tag: u8| -> Result<BTreeMap<i32, Position>> {
            let mut map = BTreeMap::new();
            let prefix = key(tag, &name, &[]);
            for item in tree.scan_prefix(&prefix) {
                let (k, v) = item?;
                let partition = partition_from_suffix(&k[prefix.len()..])
                    .ok_or_else(|| IngesterError::Corrupt("position key".into()))?;
                map.insert(partition, from_json::<Position>("position", &v)?);
            }
            Ok(map)
        };
        let watermarks = load_positions(WATERMARK)?;
        let acked = load_positions(ACKED)?;

        let logs = RecordLogs::new(segments_dir.clone());
        let mut metas = Vec::new();
        for item in tree.scan_prefix(key(SEGMENT, &name, &[])) {
            let (_, v) = item?;
            metas.push(from_json::<SegmentMeta>("segment meta", &v)?);
        }
        migrate_legacy_records(db, &tree, &name, &logs, &mut metas)?;
        logs.sweep(|no| metas.iter().any(|m| m.segment_no == no))?;

        let mut open = None;
        let mut segments = BTreeMap::new();
        let mut to_seal = Vec::new();
        for mut meta in metas {
            match meta.state {
                SegmentState::Open => {
                    logs.truncate(meta.segment_no, meta.log_len())?;
                    open = Some(meta);
                }
                SegmentState::Closed => {
                    to_seal.push(meta.segment_no);
                    segments.insert(meta.segment_no, meta);
                }
                SegmentState::Sealed => {
                    // The file is the uploader's input: if it vanished, write it again.
                    if !segment_path(&segments_dir, &meta).exists() {
                        meta.state = SegmentState::Closed;
                        to_seal.push(meta.segment_no);
                    }
                    segments.insert(meta.segment_no, meta);
                }
                SegmentState::Stored => {
                    segments.insert(meta.segment_no, meta);
                }
            }
        }
        let spool = RuleSpool {
            rule: name,
            spool_id: spool_id.to_string(),
            db: db.clone(),
            read_generation: AtomicU64::new(generation),
            segments_dir,
            quarantine_dir,
            logs,
            presealing: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            feed_queued: AtomicBool::new(false),
            state: Mutex::new(State {
                counters,
                policy: policy_of(rule),
                target: Target::of(rule),
                watermarks,
                acked,
                open,
                segments,
                encoder: None,
            }),
            sealed_notify,
            appending: Arc::default(),
        };
        Ok((Arc::new(spool), to_seal))
    }

    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The spool tree of the current database instance, for one operation; refused while the
    /// in-memory state is from an instance before the last reopen.
    fn tree(&self) -> Result<sled::Tree> {
        if self.read_generation.load(Ordering::SeqCst) != self.db.generation() {
            return Err(IngesterError::DatabaseReopening);
        }
        self.db.open_tree(SPOOL_TREE)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the spool has seen so far: see [`Seen`].
    pub fn seen(&self) -> Seen {
        let state = self.lock();
        Seen {
            watermarks: state
                .watermarks
                .iter()
                .map(|(partition, pos)| (*partition, pos.id))
                .collect(),
            acked: state.acked.clone(),
        }
    }

    /// A rule edit: caps, window and destination apply from the next segment on.
    pub fn reconfigure(&self, rule: &RuleConfig) {
        let mut state = self.lock();
        state.policy = policy_of(rule);
        state.target = Target::of(rule);
    }

    /// A change of source (service URL, topic or subscription), with the rule stopped and
    /// nothing spooled: ids from the old source mean nothing for the new one (a fresh cluster
    /// numbers from ledger 0 again), so the dedup watermarks go, and the source count in the
    /// object names goes up so the new source's segments never take an old object's key.
    pub fn reset_positions(&self) -> Result<()> {
        let mut state = self.lock();
        state.watermarks.clear();
        state.acked.clear();
        state.counters.source_changes = state.counters.source_changes.saturating_add(1);
        let mut batch = sled::Batch::default();
        let tree = self.tree()?;
        for tag in [WATERMARK, ACKED] {
            for k in tree.scan_prefix(key(tag, &self.rule, &[])).keys() {
                batch.remove(k?);
            }
        }
        batch.insert(key(COUNTERS, &self.rule, &[]), to_json(&state.counters)?);
        tree.apply_batch(batch)?;
        drop(tree);
        self.db.flush()?;
        Ok(())
    }

    /// Spools a batch of consumed messages durably: one write and one sync per segment's log,
    /// then one sled batch.
    ///
    /// Once planned, a batch is written to the end even if this future is dropped (a rule task
    /// stopped or aborted mid-write): the in-memory state already counts it as spooled, so it
    /// must become durable, or be undone by a reload, before anyone appends again; `appending`
    /// orders the next append after it.
    pub async fn append(
        self: &Arc<Self>,
        messages: &[Incoming],
        now_ms: u64,
    ) -> Result<AppendOutcome> {
        let appending = self.appending.clone().lock_owned().await;
        let (outcome, writes, batch) = match self.plan_append(messages, now_ms) {
            Ok(planned) => planned,
            Err(err) => {
                self.reload()?;
                return Err(err);
            }
        };
        if writes.is_empty() {
            return Ok(outcome);
        }
        let spool = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let _appending = appending;
            spool.write_planned(&writes, batch)
        })
        .await;
        match written {
            Ok(result) => result.map(|()| outcome),
            Err(join) => {
                // The write panicked: what is durable is unknown, go back to what sled says.
                self.reload()?;
                Err(IngesterError::io(
                    "writing a record log",
                    std::io::Error::other(join.to_string()),
                ))
            }
        }
    }

    /// The durable half of an append (blocking IO): the logs, synced, then sled; on failure the
    /// in-memory state goes back to what sled says, and the caller retries.
    fn write_planned(&self, writes: &[LogWrite], batch: sled::Batch) -> Result<()> {
        // Only once the log is synced may sled hear of its bytes (invariant 1).
        let applied = self
            .logs
            .append_durably(writes)
            .and_then(|()| Ok(self.tree()?.apply_batch(batch)?));
        if let Err(err) = applied {
            self.reload()?;
            return Err(err);
        }
        Ok(())
    }

    /// Applies a batch to the in-memory state; returns what to write to the logs, then to sled.
    fn plan_append(
        &self,
        messages: &[Incoming],
        now_ms: u64,
    ) -> Result<(AppendOutcome, Vec<LogWrite>, sled::Batch)> {
        let mut state = self.lock();
        let mut batch = sled::Batch::default();
        let mut writes: Vec<LogWrite> = Vec::new();
        let mut outcome = AppendOutcome::default();
        let mut dirty_partitions = Vec::new();
        for msg in messages {
            let partition = msg.id.partition;
            match redelivery(
                &msg.id,
                state.watermarks.get(&partition).map(|mark| &mark.id),
                state.acked.get(&partition),
            ) {
                Redelivery::New => {}
                Redelivery::Spooled => {
                    outcome.duplicates += 1;
                    continue;
                }
                Redelivery::Acknowledged(acked) => {
                    outcome.duplicates += 1;
                    if !outcome.reack.contains(acked) {
                        outcome.reack.push(acked.clone());
                    }
                    continue;
                }
            }
            let len = msg.json_len;
            let placement =
                state
                    .policy
                    .place(state.open.as_ref().map(|o| o.stats()).as_ref(), now_ms, len);
            // A segment left open by a version that logged JSON lines is closed as it is; the
            // next one is compact.
            let legacy_open = state
                .open
                .as_ref()
                .is_some_and(|o| o.log_format == LogFormat::JsonLines);
            if placement == Placement::CloseThenAppend || legacy_open {
                if let Some(closed) = self.close_open_locked(&mut state, &mut batch)? {
                    outcome.closed.push(closed);
                }
            }
            let seq = state.counters.next_seq;
            state.counters.next_seq += 1;
            if state.open.is_none() {
                let segment_no = state.counters.next_segment;
                state.counters.next_segment += 1;
                let window_start_ms = state.policy.window_start(now_ms);
                state.open = Some(SegmentMeta {
                    segment_no,
                    state: SegmentState::Open,
                    window_start_ms,
                    opened_at_ms: now_ms,
                    first_seq: seq,
                    last_seq: seq,
                    messages: 0,
                    record_bytes: 0,
                    first_id: Some(msg.id),
                    last_id: None,
                    oldest_publish_ms: msg.publish_time_ms,
                    ack_positions: BTreeMap::new(),
                    target: Target::default(),
                    object_key: String::new(),
                    file_bytes: 0,
                    crc32c: 0,
                    sealed_at_ms: 0,
                    stored_at_ms: 0,
                    etag: String::new(),
                    upload_ms: 0,
                    attempts: 0,
                    times_quarantined: 0,
                    log_crc32c: 0,
                    records_in_log: true,
                    log_format: LogFormat::Compact,
                    log_bytes: 0,
                });
            }
            let policy = state.policy;
            let full = {
                let State { open, encoder, .. } = &mut *state;
                let open = open.as_mut().ok_or_else(|| {
                    IngesterError::Corrupt("open segment vanished while appending".into())
                })?;
                let write = match writes.last_mut() {
                    Some(write) if write.segment_no == open.segment_no => write,
                    _ => {
                        writes.push(LogWrite {
                            segment_no: open.segment_no,
                            fresh: open.messages == 0,
                            bytes: Vec::with_capacity(msg.body.len() + 64),
                        });
                        writes.last_mut().ok_or_else(|| {
                            IngesterError::Corrupt("log write vanished while appending".into())
                        })?
                    }
                };
                let start = write.bytes.len();
                match open.log_format {
                    LogFormat::Compact => {
                        let encoder = match encoder {
                            Some((no, encoder)) if *no == open.segment_no => encoder,
                            _ => &mut encoder.insert((open.segment_no, LogEncoder::default())).1,
                        };
                        open.log_bytes += encoder.append(
                            &msg.topic,
                            &msg.producer_name,
                            &msg.body,
                            &mut write.bytes,
                        );
                    }
                    LogFormat::JsonLines => {
                        return Err(IngesterError::Corrupt(
                            "appending to a JSON-lines record log".into(),
                        ));
                    }
                }
                open.log_crc32c = crc32c::crc32c_append(open.log_crc32c, &write.bytes[start..]);
                open.last_seq = seq;
                open.messages += 1;
                open.record_bytes += len;
                open.last_id = Some(msg.id);
                open.oldest_publish_ms = open.oldest_publish_ms.min(msg.publish_time_ms);
                if msg.completes_entry() {
                    advance(&mut open.ack_positions, partition, msg);
                }
                policy.is_full(&open.stats())
            };
            advance(&mut state.watermarks, partition, msg);
            if !dirty_partitions.contains(&partition) {
                dirty_partitions.push(partition);
            }
            outcome.accepted += 1;
            if full {
                if let Some(closed) = self.close_open_locked(&mut state, &mut batch)? {
                    outcome.closed.push(closed);
                }
            }
        }
        if outcome.accepted == 0 {
            return Ok((outcome, writes, batch));
        }
        for partition in dirty_partitions {
            if let Some(mark) = state.watermarks.get(&partition) {
                batch.insert(
                    key(WATERMARK, &self.rule, &partition_suffix(partition)),
                    to_json(mark)?,
                );
            }
        }
        if let Some(open) = &state.open {
            batch.insert(
                key(SEGMENT, &self.rule, &open.segment_no.to_be_bytes()),
                to_json(open)?,
            );
        }
        batch.insert(key(COUNTERS, &self.rule, &[]), to_json(&state.counters)?);
        Ok((outcome, writes, batch))
    }

    /// open → closed, inside an append or a close: fixes the record range and the object key.
    fn close_open_locked(&self, state: &mut State, batch: &mut sled::Batch) -> Result<Option<u64>> {
        let Some(mut meta) = state.open.take() else {
            return Ok(None);
        };
        if meta.messages == 0 {
            batch.remove(key(SEGMENT, &self.rule, &meta.segment_no.to_be_bytes()));
            return Ok(None);
        }
        meta.state = SegmentState::Closed;
        meta.target = state.target.clone();
        let first_id = meta
            .first_id
            .ok_or_else(|| IngesterError::Corrupt("segment without first id".into()))?;
        let window_start = Utc
            .timestamp_millis_opt(i64::try_from(meta.window_start_ms).unwrap_or(i64::MAX))
            .single()
            .ok_or_else(|| IngesterError::Corrupt("window start out of range".into()))?;
        let topic = TopicName::parse(&meta.target.topic).map_err(IngesterError::Corrupt)?;
        meta.object_key = object_key(
            &meta.target.prefix,
            &topic,
            &SegmentName {
                rule: &self.rule,
                window_start,
                first_message_id: &first_id,
                spool_id: &self.spool_id,
                source_changes: state.counters.source_changes,
                compression: meta.target.compression(),
            },
        );
        batch.insert(
            key(SEGMENT, &self.rule, &meta.segment_no.to_be_bytes()),
            to_json(&meta)?,
        );
        let segment_no = meta.segment_no;
        state.segments.insert(segment_no, meta);
        Ok(Some(segment_no))
    }

    /// Closes the open segment if `force`, or if its window has ended. Returns its number.
    pub async fn close_open(&self, now_ms: u64, force: bool) -> Result<Option<u64>> {
        let closed = {
            let mut state = self.lock();
            let due = match &state.open {
                Some(open) => force || state.policy.is_due(&open.stats(), now_ms),
                None => false,
            };
            if !due {
                return Ok(None);
            }
            let mut batch = sled::Batch::default();
            let closed = self.close_open_locked(&mut state, &mut batch)?;
            self.tree()?.apply_batch(batch)?;
            closed
        };
        self.db.flush_async().await?;
        Ok(closed)
    }

    /// Re-reads the whole state from disk (after a failed write).
    fn reload(&self) -> Result<()> {
        self.reload_from(self.tree()?)
    }

    fn reload_from(&self, tree: sled::Tree) -> Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        let counters = match tree.get(key(COUNTERS, &self.rule, &[]))? {
            Some(v) => from_json("counters", &v)?,
            None => Counters::default(),
        };
        let mut watermarks = BTreeMap::new();
        let prefix = key(WATERMARK, &self.rule, &[]);
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            if let Some(p) = partition_from_suffix(&k[prefix.len()..]) {
                watermarks.insert(p, from_json::<Position>("watermark", &v)?);
            }
        }
        let mut open = None;
        let mut segments = BTreeMap::new();
        for item in tree.scan_prefix(key(SEGMENT, &self.rule, &[])) {
            let (_, v) = item?;
            let meta: SegmentMeta = from_json("segment meta", &v)?;
            if meta.state == SegmentState::Open {
                open = Some(meta);
            } else {
                segments.insert(meta.segment_no, meta);
            }
        }
        if let Some(open) = &open {
            self.logs.truncate(open.segment_no, open.log_len())?;
        }
        state.encoder = None;
        state.counters = counters;
        state.watermarks = watermarks;
        state.open = open;
        state.segments = segments;
        Ok(())
    }

    /// After the database was reopened (see `db.rs`): it may hold less than this spool had in
    /// memory, as writes sled accepted but never made durable are gone. Goes back to what it
    /// holds, as after a failed write. Returns the closed segments, to be sealed (again, if the
    /// database lost a seal).
    pub fn reread(&self) -> Result<Vec<u64>> {
        let generation = self.db.generation();
        self.reload_from(self.db.open_tree(SPOOL_TREE)?)?;
        self.read_generation.store(generation, Ordering::SeqCst);
        let state = self.lock();
        Ok(state
            .segments
            .values()
            .filter(|m| m.state == SegmentState::Closed)
            .map(|m| m.segment_no)
            .collect())
    }

    /// Where `meta`'s segment file is (sealed or not).
    pub fn segment_file(&self, meta: &SegmentMeta) -> PathBuf {
        segment_path(&self.segments_dir, meta)
    }

    /// Whether a feed job should be queued now (none is queued yet).
    pub fn request_feed(&self) -> bool {
        !self.feed_queued.swap(true, Ordering::SeqCst)
    }

    /// Compresses what the open segment's log holds so far into its future segment file, once
    /// the segment is large enough to be worth it (blocking IO; run it on a blocking thread).
    /// Nothing here is durable or trusted: `seal_blocking` checks what the writer read.
    pub fn feed_blocking(&self) -> Result<()> {
        self.feed_queued.store(false, Ordering::SeqCst);
        let (writer, upto, compression) = {
            let mut presealing = lock_presealing(&self.presealing);
            let generation = self.generation.load(Ordering::SeqCst);
            presealing.retain(|_, (started, _)| *started == generation);
            // Under the presealing lock: a segment seen open here cannot be sealed before the
            // writer is in the map, so its seal finds the writer.
            let (segment_no, upto, format, compression) = {
                let state = self.lock();
                match &state.open {
                    Some(open) if open.record_bytes >= PRESEAL_MIN_BYTES => (
                        open.segment_no,
                        open.log_len(),
                        open.log_format,
                        state.target.compression(),
                    ),
                    _ => return Ok(()),
                }
            };
            let writer = match presealing.get(&segment_no) {
                Some((_, writer)) => writer.clone(),
                None => {
                    if presealing.len() >= MAX_PRESEALS {
                        return Ok(());
                    }
                    let writer = SegmentWriter::create(
                        self.segments_dir
                            .join(segment_files::preseal_name(segment_no)),
                        segment_no,
                        format,
                        compression,
                        generation,
                    )?;
                    let writer: Preseal = Arc::new(Mutex::new(Some(writer)));
                    presealing.insert(segment_no, (generation, writer.clone()));
                    writer
                }
            };
            (writer, upto, compression)
        };
        let mut guard = lock_preseal(&writer);
        let Some(current) = guard.as_mut() else {
            return Ok(()); // its seal took it meanwhile
        };
        let fed = if current.compression() == compression {
            current.feed(&self.logs, upto)
        } else {
            Err(IngesterError::FailedPrecondition(
                "the rule's compression changed".into(),
            ))
        };
        if fed.is_err() {
            if let Some(dropped) = guard.take() {
                discard(dropped);
            }
        }
        fed
    }

    /// closed → sealed: writes the segment file from the record log (blocking IO; run it on a
    /// blocking thread), going on from its preseal when there is a usable one. What was read is
    /// checked against the meta, then the file is fsynced and renamed into place before the
    /// meta says sealed, and that is flushed before ListSealed can see it.
    pub fn seal_blocking(&self, segment_no: u64) -> Result<()> {
        let meta = {
            let state = self.lock();
            match state.segments.get(&segment_no) {
                Some(meta) if meta.state == SegmentState::Closed => meta.clone(),
                _ => return Ok(()),
            }
        };
        let compression = meta.target.compression();
        let generation = self.generation.load(Ordering::SeqCst);
        let preseal = lock_presealing(&self.presealing).remove(&segment_no);
        let mut writer = None;
        if let Some((_, preseal)) = preseal {
            // Waits for a feed still running on it.
            if let Some(pre) = lock_preseal(&preseal).take() {
                if pre.generation == generation
                    && pre.compression() == compression
                    && pre.log_format() == meta.log_format
                {
                    writer = Some(pre);
                } else {
                    discard(pre);
                }
            }
        }
        let fresh = || {
            SegmentWriter::create(
                self.segments_dir.join(segment_files::seal_attempt_name(
                    segment_no,
                    SEAL_ATTEMPTS.fetch_add(1, Ordering::Relaxed),
                )),
                segment_no,
                meta.log_format,
                compression,
                generation,
            )
        };
        let written = match writer {
            Some(presealed) => match self.complete(&meta, presealed) {
                Ok(written) => written,
                Err(err) => {
                    // Not the log's fault yet: the preseal may have read a write in progress.
                    debug!(rule = %self.rule, segment = segment_no, error = %err, "preseal unusable; sealing from the start of the log");
                    self.complete(&meta, fresh()?)?
                }
            },
            None => self.complete(&meta, fresh()?)?,
        };
        let tmp = written.1;
        let written = written.0;
        let path = self.segment_file(&meta);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            // Half a disk's worth of copies must not pile up while a seal keeps failing.
            let _ = std::fs::remove_file(&tmp);
            return Err(IngesterError::io(format!("renaming {}", tmp.display()), e));
        }
        sync_dir(&self.segments_dir)?;
        edge::failpoint::hit("ingester:after_seal_file");
        // Durable first, shown second: ListSealed reads the in-memory state, and a segment it
        // offered must still be sealed after a crash or a failed flush (else the uploader could
        // store and commit a file the restarted spool seals again, differently).
        let sealed = {
            let state = self.lock();
            let Some(meta) = state.segments.get(&segment_no) else {
                return Ok(());
            };
            let mut sealed = meta.clone();
            sealed.state = SegmentState::Sealed;
            // What the object really holds; `json_len` predicted it record by record.
            if sealed.record_bytes != written.json_bytes {
                tracing::warn!(rule = %self.rule, segment = segment_no, predicted = sealed.record_bytes, written = written.json_bytes, "record bytes differ from the prediction");
                sealed.record_bytes = written.json_bytes;
            }
            sealed.crc32c = written.file_crc32c;
            sealed.file_bytes = written.file_bytes;
            sealed.sealed_at_ms = proto::types::time::now_millis();
            self.tree()?.insert(
                key(SEGMENT, &self.rule, &segment_no.to_be_bytes()),
                to_json(&sealed)?,
            )?;
            sealed
        };
        self.flush_seal()?;
        {
            let mut state = self.lock();
            // Gone meanwhile (the rule's spool was discarded): nothing to show.
            if let Some(meta) = state.segments.get_mut(&segment_no) {
                if meta.state == SegmentState::Closed {
                    meta.state = sealed.state;
                    meta.record_bytes = sealed.record_bytes;
                    meta.crc32c = sealed.crc32c;
                    meta.file_bytes = sealed.file_bytes;
                    meta.sealed_at_ms = sealed.sealed_at_ms;
                }
            }
        }
        self.sealed_notify.notify_waiters();
        Ok(())
    }

    /// Makes a seal durable (a tests' stand-in can take the flush's place).
    fn flush_seal(&self) -> Result<()> {
        #[cfg(test)]
        if let Some(result) = SEAL_FLUSH.with(|f| f.borrow().as_ref().map(|f| f(self))) {
            return result;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Feeds a writer the rest of the segment's log, finishes it and checks what it read.
    /// Returns what was written and where; on error the temporary file is gone.
    fn complete(
        &self,
        meta: &SegmentMeta,
        mut writer: SegmentWriter,
    ) -> Result<(Written, PathBuf)> {
        let tmp = writer.tmp_path().to_path_buf();
        let written = writer
            .feed(&self.logs, meta.log_len())
            .and_then(|()| writer.finish())
            .and_then(|written| self.check_written(meta, written));
        match written {
            Ok(written) => Ok((written, tmp)),
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                Err(err)
            }
        }
    }

    /// The log bytes a segment file was made of must be exactly the segment's records.
    fn check_written(&self, meta: &SegmentMeta, written: Written) -> Result<Written> {
        let damaged = |what: String| {
            Err(IngesterError::Corrupt(format!(
                "record log {} is damaged: {what}",
                self.logs.path(meta.segment_no).display()
            )))
        };
        if written.log_bytes != meta.log_len() {
            return damaged(format!(
                "it holds {} bytes, the spool wrote {}",
                written.log_bytes,
                meta.log_len()
            ));
        }
        if written.log_crc32c != meta.log_crc32c {
            return damaged(format!(
                "CRC32C {:08x}, the spool wrote {:08x}",
                written.log_crc32c, meta.log_crc32c
            ));
        }
        if written.lines != meta.messages {
            return damaged(format!(
                "{} records, the spool wrote {}",
                written.lines, meta.messages
            ));
        }
        Ok(written)
    }

    /// The segment's meta and file path, if it is sealed (ready to read).
    pub fn sealed_file(&self, segment_no: u64) -> Result<(SegmentMeta, PathBuf)> {
        let state = self.lock();
        match state.segments.get(&segment_no) {
            Some(meta) if meta.state == SegmentState::Sealed => {
                Ok((meta.clone(), self.segment_file(meta)))
            }
            _ => Err(IngesterError::SegmentNotFound {
                rule: self.rule.clone(),
                segment_no,
            }),
        }
    }

    /// sealed → closed: the file failed its checksum. It is moved aside for inspection and will
    /// be written again from the records, which are still in the spool.
    pub fn quarantine(&self, segment_no: u64) -> Result<PathBuf> {
        let mut state = self.lock();
        let Some(meta) = state.segments.get_mut(&segment_no) else {
            return Err(IngesterError::SegmentNotFound {
                rule: self.rule.clone(),
                segment_no,
            });
        };
        let path = segment_path(&self.segments_dir, meta);
        std::fs::create_dir_all(&self.quarantine_dir)
            .map_err(|e| IngesterError::io("creating the quarantine folder", e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let dest = self.quarantine_dir.join(format!(
            "{name}.{}.damaged",
            proto::types::time::now_millis()
        ));
        if path.exists() {
            std::fs::rename(&path, &dest)
                .map_err(|e| IngesterError::io("quarantining a segment", e))?;
        }
        meta.state = SegmentState::Closed;
        meta.times_quarantined += 1;
        let value = to_json(&*meta)?;
        self.tree()?
            .insert(key(SEGMENT, &self.rule, &segment_no.to_be_bytes()), value)?;
        Ok(dest)
    }

    /// sealed → stored. Idempotent: a repeated commit changes nothing.
    pub async fn mark_stored(
        &self,
        segment_no: u64,
        etag: &str,
        upload_ms: u64,
        attempts: u32,
    ) -> Result<CommitOutcome> {
        let stored = {
            let state = self.lock();
            let Some(meta) = state.segments.get(&segment_no) else {
                // Freed already: its commit arrived before, and it was acknowledged.
                return Ok(CommitOutcome::AlreadyCommitted);
            };
            match meta.state {
                SegmentState::Stored => return Ok(CommitOutcome::AlreadyCommitted),
                SegmentState::Sealed => {}
                other => {
                    return Err(IngesterError::FailedPrecondition(format!(
                        "segment {segment_no} of rule {:?} is {}, not sealed",
                        self.rule,
                        other.as_str()
                    )))
                }
            }
            let mut stored = meta.clone();
            stored.state = SegmentState::Stored;
            stored.stored_at_ms = proto::types::time::now_millis();
            stored.etag = etag.to_string();
            stored.upload_ms = upload_ms;
            stored.attempts = attempts;
            self.tree()?.insert(
                key(SEGMENT, &self.rule, &segment_no.to_be_bytes()),
                to_json(&stored)?,
            )?;
            stored
        };
        self.db.flush_async().await?;
        // Stored in memory only once durable: a commit whose flush failed (a full disk) must
        // fail again when retried, not pass as already committed while the database that is
        // reopened next still says sealed.
        let mut state = self.lock();
        if let Some(meta) = state.segments.get_mut(&segment_no) {
            if meta.state == SegmentState::Sealed {
                *meta = stored;
            }
        }
        Ok(CommitOutcome::Committed)
    }

    /// The run of stored segments from the oldest one, and where that lets each partition's
    /// cumulative acknowledgement go.
    pub fn ack_plan(&self) -> Option<AckPlan> {
        let state = self.lock();
        let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
        let mut segments = Vec::new();
        for meta in state.segments.values() {
            if meta.state != SegmentState::Stored {
                break;
            }
            for (partition, pos) in &meta.ack_positions {
                positions.insert(*partition, pos.clone());
            }
            segments.push(meta.segment_no);
        }
        if segments.is_empty() {
            return None;
        }
        Some(AckPlan {
            positions: positions.into_values().collect(),
            segments,
        })
    }

    /// After the plan's acknowledgements were sent: drop records, metas and files.
    pub async fn free(&self, plan: &AckPlan) -> Result<Vec<SegmentMeta>> {
        let (freed, files) = {
            let mut state = self.lock();
            let mut batch = sled::Batch::default();
            let mut freed = Vec::new();
            let mut files = Vec::new();
            for segment_no in &plan.segments {
                let Some(meta) = state.segments.remove(segment_no) else {
                    continue;
                };
                batch.remove(key(SEGMENT, &self.rule, &segment_no.to_be_bytes()));
                files.push(segment_path(&self.segments_dir, &meta));
                freed.push(meta);
            }
            for pos in &plan.positions {
                let partition = pos.id.partition;
                batch.insert(
                    key(ACKED, &self.rule, &partition_suffix(partition)),
                    to_json(pos)?,
                );
                state.acked.insert(partition, pos.clone());
            }
            self.tree()?.apply_batch(batch)?;
            (freed, files)
        };
        self.db.flush_async().await?;
        // A crash before these unlinks leaves files no meta owns: swept at the next start.
        for file in files {
            if let Err(err) = std::fs::remove_file(&file) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(rule = %self.rule, file = %file.display(), error = %err, "could not remove a freed segment file");
                }
            }
        }
        for meta in &freed {
            self.logs.remove(meta.segment_no);
        }
        Ok(freed)
    }

    pub fn segments(&self) -> Vec<SegmentMeta> {
        let state = self.lock();
        let mut all: Vec<SegmentMeta> = state.segments.values().cloned().collect();
        all.extend(state.open.clone());
        all
    }

    pub fn sealed(&self) -> Vec<SegmentMeta> {
        let state = self.lock();
        state
            .segments
            .values()
            .filter(|m| m.state == SegmentState::Sealed)
            .cloned()
            .collect()
    }

    pub fn open_segment(&self) -> Option<SegmentMeta> {
        self.lock().open.clone()
    }

    pub fn stats(&self) -> SpoolStats {
        let state = self.lock();
        let mut stats = SpoolStats::default();
        let mut oldest = u64::MAX;
        for meta in state.segments.values().chain(state.open.iter()) {
            stats.spooled_messages += meta.messages;
            stats.spooled_bytes += meta.record_bytes;
            oldest = oldest.min(meta.oldest_publish_ms);
            if matches!(meta.state, SegmentState::Closed | SegmentState::Sealed) {
                stats.waiting_segments += 1;
            }
            if matches!(meta.state, SegmentState::Open | SegmentState::Closed) {
                stats.unsealed_bytes += meta.record_bytes;
            }
        }
        stats.closed_segments = state.segments.len() as u64;
        if let Some(open) = &state.open {
            stats.open_segment_messages = open.messages;
            stats.open_segment_opened_at_ms = open.opened_at_ms;
        }
        stats.oldest_publish_ms = if oldest == u64::MAX { 0 } else { oldest };
        stats
    }

    /// Whether anything is not yet acknowledged.
    pub fn is_empty(&self) -> bool {
        let state = self.lock();
        state.segments.is_empty() && state.open.as_ref().is_none_or(|o| o.messages == 0)
    }

    /// Removes everything of this rule: keys, files. For `rule delete`.
    pub fn destroy(&self) -> Result<()> {
        for (_, (_, preseal)) in std::mem::take(&mut *lock_presealing(&self.presealing)) {
            if let Some(writer) = lock_preseal(&preseal).take() {
                discard(writer);
            }
        }
        let mut state = self.lock();
        let mut batch = sled::Batch::default();
        let tree = self.tree()?;
        for tag in [RECORD, SEGMENT, WATERMARK, ACKED, COUNTERS] {
            for k in tree.scan_prefix(key(tag, &self.rule, &[])).keys() {
                batch.remove(k?);
            }
        }
        tree.apply_batch(batch)?;
        drop(tree);
        self.db.flush()?;
        state.open = None;
        state.segments.clear();
        if let Err(err) = std::fs::remove_dir_all(&self.segments_dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(IngesterError::io("removing the rule's segment files", err));
            }
        }
        Ok(())
    }
}

/// Moves the records of a spool written before record logs (sled keys `r`) into record logs.
/// Each log is synced before its meta says `records_in_log`; the keys go last, so a crash at any
/// point leaves either the keys or a complete log (a log without the flag is written again).
fn migrate_legacy_records(
    db: &Database,
    tree: &sled::Tree,
    rule: &str,
    logs: &RecordLogs,
    metas: &mut [SegmentMeta],
) -> Result<()> {
    const CHUNK_BYTES: usize = 4 * 1024 * 1024;
    let mut moved = 0usize;
    for meta in metas.iter_mut().filter(|m| !m.records_in_log) {
        let lo = key(RECORD, rule, &meta.first_seq.to_be_bytes());
        let hi = key(RECORD, rule, &meta.last_seq.to_be_bytes());
        let (mut crc, mut count, mut bytes) = (0u32, 0u64, 0u64);
        // A stored segment's records are in its object already: only its keys go.
        if meta.state != SegmentState::Stored {
            let mut pending = LogWrite {
                segment_no: meta.segment_no,
                fresh: true,
                bytes: Vec::new(),
            };
            for item in tree.range(lo.as_slice()..=hi.as_slice()) {
                let (_, line) = item?;
                crc = crc32c::crc32c_append(crc, &line);
                count += 1;
                bytes += line.len() as u64;
                pending.bytes.extend_from_slice(&line);
                if pending.bytes.len() >= CHUNK_BYTES {
                    logs.append_durably(std::slice::from_ref(&pending))?;
                    pending.fresh = false;
                    pending.bytes.clear();
                }
            }
            logs.append_durably(std::slice::from_ref(&pending))?;
            if count != meta.messages || bytes != meta.record_bytes {
                return Err(IngesterError::Corrupt(format!(
                    "segment {} of rule {rule:?}: the spool holds {count} records of {bytes} bytes, expected {} of {}",
                    meta.segment_no, meta.messages, meta.record_bytes
                )));
            }
        }
        meta.log_crc32c = crc;
        meta.records_in_log = true;
        tree.insert(
            key(SEGMENT, rule, &meta.segment_no.to_be_bytes()),
            to_json(&*meta)?,
        )?;
        moved += 1;
    }
    if moved > 0 {
        db.flush()?;
        tracing::info!(
            rule,
            segments = moved,
            "moved spooled records into record logs"
        );
    }
    // Keys of records whose segments are in logs (or gone): a few thousand per batch.
    let prefix = key(RECORD, rule, &[]);
    loop {
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(&prefix)
            .keys()
            .take(4096)
            .collect::<std::result::Result<_, _>>()?;
        if keys.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// Moves a partition's position to `msg`. Per message on the append path: the topic string is
/// copied only when the partition is new or its topic differs, not for every message.
fn advance(positions: &mut BTreeMap<i32, Position>, partition: i32, msg: &Incoming) {
    match positions.get_mut(&partition) {
        Some(pos) => {
            pos.id = msg.id;
            if pos.topic != msg.topic {
                pos.topic.clone_from(&msg.topic);
            }
        }
        None => {
            positions.insert(
                partition,
                Position {
                    topic: msg.topic.clone(),
                    id: msg.id,
                },
            );
        }
    }
}

fn policy_of(rule: &RuleConfig) -> CutPolicy {
    CutPolicy {
        window_ms: rule.window_secs.saturating_mul(1000),
        max_messages: rule.max_messages,
        max_bytes: rule.max_bytes,
    }
}

fn segment_path(dir: &Path, meta: &SegmentMeta) -> PathBuf {
    dir.join(meta.target.compression().segment_file_name(meta.segment_no))
}

fn lock_presealing(
    presealing: &Mutex<BTreeMap<u64, (u64, Preseal)>>,
) -> MutexGuard<'_, BTreeMap<u64, (u64, Preseal)>> {
    presealing
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_preseal(preseal: &Preseal) -> MutexGuard<'_, Option<SegmentWriter>> {
    preseal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops a writer whose output will not be used, and its temporary file.
fn discard(writer: SegmentWriter) {
    let tmp = writer.tmp_path().to_path_buf();
    drop(writer);
    if let Err(err) = std::fs::remove_file(&tmp) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!(file = %tmp.display(), error = %err, "could not remove a discarded preseal");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::types::RuleSpecInput;

    pub(crate) fn rule(max_messages: u64) -> RuleConfig {
        RuleSpecInput {
            name: Some("r1".into()),
            service_url: Some("pulsar://127.0.0.1:6650".into()),
            topic: Some("orders".into()),
            subscription: Some("s".into()),
            bucket: Some("bucket-1".into()),
            region: Some("ap-guangzhou".into()),
            window: Some("60s".into()),
            max_messages: Some(max_messages),
            ..RuleSpecInput::default()
        }
        .validate()
        .expect("valid rule")
    }

    fn open_spool(db: &Arc<Database>, dir: &Path, max_messages: u64) -> Result<Arc<RuleSpool>> {
        let (spool, _) = RuleSpool::open(
            db,
            "test0001",
            dir,
            &rule(max_messages),
            Arc::new(Notify::new()),
        )?;
        Ok(spool)
    }

    fn msg(entry: u64, batch_index: i32, batch_size: i32) -> Incoming {
        Incoming {
            id: MessageId {
                ledger: 1,
                entry,
                partition: -1,
                batch_index,
            },
            topic: "persistent://public/default/orders".into(),
            batch_size,
            publish_time_ms: 1000 + entry,
            producer_name: String::new(),
            body: Vec::new(),
            json_len: 0,
        }
        .with_payload(format!("{{\"e\":{entry},\"b\":{batch_index}}}"))
    }

    /// The payloads of a segment file's records, a line each.
    fn read_payloads(path: &Path) -> String {
        record_fields(path, "payload")
            .iter()
            .map(|payload| format!("{payload}\n"))
            .collect()
    }

    /// One text field of every record of a segment file, in order.
    pub(crate) fn record_fields(path: &Path, field: &str) -> Vec<String> {
        read_file(path)
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
                record[field].as_str().expect("a text field").to_string()
            })
            .collect()
    }

    /// Opens the test database. A test that drops its handle and opens the same path again may
    /// find the file lock still held for a moment: sled finishes in-flight writes on its own
    /// threads after the last handle is dropped (a real restart is a new process).
    fn open_db(path: &Path) -> Result<Arc<Database>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Database::open(path, 8 << 20) {
                Err(IngesterError::Db(sled::Error::Io(err)))
                    if err.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened.map(Arc::new),
            }
        }
    }

    fn read_file(path: &Path) -> String {
        let bytes = std::fs::read(path).expect("segment file");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .expect("gzip");
        out
    }

    /// After a move to another cluster the same ids come again, for other messages: they are
    /// spooled, and their segments get keys the old source's objects do not have.
    #[tokio::test]
    async fn a_source_change_takes_ids_afresh_under_new_object_names() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 2)?;
        let out = spool
            .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
            .await?;
        assert_eq!(out.closed, vec![0]);
        let old_key = spool.segments()[0].object_key.clone();

        spool.reset_positions()?;
        let out = spool
            .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
            .await?;
        assert_eq!((out.accepted, out.duplicates), (2, 0), "{out:?}");
        assert_eq!(out.closed, vec![1]);
        let new_key = spool.segments()[1].object_key.clone();
        assert_ne!(new_key, old_key);
        assert!(new_key.ends_with("-test0001-s1.jsonl.gz"), "{new_key}");

        // The count survives a restart: the next source change is s2, not s1 again.
        drop(spool);
        let spool = open_spool(&db, dir.path(), 2)?;
        spool.reset_positions()?;
        let out = spool
            .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
            .await?;
        assert_eq!(out.closed, vec![2]);
        let key = spool.segments()[2].object_key.clone();
        assert!(key.ends_with("-test0001-s2.jsonl.gz"), "{key}");
        Ok(())
    }

    /// A rule task stopped while its spool write runs (a `rule edit` that restarts the
    /// consumer) drops the append's future: the batch it planned still becomes durable, so the
    /// in-memory state, which already counts it, never runs ahead of sled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_whose_caller_goes_away_still_becomes_durable() -> Result<()> {
        use futures::FutureExt;
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 100)?;
        // One poll plans the batch and starts its write, then the future is dropped.
        let _ = spool
            .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
            .now_or_never();
        assert_eq!(spool.seen().watermarks.get(&-1).map(|id| id.entry), Some(2));

        // Sled comes to hold the batch with no further call.
        let tree = db.open_tree("spool")?;
        let watermarks = key(WATERMARK, spool.rule(), &[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tree.scan_prefix(&watermarks).next().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the dropped append never reached sled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        spool.append(&[msg(3, -1, 0)], 10_001).await?;
        drop(spool);
        let reopened = open_spool(&db, dir.path(), 100)?;
        assert_eq!(reopened.open_segment().map(|m| m.messages), Some(3));
        Ok(())
    }

    #[tokio::test]
    async fn dedups_cuts_seals_and_acks_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let notify = Arc::new(Notify::new());
        let (spool, to_seal) =
            RuleSpool::open(&db, "test0001", dir.path(), &rule(3), notify.clone())?;
        assert!(to_seal.is_empty());

        // A batch of 2 entries: entry 1 batched ×3, entry 2 batched ×2; plus a redelivery.
        let batch = [
            msg(1, 0, 3),
            msg(1, 1, 3),
            msg(1, 2, 3),
            msg(2, 0, 2),
            msg(1, 1, 3),
        ];
        let out = spool.append(&batch, 10_000).await?;
        assert_eq!((out.accepted, out.duplicates), (4, 1));
        assert_eq!(
            out.closed,
            vec![0],
            "max_messages = 3 closes the first segment when full"
        );
        let out = spool.append(&[msg(2, 1, 2), msg(3, -1, 0)], 10_001).await?;
        assert_eq!(out.accepted, 2);
        assert_eq!(out.closed, vec![1]);

        for no in [0, 1] {
            spool.seal_blocking(no)?;
        }
        let sealed = spool.sealed();
        assert_eq!(sealed.len(), 2);
        let (meta0, path0) = spool.sealed_file(0)?;
        assert_eq!(
            read_payloads(&path0),
            "{\"e\":1,\"b\":0}\n{\"e\":1,\"b\":1}\n{\"e\":1,\"b\":2}\n"
        );
        assert_eq!(
            meta0.crc32c,
            crc32c::crc32c(&std::fs::read(&path0).expect("file"))
        );
        assert!(meta0.object_key.starts_with(
            "public/default/orders/1970/01/01/00/r1-19700101T000000Z-1_1_-1_0-test0001.jsonl.gz"
        ));

        // Segment 1 stored first: nothing may be acknowledged while segment 0 waits.
        assert_eq!(
            spool.mark_stored(1, "e1", 5, 1).await?,
            CommitOutcome::Committed
        );
        assert!(spool.ack_plan().is_none());
        assert_eq!(
            spool.mark_stored(0, "e0", 5, 1).await?,
            CommitOutcome::Committed
        );
        assert_eq!(
            spool.mark_stored(0, "e0", 5, 1).await?,
            CommitOutcome::AlreadyCommitted
        );
        let plan = spool.ack_plan().expect("both stored");
        assert_eq!(plan.segments, vec![0, 1]);
        assert_eq!(plan.positions.len(), 1);
        assert_eq!(
            plan.positions[0].id,
            MessageId {
                ledger: 1,
                entry: 3,
                partition: -1,
                batch_index: -1
            }
        );
        let freed = spool.free(&plan).await?;
        assert_eq!(freed.len(), 2);
        assert!(spool.is_empty());
        assert!(!path0.exists());
        assert!(
            !spool.logs.path(0).exists() && !spool.logs.path(1).exists(),
            "acknowledged records are deleted"
        );
        assert_eq!(
            spool.mark_stored(0, "e0", 5, 1).await?,
            CommitOutcome::AlreadyCommitted
        );

        // A redelivery of an acknowledged message asks for a re-ack, and is not spooled.
        let out = spool.append(&[msg(2, 0, 2)], 10_002).await?;
        assert_eq!((out.accepted, out.duplicates, out.reack.len()), (0, 1, 1));

        // The consumer's snapshot says the same before anything is encoded.
        spool.append(&[msg(4, -1, 0)], 10_003).await?;
        let seen = spool.seen();
        assert!(matches!(
            seen.check(&msg(2, 0, 2).id),
            Redelivery::Acknowledged(p) if p.id == plan.positions[0].id
        ));
        assert_eq!(seen.check(&msg(4, -1, 0).id), Redelivery::Spooled);
        assert_eq!(seen.check(&msg(5, -1, 0).id), Redelivery::New);
        let other_partition = MessageId {
            partition: 3,
            ..msg(1, -1, 0).id
        };
        assert_eq!(seen.check(&other_partition), Redelivery::New);
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_split_across_segments_is_acked_only_when_complete() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 2)?;
        let out = spool
            .append(&[msg(1, 0, 3), msg(1, 1, 3), msg(1, 2, 3)], 5)
            .await?;
        assert_eq!(out.closed, vec![0]);
        spool.seal_blocking(0)?;
        spool.mark_stored(0, "", 1, 1).await?;
        let plan = spool.ack_plan().expect("segment 0 stored");
        assert!(
            plan.positions.is_empty(),
            "entry 1 is not complete within segment 0"
        );
        Ok(())
    }

    #[tokio::test]
    async fn recovers_after_reopen_and_reseals_a_damaged_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let notify = Arc::new(Notify::new());
        {
            let db = open_db(&dir.path().join("db"))?;
            let (spool, _) =
                RuleSpool::open(&db, "test0001", dir.path(), &rule(2), notify.clone())?;
            spool
                .append(&[msg(1, -1, 0), msg(2, -1, 0), msg(3, -1, 0)], 5)
                .await?;
            // Segment 0 closed but never sealed: a crash here.
        }
        let db = open_db(&dir.path().join("db"))?;
        let (spool, to_seal) = RuleSpool::open(&db, "test0001", dir.path(), &rule(2), notify)?;
        assert_eq!(to_seal, vec![0]);
        assert_eq!(spool.open_segment().map(|o| o.messages), Some(1));
        let out = spool.append(&[msg(3, -1, 0), msg(4, -1, 0)], 6).await?;
        assert_eq!(
            (out.accepted, out.duplicates),
            (1, 1),
            "watermark survived the restart"
        );
        spool.seal_blocking(0)?;
        let (_, path) = spool.sealed_file(0)?;
        std::fs::write(&path, b"garbage").map_err(|e| IngesterError::io("corrupting", e))?;
        let moved = spool.quarantine(0)?;
        assert!(moved.exists());
        spool.seal_blocking(0)?;
        let (meta, path) = spool.sealed_file(0)?;
        assert_eq!(read_payloads(&path).lines().count(), 2);
        assert_eq!(meta.times_quarantined, 1);
        Ok(())
    }

    /// The spool's keys of rule r1, as they are now.
    fn snapshot(db: &Database) -> Result<Vec<(sled::IVec, sled::IVec)>> {
        let tree = db.open_tree(SPOOL_TREE)?;
        let mut all = Vec::new();
        for tag in [SEGMENT, WATERMARK, ACKED, COUNTERS] {
            for item in tree.scan_prefix(key(tag, "r1", &[])) {
                all.push(item?);
            }
        }
        Ok(all)
    }

    /// A database that lost writes (sled's since its last durable flush, when it fails one) and
    /// was reopened: the spool writes nothing from its newer memory, and once re-read takes the
    /// lost messages again exactly once.
    #[tokio::test]
    async fn after_a_reopen_the_spool_rereads_before_it_writes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 100)?;
        spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
        db.flush()?;
        let durable = snapshot(&db)?;
        spool.append(&[msg(3, -1, 0), msg(4, -1, 0)], 6).await?;
        // Lose the second batch's writes, as a failed sled instance does, and reopen.
        {
            let tree = db.open_tree(SPOOL_TREE)?;
            for (k, _) in snapshot(&db)? {
                tree.remove(k)?;
            }
            for (k, v) in durable {
                tree.insert(k, v)?;
            }
        }
        db.flush()?;
        db.reopen()?;

        let refused = spool.append(&[msg(5, -1, 0)], 7).await;
        assert!(
            matches!(refused, Err(IngesterError::DatabaseReopening)),
            "{refused:?}"
        );
        assert!(matches!(
            spool.close_open(8, true).await,
            Err(IngesterError::DatabaseReopening)
        ));
        assert_eq!(spool.reread()?, Vec::<u64>::new());
        assert_eq!(spool.seen().last(-1), Some(msg(2, -1, 0).id));
        // The new consumer gets 3 and 4 delivered again, then 5.
        let out = spool
            .append(&[msg(3, -1, 0), msg(4, -1, 0), msg(5, -1, 0)], 9)
            .await?;
        assert_eq!((out.accepted, out.duplicates), (3, 0));
        assert_eq!(spool.close_open(10, true).await?, Some(0));
        spool.seal_blocking(0)?;
        let (meta, path) = spool.sealed_file(0)?;
        assert_eq!(meta.messages, 5);
        assert_eq!(
            read_payloads(&path),
            (1..=5)
                .map(|e| format!("{{\"e\":{e},\"b\":-1}}\n"))
                .collect::<String>()
        );
        Ok(())
    }

    /// A commit the database did not keep is not taken as done: not acknowledged, and its retry
    /// is not "already committed".
    #[tokio::test]
    async fn a_commit_counts_once_it_is_durable() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 2)?;
        spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
        spool.seal_blocking(0)?;
        db.reopen()?;
        assert!(spool.mark_stored(0, "e0", 5, 1).await.is_err());
        assert_eq!(spool.sealed().len(), 1, "still sealed");
        assert!(spool.ack_plan().is_none(), "nothing to acknowledge");
        spool.reread()?;
        assert_eq!(
            spool.mark_stored(0, "e0", 5, 2).await?,
            CommitOutcome::Committed
        );
        assert_eq!(
            spool.mark_stored(0, "e0", 5, 2).await?,
            CommitOutcome::AlreadyCommitted
        );
        assert_eq!(spool.ack_plan().map(|p| p.segments), Some(vec![0]));
        Ok(())
    }

    #[tokio::test]
    async fn a_log_longer_than_the_spool_knows_is_cut_back_at_open() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let notify = Arc::new(Notify::new());
        let log_path;
        {
            let db = open_db(&dir.path().join("db"))?;
            let (spool, _) =
                RuleSpool::open(&db, "test0001", dir.path(), &rule(10), notify.clone())?;
            spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
            db.flush()?;
            log_path = spool.logs.path(0);
            // A batch whose log write was synced but whose sled batch never became durable,
            // and a log of a segment sled never heard of.
            spool.logs.append_durably(&[
                LogWrite {
                    segment_no: 0,
                    fresh: false,
                    bytes: b"{\"torn\":1}\n".to_vec(),
                },
                LogWrite {
                    segment_no: 1,
                    fresh: true,
                    bytes: b"{\"orphan\":1}\n".to_vec(),
                },
            ])?;
        }
        let db = open_db(&dir.path().join("db"))?;
        let (spool, _) = RuleSpool::open(&db, "test0001", dir.path(), &rule(10), notify)?;
        assert!(!spool.logs.path(1).exists(), "orphan log swept");
        let out = spool.append(&[msg(2, -1, 0), msg(3, -1, 0)], 6).await?;
        assert_eq!((out.accepted, out.duplicates), (1, 1));
        spool.close_open(7, true).await?;
        spool.seal_blocking(0)?;
        let (meta, path) = spool.sealed_file(0)?;
        assert_eq!(
            read_payloads(&path),
            "{\"e\":1,\"b\":-1}\n{\"e\":2,\"b\":-1}\n{\"e\":3,\"b\":-1}\n"
        );
        assert_eq!(meta.messages, 3);
        assert!(
            log_path.exists(),
            "the log stays until the segment is acknowledged"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_damaged_log_is_refused_at_sealing() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 2)?;
        spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
        let path = spool.logs.path(0);
        let mut bytes = std::fs::read(&path).map_err(|e| IngesterError::io("reading", e))?;
        bytes[3] ^= 0x20;
        std::fs::write(&path, &bytes).map_err(|e| IngesterError::io("writing", e))?;
        let err = spool.seal_blocking(0).expect_err("damaged log");
        assert!(err.to_string().contains("CRC32C"), "{err}");
        assert!(
            spool.sealed().is_empty(),
            "nothing damaged is offered for upload"
        );
        assert_eq!(
            segment_files(dir.path()),
            vec!["00000000000000000000.log"],
            "a failed seal leaves no copy behind"
        );
        Ok(())
    }

    #[tokio::test]
    async fn after_a_failed_log_write_the_next_record_names_its_topic_again() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 100)?;
        let on_topic = |entry: u64, topic: &str| {
            let mut m = msg(entry, -1, 0);
            m.topic = topic.to_string();
            m.with_payload(format!("{{\"e\":{entry}}}"))
        };
        let (a, b) = (
            "persistent://public/default/orders-partition-0",
            "persistent://public/default/orders-partition-1",
        );
        spool.append(&[on_topic(1, a)], 5).await?;
        // The log cannot be written (a directory stands where it should be): the batch on
        // topic b fails after the encoder saw b, and nothing of it reaches the log.
        let log = spool.logs.path(0);
        let aside = dir.path().join("aside.log");
        let io = |e| IngesterError::io("moving the log", e);
        std::fs::rename(&log, &aside).map_err(io)?;
        std::fs::create_dir(&log).map_err(io)?;
        assert!(spool.append(&[on_topic(2, b)], 5).await.is_err());
        std::fs::remove_dir(&log).map_err(io)?;
        std::fs::rename(&aside, &log).map_err(io)?;
        spool.reload()?;
        // Retried: the log's last topic is still a, so b must be written out again.
        spool.append(&[on_topic(2, b), on_topic(3, b)], 6).await?;
        spool.close_open(7, true).await?;
        spool.seal_blocking(0)?;
        let (_, path) = spool.sealed_file(0)?;
        assert_eq!(record_fields(&path, "topic"), vec![a, b, b]);
        Ok(())
    }

    #[tokio::test]
    async fn a_segment_left_open_with_a_json_lines_log_is_closed_and_sealed_as_it_is() -> Result<()>
    {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        {
            let db = open_db(&dir.path().join("db"))?;
            let spool = open_spool(&db, dir.path(), 100)?;
            let first = [msg(1, -1, 0), msg(2, -1, 0)];
            spool.append(&first, 5).await?;
            // Make it what an older version left: the open segment's log holds JSON lines.
            let mut open = spool.open_segment().expect("open segment");
            let json: Vec<u8> = first
                .iter()
                .flat_map(|m| {
                    crate::log_record::json_line(&m.topic, &m.producer_name, &m.body)
                        .expect("valid body")
                })
                .collect();
            std::fs::write(spool.logs.path(open.segment_no), &json)
                .map_err(|e| IngesterError::io("writing", e))?;
            open.log_format = LogFormat::JsonLines;
            open.log_bytes = 0;
            open.record_bytes = json.len() as u64;
            open.log_crc32c = crc32c::crc32c(&json);
            spool.tree()?.insert(
                key(SEGMENT, &spool.rule, &open.segment_no.to_be_bytes()),
                to_json(&open)?,
            )?;
            db.flush()?;
        }
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 100)?;
        let out = spool.append(&[msg(3, -1, 0)], 6).await?;
        assert_eq!(
            out.closed,
            vec![0],
            "the JSON-lines segment is closed first"
        );
        spool.seal_blocking(0)?;
        let (_, path) = spool.sealed_file(0)?;
        assert_eq!(
            read_payloads(&path),
            "{\"e\":1,\"b\":-1}\n{\"e\":2,\"b\":-1}\n"
        );
        let open = spool.open_segment().expect("a new open segment");
        assert_eq!(open.log_format, LogFormat::Compact);
        spool.close_open(7, true).await?;
        spool.seal_blocking(1)?;
        let (meta, path) = spool.sealed_file(1)?;
        assert_eq!(read_payloads(&path), "{\"e\":3,\"b\":-1}\n");
        assert_eq!(meta.record_bytes, read_file(&path).len() as u64);
        Ok(())
    }

    #[tokio::test]
    async fn records_of_a_spool_from_before_record_logs_move_into_logs() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let lines = ["{\"e\":1}\n", "{\"e\":2}\n", "{\"e\":3}\n"];
        {
            // The layout an older ingester left: records as sled keys, metas without the flag.
            let db = open_db(&dir.path().join("db"))?;
            let tree = db.open_tree("spool")?;
            let config = rule(2);
            let mut closed = SegmentMeta {
                segment_no: 0,
                state: SegmentState::Closed,
                window_start_ms: 0,
                opened_at_ms: 1,
                first_seq: 0,
                last_seq: 1,
                messages: 2,
                record_bytes: (lines[0].len() + lines[1].len()) as u64,
                first_id: Some(msg(1, -1, 0).id),
                last_id: Some(msg(2, -1, 0).id),
                oldest_publish_ms: 1,
                ack_positions: BTreeMap::new(),
                target: Target::of(&config),
                object_key: "k".into(),
                file_bytes: 0,
                crc32c: 0,
                sealed_at_ms: 0,
                stored_at_ms: 0,
                etag: String::new(),
                upload_ms: 0,
                attempts: 0,
                times_quarantined: 0,
                log_crc32c: 0,
                records_in_log: false,
                log_format: LogFormat::JsonLines,
                log_bytes: 0,
            };
            tree.insert(key(SEGMENT, "r1", &0u64.to_be_bytes()), to_json(&closed)?)?;
            closed.segment_no = 1;
            closed.state = SegmentState::Open;
            closed.first_seq = 2;
            closed.last_seq = 2;
            closed.messages = 1;
            closed.record_bytes = lines[2].len() as u64;
            tree.insert(key(SEGMENT, "r1", &1u64.to_be_bytes()), to_json(&closed)?)?;
            for (seq, line) in lines.iter().enumerate() {
                tree.insert(
                    key(RECORD, "r1", &(seq as u64).to_be_bytes()),
                    line.as_bytes(),
                )?;
            }
            let counters = Counters {
                next_seq: 3,
                next_segment: 2,
                source_changes: 0,
            };
            tree.insert(key(COUNTERS, "r1", &[]), to_json(&counters)?)?;
            db.flush()?;
        }
        let db = open_db(&dir.path().join("db"))?;
        let (spool, to_seal) = RuleSpool::open(
            &db,
            "test0001",
            dir.path(),
            &rule(2),
            Arc::new(Notify::new()),
        )?;
        assert_eq!(to_seal, vec![0]);
        assert_eq!(spool.tree()?.scan_prefix(key(RECORD, "r1", &[])).count(), 0);
        spool.seal_blocking(0)?;
        let (_, path) = spool.sealed_file(0)?;
        assert_eq!(read_file(&path), format!("{}{}", lines[0], lines[1]));
        spool.close_open(10, true).await?;
        spool.seal_blocking(1)?;
        let (_, path) = spool.sealed_file(1)?;
        assert_eq!(read_file(&path), lines[2]);
        Ok(())
    }

    fn big_msg(entry: u64) -> Incoming {
        msg(entry, -1, 0).with_payload(format!(
            "{{\"e\":{entry},\"pad\":\"{}\"}}",
            "x".repeat(1000)
        ))
    }

    /// Appends `batches` batches of 500 ~1 KB records from entry `first`, feeding the presealer
    /// after each; returns the records' lines.
    async fn append_and_feed(spool: &Arc<RuleSpool>, first: u64, batches: u64) -> Result<String> {
        let mut lines = Vec::new();
        for batch in 0..batches {
            let start = first + batch * 500;
            let messages: Vec<Incoming> = (start..start + 500).map(big_msg).collect();
            lines.extend(messages.iter().flat_map(|m| {
                let mut payload = m.payload_for_tests().into_bytes();
                payload.push(b'\n');
                payload
            }));
            spool.append(&messages, 5).await?;
            spool.feed_blocking()?;
        }
        String::from_utf8(lines).map_err(|e| IngesterError::Corrupt(e.to_string()))
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("segments").join("r1"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_large_open_segment_is_compressed_while_it_grows() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 1_000_000)?;
        let expected = append_and_feed(&spool, 0, 12).await?;
        assert!(
            lock_presealing(&spool.presealing).contains_key(&0),
            "a 6 MB open segment is presealing"
        );
        assert!(segment_files(dir.path()).contains(&"00000000000000000000.preseal.tmp".to_string()));
        spool.close_open(6, true).await?;
        spool.seal_blocking(0)?;
        let (meta, path) = spool.sealed_file(0)?;
        assert_eq!(read_payloads(&path), expected);
        assert_eq!(
            meta.crc32c,
            crc32c::crc32c(&std::fs::read(&path).map_err(|e| IngesterError::io("reading", e))?)
        );
        assert!(lock_presealing(&spool.presealing).is_empty());
        assert_eq!(
            segment_files(dir.path()),
            vec!["00000000000000000000.jsonl.gz", "00000000000000000000.log"],
            "no temporary file left behind"
        );

        // A reload (after a failed write) makes a running preseal unusable: the seal starts over.
        let expected = append_and_feed(&spool, 10_000, 10).await?;
        assert!(lock_presealing(&spool.presealing).contains_key(&1));
        spool.reload()?;
        spool.close_open(8, true).await?;
        spool.seal_blocking(1)?;
        let (_, path) = spool.sealed_file(1)?;
        assert_eq!(read_payloads(&path), expected);
        assert!(
            !segment_files(dir.path())
                .iter()
                .any(|name| name.ends_with(".tmp")),
            "the stale preseal's file is gone: {:?}",
            segment_files(dir.path())
        );
        Ok(())
    }

    /// ListSealed must never offer a segment whose seal is not yet durable: the flush comes
    /// first, and a seal whose flush fails is not shown at all (it is sealed again later).
    #[tokio::test]
    async fn a_seal_is_shown_only_once_flushed() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_db(&dir.path().join("db"))?;
        let spool = open_spool(&db, dir.path(), 2)?;
        // (seal_blocking runs on this thread: a current-thread runtime.)
        let out = spool.append(&[msg(1, 0, 1), msg(2, 0, 1)], 10_000).await?;
        assert_eq!(out.closed, vec![0]);
        let shown_while_flushing = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = shown_while_flushing.clone();
        SEAL_FLUSH.with(|f| {
            *f.borrow_mut() = Some(Box::new(move |spool: &RuleSpool| {
                let sealed = spool.sealed().iter().any(|m| m.segment_no == 0);
                seen.lock().expect("test mutex").push(sealed);
                Err(IngesterError::Corrupt("the disk is full".into()))
            }));
        });
        assert!(spool.seal_blocking(0).is_err(), "the flush failed");
        SEAL_FLUSH.with(|f| *f.borrow_mut() = None);
        assert_eq!(
            *shown_while_flushing.lock().expect("test mutex"),
            vec![false],
            "shown as sealed before the flush"
        );
        assert!(
            spool.sealed().is_empty(),
            "shown as sealed after a failed flush"
        );

        spool.seal_blocking(0)?;
        assert_eq!(
            spool
                .sealed()
                .iter()
                .map(|m| m.segment_no)
                .collect::<Vec<_>>(),
            vec![0]
        );
        Ok(())
    }
}
