//! closed → sealed, off the consumer's path.
//!
//! This file is the queue: it turns closed segments into sealed segment files as many at once as
//! there are cores, at most 4 (gzip is most of the ingester's CPU, and more seals at once would
//! only share the disk), never the same segment twice at once, and retries failed seals ever
//! more slowly. Between seals it feeds large open segments to their presealing writers, so a
//! segment's compression runs while it is still being filled.
//!
//! The spool's side: `preseal` (compressing an open segment's log ahead), `sealing` (writing,
//! checking and renaming the segment file, then the meta: invariant 3's checks) and
//! `quarantine` (sealed → closed when a file fails its checksum).

mod preseal;
mod quarantine;
mod sealing;
#[cfg(test)]
pub(crate) use sealing::SEAL_FLUSH;
#[cfg(test)]
mod tests;

pub(crate) use preseal::Presealing;

use proto::wire::HistoryKind;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::app::history::{History, HistoryEntry};
use crate::spool::RuleSpool;

enum Job {
    /// A segment to seal, and how many times sealing it failed in a row.
    Seal(Arc<RuleSpool>, u64, u32),
    Feed(Arc<RuleSpool>),
}

/// The wait before sealing a segment again after its `failures`th failure in a row: 2 s, then
/// doubling up to 30 s. A seal that fails for want of space compresses the whole log again on
/// every try, which a full disk must not turn into a busy loop.
fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(4);
    Duration::from_secs(2u64 << exponent).min(Duration::from_secs(30))
}

/// A segment being sealed: its spool (by address, since a rule deleted and created again is a
/// new spool) and its number.
type InFlight = (usize, u64);

#[derive(Clone)]
pub struct SealerHandle {
    tx: mpsc::UnboundedSender<Job>,
}

impl SealerHandle {
    pub fn seal(&self, spool: Arc<RuleSpool>, segment_no: u64) {
        // The receiver lives as long as the daemon; after shutdown the segment stays closed in
        // the spool and is sealed at the next start.
        let _ = self.tx.send(Job::Seal(spool, segment_no, 0));
    }

    /// Asks for the open segment's log to be compressed ahead (once queued per spool).
    pub fn feed(&self, spool: Arc<RuleSpool>) {
        if spool.request_feed() {
            let _ = self.tx.send(Job::Feed(spool));
        }
    }
}

pub fn spawn(history: Arc<History>) -> SealerHandle {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    spawn_with(history, workers)
}

fn spawn_with(history: Arc<History>, workers: usize) -> SealerHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let retry_tx = tx.clone();
    let permits = Arc::new(Semaphore::new(workers));
    let in_flight: Arc<Mutex<HashSet<InFlight>>> = Arc::default();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let (spool, segment_no, failures) = match job {
                Job::Seal(spool, segment_no, failures) => (spool, segment_no, failures),
                Job::Feed(spool) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        let job = spool.clone();
                        let fed = tokio::task::spawn_blocking(move || job.feed_blocking()).await;
                        drop(permit);
                        if let Ok(Err(err)) = fed {
                            // The seal starts over from the log: nothing is lost, only time.
                            debug!(rule = %spool.rule(), error = %err, "presealing stopped");
                        }
                    });
                    continue;
                }
            };
            let id = (Arc::as_ptr(&spool) as usize, segment_no);
            // A segment asked for again while it is being sealed (a retry racing a restart's
            // request): the running seal finishes it, or fails and retries.
            if !lock(&in_flight).insert(id) {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let history = history.clone();
            let retry_tx = retry_tx.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let job = spool.clone();
                let result =
                    tokio::task::spawn_blocking(move || job.seal_blocking(segment_no)).await;
                drop(permit);
                lock(&in_flight).remove(&id);
                let error = match result {
                    Ok(Ok(())) => return,
                    Ok(Err(err)) => err.to_string(),
                    Err(join) => format!("sealing task failed: {join}"),
                };
                let failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                warn!(rule = %spool.rule(), segment = segment_no, error = %error, failures, retry_in = ?delay, "sealing failed; will retry");
                // Once per segment, not per try: a full disk would fill the history with them.
                if failures == 1 {
                    let mut entry = HistoryEntry::event(
                        HistoryKind::SealFailed,
                        format!("sealing segment {segment_no} failed: {error}; retrying"),
                    );
                    entry.segment_no = segment_no;
                    if let Err(err) = history.record(spool.rule(), &entry) {
                        warn!(error = %err, "could not write history");
                    }
                }
                tokio::time::sleep(delay).await;
                let _ = retry_tx.send(Job::Seal(spool, segment_no, failures));
            });
        }
    });
    SealerHandle { tx }
}

fn lock(set: &Mutex<HashSet<InFlight>>) -> std::sync::MutexGuard<'_, HashSet<InFlight>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
