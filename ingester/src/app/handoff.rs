//! The hand-off to the uploader: it lists the sealed segments (shared fairly between rules,
//! [`sealed_page`]), streams one (checked against its CRC32C as it goes; a damaged file is
//! quarantined and sealed again from the spool), commits it once its object is stored
//! ([`commit_check`]), and reports failed uploads.
//!
//! A commit marks the segment stored in the spool and wakes the rule's task, which acknowledges
//! it on Pulsar (see `crate::consumer::ack` for why the acknowledgement is the task's).

use std::sync::Arc;
use std::time::Duration;

use proto::v1;
use proto::wire::HistoryKind;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::warn;

use super::commit_check;
use super::history::{self, HistoryEntry};
use super::sealed_page;
use super::IngesterApp;
use crate::error::{IngesterError, Result};
use crate::spool::{CommitOutcome, CoverOutcome, RuleSpool};
use crate::stats::RuleStats;

const READ_CHUNK: usize = 256 * 1024;

impl IngesterApp {
    /// Sealed segments of every rule, shared fairly between rules ([`sealed_page::select`]);
    /// waits up to `wait` for one to appear.
    pub async fn list_sealed(&self, max: usize, wait: Duration) -> Vec<v1::SegmentInfo> {
        let notified = self.sealed_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let collect = || async {
            let running = self.running.lock().await;
            let mut all = Vec::new();
            for (name, handle) in running.iter() {
                for meta in handle.spool.sealed() {
                    let mut info = meta.to_proto(name);
                    info.file_path = handle.spool.segment_file(&meta).display().to_string();
                    all.push(sealed_page::Candidate {
                        rule: name.clone(),
                        sealed_at_ms: meta.sealed_at_ms,
                        item: info,
                    });
                }
            }
            sealed_page::select(all, max)
        };
        let found = collect().await;
        if !found.is_empty() || wait.is_zero() {
            return found;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        collect().await
    }

    /// The names of the rules running now, sorted; ListSealed sends them along so that an
    /// uploader drops a deleted rule's metrics.
    pub async fn rule_names(&self) -> v1::RuleNames {
        let mut names: Vec<String> = self.running.lock().await.keys().cloned().collect();
        names.sort();
        v1::RuleNames { names }
    }

    /// Streams a sealed segment file, checking its CRC32C as it goes. A mismatch quarantines the
    /// file (it is rewritten from the spool) and ends the stream with DATA_LOSS.
    pub async fn read_segment(
        self: &Arc<Self>,
        rule: &str,
        segment_no: u64,
    ) -> Result<mpsc::Receiver<std::result::Result<v1::SegmentChunk, tonic::Status>>> {
        let spool = self.spool_of(rule).await?;
        let (meta, path) = spool.sealed_file(segment_no)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| IngesterError::io(format!("opening {}", path.display()), e))?;
        let (tx, rx) = mpsc::channel(4);
        let app = self.clone();
        let rule = rule.to_string();
        tokio::spawn(async move {
            let mut crc = 0u32;
            let mut len = 0u64;
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(err) => {
                        let _ = tx
                            .send(Err(tonic::Status::internal(format!(
                                "reading segment {segment_no} of rule {rule:?}: {err}"
                            ))))
                            .await;
                        return;
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                crc = crc32c::crc32c_append(crc, &buf);
                len += n as u64;
                if len > meta.file_bytes {
                    break;
                }
                if tx
                    .send(Ok(v1::SegmentChunk {
                        data: bytes::Bytes::from(buf),
                    }))
                    .await
                    .is_err()
                {
                    return; // the uploader went away; nothing to clean up
                }
            }
            if crc != meta.crc32c || len != meta.file_bytes {
                let reason = format!(
                    "checksum mismatch: file has {len} bytes crc32c {crc:08x}, sealed as {} bytes crc32c {:08x}",
                    meta.file_bytes, meta.crc32c
                );
                let status = app.quarantine(&spool, segment_no, &reason).await;
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(rx)
    }

    async fn quarantine(
        &self,
        spool: &Arc<RuleSpool>,
        segment_no: u64,
        reason: &str,
    ) -> tonic::Status {
        let rule = spool.rule().to_string();
        warn!(rule = %rule, segment = segment_no, reason = %reason, "damaged segment file quarantined");
        let moved = match spool.quarantine(segment_no) {
            Ok(path) => format!("moved to {}", path.display()),
            Err(err) => format!("could not move it aside: {err}"),
        };
        let mut entry = HistoryEntry::event(
            HistoryKind::Quarantined,
            format!("segment {segment_no} is damaged ({reason}); {moved}; it is rewritten from the spool"),
        );
        entry.segment_no = segment_no;
        self.record(&rule, entry);
        {
            let running = self.running.lock().await;
            if let Some(handle) = running.get(&rule) {
                RuleStats::add(&handle.stats.quarantined, 1);
                handle
                    .stats
                    .set_error(format!("segment {segment_no} quarantined: {reason}"));
            }
        }
        self.sealer.seal(spool.clone(), segment_no);
        IngesterError::Damaged {
            rule,
            segment_no,
            reason: reason.to_string(),
        }
        .into()
    }

    pub async fn commit(&self, req: &v1::CommitSegmentRequest) -> Result<CommitOutcome> {
        let (spool, stats, ack_ready) = {
            let running = self.running.lock().await;
            let handle = running
                .get(&req.rule)
                .ok_or_else(|| IngesterError::RuleNotFound(req.rule.clone()))?;
            (
                handle.spool.clone(),
                handle.stats.clone(),
                handle.ack_ready.clone(),
            )
        };
        commit_check::check_request(req).map_err(IngesterError::InvalidRequest)?;
        let meta = spool
            .segments()
            .into_iter()
            .find(|m| m.segment_no == req.segment_no);
        if let Some(meta) = &meta {
            // Before sealing there is no object to compare with; mark_stored refuses those.
            if meta.state >= crate::spool::SegmentState::Sealed {
                commit_check::check_against(req, meta).map_err(IngesterError::InvalidRequest)?;
            }
        }
        if !req.covered_through.is_empty() {
            return self.cover(spool, req, ack_ready).await;
        }
        let outcome = spool
            .mark_stored(req.segment_no, &req.etag, req.upload_ms, req.attempts)
            .await?;
        edge::failpoint::hit("ingester:after_commit");
        if outcome == CommitOutcome::Committed {
            if let Some(meta) = meta {
                RuleStats::add(&stats.segments_stored, 1);
                stats.set_stored(&meta.object_key);
                let mut entry =
                    HistoryEntry::event(HistoryKind::Stored, format!("stored {}", meta.object_key));
                entry.segment_no = meta.segment_no;
                entry.object_key = meta.object_key.clone();
                entry.messages = meta.messages;
                entry.bytes = meta.file_bytes;
                entry.window_start_ms = meta.window_start_ms;
                entry.duration_ms = req.upload_ms;
                entry.attempts = req.attempts;
                self.record(&req.rule, entry);
            }
            // Only the rule task may acknowledge (see `crate::consumer::ack`). A wake-up it has
            // not taken yet is kept, and several coalesce into one look at the spool.
            ack_ready.notify_one();
        }
        Ok(outcome)
    }

    /// A fenced segment whose key another ingester's object holds (`covered_through`: that
    /// object's last message id): see `RuleSpool::cover`.
    async fn cover(
        &self,
        spool: Arc<RuleSpool>,
        req: &v1::CommitSegmentRequest,
        ack_ready: Arc<tokio::sync::Notify>,
    ) -> Result<CommitOutcome> {
        let through: proto::types::MessageId = req.covered_through.parse().map_err(|e| {
            IngesterError::InvalidRequest(format!(
                "covered_through {:?} is not a message id: {e}",
                req.covered_through
            ))
        })?;
        let segment_no = req.segment_no;
        let cover = spool.cover(segment_no, through).await?;
        for &no in &cover.to_seal {
            self.sealer.seal(spool.clone(), no);
        }
        let outcome = match cover.outcome {
            CoverOutcome::AlreadyCommitted => return Ok(CommitOutcome::AlreadyCommitted),
            CoverOutcome::Covered => CommitOutcome::Covered,
            CoverOutcome::Trimmed => CommitOutcome::Trimmed,
        };
        let text = match outcome {
            CommitOutcome::Covered => format!(
                "segment {segment_no}: another ingester's {} holds all of it (through {through})",
                req.object_key
            ),
            _ => format!(
                "segment {segment_no}: another ingester's {} holds it through {through}; the rest is sealed again",
                req.object_key
            ),
        };
        tracing::info!(rule = %req.rule, segment = segment_no, "{text}");
        let mut entry = HistoryEntry::event(HistoryKind::Info, text);
        entry.segment_no = segment_no;
        entry.object_key = req.object_key.clone();
        self.record(&req.rule, entry);
        ack_ready.notify_one();
        Ok(outcome)
    }

    pub async fn report_failure(&self, req: &v1::UploadFailure) -> Result<()> {
        let stats = {
            let running = self.running.lock().await;
            running.get(&req.rule).map(|h| h.stats.clone())
        };
        let Some(stats) = stats else {
            return Err(IngesterError::RuleNotFound(req.rule.clone()));
        };
        // The text comes from the uploader (a store's error body can be long): it is kept in
        // the history and in `status`, so it is cut.
        let message = format!(
            "upload of segment {} failed (attempt {}): {}",
            req.segment_no,
            req.attempt,
            history::cut_text(&req.error, history::MAX_REPORTED_TEXT)
        );
        stats.set_error(&message);
        RuleStats::add(&stats.upload_failures, 1);
        let mut entry = HistoryEntry::event(HistoryKind::UploadFailed, message);
        entry.segment_no = req.segment_no;
        entry.attempts = req.attempt;
        self.record(&req.rule, entry);
        Ok(())
    }
}
