//! Turns closed segments into sealed segment files, one at a time, off the consumer's path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::history::{History, HistoryEntry};
use crate::spool::RuleSpool;

type Job = (Arc<RuleSpool>, u64);

#[derive(Clone)]
pub struct SealerHandle {
    tx: mpsc::UnboundedSender<Job>,
}

impl SealerHandle {
    pub fn seal(&self, spool: Arc<RuleSpool>, segment_no: u64) {
        // The receiver lives as long as the daemon; after shutdown the segment stays closed in
        // the spool and is sealed at the next start.
        let _ = self.tx.send((spool, segment_no));
    }
}

pub fn spawn(history: Arc<History>) -> SealerHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let retry_tx = tx.clone();
    tokio::spawn(async move {
        while let Some((spool, segment_no)) = rx.recv().await {
            let job = spool.clone();
            let result = tokio::task::spawn_blocking(move || job.seal_blocking(segment_no)).await;
            let error = match result {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err.to_string(),
                Err(join) => format!("sealing task failed: {join}"),
            };
            warn!(rule = %spool.rule(), segment = segment_no, error = %error, "sealing failed; will retry");
            let mut entry = HistoryEntry::event(
                "seal_failed",
                true,
                format!("sealing segment {segment_no} failed: {error}"),
            );
            entry.segment_no = segment_no;
            if let Err(err) = history.record(spool.rule(), &entry) {
                warn!(error = %err, "could not write history");
            }
            let tx = retry_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = tx.send((spool, segment_no));
            });
        }
    });
    SealerHandle { tx }
}
