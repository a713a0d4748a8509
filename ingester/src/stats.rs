//! A cheap snapshot of one rule's consumer, read by `status` and the tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct RuleStats {
    pub connected: AtomicBool,
    pub disk_full: AtomicBool,
    pub messages_consumed: AtomicU64,
    /// Payload bytes of the messages counted in `messages_consumed`; read by `/metrics`.
    pub consumed_bytes: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub segments_stored: AtomicU64,
    pub messages_acked: AtomicU64,
    pub quarantined: AtomicU64,
    /// Failures the uploader reported (`ReportUploadFailure`); read by `/metrics`.
    pub upload_failures: AtomicU64,
    /// Messages published before a timestamp start, left out (see `consumer/receive.rs`).
    pub before_start_dropped: AtomicU64,
    /// Since when the rule reads nothing from Pulsar (paused, disconnected, or a partition
    /// blocked); 0 while it reads. What waits in Pulsar is at least this old.
    pub reading_stopped_since_ms: AtomicU64,
    /// The subscription's backlog on the broker as last reported (messages), and whether one
    /// was reported at all.
    pub broker_backlog: AtomicU64,
    pub broker_backlog_known: AtomicBool,
    /// When these stats began: the rule's start in this process (a consumer restarted by an
    /// edit keeps them). Before the first stored object, "nothing stored since" this.
    pub since_ms: u64,
    text: Mutex<TextStats>,
}

/// A partition stopped before an entry that cannot be decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockedEntry {
    /// `ledger:entry[:partition]`, or empty when the entry cannot be named.
    pub entry: String,
    pub reason: String,
}

#[derive(Default, Clone)]
pub struct TextStats {
    pub last_error: String,
    pub last_error_at_ms: u64,
    pub last_object_key: String,
    pub last_stored_at_ms: u64,
    /// Partitions stopped before an undecodable entry (empty: none).
    pub blocked: Vec<BlockedEntry>,
}

impl RuleStats {
    /// Stats of a rule starting now.
    pub fn new() -> RuleStats {
        RuleStats {
            since_ms: proto::types::time::now_millis(),
            ..RuleStats::default()
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn text_mut(&self) -> std::sync::MutexGuard<'_, TextStats> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_error(&self, error: impl Into<String>) {
        let mut t = self.text_mut();
        t.last_error = error.into();
        t.last_error_at_ms = proto::types::time::now_millis();
    }

    pub fn set_stored(&self, key: &str) {
        let mut t = self.text_mut();
        t.last_object_key = key.to_string();
        t.last_stored_at_ms = proto::types::time::now_millis();
    }

    pub fn set_blocked(&self, blocked: Vec<BlockedEntry>) {
        self.text_mut().blocked = blocked;
    }

    pub fn text(&self) -> TextStats {
        self.text_mut().clone()
    }
}
