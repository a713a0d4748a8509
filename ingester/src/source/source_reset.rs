//! A topic whose message ids went backwards: deleted and created again, or a service URL that
//! now reaches another cluster. Ids within one topic only grow, so a broker whose partition ends
//! before a message this rule already spooled no longer holds the topic the rule backed up.
//!
//! Without this check every new message would be dropped as "already spooled" (its id is below
//! the watermark), and once the new ids passed the old watermark the cumulative acknowledgements
//! would cover all of them: messages lost with no trace. Instead the rule says so, lets the old
//! topic's spooled segments finish uploading (never acknowledging them: their ids now name the
//! new topic's messages), then takes the ids afresh under new object names (`-s{n}`), as a
//! `rule edit` of the source does.

use proto::types::MessageId;

use crate::spool::Seen;

/// A partition the broker says ends before what the rule spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentBack {
    /// -1 for a non-partitioned topic.
    pub partition: i32,
    /// The broker's last entry of the partition (ledger, entry).
    pub broker_last: (u64, u64),
    /// The highest message the rule spooled from the partition.
    pub spooled: MessageId,
}

/// The first partition whose broker-side end lies before what the rule spooled from it.
/// `last_entries` holds each partition's last entry as the broker names it (`None`: unknown,
/// which proves nothing).
pub fn find(last_entries: &[(i32, Option<(u64, u64)>)], seen: &Seen) -> Option<WentBack> {
    last_entries.iter().find_map(|&(partition, last)| {
        let broker_last = last?;
        let spooled = seen.last(partition)?;
        (broker_last < (spooled.ledger, spooled.entry)).then_some(WentBack {
            partition,
            broker_last,
            spooled,
        })
    })
}

/// Whether the broker's ends prove that the topic still reaches everything the rule spooled
/// from each partition: then a redelivery on this connection cannot come from another topic
/// (one deleted and created again, or another cluster, means a new connection), and need not
/// be checked again until the next one.
pub fn proves_reach(last_entries: &[(i32, Option<(u64, u64)>)], seen: &Seen) -> bool {
    last_entries
        .iter()
        .all(|&(partition, last)| match seen.last(partition) {
            None => true,
            Some(spooled) => last.is_some_and(|last| last >= (spooled.ledger, spooled.entry)),
        })
}

impl WentBack {
    /// The alert shown in `status` and `logs`.
    pub fn describe(&self, topic: &str, spooled_segments: usize) -> String {
        let partition = if self.partition >= 0 {
            format!(" partition {}", self.partition)
        } else {
            String::new()
        };
        let (ledger, entry) = self.broker_last;
        let old = if spooled_segments > 0 {
            format!(
                "; the {spooled_segments} segment(s) still spooled from the old topic are uploaded but not acknowledged on the new one, then"
            )
        } else {
            ";".to_string()
        };
        format!(
            "message ids went backwards: {topic}{partition} ends at {ledger}:{entry}, before {}:{} that this rule already spooled (the topic was deleted and created again, or the service URL reaches another cluster){old} the rule backs the topic up afresh under new object names",
            self.spooled.ledger, self.spooled.entry
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(partition: i32, ledger: u64, entry: u64) -> Seen {
        Seen::for_tests(
            [(
                partition,
                MessageId {
                    ledger,
                    entry,
                    partition,
                    batch_index: -1,
                },
            )]
            .into(),
        )
    }

    #[test]
    fn only_a_broker_end_before_the_spooled_watermark_counts() {
        let seen = seen(-1, 7, 100);
        // The broker holds what was spooled, and more: the same topic.
        assert_eq!(find(&[(-1, Some((7, 100)))], &seen), None);
        assert_eq!(find(&[(-1, Some((7, 250)))], &seen), None);
        assert_eq!(find(&[(-1, Some((9, 0)))], &seen), None);
        // Unknown proves nothing; nor does a partition the rule never spooled from.
        assert_eq!(find(&[(-1, None)], &seen), None);
        assert_eq!(find(&[(3, Some((0, 0)))], &seen), None);
        // Before the watermark, in the same ledger or an older one: another topic.
        let went_back = find(&[(-1, Some((7, 99)))], &seen).expect("went back");
        assert_eq!(went_back.broker_last, (7, 99));
        assert!(find(&[(-1, Some((0, 500)))], &seen).is_some());
    }

    #[test]
    fn only_known_ends_at_or_past_every_watermark_prove_the_reach() {
        let seen = seen(1, 7, 100);
        assert!(proves_reach(&[(1, Some((7, 100)))], &seen));
        assert!(proves_reach(&[(1, Some((8, 0))), (2, None)], &seen));
        // Unknown (a broker that did not answer, an empty topic) proves nothing.
        assert!(!proves_reach(&[(1, None)], &seen));
        assert!(!proves_reach(&[(1, Some((7, 99)))], &seen));
        // Nothing spooled from any partition: nothing to go back from.
        assert!(proves_reach(&[(0, None)], &seen));
    }

    #[test]
    fn the_alert_names_the_partition_both_ids_and_what_happens_next() {
        let went_back = find(&[(2, Some((0, 4)))], &seen(2, 0, 499)).expect("went back");
        let text = went_back.describe("persistent://t/n/orders", 3);
        assert!(
            text.contains("orders partition 2 ends at 0:4, before 0:499"),
            "{text}"
        );
        assert!(text.contains("3 segment(s) still spooled"), "{text}");
        let text = went_back.describe("persistent://t/n/orders", 0);
        assert!(!text.contains("still spooled"), "{text}");
    }
}
