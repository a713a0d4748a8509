//! Presealing: an open segment's log is compressed into its future segment file while records
//! are still appended, so its seal only has the tail left. Nothing here is trusted: the seal
//! checks what the writer read, and a reload (generation bump) makes every writer stale.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::types::segment_files;

use crate::error::{IngesterError, Result};
use crate::segment::segment_writer::SegmentWriter;
use crate::spool::RuleSpool;

/// An open segment's log is compressed while it grows once it holds this much: below it,
/// sealing after the close takes a few milliseconds anyway.
const PRESEAL_MIN_BYTES: u64 = 4 << 20;
/// Most segments being presealed at once per rule (each holds an open file and a compressor).
const MAX_PRESEALS: usize = 4;

/// A presealing writer, taken out (`None`) by the seal that finishes it.
pub(super) type Preseal = Arc<Mutex<Option<SegmentWriter>>>;
/// A rule's presealing writers.
#[derive(Default)]
pub(crate) struct Presealing {
    /// By segment number, with the spool generation they started in. Lock order: this before
    /// the spool's state.
    writers: Mutex<BTreeMap<u64, (u64, Preseal)>>,
    /// A feed job is queued (see `SealerHandle::feed`).
    feed_queued: AtomicBool,
}

impl Presealing {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, (u64, Preseal)>> {
        self.writers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer presealing `segment_no`, taken out by its seal.
    pub(super) fn take(&self, segment_no: u64) -> Option<Preseal> {
        self.lock().remove(&segment_no).map(|(_, preseal)| preseal)
    }

    /// Drops every writer and its file (the rule's spool is being destroyed).
    pub(crate) fn discard_all(&self) {
        for (_, (_, preseal)) in std::mem::take(&mut *self.lock()) {
            if let Some(writer) = lock_preseal(&preseal).take() {
                discard(writer);
            }
        }
    }

    /// The segments being presealed.
    #[cfg(test)]
    pub(super) fn segments(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }
}

impl RuleSpool {
    /// Whether a feed job should be queued now (none is queued yet).
    pub fn request_feed(&self) -> bool {
        !self.presealing.feed_queued.swap(true, Ordering::SeqCst)
    }

    /// Compresses what the open segment's log holds so far into its future segment file, once
    /// the segment is large enough to be worth it (blocking IO; run it on a blocking thread).
    /// Nothing here is durable or trusted: `seal_blocking` checks what the writer read.
    pub fn feed_blocking(&self) -> Result<()> {
        self.presealing.feed_queued.store(false, Ordering::SeqCst);
        let (writer, upto, codec) = {
            let mut presealing = self.presealing.lock();
            let generation = self.generation.load(Ordering::SeqCst);
            presealing.retain(|_, (started, _)| *started == generation);
            // Under the presealing lock: a segment seen open here cannot be sealed before the
            // writer is in the map, so its seal finds the writer.
            let (segment_no, upto, codec) = {
                let state = self.lock();
                // The biggest open segment (a fenced rule has one per partition).
                match state.open.values().max_by_key(|open| open.record_bytes) {
                    Some(open) if open.record_bytes >= PRESEAL_MIN_BYTES => {
                        (open.segment_no, open.log_bytes, state.target.codec())
                    }
                    _ => return Ok(()),
                }
            };
            let writer = match presealing.get(&segment_no) {
                Some((_, writer)) => writer.clone(),
                None => {
                    if presealing.len() >= MAX_PRESEALS {
                        return Ok(());
                    }
                    let writer = SegmentWriter::create(
                        self.segments_dir
                            .join(segment_files::preseal_name(segment_no)),
                        segment_no,
                        codec,
                        generation,
                    )?;
                    let writer: Preseal = Arc::new(Mutex::new(Some(writer)));
                    presealing.insert(segment_no, (generation, writer.clone()));
                    writer
                }
            };
            (writer, upto, codec)
        };
        let mut guard = lock_preseal(&writer);
        let Some(current) = guard.as_mut() else {
            return Ok(()); // its seal took it meanwhile
        };
        let fed = if current.codec() == codec {
            current.feed(&self.logs, upto)
        } else {
            Err(IngesterError::FailedPrecondition(
                "the rule's format, compression or level changed".into(),
            ))
        };
        if fed.is_err() {
            if let Some(dropped) = guard.take() {
                discard(dropped);
            }
        }
        fed
    }
}

pub(super) fn lock_preseal(preseal: &Preseal) -> MutexGuard<'_, Option<SegmentWriter>> {
    preseal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops a writer whose output will not be used, and its temporary file.
pub(super) fn discard(writer: SegmentWriter) {
    let tmp = writer.tmp_path().to_path_buf();
    drop(writer);
    if let Err(err) = std::fs::remove_file(&tmp) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!(file = %tmp.display(), error = %err, "could not remove a discarded preseal");
        }
    }
}
