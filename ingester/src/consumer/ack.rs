//! Acknowledging on Pulsar: the last step of a message's way.
//!
//! The path from the uploader's commit: `app::grpc` → `IngesterApp::commit` (`app::handoff`:
//! checks what the commit names, then `RuleSpool::mark_stored` makes the segment `stored`,
//! durably) → the rule's `ack_ready` wake-up → [`RuleTask::acknowledge`] here:
//! `RuleSpool::ack_plan` names the run of stored segments from the oldest one and where each
//! partition's cumulative acknowledgement may go, the acknowledgements are sent, then
//! `RuleSpool::free` drops the segments. Only that prefix is acknowledged, so segment order
//! holds whatever order the uploader commits in.
//!
//! The commit call does not acknowledge by itself because an acknowledgement goes through the
//! consumer of the partition that received the message, and the rule task owns those (it
//! reads from them, and recreates them on a reconnect or to have a failed entry delivered
//! again); sharing them would put a lock between the task and its reads. The hop costs
//! nothing durable: the spool says `stored` before the wake-up, the acknowledgements are sent
//! before anything is freed (a crash in between acknowledges again after the restart;
//! cumulative acknowledgements are idempotent), and the task also acknowledges on every
//! (re)connection, so a wake-up that comes while it is disconnected, or a failed
//! acknowledgement, is made up then or at the next commit.

use proto::types::MessageId;
use pulsar::message::proto::MessageIdData;
use tracing::{debug, warn};

use super::RuleTask;
use crate::source::partition_consumers::RuleConsumers;
use crate::spool::AckPlan;
use crate::stats::RuleStats;

impl RuleTask {
    /// Acknowledges the stored prefix of segments, then frees it.
    pub(super) async fn acknowledge(&mut self, consumers: &mut RuleConsumers) {
        let Some(plan) = self.spool.ack_plan() else {
            return;
        };
        edge::failpoint::hit("ingester:before_ack");
        if let Err(err) = send_acks(consumers, &plan).await {
            warn!(rule = %self.rule.name, error = %err, "acknowledgement failed; will retry");
            self.stats
                .set_error(format!("acknowledgement failed: {err}"));
            return;
        }
        edge::failpoint::hit("ingester:after_ack");
        match self.spool.free(&plan).await {
            Ok(freed) => {
                let messages: u64 = freed.iter().map(|m| m.messages + m.covered_messages).sum();
                RuleStats::add(&self.stats.messages_acked, messages);
                debug!(rule = %self.rule.name, segments = freed.len(), messages, "acknowledged and freed");
            }
            Err(err) => {
                warn!(rule = %self.rule.name, error = %err, "freeing acknowledged segments failed");
            }
        }
    }
}

/// One cumulative acknowledgement per partition the plan covers.
async fn send_acks(
    consumers: &mut RuleConsumers,
    plan: &AckPlan,
) -> Result<(), pulsar::error::ConsumerError> {
    for pos in &plan.positions {
        consumers
            .cumulative_ack(&pos.topic, id_data(&pos.id))
            .await?;
    }
    Ok(())
}

/// A message id as pulsar-rs takes it for an acknowledgement.
pub(super) fn id_data(id: &MessageId) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger,
        entry_id: id.entry,
        partition: (id.partition >= 0).then_some(id.partition),
        batch_index: (id.batch_index >= 0).then_some(id.batch_index),
        ..MessageIdData::default()
    }
}
