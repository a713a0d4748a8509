//! closed → sealed: the segment file is written from the record log (going on from its preseal
//! when there is a usable one), checked against the meta, synced and renamed into place; then
//! the meta says sealed, durably, and only then does ListSealed see it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::types::segment_files;
use tracing::debug;

use super::preseal::{discard, lock_preseal};
use crate::error::{IngesterError, Result};
use crate::segment::segment_writer::{SegmentWriter, Written};
use crate::spool::keys::{segment_key, to_json};
use crate::spool::record_log::sync_dir;
use crate::spool::{RuleSpool, SegmentMeta, SegmentState};

/// What a seal's flush does in a test on this thread, instead of flushing.
#[cfg(test)]
pub(crate) type SealFlush = Box<dyn Fn(&RuleSpool) -> Result<()>>;
#[cfg(test)]
thread_local! {
    pub(crate) static SEAL_FLUSH: std::cell::RefCell<Option<SealFlush>> = const { std::cell::RefCell::new(None) };
}

/// How one try at sealing ended.
#[derive(Debug, PartialEq, Eq)]
enum Seal {
    /// Sealed, or nothing to seal (not closed any more, or gone).
    Done,
    /// A cut changed the segment's records while its file was written: seal it again.
    CutMeanwhile,
}

/// Numbers each seal's temporary file: two seals of one segment (a retry overlapping a seal that
/// is still writing) must never write into the same file.
static SEAL_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

impl RuleSpool {
    /// closed → sealed: writes the segment file from the record log (blocking IO; run it on a
    /// blocking thread), going on from its preseal when there is a usable one. What was read is
    /// checked against the meta, then the file is fsynced and renamed into place before the
    /// meta says sealed, and that is flushed before ListSealed can see it.
    ///
    /// A cut ([`RuleSpool::cover`]) that overtakes the seal leaves the segment closed with other
    /// records than the file written: it is sealed again here, since the seal the cut queued may
    /// have been dropped as a repeat of this one (the sealer runs one seal per segment at once).
    pub fn seal_blocking(&self, segment_no: u64) -> Result<()> {
        while self.seal_once(segment_no)? == Seal::CutMeanwhile {
            debug!(rule = %self.rule, segment = segment_no, "cut while sealing; sealing the rest");
        }
        Ok(())
    }

