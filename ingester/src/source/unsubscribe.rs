//! Removing a Pulsar subscription a rule no longer reads (`--unsubscribe` on `rule delete` and
//! on edits that change where the rule reads from).
//!
//! A subscription outlives its consumers: left behind, it keeps every new message of the topic
//! for nobody, and on TDMQ that backlog counts against the namespace's quota until the producers
//! are blocked or the oldest messages are dropped. Pulsar has no "remove subscription" command
//! outside the admin API, so a short-lived consumer attaches to it and unsubscribes (for a
//! partitioned topic pulsar-rs attaches to, and unsubscribes, every partition).

use std::time::Duration;

use proto::types::{RuleConfig, Secret};
use pulsar::consumer::ConsumerOptions;
use pulsar::{ConnectionRetryOptions, Consumer, TokioExecutor};
use tracing::{debug, info};

use super::client;
use super::trust::PulsarTrust;

/// How long removing may take in all. The broker may still be closing the rule's own consumer
/// (pulsar-rs closes a dropped consumer in the background), and it refuses to remove a
/// subscription that still has one: those refusals are retried until this passes.
const DEADLINE: Duration = Duration::from_secs(20);
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Why a subscription could not be removed (the broker's or the connection's reason).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnsubscribeError(String);

/// Where a subscription lives, and the token that may remove it.
pub struct SubscriptionRef<'a> {
    pub rule: &'a RuleConfig,
    pub token: Option<&'a Secret>,
    pub trust: &'a PulsarTrust,
}

impl SubscriptionRef<'_> {
    /// `subscription "S" on TOPIC at URL`, for messages.
    pub fn describe(&self) -> String {
        describe(self.rule)
    }

    /// Removes the subscription: every message it still holds is released for good.
    pub async fn remove(&self) -> Result<(), UnsubscribeError> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last_error = String::from("no attempt finished");
        loop {
            match tokio::time::timeout_at(deadline, self.attempt()).await {
                Ok(Ok(())) => {
                    info!(rule = %self.rule.name, subscription = %self.rule.subscription, topic = %self.rule.topic, "subscription removed");
                    return Ok(());
                }
                Ok(Err(err)) => {
                    debug!(rule = %self.rule.name, error = %err, "unsubscribing failed; retrying");
                    last_error = err.to_string();
                }
                Err(_elapsed) => break,
            }
            if tokio::time::Instant::now() + RETRY_EVERY >= deadline {
                break;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
        Err(UnsubscribeError(format!(
            "could not remove the {} within {}: {last_error}",
            self.describe(),
            humantime::format_duration(DEADLINE)
        )))
    }

    async fn attempt(&self) -> Result<(), pulsar::Error> {
        let retry = ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retries: 3,
            connection_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(10),
            ..ConnectionRetryOptions::default()
        };
        let pulsar =
            client::connect(self.rule.service_url.clone(), self.token, self.trust, retry).await?;
        let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
            .consumer()
            .with_topic(self.rule.topic.clone())
            .with_subscription(self.rule.subscription.clone())
            .with_subscription_type(client::sub_type(self.rule.subscription_type))
            .with_consumer_name(format!("tdmq-backup-{}-unsubscribe", self.rule.name))
            // It reads nothing: one permit, so the broker sends next to nothing before it goes.
            .with_batch_size(1)
            .with_options(
                ConsumerOptions::default()
                    .with_receiver_queue_size(1)
                    .durable(true),
            )
            .build()
            .await?;
        consumer.unsubscribe().await
    }
}

/// `subscription "S" on TOPIC at URL`.
pub fn describe(rule: &RuleConfig) -> String {
    format!(
        "subscription {:?} on {} at {}",
        rule.subscription, rule.topic, rule.service_url
    )
}

/// What to tell the operator when a rule stops reading a subscription it does not remove.
pub fn left_behind_notice(rule: &RuleConfig) -> String {
    format!(
        "the {} was left behind: it keeps every new message against the backlog quota; remove it \
         with `pulsar-admin topics unsubscribe {} -s {}` (or in the TDMQ console), or pass \
         --unsubscribe next time",
        describe(rule),
        rule.topic,
        rule.subscription
    )
}

#[cfg(test)]
mod tests {
    use proto::types::RuleSpecInput;

    #[test]
    fn the_notice_names_the_subscription_the_topic_and_how_to_remove_it() {
        let rule = RuleSpecInput {
            name: Some("orders-bk".into()),
            service_url: Some("pulsar://10.0.0.5:6650".into()),
            topic: Some("orders".into()),
            subscription: Some("backup".into()),
            bucket: Some("backup-1250000000".into()),
            region: Some("ap-guangzhou".into()),
            ..RuleSpecInput::default()
        }
        .validate()
        .expect("valid");
        let notice = super::left_behind_notice(&rule);
        assert!(notice.contains(r#"subscription "backup" on persistent://public/default/orders at pulsar://10.0.0.5:6650 was left behind"#), "{notice}");
        assert!(notice.contains("backlog quota"), "{notice}");
        assert!(notice.contains("--unsubscribe"), "{notice}");
    }
}
