//! Recognising redeliveries (invariant 2): per partition, the highest message id spooled (the
//! watermark) and the highest acknowledged; an id at or below the watermark was spooled before.
//! A change of source resets both.

use std::collections::BTreeMap;

use proto::types::MessageId;

use super::keys::{key, to_json, ACKED, COUNTERS, WATERMARK};
use super::{Position, RuleSpool};
use crate::error::Result;

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

/// Whether the message `id` was spooled before, given each partition's watermark (highest id
/// spooled) and acknowledged position. Pure; its truth table is in the tests below.
///
/// Only the id's own partition counts, and within it only the order of (ledger, entry, batch
/// index): the batch index orders messages within one entry, and each chunk of a chunked message
/// is an entry of its own. The topic names are not consulted: a partition's ids are ordered
/// whatever name its messages arrive under, and a change of source clears the positions
/// ([`RuleSpool::reset_positions`]) instead of being detected here.
pub(super) fn classify<'a>(
    id: &MessageId,
    watermarks: &BTreeMap<i32, Position>,
    acked: &'a BTreeMap<i32, Position>,
) -> Redelivery<'a> {
    match watermarks.get(&id.partition) {
        Some(mark) if !id.is_after(&mark.id) => match acked.get(&id.partition) {
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
    watermarks: BTreeMap<i32, Position>,
    acked: BTreeMap<i32, Position>,
}

impl Seen {
    #[cfg(test)]
    pub(crate) fn for_tests(watermarks: BTreeMap<i32, MessageId>) -> Seen {
        let watermarks = watermarks
            .into_iter()
            .map(|(partition, id)| {
                let topic = String::new();
                (partition, Position { topic, id })
            })
            .collect();
        Seen {
            watermarks,
            acked: BTreeMap::new(),
        }
    }

    /// The highest message id of `partition` ever spooled.
    pub fn last(&self, partition: i32) -> Option<MessageId> {
        self.watermarks.get(&partition).map(|mark| mark.id)
    }

    pub fn check(&self, id: &MessageId) -> Redelivery<'_> {
        classify(id, &self.watermarks, &self.acked)
    }
}

impl RuleSpool {
    /// What the spool has seen so far: see [`Seen`].
    pub fn seen(&self) -> Seen {
        let state = self.lock();
        Seen {
            watermarks: state.watermarks.clone(),
            acked: state.acked.clone(),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a row expects.
    #[derive(Debug, PartialEq, Eq)]
    enum Expect {
        New,
        Spooled,
        /// Acknowledged, with the partition's acknowledged position to send again.
        Acknowledged,
    }

    /// Positions by partition, as the spool keeps them.
    type Marks = BTreeMap<i32, Position>;

    const TOPIC: &str = "persistent://public/default/orders-partition-0";

    fn id(partition: i32, ledger: u64, entry: u64, batch_index: i32) -> MessageId {
        MessageId {
            ledger,
            entry,
            partition,
            batch_index,
        }
    }

    fn on_partition_0(marks: &[(u64, u64, i32)]) -> Marks {
        marks
            .iter()
            .map(|&(ledger, entry, batch_index)| {
                let id = id(0, ledger, entry, batch_index);
                let topic = TOPIC.to_string();
                (0, Position { topic, id })
            })
            .collect()
    }

    #[test]
    fn redeliveries_by_id_truth_table() {
        let moved = |mut marks: Marks, topic: &str| {
            for mark in marks.values_mut() {
                mark.topic = topic.to_string();
            }
            marks
        };
        // (what, partition 0's watermark, its acknowledged position, incoming id, expected)
        #[rustfmt::skip]
        let rows: Vec<(&str, Marks, Marks, MessageId, Expect)> = vec![
            ("no watermark", on_partition_0(&[]), on_partition_0(&[]), id(0, 1, 5, -1), Expect::New),
            ("no watermark, an ack (never written without one)", on_partition_0(&[]), on_partition_0(&[(1, 5, -1)]), id(0, 1, 3, -1), Expect::New),
            ("below the watermark", on_partition_0(&[(1, 5, -1)]), on_partition_0(&[]), id(0, 1, 4, -1), Expect::Spooled),
            ("equal to the watermark", on_partition_0(&[(1, 5, -1)]), on_partition_0(&[]), id(0, 1, 5, -1), Expect::Spooled),
            ("above the watermark", on_partition_0(&[(1, 5, -1)]), on_partition_0(&[]), id(0, 1, 6, -1), Expect::New),
            ("the watermark's entry, an earlier batch index", on_partition_0(&[(1, 5, 2)]), on_partition_0(&[]), id(0, 1, 5, 1), Expect::Spooled),
            ("the watermark's entry, a later batch index", on_partition_0(&[(1, 5, 2)]), on_partition_0(&[]), id(0, 1, 5, 3), Expect::New),
            ("the watermark's entry, not batched (-1 sorts first)", on_partition_0(&[(1, 5, 0)]), on_partition_0(&[]), id(0, 1, 5, -1), Expect::Spooled),
            ("a later ledger, a lower entry", on_partition_0(&[(1, 5, -1)]), on_partition_0(&[]), id(0, 2, 0, -1), Expect::New),
            ("an earlier ledger, a higher entry", on_partition_0(&[(2, 0, -1)]), on_partition_0(&[]), id(0, 1, 9, -1), Expect::Spooled),
            ("below the acknowledged position", on_partition_0(&[(1, 9, -1)]), on_partition_0(&[(1, 5, -1)]), id(0, 1, 4, -1), Expect::Acknowledged),
            ("equal to the acknowledged position", on_partition_0(&[(1, 9, -1)]), on_partition_0(&[(1, 5, -1)]), id(0, 1, 5, -1), Expect::Acknowledged),
            ("between the acknowledged position and the watermark", on_partition_0(&[(1, 9, -1)]), on_partition_0(&[(1, 5, -1)]), id(0, 1, 7, -1), Expect::Spooled),
            ("above both", on_partition_0(&[(1, 9, -1)]), on_partition_0(&[(1, 5, -1)]), id(0, 1, 10, -1), Expect::New),
            ("another partition's watermark is higher", on_partition_0(&[(1, 9, -1)]), on_partition_0(&[(1, 9, -1)]), id(1, 1, 3, -1), Expect::New),
            ("the topic name changed (not consulted)", moved(on_partition_0(&[(1, 9, -1)]), "persistent://public/default/renamed"), on_partition_0(&[]), id(0, 1, 3, -1), Expect::Spooled),
            ("a chunk before the spooled chunk (chunks are entries)", on_partition_0(&[(1, 12, -1)]), on_partition_0(&[]), id(0, 1, 11, -1), Expect::Spooled),
            ("the chunk after the spooled chunk", on_partition_0(&[(1, 12, -1)]), on_partition_0(&[]), id(0, 1, 13, -1), Expect::New),
        ];
        for (what, watermarks, acked, incoming, expected) in rows {
            let got = match classify(&incoming, &watermarks, &acked) {
                Redelivery::New => Expect::New,
                Redelivery::Spooled => Expect::Spooled,
                Redelivery::Acknowledged(position) => {
                    assert_eq!(
                        Some(position),
                        acked.get(&0),
                        "{what}: the position to ack again"
                    );
                    Expect::Acknowledged
                }
            };
            assert_eq!(got, expected, "{what}");
        }
    }
}
