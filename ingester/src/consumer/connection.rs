//! The task's outer loop: connect to every partition, hand the connection to the select loop,
//! and reconnect after a backoff when it ends. Windows keep closing and commands keep being
//! answered while Pulsar is out of reach, and an outage is written to the history once, with
//! how long it lasted when it ends.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::types::{Secret, StartPosition};
use proto::wire::HistoryKind;
use pulsar::consumer::InitialPosition;
use pulsar::ConnectionRetryOptions;
use tracing::{debug, info, warn};

use super::{RuleTask, TICK};
use crate::app::history::HistoryEntry;
use crate::source::client;
use crate::source::decode_fault::DecodeFault;
use crate::source::partition_consumers::{ConsumerSettings, RuleConsumers};
use crate::source::source_reset::{self, WentBack};
use crate::source::trust::PulsarTrust;

/// A connect attempt taking longer than this is recorded as an outage.
const SLOW_CONNECT: Duration = Duration::from_secs(5);

/// Why a consumer went away.
pub(super) enum ConsumeEnd {
    /// The rule stops.
    Stopped,
    /// The connection or the consumer failed: reconnect after a backoff.
    Lost,
    /// Messages are larger (or smaller) than the permits were sized for: reconnect now with these.
    Resize(u32),
    /// The broker's topic ends before what the rule spooled: see [`source_reset`].
    WentBack(WentBack),
    /// The spool went back to what the reopened database holds: reconnect now, so that the
    /// broker delivers again what was received since (see `Command::DatabaseReopened`).
    Reread,
}

/// Per-task state that outlives one connection.
#[derive(Default)]
pub(super) struct Continuity {
    /// Undecodable entries by partition, carried over a reconnect so that the count of failed
    /// deliveries (and a skip the operator asked for) is not forgotten.
    pub(super) faults: BTreeMap<i32, DecodeFault>,
    /// Since when Pulsar is unreachable (for the history's outage entries).
    pub(super) outage_since_ms: Option<u64>,
}