    fn seal_once(&self, segment_no: u64) -> Result<Seal> {
        let meta = {
            let state = self.lock();
            match state.segments.get(&segment_no) {
                Some(meta) if meta.state == SegmentState::Closed => meta.clone(),
                _ => return Ok(Seal::Done),
            }
        };
        let codec = meta.target.codec();
        let generation = self.generation.load(Ordering::SeqCst);
        let mut writer = None;
        if let Some(preseal) = self.presealing.take(segment_no) {
            // Waits for a feed still running on it.
            if let Some(pre) = lock_preseal(&preseal).take() {
                if pre.generation == generation
                    && pre.codec() == codec
                    && pre.skip_through() == meta.skip_through
                {
                    writer = Some(pre);
                } else {
                    discard(pre);
                }
            }
        }
        let fresh = || {
            SegmentWriter::create(
                self.segments_dir.join(segment_files::seal_attempt_name(
                    segment_no,
                    SEAL_ATTEMPTS.fetch_add(1, Ordering::Relaxed),
                )),
                segment_no,
                codec,
                generation,
            )
            .map(|writer| writer.skipping_through(meta.skip_through))
        };
        let written = match writer {
            Some(presealed) => match self.complete(&meta, presealed) {
                Ok(written) => written,
                Err(err) => {
                    // Not the log's fault yet: the preseal may have read a write in progress.
                    debug!(rule = %self.rule, segment = segment_no, error = %err, "preseal unusable; sealing from the start of the log");
                    self.complete(&meta, fresh()?)?
                }
            },
            None => self.complete(&meta, fresh()?)?,
        };
        let tmp = written.1;
        let written = written.0;
        let path = self.segment_file(&meta);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            // Half a disk's worth of copies must not pile up while a seal keeps failing.
            let _ = std::fs::remove_file(&tmp);
            return Err(IngesterError::io(format!("renaming {}", tmp.display()), e));
        }
        sync_dir(&self.segments_dir)?;
        edge::failpoint::hit("ingester:after_seal_file");
        // Durable first, shown second: ListSealed reads the in-memory state, and a segment it
        // offered must still be sealed after a crash or a failed flush (else the uploader could
        // store and commit a file the restarted spool seals again, differently).
        let sealed = {
            let state = self.lock();
            let Some(current) = state.segments.get(&segment_no) else {
                return Ok(Seal::Done);
            };
            if current.state != SegmentState::Closed {
                return Ok(Seal::Done);
            }
            // Cut meanwhile: this file holds records that are not the segment's any more.
            if current.skip_through != meta.skip_through {
                return Ok(Seal::CutMeanwhile);
            }
            let mut sealed = current.clone();
            sealed.state = SegmentState::Sealed;
            // What the object really holds; `json_len` predicted it record by record.
            if sealed.record_bytes != written.json_bytes {
                tracing::warn!(rule = %self.rule, segment = segment_no, predicted = sealed.record_bytes, written = written.json_bytes, "record bytes differ from the prediction");
                sealed.record_bytes = written.json_bytes;
            }
            sealed.crc32c = written.file_crc32c;
            sealed.file_bytes = written.file_bytes;
            sealed.sealed_at_ms = proto::types::time::now_millis();
            self.tree()?
                .insert(segment_key(&self.rule, segment_no), to_json(&sealed)?)?;
            sealed
        };
        self.flush_seal()?;
        {
            let mut state = self.lock();
            // Gone meanwhile (the rule's spool was discarded): nothing to show.
            if let Some(meta) = state.segments.get_mut(&segment_no) {
                // Cut between the durable write and here: the cut's own write replaced ours in
                // the database, and the file must be made again.
                if meta.state == SegmentState::Closed && meta.skip_through != sealed.skip_through {
                    return Ok(Seal::CutMeanwhile);
                }
                if meta.state == SegmentState::Closed {
                    meta.state = sealed.state;
                    meta.record_bytes = sealed.record_bytes;
                    meta.crc32c = sealed.crc32c;
                    meta.file_bytes = sealed.file_bytes;
                    meta.sealed_at_ms = sealed.sealed_at_ms;
                }
            }
        }
        self.sealed_notify.notify_waiters();
        Ok(Seal::Done)
    }

    /// Makes a seal durable (a tests' stand-in can take the flush's place).
    fn flush_seal(&self) -> Result<()> {
        #[cfg(test)]
        if let Some(result) = SEAL_FLUSH.with(|f| f.borrow().as_ref().map(|f| f(self))) {
            return result;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Feeds a writer the rest of the segment's log, finishes it and checks what it read.
    /// Returns what was written and where; on error the temporary file is gone.
    fn complete(
        &self,
        meta: &SegmentMeta,
        mut writer: SegmentWriter,
    ) -> Result<(Written, PathBuf)> {
        let tmp = writer.tmp_path().to_path_buf();
        let written = writer
            .feed(&self.logs, meta.log_bytes)
            .and_then(|()| writer.finish())
            .and_then(|written| self.check_written(meta, written));
        match written {
            Ok(written) => Ok((written, tmp)),
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                Err(err)
            }
        }
    }

    /// The log bytes a segment file was made of must be exactly the segment's records.
    fn check_written(&self, meta: &SegmentMeta, written: Written) -> Result<Written> {
        let damaged = |what: String| {
            Err(IngesterError::Corrupt(format!(
                "record log {} is damaged: {what}",
                self.logs.path(meta.segment_no).display()
            )))
        };
        if written.log_bytes != meta.log_bytes {
            return damaged(format!(
                "it holds {} bytes, the spool wrote {}",
                written.log_bytes, meta.log_bytes
            ));
        }
        if written.log_crc32c != meta.log_crc32c {
            return damaged(format!(
                "CRC32C {:08x}, the spool wrote {:08x}",
                written.log_crc32c, meta.log_crc32c
            ));
        }
        if written.lines != meta.messages {
            return damaged(format!(
                "{} records, the spool wrote {}",
                written.lines, meta.messages
            ));
        }
        Ok(written)
    }

    /// The segment's meta and file path, if it is sealed (ready to read).
    pub fn sealed_file(&self, segment_no: u64) -> Result<(SegmentMeta, PathBuf)> {
        let state = self.lock();
        match state.segments.get(&segment_no) {
            Some(meta) if meta.state == SegmentState::Sealed => {
                Ok((meta.clone(), self.segment_file(meta)))
            }
            _ => Err(IngesterError::SegmentNotFound {
                rule: self.rule.clone(),
                segment_no,
            }),
        }
    }
}
