//! sealed → stored (the uploader's commit), the acknowledgeable prefix (invariant 4), and
//! stored → gone once acknowledged (invariant 5); and removing a rule's spool altogether.

use std::collections::BTreeMap;

use super::keys::{
    key, partition_suffix, segment_key, to_json, ACKED, COUNTERS, SEGMENT, WATERMARK,
};
use super::{Position, RuleSpool, SegmentMeta, SegmentState};
use crate::error::{IngesterError, Result};

/// The acknowledgeable prefix: cumulative acks to send, then the segments to free.
#[derive(Debug, Clone)]
pub struct AckPlan {
    pub positions: Vec<Position>,
    pub segments: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    AlreadyCommitted,
    /// Fenced, and another ingester's object at its key holds all of it.
    Covered,
    /// Fenced, and another ingester's object at its key holds its start: the rest is sealed
    /// again under its own key.
    Trimmed,
}

impl RuleSpool {
    /// sealed → stored. Idempotent: a repeated commit changes nothing.
    pub async fn mark_stored(
        &self,
        segment_no: u64,
        etag: &str,
        upload_ms: u64,
        attempts: u32,
    ) -> Result<CommitOutcome> {
        let stored = {
            let state = self.lock();
            let Some(meta) = state.segments.get(&segment_no) else {
                // Freed already: its commit arrived before, and it was acknowledged.
                return Ok(CommitOutcome::AlreadyCommitted);
            };
            match meta.state {
                SegmentState::Stored => return Ok(CommitOutcome::AlreadyCommitted),
                SegmentState::Sealed => {}
                other => {
                    return Err(IngesterError::FailedPrecondition(format!(
                        "segment {segment_no} of rule {:?} is {}, not sealed",
                        self.rule,
                        other.as_str()
                    )))
                }
            }
            let mut stored = meta.clone();
            stored.state = SegmentState::Stored;
            stored.stored_at_ms = proto::types::time::now_millis();
            stored.etag = etag.to_string();
            stored.upload_ms = upload_ms;
            stored.attempts = attempts;
            self.tree()?
                .insert(segment_key(&self.rule, segment_no), to_json(&stored)?)?;
            stored
        };
        self.db.flush_async().await?;
        // Stored in memory only once durable: a commit whose flush failed (a full disk) must
        // fail again when retried, not pass as already committed while the database that is
        // reopened next still says sealed.
        let mut state = self.lock();
        if let Some(meta) = state.segments.get_mut(&segment_no) {
            if meta.state == SegmentState::Sealed {
                *meta = stored;
            }
        }
        Ok(CommitOutcome::Committed)
    }

    /// The run of stored segments from the oldest one, and where that lets each partition's
    /// cumulative acknowledgement go.
    pub fn ack_plan(&self) -> Option<AckPlan> {
        let state = self.lock();
        let mut positions: BTreeMap<i32, Position> = BTreeMap::new();
        let mut segments = Vec::new();
        for meta in state.segments.values() {
            if meta.state != SegmentState::Stored {
                break;
            }
            for (partition, pos) in &meta.ack_positions {
                positions.insert(*partition, pos.clone());
            }
            segments.push(meta.segment_no);
        }
        if segments.is_empty() {
            return None;
        }
        Some(AckPlan {
            positions: positions.into_values().collect(),
            segments,
        })
    }

    /// After the plan's acknowledgements were sent: drop records, metas and files.
    pub async fn free(&self, plan: &AckPlan) -> Result<Vec<SegmentMeta>> {
        let (freed, files) = {
            let mut state = self.lock();
            let mut batch = sled::Batch::default();
            let mut freed = Vec::new();
            let mut files = Vec::new();
            for segment_no in &plan.segments {
                let Some(meta) = state.segments.remove(segment_no) else {
                    continue;
                };
                batch.remove(segment_key(&self.rule, *segment_no));
                files.push(self.segment_file(&meta));
                freed.push(meta);
            }
            for pos in &plan.positions {
                let partition = pos.id.partition;
                batch.insert(
                    key(ACKED, &self.rule, &partition_suffix(partition)),
                    to_json(pos)?,
                );
                state.acked.insert(partition, pos.clone());
            }
            self.tree()?.apply_batch(batch)?;
            (freed, files)
        };
        self.db.flush_async().await?;
        // A crash before these unlinks leaves files no meta owns: swept at the next start.
        for file in files {
            if let Err(err) = std::fs::remove_file(&file) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(rule = %self.rule, file = %file.display(), error = %err, "could not remove a freed segment file");
                }
            }
        }
        for meta in &freed {
            self.logs.remove(meta.segment_no);
        }
        Ok(freed)
    }

    /// Removes everything of this rule: keys, files. For `rule delete`.
    pub fn destroy(&self) -> Result<()> {
        self.presealing.discard_all();
        let mut state = self.lock();
        let mut batch = sled::Batch::default();
        let tree = self.tree()?;
        for tag in [SEGMENT, WATERMARK, ACKED, COUNTERS] {
            for k in tree.scan_prefix(key(tag, &self.rule, &[])).keys() {
                batch.remove(k?);
            }
        }
        tree.apply_batch(batch)?;
        drop(tree);
        self.db.flush()?;
        state.open.clear();
        state.segments.clear();
        if let Err(err) = std::fs::remove_dir_all(&self.segments_dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(IngesterError::io("removing the rule's segment files", err));
            }
        }
        Ok(())
    }
}
