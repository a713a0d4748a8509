//! `rule edit`. What an edit does is decided first, without touching anything ([`plan_edit`]):
//! a new source (cluster, topic or subscription) needs an empty spool and forgets the old
//! positions; a new source, subscription type or token restarts the consumer over the same
//! spool. A change that fails half-way starts the rule again as it was.

use std::collections::HashMap;
use std::sync::Arc;

use proto::types::{RuleConfig, RuleError, RuleSpecInput, Secret};
use proto::v1;
use proto::wire::HistoryKind;

use super::history::HistoryEntry;
use super::rules::StoredRule;
use super::{IngesterApp, RuleHandle};
use crate::error::{IngesterError, Result};
use crate::source::unsubscribe::SubscriptionRef;
use crate::spool::RuleSpool;
use crate::stats::RuleStats;

impl IngesterApp {
    /// Applies an edit. With `unsubscribe`, an edit that changes the source also removes the
    /// old subscription; otherwise the reply's notice says it was left behind.
    pub async fn edit_rule(
        &self,
        spec: &v1::RuleSpec,
        unsubscribe: bool,
    ) -> Result<(v1::Rule, String)> {
        let name = spec.name.clone();
        let mut running = self.running.lock().await;
        let mut stored = self.rules.get(&name)?;
        let mut patch = RuleSpecInput::from(spec);
        patch.name = None;
        let config = stored.config.to_input().overlay(patch).validate()?;
        let EditPlan {
            source_changed,
            consumer_changed,
        } = plan_edit(&stored.config, &config, spec.token.is_some(), unsubscribe)?;
        if source_changed {
            self.refuse_shared_subscription(&config)?;
        }
        let handle = running
            .get(&name)
            .ok_or_else(|| IngesterError::RuleNotFound(name.clone()))?;
        if source_changed && !handle.spool.is_empty() {
            return Err(spool_not_empty(&stored.config));
        }
        let mut changes = describe_changes(&stored.config, &config, spec.token.is_some());
        let mut stats = handle.stats.clone();
        let mut notice = String::new();
        // The spool of a rule whose consumer was stopped above: it carries on under the new one.
        let mut stopped = None;
        if source_changed {
            // Stopped before the spool is checked again: a consumer still running could spool
            // a message of the old source between the check and the reset.
            let Some(old) = running.remove(&name) else {
                return Err(IngesterError::RuleNotFound(name));
            };
            let spool = old.spool.clone();
            stats = old.stats.clone();
            Self::stop_rule(old).await;
            if !spool.is_empty() {
                return Err(self.restart_unchanged(
                    &mut running,
                    &stored,
                    spool,
                    stats,
                    spool_not_empty(&stored.config),
                ));
            }
            notice = if unsubscribe {
                let token = self.rules.token(&name)?;
                let old_subscription = SubscriptionRef {
                    rule: &stored.config,
                    token: token.as_ref(),
                    trust: &self.trust,
                };
                if let Err(err) = old_subscription.remove().await {
                    let refused = IngesterError::FailedPrecondition(format!(
                        "rule {name:?} was not changed: {err}; retry, or edit without --unsubscribe and remove it yourself"
                    ));
                    return Err(self.restart_unchanged(
                        &mut running,
                        &stored,
                        spool,
                        stats,
                        refused,
                    ));
                }
                format!("removed {}", old_subscription.describe())
            } else {
                crate::source::unsubscribe::left_behind_notice(&stored.config)
            };
            // Before the new source is stored: a crash in between leaves the old source with no
            // watermarks (redeliveries stored twice), never the new one with the old watermarks
            // (its messages dropped as seen).
            if let Err(err) = spool.reset_positions() {
                return Err(self.restart_unchanged(&mut running, &stored, spool, stats, err));
            }
            stored.start_applied = false;
            changes = format!("{changes}; {notice}");
            stopped = Some(spool);
        }
        stored.config = config;
        stored.updated_at_ms = proto::types::time::now_millis();
        self.rules.put(&stored)?;
        if let Some(token) = &spec.token {
            self.rules
                .set_token(&name, Some(&Secret::new(token.clone())))?;
        }
        self.db.flush_async().await?;
        if let Some(handle) = running.get(&name) {
            handle.spool.reconfigure(&stored.config);
        }
        if consumer_changed {
            if let Some(old) = running.remove(&name) {
                stats = old.stats.clone();
                let spool = old.spool.clone();
                // Waits for a spool write in progress: the next consumer appends to the same
                // spool, after it.
                Self::stop_rule(old).await;
                stopped = Some(spool);
            }
            let Some(spool) = stopped else {
                return Err(IngesterError::RuleNotFound(name));
            };
            let handle = self.start_task(&stored, spool, stats)?;
            running.insert(name.clone(), handle);
        }
        self.record(
            &name,
            HistoryEntry::event(HistoryKind::RuleEdited, format!("rule edited: {changes}")),
        );
        Ok((stored.to_proto(self.rules.token(&name)?.is_some()), notice))
    }

