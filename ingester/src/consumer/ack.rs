//! Acknowledging on Pulsar: the stored prefix of segments, cumulatively per partition, then
//! freed from the spool. The acknowledgement is the last step of a message's way.

use proto::types::MessageId;
use pulsar::message::proto::MessageIdData;
use tracing::{debug, warn};

use super::RuleTask;
use crate::source::partition_consumers::RuleConsumers;
use crate::spool::AckPlan;
use crate::stats::RuleStats;

impl RuleTask {
    /// Acknowledges the stored prefix of segments, then frees it. The ack is the last step.
    pub(super) async fn acknowledge(&mut self, consumers: &mut RuleConsumers) {
        let Some(plan) = self.spool.ack_plan() else {
            return;
        };
        proto::failpoint::hit("ingester:before_ack");
        if let Err(err) = send_acks(consumers, &plan).await {
            warn!(rule = %self.rule.name, error = %err, "acknowledgement failed; will retry");
            self.stats
                .set_error(format!("acknowledgement failed: {err}"));
            return;
        }
        proto::failpoint::hit("ingester:after_ack");
        match self.spool.free(&plan).await {
            Ok(freed) => {
                let messages: u64 = freed.iter().map(|m| m.messages).sum();
                RuleStats::add(&self.stats.messages_acked, messages);
                debug!(rule = %self.rule.name, segments = freed.len(), messages, "acknowledged and freed");
            }
            Err(err) => {
                warn!(rule = %self.rule.name, error = %err, "freeing acknowledged segments failed");
            }
        }
    }
}

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

pub(super) fn id_data(id: &MessageId) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger,
        entry_id: id.entry,
        partition: (id.partition >= 0).then_some(id.partition),
        batch_index: (id.batch_index >= 0).then_some(id.batch_index),
        ..MessageIdData::default()
    }
}
