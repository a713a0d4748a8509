//! A partition whose consumer delivered an entry the client cannot decode (see
//! [`crate::source::decode_fault`]): nothing after it is spooled, its consumer is recreated so
//! that the broker delivers it again (soon at first, then every few minutes), `status` shows it
//! once it failed [`BLOCK_AFTER_FAILURES`] deliveries, and `rule skip` acknowledges it alone.

use std::time::Duration;

use proto::types::MessageId;
use proto::wire::HistoryKind;
use tracing::{info, warn};

use super::ack::id_data;
use super::RuleTask;
use crate::app::history::HistoryEntry;
use crate::source::decode_fault::{DecodeFault, EntryRef, BLOCK_AFTER_FAILURES};
use crate::source::partition_consumers::RuleConsumers;
use crate::spool::Seen;
use crate::stats::BlockedEntry;

/// How long the rest of a failed delivery is read (to name the failed entry by what follows it).
const DISCARD_WINDOW: Duration = Duration::from_secs(1);

impl RuleTask {
    /// An error in a partition's stream: an entry that could not be decoded (or received).
    /// Nothing after it is spooled; the entry is asked for again (see [`crate::source::decode_fault`]).
    pub(super) fn on_stream_error(
        &mut self,
        consumers: &mut RuleConsumers,
        index: usize,
        error: String,
        seen: &Seen,
    ) {
        let part = &mut consumers.parts[index];
        if part.discarding {
            return; // the rest of a delivery that failed already
        }
        part.errors_since_created += 1;
        if part.fault.as_ref().is_some_and(|f| f.skip.is_some()) && part.errors_since_created == 1 {
            // Presumably the skipped entry, redelivered: the next message that decodes tells
            // (see `on_message`).
            return;
        }
        self.fail_partition(consumers, index, error, seen);
    }

    pub(super) fn fail_partition(
        &mut self,
        consumers: &mut RuleConsumers,
        index: usize,
        error: String,
        seen: &Seen,
    ) {
        let part = &mut consumers.parts[index];
        let (fault, first) = match part.fault.take() {
            Some(mut fault) if fault.is_same_entry(part.last_decoded.as_ref()) => {
                fault.failures += 1;
                fault.error = error;
                fault.skip = None;
                (fault, false)
            }
            _ => {
                let after = part.last_decoded.or_else(|| seen.last(part.partition));
                (DecodeFault::new(part.partition, after, error), true)
            }
        };
        let now = tokio::time::Instant::now();
        part.discarding = true;
        part.discard_until = Some(now + DISCARD_WINDOW);
        part.hold_until = Some(now + redelivery_delay(fault.failures));
        let topic = part.topic.clone();
        let text = fault.describe();
        let failures = fault.failures;
        let blocked_now = failures == BLOCK_AFTER_FAILURES;
        let suspect = fault.suspect();
        part.fault = Some(fault);
        warn!(rule = %self.rule.name, topic = %topic, failures, "{text}");
        self.stats.set_error(&text);
        if first {
            self.record(HistoryEntry::event(
                HistoryKind::DecodeFailed,
                format!("{text}; nothing after it is spooled; asking the broker for it again"),
            ));
        }
        if blocked_now {
            let skip = match suspect {
                Some(entry) => format!(
                    "; to pass it without storing it: tdmq-backup rule skip {} --entry {entry}",
                    self.rule.name
                ),
                None => String::new(),
            };
            self.record(HistoryEntry::event(
                HistoryKind::Blocked,
                format!(
                    "{text}; it failed {failures} deliveries: the rule is stopped before it on {topic} (everything before it is stored and acknowledged as usual; it is tried again every few minutes){skip}"
                ),
            ));
        }
        self.publish_faults(consumers);
    }

