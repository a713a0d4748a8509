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
//! Records live in one append-only file per segment, `segments/<rule>/<segment_no>.log`
//! ([`record_log`]), in consumption order and in a compact binary form ([`log_record`]). Sealing
//! turns the log into the object's JSON lines and gzips them into `<segment_no>.jsonl.gz`
//! (`crate::seal`); freeing unlinks both. Everything else is in one sled tree `spool` of the
//! data dir's database ([`db`]), keys `[tag][rule]\0[suffix]` (`keys.rs`):
//!
//! | tag | suffix | value |
//! | --- | --- | --- |
//! | `s` | segment_no (u64 BE) | [`SegmentMeta`] as JSON, with its log's length and CRC32C |
//! | `w` | partition (flipped i32 BE) | highest message id spooled for the partition + topic |
//! | `a` | partition | highest message id acknowledged for the partition + topic |
//! | `n` | (none) | the rule's counters: next seq, next segment number, source changes |
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
//!
//! # Files
//!
//! `state.rs` the segment meta and its states; `keys.rs` the sled keys; `load.rs` reading a
//! spool back (open, reload, reread: one function); `redelivery.rs` invariant 2; `append.rs`
//! message → open → closed (invariant 1); `ack.rs` sealed → stored → gone (invariants 4, 5).
//! closed → sealed and quarantine are `crate::seal`'s; where a segment is cut and how its file is
//! written, `crate::segment`'s. [`disk`] pauses consumption when space runs low; [`spool_id`]
//! names this data dir in object keys.

pub mod db;
pub mod disk;
pub mod log_record;
pub mod record_log;
pub mod spool_id;

mod ack;
mod append;
mod fence;
pub(crate) mod keys;
mod load;
mod redelivery;
mod state;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub use ack::{AckPlan, CommitOutcome};
pub use append::{AppendOutcome, Incoming};
pub use fence::{Cover, CoverOutcome};
pub use redelivery::{Redelivery, Seen};
pub use state::{Position, SegmentMeta, SegmentState, Span, Target};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::types::RuleConfig;
use tokio::sync::Notify;

use crate::error::{IngesterError, Result};
use crate::seal::Presealing;
use crate::segment::cutter::CutPolicy;
use db::Database;
use keys::SPOOL_TREE;
use log_record::LogEncoder;
use record_log::RecordLogs;
use state::{policy_of, segment_path, Counters};

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

pub(crate) struct State {
    counters: Counters,
    policy: CutPolicy,
    pub(crate) target: Target,
    /// The rule is fenced (several ingesters share its subscription): a segment per partition.
    fence: bool,
    watermarks: BTreeMap<i32, Position>,
    acked: BTreeMap<i32, Position>,
    /// The open segments by lane: one, [`ALL_PARTITIONS`], unless the rule is fenced, then one
    /// per partition (see [`lane_of`]).
    pub(crate) open: BTreeMap<i32, SegmentMeta>,
    /// Every segment that is not open, by number (= consumption order).
    pub(crate) segments: BTreeMap<u64, SegmentMeta>,
    /// Per open segment, what its log last wrote of topic and producer name. Reset whenever the
    /// log may have been cut back: a fresh encoder writes both again.
    encoders: BTreeMap<u64, LogEncoder>,
}

/// The lane of an unfenced rule's one open segment, whatever the partition.
pub(crate) const ALL_PARTITIONS: i32 = i32::MIN;

/// Which open segment a message of `partition` goes to.
pub(crate) fn lane_of(fenced: bool, partition: i32) -> i32 {
    if fenced {
        partition
    } else {
        ALL_PARTITIONS
    }
}

