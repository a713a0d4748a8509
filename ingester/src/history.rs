//! Per-rule run history: one entry per stored segment, failure or rule change, newest first.
//!
//! Bounded: at most `max_entries` per rule are kept; older ones are trimmed as new ones arrive.

use std::sync::atomic::{AtomicU64, Ordering};

use proto::v1::LogEntry;
use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
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
    pub fn event(kind: &str, failed: bool, message: impl Into<String>) -> HistoryEntry {
        HistoryEntry {
            at_ms: proto::types::time::now_millis(),
            kind: kind.to_string(),
            failed,
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

pub struct History {
    tree: sled::Tree,
    max_entries: usize,
    /// Tie-breaker so two entries in the same millisecond keep both.
    counter: AtomicU64,
}

fn prefix(rule: &str) -> Vec<u8> {
    let mut key = rule.as_bytes().to_vec();
    key.push(0);
    key
}

impl History {
    pub fn open(db: &sled::Db, max_entries: usize) -> Result<History> {
        Ok(History {
            tree: db.open_tree("history")?,
            max_entries,
            counter: AtomicU64::new(0),
        })
    }

    pub fn record(&self, rule: &str, entry: &HistoryEntry) -> Result<()> {
        let mut key = prefix(rule);
        key.extend_from_slice(&entry.at_ms.to_be_bytes());
        key.extend_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let value =
            serde_json::to_vec(entry).map_err(|e| crate::IngesterError::Corrupt(e.to_string()))?;
        self.tree.insert(key, value)?;
        if self.counter.load(Ordering::Relaxed).is_multiple_of(64) {
            self.trim(rule)?;
        }
        Ok(())
    }

    fn trim(&self, rule: &str) -> Result<()> {
        let keys: Vec<sled::IVec> = self
            .tree
            .scan_prefix(prefix(rule))
            .keys()
            .rev()
            .skip(self.max_entries)
            .collect::<std::result::Result<_, _>>()?;
        for key in keys {
            self.tree.remove(key)?;
        }
        Ok(())
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
        for item in self.tree.scan_prefix(prefix(rule)).rev() {
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
        for key in self.tree.scan_prefix(prefix(rule)).keys() {
            self.tree.remove(key?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_filtered_and_bounded() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::IngesterError::io("tempdir", e))?;
        let db = sled::open(dir.path())?;
        let history = History::open(&db, 100)?;
        for i in 0..300u64 {
            let mut e = HistoryEntry::event("stored", i % 10 == 0, format!("entry {i}"));
            e.at_ms = 1000 + i;
            history.record("r1", &e)?;
        }
        history.record("r2", &HistoryEntry::event("stored", false, "other rule"))?;
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
}
