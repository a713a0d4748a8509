//! Per-rule run history: one entry per stored segment, failure or rule change, newest first.
//!
//! Bounded: each rule keeps its newest `max_entries`; once it holds [`TRIM_SLACK`] more, the
//! older ones are trimmed. The count is per rule and read from the database after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proto::v1::LogEntry;
use proto::wire::HistoryKind;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::spool::db::Database;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    /// A [`HistoryKind`]'s text: kept as written, so entries of a kind a later version adds
    /// still load.
    pub kind: String,
    pub failed: bool,
    pub message: String,
    #[serde(default)]
    pub segment_no: u64,
    #[serde(default)]
    pub object_key: String,
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub window_start_ms: u64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub attempts: u32,
}

impl HistoryEntry {
    /// An entry of `kind` now; whether it is a failure follows from the kind.
    pub fn event(kind: HistoryKind, message: impl Into<String>) -> HistoryEntry {
        HistoryEntry {
            at_ms: proto::types::time::now_millis(),
            kind: kind.as_str().to_string(),
            failed: kind.is_failure(),
            message: message.into(),
            ..HistoryEntry::default()
        }
    }

    pub fn to_proto(&self) -> LogEntry {
        use proto::types::time::rfc3339_from_millis;
        LogEntry {
            at: rfc3339_from_millis(self.at_ms),
            kind: self.kind.clone(),
            failed: self.failed,
            message: self.message.clone(),
            segment_no: self.segment_no,
            object_key: self.object_key.clone(),
            messages: self.messages,
            bytes: self.bytes,
            window_start: if self.window_start_ms > 0 {
                rfc3339_from_millis(self.window_start_ms)
            } else {
                String::new()
            },
            duration_ms: self.duration_ms,
            attempts: self.attempts,
        }
    }
}

/// The most of a text from outside (an uploader's failure report) that is kept in a history
/// entry and in `status`.
pub const MAX_REPORTED_TEXT: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary, saying that it was cut and how
/// long it was.
pub fn cut_text(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… [cut: {} bytes in all]",
        &text[..end],
        text.len()
    ))
}

/// How far past `max_entries` a rule's history may grow before it is trimmed back (trimming
/// scans the rule's entries, so it is not done on every write).
pub const TRIM_SLACK: usize = 64;

const TREE: &str = "history";

pub struct History {
    /// Asked for the `history` tree at each use, never kept: see `db.rs`.
    db: Arc<Database>,
    max_entries: usize,
    /// Entries each rule holds, counted from the tree the first time the rule writes after
    /// opening: trimming then depends on the rule's own history, not on a process-wide counter
    /// that other rules advance and a restart resets.
    counts: Mutex<HashMap<String, usize>>,
}

fn prefix(rule: &str) -> Vec<u8> {
    let mut key = rule.as_bytes().to_vec();
    key.push(0);
    key
}