pub struct RuleSpool {
    pub(crate) rule: String,
    /// This data dir's id, part of every object name (see `proto::types::object_key`).
    spool_id: String,
    /// Asked for the `spool` tree at each use, never kept: see `db.rs`.
    pub(crate) db: Arc<Database>,
    /// The database generation the in-memory state was read from. After a reopen the database
    /// may hold less than the state says, and a write made from the state would mix the two:
    /// nothing is written until [`RuleSpool::reread`].
    read_generation: AtomicU64,
    pub(crate) segments_dir: PathBuf,
    pub(crate) quarantine_dir: PathBuf,
    pub(crate) logs: RecordLogs,
    state: Mutex<State>,
    /// Writers compressing open segments ahead of their seal (see `crate::seal`).
    pub(crate) presealing: Presealing,
    /// Bumped whenever the in-memory state is re-read from disk after a failed write (the open
    /// segment's log may have been cut back): writers of an older generation are thrown away.
    pub(crate) generation: AtomicU64,
    /// Woken when a segment becomes sealed (the uploader's long poll waits on it).
    pub(crate) sealed_notify: Arc<Notify>,
    /// Held from an append's plan until its batch is durable (see [`RuleSpool::append`]).
    appending: Arc<tokio::sync::Mutex<()>>,
}

impl RuleSpool {
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The spool tree of the current database instance, for one operation; refused while the
    /// in-memory state is from an instance before the last reopen.
    pub(crate) fn tree(&self) -> Result<sled::Tree> {
        if self.read_generation.load(Ordering::SeqCst) != self.db.generation() {
            return Err(IngesterError::DatabaseReopening);
        }
        self.db.open_tree(SPOOL_TREE)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A rule edit: caps, window and destination apply from the next segment on.
    pub fn reconfigure(&self, rule: &RuleConfig) {
        let mut state = self.lock();
        state.policy = policy_of(rule);
        state.target = Target::of(rule);
        state.fence = rule.fence;
    }

    /// Where `meta`'s segment file is (sealed or not).
    pub fn segment_file(&self, meta: &SegmentMeta) -> PathBuf {
        segment_path(&self.segments_dir, meta)
    }

    pub fn segments(&self) -> Vec<SegmentMeta> {
        let state = self.lock();
        let mut all: Vec<SegmentMeta> = state.segments.values().cloned().collect();
        all.extend(state.open.values().cloned());
        all.sort_by_key(|meta| meta.segment_no);
        all
    }

    /// The sealed segments the uploader may store now: of a fenced partition only the oldest
    /// one not yet stored, since a conflict on it may cut the ones after it (`fence.rs`).
    pub fn sealed(&self) -> Vec<SegmentMeta> {
        let state = self.lock();
        let mut waiting = std::collections::BTreeSet::new();
        let mut sealed = Vec::new();
        for meta in state.segments.values() {
            if let Some(partition) = meta.fenced_partition() {
                if meta.state == SegmentState::Stored || !waiting.insert(partition) {
                    continue;
                }
            }
            if meta.state == SegmentState::Sealed {
                sealed.push(meta.clone());
            }
        }
        sealed
    }

    /// The oldest open segment (an unfenced rule has only one).
    pub fn open_segment(&self) -> Option<SegmentMeta> {
        self.lock()
            .open
            .values()
            .min_by_key(|meta| meta.segment_no)
            .cloned()
    }

    pub fn stats(&self) -> SpoolStats {
        let state = self.lock();
        let mut stats = SpoolStats::default();
        let mut oldest = u64::MAX;
        for meta in state.segments.values().chain(state.open.values()) {
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
        for open in state.open.values() {
            stats.open_segment_messages += open.messages;
            if stats.open_segment_opened_at_ms == 0
                || open.opened_at_ms < stats.open_segment_opened_at_ms
            {
                stats.open_segment_opened_at_ms = open.opened_at_ms;
            }
        }
        stats.oldest_publish_ms = if oldest == u64::MAX { 0 } else { oldest };
        stats
    }

    /// Whether anything is not yet acknowledged.
    pub fn is_empty(&self) -> bool {
        let state = self.lock();
        state.segments.is_empty() && state.open.values().all(|o| o.messages == 0)
    }
}
