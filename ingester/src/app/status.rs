//! Read-back for operators and `/metrics`: `status` (a rule's state, from what its task
//! reports: [`rule_state`]), `segments`, `logs`, and what only `/metrics` shows per rule.

use proto::v1;

use super::history::HistoryEntry;
use super::IngesterApp;
use crate::error::{IngesterError, Result};
use crate::stats::{RuleStats, TextStats};

/// A rule's counters that only `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMetrics {
    pub name: String,
    /// Failures the uploader reported.
    pub upload_failures: u64,
    /// Payload bytes of the messages consumed.
    pub consumed_bytes: u64,
    /// When the rule's last object was stored, or, before its first since the rule started in
    /// this process, that start (unix ms): nothing was stored since at least then.
    pub nothing_stored_since_ms: u64,
}

impl IngesterApp {
    pub async fn status(&self, name: Option<&str>) -> Result<v1::StatusReply> {
        let running = self.running.lock().await;
        let mut rules = Vec::new();
        let mut disk_full = false;
        let now = proto::types::time::now_millis();
        let mut names: Vec<&String> = running.keys().collect();
        names.sort();
        if let Some(n) = name {
            if !running.contains_key(n) {
                return Err(IngesterError::RuleNotFound(n.into()));
            }
        }
        for rule_name in names {
            if name.is_some_and(|n| n != rule_name) {
                continue;
            }
            let Some(handle) = running.get(rule_name) else {
                continue;
            };
            let stored = self.rules.get(rule_name)?;
            let spool = handle.spool.stats();
            let stats = &handle.stats;
            let text = stats.text();
            let connected = stats.connected.load(std::sync::atomic::Ordering::Relaxed);
            let full = stats.disk_full.load(std::sync::atomic::Ordering::Relaxed);
            disk_full |= full;
            let (state, reason) = rule_state(stored.paused, &text, full, connected);
            let quarantined = RuleStats::get(&stats.quarantined);
            rules.push(v1::RuleStatus {
                name: rule_name.clone(),
                state: state.to_string(),
                state_reason: reason,
                consumer_connected: connected,
                messages_consumed: RuleStats::get(&stats.messages_consumed),
                duplicates_dropped: RuleStats::get(&stats.duplicates_dropped),
                spooled_messages: spool.spooled_messages,
                spooled_bytes: spool.spooled_bytes,
                open_segment_messages: spool.open_segment_messages,
                open_segment_age_ms: age_ms(now, spool.open_segment_opened_at_ms),
                // Closed segments count too: their files are being written for the upload.
                sealed_segments: spool.waiting_segments,
                last_object_key: text.last_object_key.clone(),
                last_stored_at: fmt_ms(text.last_stored_at_ms),
                last_error: text.last_error.clone(),
                last_error_at: fmt_ms(text.last_error_at_ms),
                backlog_age_ms: backlog_age_ms(
                    now,
                    spool.oldest_publish_ms,
                    RuleStats::get(&stats.reading_stopped_since_ms),
                ),
                segments_stored: RuleStats::get(&stats.segments_stored),
                messages_acked: RuleStats::get(&stats.messages_acked),
                quarantined_segments: quarantined,
                blocked_entries: text.blocked.iter().map(|b| b.entry.clone()).collect(),
                broker_backlog_messages: RuleStats::get(&stats.broker_backlog),
                broker_backlog_known: stats
                    .broker_backlog_known
                    .load(std::sync::atomic::Ordering::Relaxed),
            });
        }
        Ok(v1::StatusReply {
            rules,
            version: proto::VERSION.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            spool_disk_full: disk_full,
        })
    }

