//! How this ingester presents itself on a subscription it may share with other ingesters
//! (docs/design.md, "Several ingesters on one subscription").

/// From the config's `node_id` and `priority_level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Tells this ingester's consumers from other ingesters' on one subscription.
    pub node_id: String,
    /// Pulsar's consumer priority: a Failover subscription gives partitions to the consumers
    /// of the lowest level present; higher levels stand by until those leave. 0, the broker's
    /// default, is not sent.
    pub priority_level: i32,
}

impl Membership {
    /// At the default priority.
    pub fn new(node_id: impl Into<String>) -> Membership {
        Membership {
            node_id: node_id.into(),
            priority_level: 0,
        }
    }

    /// The name of every consumer of `rule` on this ingester.
    pub fn consumer_name(&self, rule: &str) -> String {
        format!("tdmq-backup-{rule}-{}", self.node_id)
    }

    /// What the consumers subscribe with: `None` leaves the broker's default.
    pub fn sent_priority_level(&self) -> Option<i32> {
        (self.priority_level != 0).then_some(self.priority_level)
    }
}