impl RuleTask {
    pub async fn run(mut self) {
        let name = self.rule.name.clone();
        let mut backoff = Duration::from_millis(500);
        let mut last_recorded_error = String::new();
        let mut permits = self.limits.receiver_queue;
        let mut continuity = Continuity::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.stop.borrow() {
                break;
            }
            // Connecting can take long (pulsar-rs retries inside): windows keep closing and
            // commands (flush, pause, delete --drain) keep being answered meanwhile.
            let connect = connect(
                self.rule.service_url.clone(),
                self.token.clone(),
                self.trust.clone(),
                self.settings(permits),
                self.seek_to_ms(),
            );
            tokio::pin!(connect);
            let connecting_since = tokio::time::Instant::now();
            let connected = loop {
                tokio::select! {
                    result = &mut connect => break Some(result),
                    _ = self.stop.changed() => break None,
                    _ = tick.tick() => {
                        self.close_if_due(false).await;
                        self.note_reading(false);
                        if connecting_since.elapsed() > SLOW_CONNECT && continuity.outage_since_ms.is_none() {
                            // A broker that holds the connection without answering is an outage too.
                            let message = format!(
                                "cannot reach Pulsar at {}: still connecting after {}s",
                                self.rule.service_url,
                                SLOW_CONNECT.as_secs()
                            );
                            self.stats.set_error(&message);
                            self.outage_began(&mut continuity, &message);
                        }
                    }
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => self.handle_command(cmd, None).await,
                        None => return,
                    },
                }
            };
            let Some(connected) = connected else { break };
            match connected {
                Ok(mut consumers) => {
                    let last_entries = consumers.last_entries_at_subscribe();
                    let seen = self.spool.seen();
                    if let Some(went_back) = source_reset::find(&last_entries, &seen) {
                        consumers.close().await;
                        if !self.take_the_topic_afresh(&went_back).await {
                            break;
                        }
                        continue;
                    }
                    self.start_applied_now();
                    for part in &mut consumers.parts {
                        part.fault = continuity.faults.remove(&part.partition);
                    }
                    continuity.faults.clear();
                    self.stats.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                    last_recorded_error.clear();
                    self.outage_ended(&mut continuity);
                    info!(rule = %name, partitions = consumers.parts.len(), "consumer connected");
                    let ids_proven = source_reset::proves_reach(&last_entries, &seen);
                    let end = self
                        .consume(&mut consumers, permits, &mut continuity, ids_proven)
                        .await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    for part in &mut consumers.parts {
                        if let Some(fault) = part.fault.take() {
                            continuity.faults.insert(part.partition, fault);
                        }
                    }
                    match end {
                        ConsumeEnd::Stopped => {
                            consumers.close().await;
                            break;
                        }
                        ConsumeEnd::Lost => {
                            let cause = self.stats.text().last_error;
                            self.outage_began(&mut continuity, &cause);
                            consumers.close().await;
                        }
                        ConsumeEnd::Resize(resized) => {
                            consumers.close().await;
                            permits = resized;
                            continue;
                        }
                        ConsumeEnd::WentBack(went_back) => {
                            consumers.close().await;
                            if !self.take_the_topic_afresh(&went_back).await {
                                break;
                            }
                            continue;
                        }
                        ConsumeEnd::Reread => {
                            consumers.close().await;
                            continue;
                        }
                    }
                }
                Err(err) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    let message = format!(
                        "cannot connect to Pulsar at {}: {err}",
                        self.rule.service_url
                    );
                    warn!(rule = %name, error = %err, "consumer connection failed");
                    self.stats.set_error(&message);
                    if continuity.outage_since_ms.is_none() {
                        // The outage's first entry carries its cause.
                        self.outage_began(&mut continuity, &message);
                        last_recorded_error = message;
                    } else if message != last_recorded_error {
                        self.record(HistoryEntry::event(HistoryKind::ConsumerError, &message));
                        last_recorded_error = message;
                    }
                }
            }
            // Wait before reconnecting, still closing windows and answering commands.
            let deadline = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.stop.changed() => break,
                    _ = tick.tick() => {
                        self.close_if_due(false).await;
                        self.note_reading(false);
                    }
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => { self.handle_command(cmd, None).await; }
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        self.disk.forget(&name);
        debug!(rule = %name, "rule task stopped");
    }

    fn settings(&self, permits: u32) -> ConsumerSettings {
        ConsumerSettings {
            topic: self.rule.topic.clone(),
            subscription: self.rule.subscription.clone(),
            sub_type: client::sub_type(self.rule.subscription_type),
            consumer_name: self.consumer_name.clone(),
            priority_level: self.priority_level,
            permits,
            // A timestamp start subscribes at the earliest message and then seeks: a
            // subscription created at `latest` cannot move back on every broker.
            initial: match self.rule.start {
                StartPosition::Latest => InitialPosition::Latest,
                StartPosition::Earliest | StartPosition::Timestamp(_) => InitialPosition::Earliest,
            },
        }
    }

    /// The publish time to seek to, while the rule's start position is not applied yet.
    fn seek_to_ms(&self) -> Option<u64> {
        match self.rule.start {
            StartPosition::Timestamp(ms) if !self.start_applied => Some(ms),
            _ => None,
        }
    }

    fn start_applied_now(&mut self) {
        if self.start_applied {
            return;
        }
        self.start_applied = true;
        if let Err(err) = self.rules.mark_start_applied(&self.rule.name) {
            warn!(rule = %self.rule.name, error = %err, "could not record that the start position was applied");
        }
    }

    pub(super) fn outage_began(&self, continuity: &mut Continuity, cause: &str) {
        if continuity.outage_since_ms.is_some() {
            return;
        }
        continuity.outage_since_ms = Some(proto::types::time::now_millis());
        let message = if cause.is_empty() {
            format!("lost the connection to Pulsar at {}", self.rule.service_url)
        } else {
            cause.to_string()
        };
        self.record(HistoryEntry::event(HistoryKind::Disconnected, message));
    }

    pub(super) fn outage_ended(&self, continuity: &mut Continuity) {
        let Some(since) = continuity.outage_since_ms.take() else {
            return;
        };
        let lasted = proto::types::time::now_millis().saturating_sub(since);
        let lasted = humantime::format_duration(Duration::from_secs(lasted.div_ceil(1000)));
        let message = format!(
            "connected to Pulsar at {} again after {lasted}",
            self.rule.service_url
        );
        info!(rule = %self.rule.name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Reconnected, message));
    }
}

/// Builds the client and subscribes to every partition. Owns what it needs, so the rule task
/// can go on closing windows and answering commands while this runs.
async fn connect(
    service_url: String,
    token: Option<Secret>,
    trust: PulsarTrust,
    settings: ConsumerSettings,
    seek_to_ms: Option<u64>,
) -> Result<RuleConsumers, pulsar::Error> {
    // No retries inside pulsar-rs: its ten silent attempts hid a refused or unreachable
    // broker for 25–40 s. The task's own loop retries with a backoff and reports each cause.
    let retry = ConnectionRetryOptions {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        max_retries: 0,
        connection_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(10),
        ..ConnectionRetryOptions::default()
    };
    let pulsar = client::connect(service_url, token.as_ref(), &trust, retry).await?;
    RuleConsumers::connect(pulsar, settings, seek_to_ms).await
}
