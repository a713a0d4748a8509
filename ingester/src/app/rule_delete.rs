//! `rule delete`: with `--drain`, pause, flush and wait for the uploader to empty the spool;
//! refuse while segments are not yet stored (unless `--discard`) or stored but not yet
//! acknowledged; then stop the task, remove the subscription if asked, and drop the spool.

use std::time::{Duration, Instant};

use proto::v1;
use tracing::{info, warn};

use super::IngesterApp;
use crate::error::{IngesterError, Result};
use crate::source::unsubscribe::SubscriptionRef;
use crate::spool::{RuleSpool, SegmentState};

/// How long a plain `rule delete` waits for stored segments to be acknowledged.
const DELETE_ACK_WAIT: Duration = Duration::from_secs(5);

impl IngesterApp {
    pub async fn delete_rule(&self, req: &v1::DeleteRuleRequest) -> Result<v1::DeleteRuleReply> {
        let name = req.name.clone();
        let spool = {
            let running = self.running.lock().await;
            let handle = running
                .get(&name)
                .ok_or_else(|| IngesterError::RuleNotFound(name.clone()))?;
            handle.spool.clone()
        };
        if req.drain {
            self.set_paused_inner(&name, true, false).await?;
            self.flush(&name).await?;
            let timeout = drain_timeout(req.drain_timeout_secs);
            let deadline = Instant::now() + timeout;
            while !spool.is_empty() {
                if Instant::now() > deadline {
                    return Err(IngesterError::FailedPrecondition(format!(
                        "rule {name:?} did not drain within {}; it stays paused — is the uploader running? (see `status {name}`)",
                        humantime::format_duration(timeout)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let states: Vec<SegmentState> = spool.segments().iter().map(|m| m.state).collect();
        let unstored = unstored_to_discard(&name, &states, req.discard)?;
        if !req.discard {
            self.wait_for_acks(&name, &spool).await?;
        }
        let mut running = self.running.lock().await;
        let stored = self.rules.get(&name)?;
        let Some(handle) = running.remove(&name) else {
            return Err(IngesterError::RuleNotFound(name));
        };
        let stats = handle.stats.clone();
        Self::stop_rule(handle).await;
        // Only now: the rule's own consumer is gone, and the broker removes a subscription only
        // when nobody consumes from it.
        let notice = if req.unsubscribe {
            let token = self.rules.token(&name)?;
            let subscription = SubscriptionRef {
                rule: &stored.config,
                token: token.as_ref(),
                trust: &self.trust,
            };
            if let Err(err) = subscription.remove().await {
                let paused = if stored.paused {
                    " (it stays paused)"
                } else {
                    ""
                };
                let refused = IngesterError::FailedPrecondition(format!(
                    "rule {name:?} was not deleted{paused}: {err}; retry, or delete without --unsubscribe and remove it yourself"
                ));
                return Err(self.restart_unchanged(
                    &mut running,
                    &stored,
                    spool.clone(),
                    stats,
                    refused,
                ));
            }
            format!("removed {}", subscription.describe())
        } else {
            let notice = crate::source::unsubscribe::left_behind_notice(&stored.config);
            warn!(rule = %name, "{notice}");
            notice
        };
        spool.destroy()?;
        self.rules.remove(&name)?;
        self.history.remove_rule(&name)?;
        self.db.flush_async().await?;
        info!(rule = %name, discarded = unstored, "rule deleted");
        Ok(v1::DeleteRuleReply {
            segments_discarded: unstored,
            unsubscribed: req.unsubscribe,
            notice,
        })
    }

    /// Segments stored but not yet acknowledged on Pulsar: deleting the rule now would forget
    /// them, and their messages would stay on the subscription as if never backed up. Asks the
    /// rule task to acknowledge and waits [`DELETE_ACK_WAIT`] for it (a commit that just landed
    /// is acknowledged within a tick); refuses if they are still there (no consumer: the broker
    /// is unreachable).
    async fn wait_for_acks(&self, name: &str, spool: &RuleSpool) -> Result<()> {
        let stored_unacked = || {
            spool
                .segments()
                .iter()
                .filter(|m| m.state == SegmentState::Stored)
                .count()
        };
        if stored_unacked() == 0 {
            return Ok(());
        }
        if let Some(handle) = self.running.lock().await.get(name) {
            handle.ack_ready.notify_one();
        }
        let deadline = Instant::now() + DELETE_ACK_WAIT;
        loop {
            let left = stored_unacked();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(IngesterError::FailedPrecondition(format!(
                    "rule {name:?} has {left} segment(s) stored but not yet acknowledged on Pulsar (is the broker reachable? see `status {name}`); try again once they are, or use --discard to delete anyway (their messages stay on the subscription and are delivered again to whoever reads it)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How long `--drain` waits for the uploader to empty the spool: 5 minutes unless the request
/// says.
fn drain_timeout(drain_timeout_secs: u64) -> Duration {
    Duration::from_secs(if drain_timeout_secs > 0 {
        drain_timeout_secs
    } else {
        300
    })
}

/// How many segments deleting rule `name` drops: those not yet stored, which only `discard`
/// allows to drop (their messages are in no object).
fn unstored_to_discard(name: &str, states: &[SegmentState], discard: bool) -> Result<u64> {
    let unstored = states
        .iter()
        .filter(|s| **s != SegmentState::Stored)
        .count() as u64;
    if unstored > 0 && !discard {
        return Err(IngesterError::FailedPrecondition(format!(
            "rule {name:?} has {unstored} segment(s) not yet stored; use --drain to upload them first or --discard to drop them"
        )));
    }
    Ok(unstored)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{drain_timeout, unstored_to_discard};
    use crate::error::IngesterError;
    use crate::spool::SegmentState;

    #[test]
    fn a_drain_waits_five_minutes_unless_told() {
        assert_eq!(drain_timeout(0), Duration::from_secs(300));
        assert_eq!(drain_timeout(20), Duration::from_secs(20));
    }

    #[test]
    fn segments_not_yet_stored_are_dropped_only_with_discard() {
        use SegmentState::{Closed, Open, Sealed, Stored};
        assert_eq!(unstored_to_discard("orders", &[], false).ok(), Some(0));
        // Stored ones are not dropped: they are acknowledged before the rule goes.
        assert_eq!(
            unstored_to_discard("orders", &[Stored, Stored], false).ok(),
            Some(0)
        );
        let all = [Stored, Sealed, Closed, Open];
        match unstored_to_discard("orders", &all, false) {
            Err(IngesterError::FailedPrecondition(message)) => {
                assert!(message.contains("3 segment(s) not yet stored"), "{message}");
                assert!(message.contains("--discard"), "{message}");
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(unstored_to_discard("orders", &all, true).ok(), Some(3));
    }
}