impl History {
    pub fn open(db: &Arc<Database>, max_entries: usize) -> Result<History> {
        db.open_tree(TREE)?;
        Ok(History {
            db: db.clone(),
            max_entries,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn tree(&self) -> Result<sled::Tree> {
        self.db.open_tree(TREE)
    }

    /// After the database was reopened: writes it lost may have been counted, so each rule is
    /// counted again at its next write.
    pub fn forget_counts(&self) {
        self.counts().clear();
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, rule: &str, entry: &HistoryEntry) -> Result<()> {
        let mut key = prefix(rule);
        key.extend_from_slice(&entry.at_ms.to_be_bytes());
        // Tie-breaker for entries of the same millisecond: unique across restarts too (sled
        // persists where its id generator stands), so a restart never overwrites an entry.
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        let value =
            serde_json::to_vec(entry).map_err(|e| crate::IngesterError::Corrupt(e.to_string()))?;
        let mut counts = self.counts();
        let tree = self.tree()?;
        let count = match counts.get(rule) {
            Some(&count) => count,
            None => tree.scan_prefix(prefix(rule)).keys().count(),
        };
        tree.insert(key, value)?;
        drop(tree);
        let mut count = count + 1;
        if count > self.max_entries + TRIM_SLACK {
            count = self.trim(rule)?;
        }
        counts.insert(rule.to_string(), count);
        Ok(())
    }

    /// Removes all but the newest `max_entries` of the rule; returns how many are left.
    fn trim(&self, rule: &str) -> Result<usize> {
        let tree = self.tree()?;
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(prefix(rule))
            .keys()
            .rev()
            .skip(self.max_entries)
            .collect::<std::result::Result<_, _>>()?;
        for key in keys {
            tree.remove(key)?;
        }
        Ok(tree.scan_prefix(prefix(rule)).keys().count())
    }

    /// Newest first.
    pub fn list(
        &self,
        rule: &str,
        failed_only: bool,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        for item in self.tree()?.scan_prefix(prefix(rule)).rev() {
            let (_, value) = item?;
            let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&value) else {
                continue;
            };
            if entry.at_ms < since_ms {
                break;
            }
            if failed_only && !entry.failed {
                continue;
            }
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn remove_rule(&self, rule: &str) -> Result<()> {
        let mut counts = self.counts();
        let tree = self.tree()?;
        for key in tree.scan_prefix(prefix(rule)).keys() {
            tree.remove(key?)?;
        }
        counts.remove(rule);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_filtered_and_bounded() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::IngesterError::io("tempdir", e))?;
        let db = Arc::new(crate::spool::db::tests::open_in(dir.path()));
        let history = History::open(&db, 100)?;
        for i in 0..300u64 {
            // Every tenth a failure, to filter on.
            let kind = if i % 10 == 0 {
                HistoryKind::UploadFailed
            } else {
                HistoryKind::Stored
            };
            let mut e = HistoryEntry::event(kind, format!("entry {i}"));
            e.at_ms = 1000 + i;
            history.record("r1", &e)?;
        }
        history.record(
            "r2",
            &HistoryEntry::event(HistoryKind::Stored, "other rule"),
        )?;
        let all = history.list("r1", false, 0, 1000)?;
        assert!(
            all.len() <= 164,
            "trimmed to about max_entries, got {}",
            all.len()
        );
        assert_eq!(all[0].message, "entry 299");
        let failed = history.list("r1", true, 0, 3)?;
        assert_eq!(failed.len(), 3);
        assert!(failed.iter().all(|e| e.failed));
        let recent = history.list("r1", false, 1290, 1000)?;
        assert_eq!(recent.len(), 10);
        history.remove_rule("r1")?;
        assert!(history.list("r1", false, 0, 10)?.is_empty());
        assert_eq!(history.list("r2", false, 0, 10)?.len(), 1);
        Ok(())
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_saying_so() {
        assert_eq!(cut_text("short", 10), "short");
        assert_eq!(cut_text("0123456789", 10), "0123456789");
        assert_eq!(
            cut_text("0123456789a", 10),
            "0123456789… [cut: 11 bytes in all]"
        );
        // "é" is two bytes: a cut at byte 5 would split the third one.
        assert_eq!(cut_text("éééé", 5), "éé… [cut: 8 bytes in all]");
        assert_eq!(cut_text("é", 1), "… [cut: 2 bytes in all]");
    }

    fn count(history: &History, rule: &str) -> Result<usize> {
        Ok(history.list(rule, false, 0, usize::MAX)?.len())
    }

    /// Two rules taking turns: each must be trimmed, whichever of them the writes land on.
    #[test]
    fn every_rule_is_trimmed_whatever_the_others_do() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::IngesterError::io("tempdir", e))?;
        let db = Arc::new(crate::spool::db::tests::open_in(dir.path()));
        let history = History::open(&db, 100)?;
        for i in 0..1000u64 {
            for rule in ["a", "b"] {
                history.record(
                    rule,
                    &HistoryEntry::event(HistoryKind::Stored, format!("{i}")),
                )?;
            }
        }
        for rule in ["a", "b"] {
            let kept = count(&history, rule)?;
            assert!(
                (100..=100 + TRIM_SLACK).contains(&kept),
                "rule {rule}: {kept} entries"
            );
        }
        Ok(())
    }

    /// An ingester restarted more often than it writes 64 entries still keeps each rule bounded.
    #[test]
    fn trimming_holds_across_restarts() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::IngesterError::io("tempdir", e))?;
        let db = Arc::new(crate::spool::db::tests::open_in(dir.path()));
        for restart in 0..40u64 {
            let history = History::open(&db, 50)?;
            for i in 0..10u64 {
                // The same millisecond every time: keys must not collide across restarts.
                let mut e = HistoryEntry::event(HistoryKind::Stored, format!("{restart}.{i}"));
                e.at_ms = 1000;
                history.record("r1", &e)?;
            }
        }
        let history = History::open(&db, 50)?;
        let kept = count(&history, "r1")?;
        assert!((50..=50 + TRIM_SLACK).contains(&kept), "{kept} entries");
        assert_eq!(
            history.list("r1", false, 0, 1)?[0].message,
            "39.9",
            "newest first"
        );
        Ok(())
    }
}
