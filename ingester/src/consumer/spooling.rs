//! The durable write of a batch, the pause while the spool (or its disk) is full, and closing
//! the open segment when its window ends — each closed segment goes to the sealer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::wire::HistoryKind;
use tracing::{info, warn};

use super::ack::id_data;
use super::receive::MAX_BATCH_BYTES;
use super::RuleTask;
use crate::app::history::HistoryEntry;
use crate::source::partition_consumers::RuleConsumers;
use crate::spool::disk::Room;
use crate::spool::Incoming;
use crate::stats::RuleStats;

/// Once paused for disk space, reading resumes only with room for a full batch more than the
/// reserve: freeing a segment is what makes room, and a pause per batch would flood the history.
const RESUME_SLACK: u64 = MAX_BATCH_BYTES;

impl RuleTask {
    /// Writes a batch to the spool. Returns it back if it could not be written (retried later;
    /// nothing is acknowledged meanwhile, so nothing is lost).
    pub(super) async fn spool_batch(
        &mut self,
        batch: Vec<Incoming>,
        consumers: &mut RuleConsumers,
    ) -> Option<Vec<Incoming>> {
        let now = proto::types::time::now_millis();
        match self.spool.append(&batch, now).await {
            Ok(outcome) => {
                edge::failpoint::hit("ingester:after_spool");
                if self.stats.disk_full.swap(false, Ordering::Relaxed) {
                    info!(rule = %self.rule.name, "spool writable again; consuming");
                    self.record(HistoryEntry::event(
                        HistoryKind::Info,
                        "spool disk has space again; consuming resumed",
                    ));
                }
                RuleStats::add(&self.stats.messages_consumed, outcome.accepted as u64);
                RuleStats::add(&self.stats.duplicates_dropped, outcome.duplicates as u64);
                for segment_no in outcome.closed {
                    self.sealer.seal(self.spool.clone(), segment_no);
                }
                if outcome.accepted > 0 {
                    self.sealer.feed(self.spool.clone());
                }
                for pos in outcome.reack {
                    if let Err(err) = consumers.cumulative_ack(&pos.topic, id_data(&pos.id)).await {
                        warn!(rule = %self.rule.name, error = %err, "re-acknowledging a redelivered message failed");
                    }
                }
                None
            }
            Err(err) => {
                let full = err.is_disk_full();
                let message = if full {
                    format!("spool disk is full; consumption paused, nothing acknowledged: {err}")
                } else {
                    format!("cannot write to the spool: {err}")
                };
                warn!(rule = %self.rule.name, error = %err, "spool write failed; will retry");
                self.stats.set_error(&message);
                if !self.stats.disk_full.swap(full, Ordering::Relaxed) || !full {
                    self.record(HistoryEntry::event(HistoryKind::SpoolError, message));
                }
                // Back off a little so a full disk is not hammered.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some(batch)
            }
        }
    }

    /// Whether the spool may take no more messages now (checked before every read): it holds
    /// `max_spool_bytes` already, or its disk has less free space than the reserve plus what
    /// sealing the unsealed segments will write. Nothing is acknowledged while it is full;
    /// uploads free space, and reading resumes.
    pub(super) async fn spool_full(&mut self) -> bool {
        let spool = self.spool.stats();
        let quota =
            self.limits.max_spool_bytes > 0 && spool.spooled_bytes >= self.limits.max_spool_bytes;
        let was_full = self.stats.disk_full.load(Ordering::Relaxed);
        let short_of = |room: &Room| {
            let slack = if was_full { RESUME_SLACK } else { 0 };
            room.free < room.needed.saturating_add(slack)
        };
        let disk = self
            .disk
            .check(&self.rule.name, spool.unsealed_bytes)
            .filter(short_of);
        let full = quota || disk.is_some();
        self.stats.disk_full.store(full, Ordering::Relaxed);
        if full && !was_full {
            let message = match disk {
                Some(room) if !quota => format!(
                    "spool disk nearly full: {} free on the data_dir's filesystem, {} must stay free (disk_reserve_bytes {} plus {} to seal the unsealed segments); consumption paused until uploads free space, nothing acknowledged",
                    bytesize::ByteSize(room.free),
                    bytesize::ByteSize(room.needed),
                    bytesize::ByteSize(self.disk.reserve()),
                    bytesize::ByteSize(room.needed.saturating_sub(self.disk.reserve())),
                ),
                _ => format!(
                    "spool full: it holds max_spool_bytes ({}) of records; consumption paused until uploads free space, nothing acknowledged",
                    self.limits.max_spool_bytes
                ),
            };
            warn!(rule = %self.rule.name, "{message}");
            self.stats.set_error(&message);
            self.record(HistoryEntry::event(HistoryKind::SpoolFull, message));
        } else if was_full && !full {
            info!(rule = %self.rule.name, "spool has room again; consuming");
            self.record(HistoryEntry::event(
                HistoryKind::Info,
                "spool has room again; consumption resumed",
            ));
        }
        if full && spool.closed_segments == 0 && spool.open_segment_messages > 0 {
            // Everything spooled is in the open segment, whose window may end in hours: until
            // it is closed nothing can be uploaded, so nothing is freed and the pause never ends.
            self.close_if_due(true).await;
        }
        full
    }

    /// Closes the open segments that are due (all if `force`) and seals them; returns the
    /// newest one closed.
    pub(super) async fn close_if_due(&mut self, force: bool) -> Option<u64> {
        match self
            .spool
            .close_open(proto::types::time::now_millis(), force)
            .await
        {
            Ok(closed) => {
                for &segment_no in &closed {
                    self.sealer.seal(self.spool.clone(), segment_no);
                }
                closed.into_iter().max()
            }
            Err(err) => {
                warn!(rule = %self.rule.name, error = %err, "closing the open segment failed");
                self.stats
                    .set_error(format!("cannot close the open segment: {err}"));
                None
            }
        }
    }
}
