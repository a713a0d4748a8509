//! The pipeline loop: long-poll the ingester for sealed segments and run up to `concurrency`
//! uploads at once, keeping per-segment retry backoff in memory. A failed segment stays sealed
//! in the ingester, so it keeps coming back in ListSealed; it is skipped until its backoff
//! expires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::error::UploadError;
use crate::ingester::{self, Client};
use crate::multipart;
use crate::upload::{self, Outcome, UploadContext};

/// How long ListSealed may hold the call open when nothing is sealed.
const LIST_WAIT_MS: u32 = 1000;
/// Uploads still running at shutdown get this long to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Pause when every listed segment is busy or backing off, so the loop does not spin.
const IDLE_PAUSE: Duration = Duration::from_millis(500);
/// Retry records for segments not seen for this long are forgotten (rule deleted, or another
/// uploader stored them).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Upper bound for one ListSealed page.
const MAX_LIST: usize = 1000;
/// Longest wait before retrying a segment that is stored but whose commit the ingester could
/// not take yet (a HEAD and a commit; see `UploadError::CommitDeferred`): it goes through as
/// soon as the ingester has room again, whatever `max_backoff` says.
const UNCOMMITTED_RETRY_MAX: Duration = Duration::from_secs(5);

pub struct PullerSettings {
    pub ingester: String,
    /// TLS to the ingester when its URL is https://.
    pub ingester_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The control-plane token for every call to the ingester.
    pub auth: proto::auth::SendToken,
    pub concurrency: usize,
    pub backoff: Backoff,
}

type SegmentKey = (String, u64);

struct RetryState {
    attempts: u32,
    not_before: Instant,
}

struct Puller {
    settings: PullerSettings,
    ctx: Arc<UploadContext>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<(SegmentKey, u32, Outcome)>,
    in_flight: HashSet<SegmentKey>,
    retries: HashMap<SegmentKey, RetryState>,
    /// When to look for abandoned multipart uploads next (`None`: after the first listing).
    next_sweep: Option<Instant>,
}

