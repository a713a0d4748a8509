//! The bounds a rule task works within, from the ingester's config, and the receive window
//! they size for the messages' average size.

use proto::wire::HistoryKind;
use tracing::info;

use super::RuleTask;
use crate::app::history::HistoryEntry;

/// Per-consumer bounds, from the ingester's config.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLimits {
    /// 0: no limit. At the limit, consumption pauses until acknowledgements free the spool.
    pub max_spool_bytes: u64,
    /// Flow-control permits: messages the broker may send ahead of the spool.
    pub receiver_queue: u32,
    /// 0: no bound. Bytes the consumer may hold ahead of the spool: permits are lowered below
    /// `receiver_queue` when messages are large (see [`ConsumerLimits::permits_for`]).
    pub receiver_queue_bytes: u64,
    /// Free bytes kept on the spool's filesystem beyond what sealing needs (see [`crate::spool::disk::DiskSpace`]).
    pub disk_reserve_bytes: u64,
}

impl ConsumerLimits {
    /// The permits for messages of `record_bytes` each on average: `receiver_queue`, lowered so
    /// that permits × size stays within `receiver_queue_bytes`. `Some` only when that is off from
    /// `current` by more than a factor of two: a change costs a reconnect (and redeliveries, which
    /// the spool drops), so a mix of sizes must not flap.
    pub fn permits_for(&self, current: u32, record_bytes: u64) -> Option<u32> {
        let wanted = if self.receiver_queue_bytes == 0 || record_bytes == 0 {
            self.receiver_queue
        } else {
            let fit = self.receiver_queue_bytes / record_bytes;
            u32::try_from(fit)
                .unwrap_or(u32::MAX)
                .clamp(1, self.receiver_queue)
        };
        let off = u64::from(wanted) * 2 <= u64::from(current)
            || u64::from(wanted) >= u64::from(current) * 2;
        off.then_some(wanted)
    }
}

impl RuleTask {
    /// Says why the consumers are recreated with `resized` permits.
    pub(super) fn announce_resize(&self, permits: u32, resized: u32, record_bytes: u64) {
        let message = format!(
            "messages average {} as records: receive window {permits} → {resized} messages to stay near receiver_queue_bytes ({})",
            bytesize::ByteSize(record_bytes),
            bytesize::ByteSize(self.limits.receiver_queue_bytes),
        );
        info!(rule = %self.rule.name, "{message}; reconnecting");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
    }
}

#[cfg(test)]
mod tests {
    use super::ConsumerLimits;

    fn limits(receiver_queue_bytes: u64) -> ConsumerLimits {
        ConsumerLimits {
            max_spool_bytes: 0,
            receiver_queue: 1000,
            receiver_queue_bytes,
            disk_reserve_bytes: 0,
        }
    }

    #[test]
    fn permits_shrink_for_large_messages_and_grow_back_without_flapping() {
        let l = limits(32_000_000);
        // 1 KB records: 1000 permits are 1 MB, well within 32 MB.
        assert_eq!(l.permits_for(1000, 1_100), None);
        // 1 MiB records: 30 permits.
        assert_eq!(l.permits_for(1000, 1_050_000), Some(30));
        // Sizes within a factor of two of what the permits were sized for: no reconnect.
        assert_eq!(l.permits_for(30, 700_000), None);
        assert_eq!(l.permits_for(30, 1_900_000), None);
        // Small messages again: back to receiver_queue.
        assert_eq!(l.permits_for(30, 1_000), Some(1000));
        // Larger than the whole budget: one message at a time.
        assert_eq!(l.permits_for(1000, 100_000_000), Some(1));
    }

    #[test]
    fn no_byte_bound_keeps_receiver_queue() {
        assert_eq!(limits(0).permits_for(1000, 5_000_000), None);
        assert_eq!(limits(0).permits_for(30, 5_000_000), Some(1000));
    }
}
