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

pub(super) fn redelivery<'a>(
    id: &MessageId,
    watermark: Option<&MessageId>,
    acked: Option<&'a Position>,
) -> Redelivery<'a> {
    match watermark {
        Some(mark) if !id.is_after(mark) => match acked {
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
    watermarks: BTreeMap<i32, MessageId>,
    acked: BTreeMap<i32, Position>,
}

impl Seen {
    #[cfg(test)]
    pub(crate) fn for_tests(watermarks: BTreeMap<i32, MessageId>) -> Seen {
        Seen {
            watermarks,
            acked: BTreeMap::new(),
        }
    }

    /// The highest message id of `partition` ever spooled.
    pub fn last(&self, partition: i32) -> Option<MessageId> {
        self.watermarks.get(&partition).copied()
    }

    pub fn check(&self, id: &MessageId) -> Redelivery<'_> {
        redelivery(
            id,
            self.watermarks.get(&id.partition),
            self.acked.get(&id.partition),
        )
    }
}

impl RuleSpool {
    /// What the spool has seen so far: see [`Seen`].
    pub fn seen(&self) -> Seen {
        let state = self.lock();
        Seen {
            watermarks: state
                .watermarks
                .iter()
                .map(|(partition, pos)| (*partition, pos.id))
                .collect(),
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
