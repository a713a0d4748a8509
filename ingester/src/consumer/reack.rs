//! Acknowledging redeliveries again, at most once per position per interval.
//!
//! A broker that redelivers what the rule already acknowledged (its acknowledgement was lost,
//! or the broker redelivers eagerly, as pulsar-lite does at high rates) is told again where the
//! cumulative acknowledgement stands. One redelivery burst spans many reads, and each read used
//! to send the same acknowledgement again: up to 16 times for one position in a slow run.

use std::collections::HashMap;
use std::time::Duration;

use proto::types::MessageId;
use tokio::time::Instant;

/// How long a position, once acknowledged again, is not acknowledged again.
pub(super) const REACK_INTERVAL: Duration = Duration::from_secs(5);

/// The last position acknowledged again per topic (partition), and when.
#[derive(Debug, Default)]
pub(super) struct Reacks {
    sent: HashMap<String, (MessageId, Instant)>,
}

impl Reacks {
    /// Whether to acknowledge `id` on `topic` again now; if so, remembers it.
    pub(super) fn due(&mut self, topic: &str, id: &MessageId, now: Instant) -> bool {
        if let Some((last, at)) = self.sent.get(topic) {
            if last == id && now.saturating_duration_since(*at) < REACK_INTERVAL {
                return false;
            }
        }
        self.sent.insert(topic.to_string(), (*id, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64) -> MessageId {
        MessageId {
            ledger: 3,
            entry,
            partition: -1,
            batch_index: -1,
        }
    }

    #[test]
    fn a_position_is_acknowledged_again_once_per_interval_and_topic() {
        let mut reacks = Reacks::default();
        let t0 = Instant::now();
        assert!(reacks.due("t", &id(646), t0));
        // The same burst, read after read: not again.
        for ms in [1, 50, 4_999] {
            assert!(!reacks.due("t", &id(646), t0 + Duration::from_millis(ms)));
        }
        // Another topic (partition) has its own position.
        assert!(reacks.due("t-partition-1", &id(646), t0));
        // A newer position is sent at once.
        assert!(reacks.due("t", &id(700), t0 + Duration::from_millis(10)));
        // After the interval the same position again, in case the last one was lost.
        assert!(reacks.due(
            "t",
            &id(700),
            t0 + REACK_INTERVAL + Duration::from_millis(10)
        ));
    }
}