    /// What `/metrics` shows per rule besides the status reply, by rule name.
    pub async fn rule_metrics(&self) -> Vec<RuleMetrics> {
        let running = self.running.lock().await;
        let mut out: Vec<RuleMetrics> = running
            .iter()
            .map(|(name, h)| {
                let stored_ms = h.stats.text().last_stored_at_ms;
                RuleMetrics {
                    name: name.clone(),
                    upload_failures: RuleStats::get(&h.stats.upload_failures),
                    consumed_bytes: RuleStats::get(&h.stats.consumed_bytes),
                    // Nothing stored yet since the rule started here: at least since then.
                    nothing_stored_since_ms: if stored_ms > 0 {
                        stored_ms
                    } else {
                        h.stats.since_ms
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Free bytes on `data_dir`'s filesystem (`None`: it cannot say) and the reserve below which
    /// consumption pauses (`disk_reserve_bytes`), for `/metrics`.
    pub fn spool_disk(&self) -> (Option<u64>, u64) {
        (self.disk.free_bytes(), self.disk.reserve())
    }

    /// The rule's segments in the spool, for `segments`.
    pub async fn segments(&self, name: &str) -> Result<Vec<v1::SegmentInfo>> {
        let spool = self.spool_of(name).await?;
        Ok(spool.segments().iter().map(|m| m.to_proto(name)).collect())
    }

    pub fn logs(&self, req: &v1::LogsRequest) -> Result<Vec<v1::LogEntry>> {
        self.rules.get(&req.name)?;
        let (since_ms, limit) = logs_window(proto::types::time::now_millis(), req);
        Ok(self
            .history
            .list(&req.name, req.failed_only, since_ms, limit)?
            .iter()
            .map(HistoryEntry::to_proto)
            .collect())
    }
}

/// A rule's `state` and `state_reason`, from its stored pause and what its task last reported.
/// The first that holds wins: paused by the operator, stopped before an undecodable entry, the
/// spool full, not connected to Pulsar; otherwise running.
fn rule_state(
    paused: bool,
    text: &TextStats,
    disk_full: bool,
    connected: bool,
) -> (&'static str, String) {
    if paused {
        ("paused", "paused by the operator".to_string())
    } else if !text.blocked.is_empty() {
        let reasons: Vec<&str> = text.blocked.iter().map(|b| b.reason.as_str()).collect();
        ("blocked", reasons.join("; "))
    } else if disk_full {
        ("error", "spool disk full: consumption paused".to_string())
    } else if !connected {
        let reason = if text.last_error.is_empty() {
            "connecting to Pulsar".to_string()
        } else {
            text.last_error.clone()
        };
        ("error", reason)
    } else {
        ("running", String::new())
    }
}

/// How long ago `since_ms` was; 0 when it is unset (0) or a little ahead of `now`.
fn age_ms(now: u64, since_ms: u64) -> u64 {
    if since_ms > 0 {
        now.saturating_sub(since_ms)
    } else {
        0
    }
}

/// How far behind the backup is: the oldest spooled message's age, or, while the rule reads
/// nothing from Pulsar, at least the time since it stopped (what waits there is older still).
fn backlog_age_ms(now: u64, oldest_spooled_publish_ms: u64, reading_stopped_since_ms: u64) -> u64 {
    age_ms(now, oldest_spooled_publish_ms).max(age_ms(now, reading_stopped_since_ms))
}

/// The history entries `logs` asks for: since when (0: from the first) and how many at most
/// (100 unless it says).
fn logs_window(now: u64, req: &v1::LogsRequest) -> (u64, usize) {
    let since_ms = if req.since_secs > 0 {
        now.saturating_sub(req.since_secs.saturating_mul(1000))
    } else {
        0
    };
    let limit = if req.limit == 0 {
        100
    } else {
        req.limit as usize
    };
    (since_ms, limit)
}

fn fmt_ms(ms: u64) -> String {
    if ms == 0 {
        String::new()
    } else {
        proto::types::time::rfc3339_from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use proto::v1;

    use super::{backlog_age_ms, logs_window, rule_state};
    use crate::stats::{BlockedEntry, TextStats};

    #[test]
    fn the_lag_counts_what_waits_in_pulsar_while_nothing_is_read() {
        let now = 1_000_000;
        assert_eq!(backlog_age_ms(now, 0, 0), 0, "caught up");
        assert_eq!(
            backlog_age_ms(now, now - 4_000, 0),
            4_000,
            "the oldest spooled message"
        );
        // Paused (or disconnected, or blocked) a minute ago with an empty spool: a minute.
        assert_eq!(backlog_age_ms(now, 0, now - 60_000), 60_000);
        // Whichever is older.
        assert_eq!(backlog_age_ms(now, now - 90_000, now - 60_000), 90_000);
        assert_eq!(
            backlog_age_ms(now, now + 5, now + 5),
            0,
            "clocks a little apart"
        );
    }

    fn blocked(reason: &str) -> BlockedEntry {
        BlockedEntry {
            entry: "7:3".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_rule_shows_the_first_state_that_holds() {
        let quiet = TextStats::default();
        let failing = TextStats {
            last_error: "cannot connect to Pulsar at pulsar://b:6650: refused".into(),
            blocked: vec![blocked("stopped before 7:3"), blocked("stopped before 9:1")],
            ..TextStats::default()
        };
        let disconnected_with_error = TextStats {
            blocked: Vec::new(),
            ..failing.clone()
        };
        let state = rule_state;
        // The operator's pause hides everything else.
        assert_eq!(
            state(true, &failing, true, false),
            ("paused", "paused by the operator".into())
        );
        // Every blocked partition's reason, before a full disk or an outage.
        assert_eq!(
            state(false, &failing, true, false),
            ("blocked", "stopped before 7:3; stopped before 9:1".into())
        );
        assert_eq!(
            state(false, &disconnected_with_error, true, false),
            ("error", "spool disk full: consumption paused".into())
        );
        // Not connected: the last error says why, or that it is still connecting.
        assert_eq!(
            state(false, &disconnected_with_error, false, false),
            ("error", disconnected_with_error.last_error.clone())
        );
        assert_eq!(
            state(false, &quiet, false, false),
            ("error", "connecting to Pulsar".into())
        );
        // Connected, an old error is no state of its own.
        assert_eq!(
            state(false, &disconnected_with_error, false, true),
            ("running", String::new())
        );
    }

    #[test]
    fn logs_default_to_the_newest_hundred_of_all_time() {
        let now = 10_000_000;
        let req = |since_secs, limit| v1::LogsRequest {
            since_secs,
            limit,
            ..v1::LogsRequest::default()
        };
        assert_eq!(logs_window(now, &req(0, 0)), (0, 100));
        assert_eq!(logs_window(now, &req(60, 5)), (now - 60_000, 5));
        // A `since` longer ago than the clock's start reads from the first entry.
        assert_eq!(logs_window(now, &req(u64::MAX, 1)), (0, 1));
    }
}