/// Runs until `shutdown` turns true, then waits up to [`SHUTDOWN_GRACE`] for uploads in flight.
pub async fn run_pipeline(
    settings: PullerSettings,
    ctx: Arc<UploadContext>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), UploadError> {
    let Some(client) = ingester::connect(
        &settings.ingester,
        settings.ingester_tls.clone(),
        &settings.auth,
        settings.backoff,
        &ctx.status,
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let mut puller = Puller {
        permits: Arc::new(Semaphore::new(settings.concurrency)),
        settings,
        ctx,
        tasks: JoinSet::new(),
        in_flight: HashSet::new(),
        retries: HashMap::new(),
        next_sweep: None,
    };
    puller.run(client, &mut shutdown).await;
    puller.drain().await;
    Ok(())
}

impl Puller {
    async fn run(&mut self, mut client: Client, shutdown: &mut watch::Receiver<bool>) {
        let mut list_failures = 0u32;
        while !*shutdown.borrow() {
            while let Some(joined) = self.tasks.try_join_next() {
                self.finished(joined);
            }
            if self.permits.available_permits() == 0 {
                // Every slot is busy: wait for one to free up rather than listing again.
                tokio::select! {
                    Some(joined) = self.tasks.join_next() => self.finished(joined),
                    _ = shutdown.changed() => {}
                }
                continue;
            }

            // Ask for more than we can start: segments that are in flight or backing off still
            // come first in the oldest-first list and must not hide the ones behind them.
            let max = (self.settings.concurrency * 2 + self.in_flight.len() + self.retries.len())
                .min(MAX_LIST);
            let asked = Instant::now();
            let listed = tokio::select! {
                listed = ingester::list_sealed(&mut client, u32::try_from(max).unwrap_or(u32::MAX), LIST_WAIT_MS) => listed,
                _ = shutdown.changed() => continue,
            };
            let segments = match listed {
                Ok(reply) => {
                    self.ctx.status.ingester_reachable(&self.ctx.ingester);
                    if let Some(rules) = &reply.rules {
                        // A deleted rule's series leave /metrics.
                        self.ctx
                            .status
                            .retain_rules(&self.ctx.ingester, &rules.names);
                    }
                    let segments = reply.segments;
                    list_failures = 0;
                    self.sweep_if_due(&mut client).await;
                    segments
                }
                Err(err) => {
                    list_failures = list_failures.saturating_add(1);
                    let delay = self.settings.backoff.delay_now(list_failures);
                    let text = err.to_string();
                    self.ctx
                        .status
                        .ingester_unreachable(&self.ctx.ingester, &text);
                    tracing::warn!(error = %text, retry_in = ?delay, "listing sealed segments failed");
                    self.pause(delay, shutdown).await;
                    continue;
                }
            };

            let listed_any = !segments.is_empty();
            let started = self.start_uploads(segments, &client);
            self.forget_stale();
            if started == 0 && (listed_any || asked.elapsed() < Duration::from_millis(100)) {
                // Nothing new to do (all busy or backing off), or the ingester answered an empty
                // list at once instead of long-polling: don't hammer it.
                self.pause(IDLE_PAUSE, shutdown).await;
            }
        }
    }

    fn start_uploads(&mut self, segments: Vec<proto::v1::SegmentInfo>, client: &Client) -> usize {
        let now = Instant::now();
        let mut started = 0;
        for seg in segments {
            let key = (seg.rule.clone(), seg.segment_no);
            if self.in_flight.contains(&key) {
                continue;
            }
            if self.retries.get(&key).is_some_and(|r| r.not_before > now) {
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let attempt = self
                .retries
                .get(&key)
                .map_or(1, |r| r.attempts.saturating_add(1));
            let progress = self
                .ctx
                .status
                .upload_started(&self.ctx.ingester, &seg, attempt);
            self.in_flight.insert(key.clone());
            let ctx = self.ctx.clone();
            // Channels are cheap to clone and multiplex over one connection.
            let mut client = client.clone();
            let span = tracing::info_span!("upload", rule = %seg.rule, segment_no = seg.segment_no);
            self.tasks.spawn(
                async move {
                    let _permit = permit;
                    // A panic must not lose track of the segment: turn it into a failed attempt.
                    let outcome = std::panic::AssertUnwindSafe(upload::upload_segment(
                        &ctx,
                        &mut client,
                        &seg,
                        attempt,
                        progress,
                    ))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Outcome::Failed("upload task panicked".into()));
                    (key, attempt, outcome)
                }
                .instrument(span),
            );
            started += 1;
        }
        started
    }

    fn finished(&mut self, joined: Result<(SegmentKey, u32, Outcome), tokio::task::JoinError>) {
        let (key, attempt, outcome) = match joined {
            Ok(v) => v,
            // Only cancellation gets here (panics are caught in the task); nothing to record.
            Err(err) => {
                tracing::warn!(error = %err, "upload task ended abnormally");
                return;
            }
        };
        self.in_flight.remove(&key);
        self.ctx
            .status
            .upload_finished(&self.ctx.ingester, &key.0, key.1);
        match outcome {
            Outcome::Committed => {
                self.retries.remove(&key);
            }
            Outcome::Failed(_) | Outcome::Uncommitted(_) => {
                let delay = retry_delay(&outcome, self.settings.backoff, attempt);
                tracing::info!(rule = %key.0, segment_no = key.1, attempt, retry_in = ?delay, "will retry");
                self.retries.insert(
                    key,
                    RetryState {
                        attempts: attempt,
                        not_before: Instant::now() + delay,
                    },
                );
            }
            Outcome::Quarantined(_) => {
                // The ingester moves the damaged file aside and writes the segment again from its
                // spool, so the same segment comes back sealed shortly: the usual backoff fits.
                self.retries.insert(
                    key,
                    RetryState {
                        attempts: attempt,
                        not_before: Instant::now() + self.settings.backoff.delay_now(attempt),
                    },
                );
            }
        }
    }

    /// Aborts multipart uploads of segments the ingester no longer offers (see
    /// [`multipart::sweep`]): after the first successful listing, then every
    /// [`multipart::SWEEP_INTERVAL`]. Only on a complete list: one as long as the asked maximum
    /// may have left segments out.
    async fn sweep_if_due(&mut self, client: &mut Client) {
        if self.next_sweep.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.next_sweep = Some(Instant::now() + multipart::SWEEP_INTERVAL);
        match ingester::list_sealed(client, multipart::SWEEP_LIST_MAX, 0)
            .await
            .map(|reply| reply.segments)
        {
            Ok(all) if all.len() < multipart::SWEEP_LIST_MAX as usize => {
                let aborted =
                    multipart::sweep(&self.ctx.stores, &self.ctx.journal, &all, &self.in_flight)
                        .await;
                if aborted > 0 {
                    tracing::info!(aborted, "aborted abandoned multipart uploads");
                }
            }
            Ok(_) => tracing::info!("too many sealed segments to look for abandoned uploads now"),
            Err(err) => {
                // Try again at the next listing.
                self.next_sweep = None;
                tracing::debug!(error = %err, "listing for the multipart sweep failed");
            }
        }
    }

    fn forget_stale(&mut self) {
        let now = Instant::now();
        self.retries
            .retain(|_, r| now.saturating_duration_since(r.not_before) < FORGET_AFTER);
    }

    /// Sleeps, but wakes early for a finished upload (a free slot) or shutdown.
    async fn pause(&mut self, delay: Duration, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            Some(joined) = self.tasks.join_next() => self.finished(joined),
            _ = shutdown.changed() => {}
        }
    }

    /// Graceful stop: nothing new is started; uploads in flight get [`SHUTDOWN_GRACE`]. One
    /// cut short is simply not committed, so its messages stay unacknowledged and the segment
    /// is uploaded again after the restart.
    async fn drain(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        tracing::info!(
            uploads = self.tasks.len(),
            "shutting down: waiting for uploads in flight"
        );
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => self.finished(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        uploads = self.tasks.len(),
                        "uploads still running after {SHUTDOWN_GRACE:?}; stopping them uncommitted"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
}

/// How long a segment waits before its next attempt.
fn retry_delay(outcome: &Outcome, backoff: Backoff, attempt: u32) -> Duration {
    let delay = backoff.delay_now(attempt);
    match outcome {
        Outcome::Uncommitted(_) => delay.min(UNCOMMITTED_RETRY_MAX),
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_segment_whose_commit_waits_is_retried_within_seconds() {
        let backoff = Backoff::new(Duration::from_secs(3600));
        let failed = Outcome::Failed("PutObject failed".into());
        let uncommitted = Outcome::Uncommitted("CommitSegment: ResourceExhausted".into());
        assert!(retry_delay(&failed, backoff, 20) >= Duration::from_secs(1800));
        assert!(retry_delay(&uncommitted, backoff, 20) <= UNCOMMITTED_RETRY_MAX);
        // Early attempts back off as usual.
        assert!(retry_delay(&uncommitted, backoff, 1) <= Duration::from_millis(500));
    }
}