    /// A partition goes on past its failed entry: say so, and take it off `status`.
    pub(super) fn fault_cleared(&self, consumers: &RuleConsumers, message: String) {
        info!(rule = %self.rule.name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
        self.publish_faults(consumers);
    }

    /// Recreates the consumers of partitions whose failed entry is due for redelivery.
    pub(super) async fn redeliver_due(&mut self, consumers: &mut RuleConsumers) {
        let now = tokio::time::Instant::now();
        for index in 0..consumers.parts.len() {
            if !consumers.parts[index].due_for_redelivery(now) {
                continue;
            }
            if let Err(err) = consumers.recreate(index).await {
                let part = &mut consumers.parts[index];
                warn!(rule = %self.rule.name, topic = %part.topic, error = %err, "recreating the consumer failed; will retry");
                part.hold_until = Some(now + Duration::from_secs(2));
            }
        }
    }

    /// Shows the partitions stopped on an undecodable entry in `status`.
    pub(super) fn publish_faults(&self, consumers: &RuleConsumers) {
        let mut blocked = Vec::new();
        for part in &consumers.parts {
            if let Some(fault) = part.fault.as_ref().filter(|f| f.blocked()) {
                blocked.push(BlockedEntry {
                    entry: fault.suspect().map(|e| e.to_string()).unwrap_or_default(),
                    reason: format!(
                        "stopped before an entry that cannot be decoded: {}; `tdmq-backup rule skip {} --entry {}` passes it without storing it",
                        fault.describe(),
                        self.rule.name,
                        fault.suspect().map_or_else(|| "LEDGER:ENTRY".to_string(), |e| e.to_string()),
                    ),
                });
            }
        }
        self.stats.set_blocked(blocked);
    }

    /// `rule skip`: acknowledges one undecodable entry alone and lets its partition go past it.
    pub(super) async fn skip_entry(
        &mut self,
        consumers: &mut RuleConsumers,
        entry: EntryRef,
    ) -> Result<String, String> {
        let name = &self.rule.name;
        if consumers.is_partitioned() && entry.partition < 0 {
            return Err(format!(
                "the topic of rule {name:?} is partitioned: give the partition too, as --entry LEDGER:ENTRY:PARTITION (status shows it)"
            ));
        }
        let Some(index) = consumers
            .parts
            .iter()
            .position(|p| p.partition == entry.partition && p.fault.is_some())
        else {
            return Err(format!(
                "rule {name:?} is not stopped on an undecodable entry{}; nothing to skip",
                if entry.partition >= 0 {
                    format!(" of partition {}", entry.partition)
                } else {
                    String::new()
                }
            ));
        };
        let part = &consumers.parts[index];
        let topic = part.topic.clone();
        if let Some(fault) = &part.fault {
            if !fault.may_be(&entry) {
                return Err(format!(
                    "entry {entry} is not the one rule {name:?} is stopped on: {}",
                    fault.describe()
                ));
            }
        }
        consumers
            .ack_one(&topic, id_data(&entry.to_message_id()))
            .await
            .map_err(|err| format!("acknowledging entry {entry} on {topic} failed: {err}"))?;
        let part = &mut consumers.parts[index];
        if let Some(fault) = part.fault.as_mut() {
            fault.skip = Some(entry);
        }
        if part.discarding {
            // Ask for the partition again now rather than at the next scheduled redelivery.
            part.hold_until = Some(tokio::time::Instant::now());
        }
        let message = format!(
            "entry {entry} on {topic} skipped by the operator: acknowledged on Pulsar without being stored, so its messages are in no object"
        );
        warn!(rule = %name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Skipped, message.clone()));
        Ok(message)
    }
}

/// How long a partition waits before its failed entry is asked for again: quick at first (a
/// transient failure heals by itself), then every few minutes while it is blocked.
fn redelivery_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

/// Whether `id` is in a later entry than `other`.
pub(super) fn entry_after(id: &MessageId, other: &MessageId) -> bool {
    (id.ledger, id.entry) > (other.ledger, other.entry)
}