    /// Starts a stopped rule again as it was, after a change that could not be made; returns
    /// why it could not. A rule that cannot even restart says both.
    pub(super) fn restart_unchanged(
        &self,
        running: &mut HashMap<String, RuleHandle>,
        stored: &StoredRule,
        spool: Arc<RuleSpool>,
        stats: Arc<RuleStats>,
        why: IngesterError,
    ) -> IngesterError {
        match self.start_task(stored, spool, stats) {
            Ok(handle) => {
                running.insert(stored.config.name.clone(), handle);
                why
            }
            Err(err) => IngesterError::FailedPrecondition(format!(
                "{why}; and rule {:?} could not start again: {err} (restart the ingester)",
                stored.config.name
            )),
        }
    }
}

/// What an edit does to the running rule.
#[derive(Debug, PartialEq, Eq)]
struct EditPlan {
    /// It reads other messages: another cluster, topic or subscription. Their message ids mean
    /// nothing next to the old ones, so the spool must be empty and its positions are forgotten.
    source_changed: bool,
    /// Its consumer is restarted (a new source, subscription type or token).
    consumer_changed: bool,
}

/// What editing `old` into `new` does (`token_given`: the edit sets a token), or why it is
/// refused: a start position without a new source, or `--unsubscribe` without one.
fn plan_edit(
    old: &RuleConfig,
    new: &RuleConfig,
    token_given: bool,
    unsubscribe: bool,
) -> std::result::Result<EditPlan, RuleError> {
    let source_changed = old.service_url != new.service_url
        || old.topic != new.topic
        || old.subscription != new.subscription;
    if new.start != old.start && !source_changed {
        return Err(start_needs_a_new_subscription(old, new));
    }
    if unsubscribe && !source_changed {
        return Err(RuleError {
            field: "unsubscribe",
            message: format!(
                "--unsubscribe applies only to an edit that changes service_url, topic or subscription; this one keeps the {}",
                crate::source::unsubscribe::describe(old)
            ),
        });
    }
    let consumer_changed =
        source_changed || new.subscription_type != old.subscription_type || token_given;
    Ok(EditPlan {
        source_changed,
        consumer_changed,
    })
}

/// Why `rule edit --start` alone is refused: nothing could honour it. The broker keeps the
/// subscription's position (a start applies only when a subscription is created), and even a
/// seek back would not help: the spool drops every re-read message as already acknowledged.
fn start_needs_a_new_subscription(old: &RuleConfig, new: &RuleConfig) -> RuleError {
    RuleError {
        field: "start",
        message: format!(
            "start {} is refused: a start position applies when the subscription is created, and subscription {:?} on {} exists already and reads on from its own position (messages read again would be dropped as already backed up); to back up from another position, give --start together with a new --subscription (or --topic or --service-url)",
            new.start.display(),
            old.subscription,
            old.topic
        ),
    }
}

/// Why a source change is refused while the old source's messages are still in the spool.
fn spool_not_empty(old: &RuleConfig) -> IngesterError {
    IngesterError::FailedPrecondition(format!(
        "rule {:?} still has unacknowledged messages from {} at {}; run `rule flush` and wait until `segments` is empty before changing service_url, topic or subscription",
        old.name, old.topic, old.service_url
    ))
}

/// The fields an edit changes, for the history: `topic, window_secs`, or `no change`.
fn describe_changes(old: &RuleConfig, new: &RuleConfig, token: bool) -> String {
    let mut changed = old.to_input().changed_fields(&new.to_input());
    if token {
        changed.push("token");
    }
    if changed.is_empty() {
        "no change".into()
    } else {
        changed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::v1;

    use proto::types::{RuleConfig, RuleSpecInput, StartPosition, SubscriptionKind};

    use super::{describe_changes, plan_edit, EditPlan};
    use crate::app::IngesterApp;
    use crate::consumer::ConsumerLimits;

    fn rule() -> RuleConfig {
        RuleSpecInput {
            name: Some("orders".into()),
            service_url: Some("pulsar://10.0.0.5:6650".into()),
            topic: Some("orders".into()),
            subscription: Some("backup".into()),
            bucket: Some("backup-1250000000".into()),
            region: Some("ap-guangzhou".into()),
            ..RuleSpecInput::default()
        }
        .validate()
        .expect("a valid rule")
    }

    fn plan(source: bool, consumer: bool) -> EditPlan {
        EditPlan {
            source_changed: source,
            consumer_changed: consumer,
        }
    }

    #[test]
    fn only_a_new_source_subscription_type_or_token_restarts_the_consumer() {
        let old = rule();
        let window = RuleConfig {
            window_secs: old.window_secs * 2,
            ..old.clone()
        };
        assert_eq!(
            plan_edit(&old, &window, false, false),
            Ok(plan(false, false))
        );
        assert_eq!(
            plan_edit(&old, &old, true, false),
            Ok(plan(false, true)),
            "a token"
        );
        let exclusive = RuleConfig {
            subscription_type: SubscriptionKind::Exclusive,
            ..old.clone()
        };
        assert_eq!(
            plan_edit(&old, &exclusive, false, false),
            Ok(plan(false, true))
        );
        for new in [
            RuleConfig {
                service_url: "pulsar://10.0.0.6:6650".into(),
                ..old.clone()
            },
            RuleConfig {
                topic: "persistent://public/default/orders-v2".into(),
                ..old.clone()
            },
            RuleConfig {
                subscription: "backup-2".into(),
                ..old.clone()
            },
        ] {
            assert_eq!(
                plan_edit(&old, &new, false, true),
                Ok(plan(true, true)),
                "{new:?}"
            );
        }
    }

    #[test]
    fn a_start_or_unsubscribe_without_a_new_source_is_refused_naming_the_field() {
        let old = rule();
        let start = RuleConfig {
            start: StartPosition::Latest,
            ..old.clone()
        };
        assert_ne!(old.start, start.start);
        let refused = plan_edit(&old, &start, false, false).expect_err("refused");
        assert_eq!(refused.field, "start");
        // With a new subscription the start applies: the subscription is created with it.
        let new_subscription = RuleConfig {
            subscription: "backup-2".into(),
            ..start
        };
        assert_eq!(
            plan_edit(&old, &new_subscription, false, false),
            Ok(plan(true, true))
        );
        let refused = plan_edit(&old, &old, false, true).expect_err("refused");
        assert_eq!(refused.field, "unsubscribe");
        assert!(
            refused.message.contains(r#"subscription "backup""#),
            "{}",
            refused.message
        );
    }

    #[test]
    fn the_history_names_the_changed_fields() {
        let old = rule();
        assert_eq!(describe_changes(&old, &old, false), "no change");
        assert_eq!(describe_changes(&old, &old, true), "token");
        let new = RuleConfig {
            subscription: "backup-2".into(),
            ..old.clone()
        };
        assert_eq!(describe_changes(&old, &new, true), "subscription, token");
    }

    /// A `rule edit` that restarts the consumer (a token, the subscription type, the source)
    /// hands the new consumer the rule's spool: a second spool over the same files would seal
    /// the same segments into the same temporary files and keep retrying the ones the other
    /// sealed and freed.
    #[tokio::test]
    async fn a_restarted_consumer_carries_on_with_the_rules_spool() -> crate::error::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::error::IngesterError::io("tempdir", e))?;
        let limits = ConsumerLimits {
            max_spool_bytes: 0,
            receiver_queue: 100,
            receiver_queue_bytes: 0,
            disk_reserve_bytes: 0,
        };
        let app = IngesterApp::open(
            dir.path().join("data"),
            100,
            limits,
            crate::consumer::Membership::new("n1"),
            crate::source::trust::PulsarTrust::default(),
        )
        .await?;
        let spec = |name: &str| v1::RuleSpec {
            name: name.into(),
            ..v1::RuleSpec::default()
        };
        app.create_rule(&v1::RuleSpec {
            // Nothing listens on port 1: the consumer keeps retrying, which is all it needs to do.
            service_url: Some("pulsar://127.0.0.1:1".into()),
            topic: Some("orders".into()),
            subscription: Some("backup".into()),
            bucket: Some("backup-1250000000".into()),
            region: Some("ap-guangzhou".into()),
            ..spec("orders")
        })
        .await?;
        let first = app.spool_of("orders").await?;
        for edit in [
            v1::RuleSpec {
                token: Some("rotated".into()),
                ..spec("orders")
            },
            v1::RuleSpec {
                subscription_type: Some("exclusive".into()),
                ..spec("orders")
            },
            v1::RuleSpec {
                topic: Some("orders-v2".into()),
                ..spec("orders")
            },
        ] {
            app.edit_rule(&edit, false).await?;
            let now = app.spool_of("orders").await?;
            assert!(Arc::ptr_eq(&first, &now), "a second spool after {edit:?}");
        }
        app.shutdown().await;
        Ok(())
    }
}
