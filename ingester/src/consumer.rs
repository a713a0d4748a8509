//! One task per rule: owns the Pulsar consumer, spools what it receives, and is the only place
//! that acknowledges — after the spool says the segments are stored, in segment order.

use proto::wire::HistoryKind;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::types::{
    record::record_json_len, MessageId, RecordFields, RuleConfig, Secret, StartPosition,
    SubscriptionKind,
};
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::message::proto::MessageIdData;
use pulsar::{Authentication, ConnectionRetryOptions, Pulsar, TokioExecutor};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::decode_fault::{AfterFault, DecodeFault, EntryRef, BLOCK_AFTER_FAILURES};
use crate::disk::{DiskSpace, Room};
use crate::history::{History, HistoryEntry};
use crate::log_record;
use crate::partition_consumers::{
    message_id, ConsumerSettings, PartitionItem, PulsarMessage, RuleConsumers,
};
use crate::rules::RuleStore;
use crate::sealer::SealerHandle;
use crate::source_reset::{self, WentBack};
use crate::spool::{AckPlan, Incoming, Position, Redelivery, RuleSpool, Seen};
use crate::stats::{BlockedEntry, RuleStats};

/// Most messages taken from the consumer's buffer for one durable spool write.
const MAX_BATCH: usize = 2000;
/// Most record bytes in one durable spool write: a batch is held twice while it is written.
const MAX_BATCH_BYTES: u64 = 4 << 20;
const TICK: Duration = Duration::from_millis(200);
const CONNECTION_CHECK_EVERY: u32 = 25;
/// Ticks between looks at the topic's partition count (partitions added later are consumed).
const PARTITION_CHECK_EVERY: u32 = 150;
/// Once paused for disk space, reading resumes only with room for a full batch more than the
/// reserve: freeing a segment is what makes room, and a pause per batch would flood the history.
const RESUME_SLACK: u64 = MAX_BATCH_BYTES;
/// A connect attempt taking longer than this is recorded as an outage.
const SLOW_CONNECT: Duration = Duration::from_secs(5);
/// How long the rest of a failed delivery is read (to name the failed entry by what follows it).
const DISCARD_WINDOW: Duration = Duration::from_secs(1);

/// Per-consumer bounds, from the ingester's config.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLimits {
    /// 0: no limit. At the limit, consumption pauses until acknowledgements free the spool.
    pub max_spool_bytes: u64,
    /// Flow-control permits: messages the broker may send ahead of the spool.
    pub receiver_queue: u32,
    /// 0: no bound. Bytes the consumer may hold ahead of the spool: permits are lowered below
    /// `receiver_queue` when messages are large (see [`permits_for`]).
    pub receiver_queue_bytes: u64,
    /// Free bytes kept on the spool's filesystem beyond what sealing needs (see [`DiskSpace`]).
    pub disk_reserve_bytes: u64,
}

impl ConsumerLimits {
    /// The permits for messages of `record_bytes` each on average: `receiver_queue`, lowered so
    /// that permits × size stays within `receiver_queue_bytes`. `Some` only when that is off from
    /// `current` by more than a factor of two: a change costs a reconnect (and redeliveries, which
    /// the spool drops), so a mix of sizes must not flap.
    pub fn permits_for(&self, current: u32, record_bytes: u64) -> Option<u32> {
        let wanted = if self.receiver_queue_bytes == 0 || record_bytes == 0 {
            self.receiver_queue
        } else {
            let fit = self.receiver_queue_bytes / record_bytes;
            u32::try_from(fit)
                .unwrap_or(u32::MAX)
                .clamp(1, self.receiver_queue)
        };
        let off = u64::from(wanted) * 2 <= u64::from(current)
            || u64::from(wanted) >= u64::from(current) * 2;
        off.then_some(wanted)
    }
}

/// Why a consumer went away.
enum ConsumeEnd {
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

pub enum Command {
    /// Some segment was stored: see what can be acknowledged.
    AckReady,
    /// Close the open segment now.
    Flush(oneshot::Sender<Option<u64>>),
    SetPaused(bool),
    /// `rule skip`: acknowledge this undecodable entry without storing it. Replies with what was
    /// done, or why it was refused.
    Skip(EntryRef, oneshot::Sender<Result<String, String>>),
    /// The spool database was reopened after a failed write and may hold less than the spool
    /// has in memory: re-read the spool, then reconnect before spooling anything more. Messages
    /// received since the last durable write are past the re-read watermarks, and only a new
    /// consumer gets them delivered again; one spooled before that would move the watermark
    /// past them, and they would be dropped as seen.
    DatabaseReopened,
}

/// What a rule task needs.
pub struct RuleTask {
    pub rule: RuleConfig,
    pub token: Option<Secret>,
    pub paused: bool,
    pub limits: ConsumerLimits,
    /// Pulsar's consumer name for this ingester's consumers (distinct per ingester).
    pub consumer_name: String,
    pub start_applied: bool,
    pub spool: Arc<RuleSpool>,
    pub stats: Arc<RuleStats>,
    pub history: Arc<History>,
    pub rules: Arc<RuleStore>,
    pub sealer: SealerHandle,
    /// The spool's filesystem, shared with the other rules.
    pub disk: Arc<DiskSpace>,
    pub commands: mpsc::Receiver<Command>,
    pub stop: watch::Receiver<bool>,
}

/// Per-task state that outlives one connection.
#[derive(Default)]
struct Continuity {
    /// Undecodable entries by partition, carried over a reconnect so that the count of failed
    /// deliveries (and a skip the operator asked for) is not forgotten.
    faults: BTreeMap<i32, DecodeFault>,
    /// Since when Pulsar is unreachable (for the history's outage entries).
    outage_since_ms: Option<u64>,
}

/// What one read from the consumers gathers before the durable write.
#[derive(Default)]
struct Intake {
    batch: Vec<Incoming>,
    redelivered: Redelivered,
    /// Record bytes in `batch`.
    bytes: u64,
    received: usize,
    /// Messages published before the rule's start time (dropped, see [`RuleTask::take`]).
    before_start: u64,
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
                    let last_entries = consumers.last_entries().await;
                    if let Some(went_back) = source_reset::find(&last_entries, &self.spool.seen()) {
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
                    let end = self.consume(&mut consumers, permits, &mut continuity).await;
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
                        continuity.outage_since_ms = Some(proto::types::time::now_millis());
                    }
                    if message != last_recorded_error {
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
            sub_type: match self.rule.subscription_type {
                SubscriptionKind::Failover => SubType::Failover,
                SubscriptionKind::Exclusive => SubType::Exclusive,
            },
            consumer_name: self.consumer_name.clone(),
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

    /// Keeps `reading_stopped_since_ms` (the lag's lower bound while nothing is read).
    fn note_reading(&self, reading: bool) {
        let since = &self.stats.reading_stopped_since_ms;
        if reading {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(proto::types::time::now_millis(), Ordering::Relaxed);
        }
    }

    fn outage_began(&self, continuity: &mut Continuity, cause: &str) {
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

    fn outage_ended(&self, continuity: &mut Continuity) {
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

    /// Runs until the consumers fail, their permits need resizing, or the rule stops.
    async fn consume(
        &mut self,
        consumers: &mut RuleConsumers,
        permits: u32,
        continuity: &mut Continuity,
    ) -> ConsumeEnd {
        let name = self.rule.name.clone();
        self.acknowledge(consumers).await;
        self.publish_faults(consumers);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        // A batch that could not be spooled yet (disk full, IO error): retried before reading more.
        let mut pending: Option<Vec<Incoming>> = None;
        let mut ask_broker_backlog = true;
        let mut last_id_answers = true;
        loop {
            let can_read = pending.is_none() && !self.paused && !self.spool_full().await;
            tokio::select! {
                biased;
                _ = self.stop.changed() => return ConsumeEnd::Stopped,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        let reread = matches!(cmd, Command::DatabaseReopened);
                        self.handle_command(cmd, Some(consumers)).await;
                        if reread {
                            // Consumers connecting later get every unacknowledged message
                            // anyway: only these must go.
                            info!(rule = %name, "reconnecting after the spool database was reopened");
                            return ConsumeEnd::Reread;
                        }
                    }
                    None => return ConsumeEnd::Stopped,
                },
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if let Some(batch) = pending.take() {
                        pending = self.spool_batch(batch, consumers).await;
                    }
                    self.close_if_due(false).await;
                    self.redeliver_due(consumers).await;
                    let blocked = consumers.parts.iter().any(|p| p.fault.as_ref().is_some_and(DecodeFault::blocked));
                    self.note_reading(!self.paused && !blocked && self.stats.connected.load(Ordering::Relaxed));
                    if ticks.is_multiple_of(CONNECTION_CHECK_EVERY) {
                        let ok = consumers.check_connections().await;
                        self.stats.connected.store(ok, Ordering::Relaxed);
                        if ok {
                            self.outage_ended(continuity);
                            if ask_broker_backlog {
                                match consumers.broker_backlog().await {
                                    Some(backlog) => {
                                        self.stats.broker_backlog.store(backlog, Ordering::Relaxed);
                                        self.stats.broker_backlog_known.store(true, Ordering::Relaxed);
                                    }
                                    None => {
                                        // A broker that does not answer consumer stats (or times
                                        // out on them) is not asked again on this connection:
                                        // each try may hold the consume loop for seconds.
                                        ask_broker_backlog = false;
                                        self.stats.broker_backlog_known.store(false, Ordering::Relaxed);
                                    }
                                }
                            }
                        } else {
                            let message = format!("lost the connection to Pulsar at {}", self.rule.service_url);
                            self.stats.set_error(&message);
                            self.outage_began(continuity, &message);
                        }
                    }
                    if ticks.is_multiple_of(PARTITION_CHECK_EVERY) {
                        self.add_new_partitions(consumers).await;
                    }
                }
                item = consumers.next(), if can_read => {
                    let seen = self.spool.seen();
                    let mut intake = Intake::default();
                    if let Some(end) = self.take(consumers, item, &seen, &mut intake) {
                        return end;
                    }
                    // Take whatever else is already buffered: one durable write for all.
                    while intake.received < MAX_BATCH && intake.bytes < MAX_BATCH_BYTES {
                        let Some(item) = consumers.try_next() else { break };
                        if let Some(end) = self.take(consumers, item, &seen, &mut intake) {
                            return end;
                        }
                    }
                    if intake.before_start > 0 {
                        RuleStats::add(&self.stats.before_start_dropped, intake.before_start);
                    }
                    let Intake { batch, redelivered, bytes, .. } = intake;
                    // A message at or below what was spooled is a redelivery only if the broker's
                    // topic still reaches that far: asked before anything of the batch is
                    // spooled or acknowledged again (see `source_reset`).
                    if redelivered.duplicates > 0 && last_id_answers {
                        let last_entries = consumers.last_entries().await;
                        if last_entries.iter().all(|(_, last)| last.is_none()) {
                            // Not asked again on this connection: each try may take seconds.
                            last_id_answers = false;
                        } else if let Some(went_back) = source_reset::find(&last_entries, &self.spool.seen()) {
                            return ConsumeEnd::WentBack(went_back);
                        }
                    }
                    self.drop_redelivered(redelivered, consumers).await;
                    if batch.is_empty() {
                        continue;
                    }
                    let count = batch.len() as u64;
                    pending = self.spool_batch(batch, consumers).await;
                    if pending.is_none() {
                        if let Some(resized) = self.limits.permits_for(permits, bytes / count) {
                            self.announce_resize(permits, resized, bytes / count);
                            debug!(rule = %name, "reconnecting to resize the receive window");
                            return ConsumeEnd::Resize(resized);
                        }
                    }
                }
            }
        }
    }

    /// Handles one item of a partition's stream. `Some` ends the connection.
    fn take(
        &mut self,
        consumers: &mut RuleConsumers,
        (index, item): PartitionItem,
        seen: &Seen,
        intake: &mut Intake,
    ) -> Option<ConsumeEnd> {
        intake.received += 1;
        match item {
            None => {
                warn!(rule = %self.rule.name, topic = %consumers.parts[index].topic, "consumer stream ended; reconnecting");
                // Said before `connected` turns false, so `status` never shows the outage
                // without its cause.
                self.stats.set_error(format!(
                    "lost the connection to Pulsar at {}: the consumer stream ended",
                    self.rule.service_url
                ));
                Some(ConsumeEnd::Lost)
            }
            Some(Err(err)) => {
                self.on_stream_error(consumers, index, err.to_string(), seen);
                None
            }
            Some(Ok(msg)) => {
                match crate::record_extras::not_as_sent(msg.metadata()) {
                    None => self.on_message(consumers, index, msg, seen, intake),
                    // One failure per entry, as pulsar-rs reports one: its first message's.
                    Some(_) if msg.message_id().batch_index.unwrap_or(0) > 0 => {}
                    Some(why) => self.on_stream_error(consumers, index, why, seen),
                }
                None
            }
        }
    }

    /// An error in a partition's stream: an entry that could not be decoded (or received).
    /// Nothing after it is spooled; the entry is asked for again (see [`crate::decode_fault`]).
    fn on_stream_error(
        &mut self,
        consumers: &mut RuleConsumers,
        index: usize,
        error: String,
        seen: &Seen,
    ) {
        let part = &mut consumers.parts[index];
        if part.discarding {
            return; // the rest of a delivery that failed already
        }
        part.errors_since_created += 1;
        if part.fault.as_ref().is_some_and(|f| f.skip.is_some()) && part.errors_since_created == 1 {
            // Presumably the skipped entry, redelivered: the next message that decodes tells
            // (see `on_message`).
            return;
        }
        self.fail_partition(consumers, index, error, seen);
    }

    fn fail_partition(
        &mut self,
        consumers: &mut RuleConsumers,
        index: usize,
        error: String,
        seen: &Seen,
    ) {
        let part = &mut consumers.parts[index];
        let (fault, first) = match part.fault.take() {
            Some(mut fault) if fault.is_same_entry(part.last_decoded.as_ref()) => {
                fault.failures += 1;
                fault.error = error;
                fault.skip = None;
                (fault, false)
            }
            _ => {
                let after = part.last_decoded.or_else(|| seen.last(part.partition));
                (DecodeFault::new(part.partition, after, error), true)
            }
        };
        let now = tokio::time::Instant::now();
        part.discarding = true;
        part.discard_until = Some(now + DISCARD_WINDOW);
        part.hold_until = Some(now + redelivery_delay(fault.failures));
        let topic = part.topic.clone();
        let text = fault.describe();
        let failures = fault.failures;
        let blocked_now = failures == BLOCK_AFTER_FAILURES;
        let suspect = fault.suspect();
        part.fault = Some(fault);
        warn!(rule = %self.rule.name, topic = %topic, failures, "{text}");
        self.stats.set_error(&text);
        if first {
            self.record(HistoryEntry::event(
                HistoryKind::DecodeFailed,
                format!("{text}; nothing after it is spooled; asking the broker for it again"),
            ));
        }
        if blocked_now {
            let skip = match suspect {
                Some(entry) => format!(
                    "; to pass it without storing it: tdmq-backup rule skip {} --entry {entry}",
                    self.rule.name
                ),
                None => String::new(),
            };
            self.record(HistoryEntry::event(
                HistoryKind::Blocked,
                format!(
                    "{text}; it failed {failures} deliveries: the rule is stopped before it on {topic} (everything before it is stored and acknowledged as usual; it is tried again every few minutes){skip}"
                ),
            ));
        }
        self.publish_faults(consumers);
    }

    /// A message that decoded. Returns after adding it to the intake, or dropping it.
    fn on_message(
        &mut self,
        consumers: &mut RuleConsumers,
        index: usize,
        msg: PulsarMessage,
        seen: &Seen,
        intake: &mut Intake,
    ) {
        let part = &mut consumers.parts[index];
        let id = message_id(&msg, part.partition);
        if part.discarding {
            if let Some(fault) = part.fault.as_mut() {
                let past = fault.after.as_ref().is_none_or(|a| entry_after(&id, a));
                if fault.before.is_none() && past {
                    fault.before = Some(id);
                }
            }
            return;
        }
        if let Some(fault) = &part.fault {
            match fault.on_decoded(&id) {
                AfterFault::Before => {}
                AfterFault::Healed => {
                    let message = format!(
                        "{} decoded on redelivery after {} failed deliveries; consuming",
                        fault
                            .suspect()
                            .map_or_else(|| "the entry".to_string(), |e| format!("entry {e}")),
                        fault.failures
                    );
                    part.fault = None;
                    self.fault_cleared(consumers, message);
                }
                AfterFault::Skipped(entry) => {
                    let within = fault.before.as_ref().is_none_or(|b| !entry_after(&id, b));
                    if part.errors_since_created <= 1 && within {
                        let message = format!(
                            "passed the skipped entry {entry} on {}; consuming",
                            part.topic
                        );
                        part.fault = None;
                        self.fault_cleared(consumers, message);
                    } else {
                        // The error of this delivery was not (only) the skipped entry.
                        self.fail_partition(
                            consumers,
                            index,
                            format!(
                                "an entry before {id} failed besides the skipped entry {entry}"
                            ),
                            seen,
                        );
                        return;
                    }
                }
            }
        }
        let part = &mut consumers.parts[index];
        part.last_decoded = Some(id);
        if let StartPosition::Timestamp(start_ms) = self.rule.start {
            // The seek by publish time is not honoured by every broker: until a partition's
            // first message from the start on is spooled, earlier ones are left out here too.
            if seen.last(id.partition).is_none() && msg.metadata().publish_time < start_ms {
                intake.before_start += 1;
                return;
            }
        }
        match seen.check(&id) {
            Redelivery::New => {
                let incoming = to_incoming(msg, id);
                intake.bytes += incoming.json_len;
                intake.batch.push(incoming);
            }
            Redelivery::Spooled => intake.redelivered.duplicates += 1,
            Redelivery::Acknowledged(acked) => {
                intake.redelivered.duplicates += 1;
                if !intake.redelivered.reack.contains(acked) {
                    intake.redelivered.reack.push(acked.clone());
                }
            }
        }
    }

    /// A partition goes on past its failed entry: say so, and take it off `status`.
    fn fault_cleared(&self, consumers: &RuleConsumers, message: String) {
        info!(rule = %self.rule.name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
        self.publish_faults(consumers);
    }

    /// Recreates the consumers of partitions whose failed entry is due for redelivery.
    async fn redeliver_due(&mut self, consumers: &mut RuleConsumers) {
        let now = tokio::time::Instant::now();
        for index in 0..consumers.parts.len() {
            if !consumers.parts[index].due_for_redelivery(now) {
                continue;
            }
            if let Err(err) = consumers.recreate(index).await {
                let part = &mut consumers.parts[index];
                warn!(rule = %self.rule.name, topic = %part.topic, error = %err, "recreating the consumer failed; will retry");
                part.hold_until = Some(now + Duration::from_secs(2));
            }
        }
    }

    /// The broker's topic ends before what the rule spooled (see [`source_reset`]): says so,
    /// lets the old topic's spooled segments be stored without acknowledging them, then forgets
    /// the old ids. Returns `false` if the rule was stopped meanwhile.
    async fn take_the_topic_afresh(&mut self, went_back: &WentBack) -> bool {
        let spooled = self
            .spool
            .segments()
            .iter()
            .filter(|m| m.messages > 0)
            .count();
        let message = went_back.describe(&self.rule.topic, spooled);
        warn!(rule = %self.rule.name, "{message}");
        self.stats.set_error(&message);
        self.record(HistoryEntry::event(HistoryKind::IdsWentBack, &message));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.spool.is_empty() {
            tokio::select! {
                _ = self.stop.changed() => return false,
                _ = tick.tick() => {
                    self.close_if_due(false).await;
                    self.note_reading(false);
                    // Stored, and never acknowledged: these ids now name the new topic's
                    // messages, which a cumulative acknowledgement would drop unread.
                    if let Some(plan) = self.spool.ack_plan() {
                        if let Err(err) = self.spool.free(&plan).await {
                            warn!(rule = %self.rule.name, error = %err, "freeing the old topic's stored segments failed");
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd, None).await,
                    None => return false,
                },
            }
        }
        if let Err(err) = self.spool.reset_positions() {
            // The next connection finds the ids still behind and tries again.
            warn!(rule = %self.rule.name, error = %err, "could not forget the old topic's positions");
            self.stats
                .set_error(format!("could not forget the old topic's positions: {err}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
            return true;
        }
        let message = "backing the topic up afresh: the old topic's ids are forgotten and new objects get new names".to_string();
        info!(rule = %self.rule.name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
        true
    }

    /// Subscribes to partitions added to the topic since the rule connected.
    async fn add_new_partitions(&mut self, consumers: &mut RuleConsumers) {
        match tokio::time::timeout(Duration::from_secs(10), consumers.add_new_partitions()).await {
            Ok(Ok(added)) if !added.is_empty() => {
                let message = format!(
                    "the topic has {} partitions now; consuming the new ones ({}) from their earliest message",
                    consumers.parts.len(),
                    added.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                info!(rule = %self.rule.name, "{message}");
                self.record(HistoryEntry::event(HistoryKind::Info, message));
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                debug!(rule = %self.rule.name, error = %err, "looking up the partition count failed");
            }
            Err(_) => debug!(rule = %self.rule.name, "looking up the partition count timed out"),
        }
    }

    /// Shows the partitions stopped on an undecodable entry in `status`.
    fn publish_faults(&self, consumers: &RuleConsumers) {
        let mut blocked = Vec::new();
        for part in &consumers.parts {
            if let Some(fault) = part.fault.as_ref().filter(|f| f.blocked()) {
                blocked.push(BlockedEntry {
                    entry: fault.suspect().map(|e| e.to_string()).unwrap_or_default(),
                    reason: format!(
                        "stopped before an entry that cannot be decoded: {}; `tdmq-backup rule skip {} --entry {}` passes it without storing it",
                        fault.describe(),
                        self.rule.name,
                        fault.suspect().map_or_else(|| "LEDGER:ENTRY".to_string(), |e| e.to_string()),
                    ),
                });
            }
        }
        self.stats.set_blocked(blocked);
    }

    /// `rule skip`: acknowledges one undecodable entry alone and lets its partition go past it.
    async fn skip_entry(
        &mut self,
        consumers: &mut RuleConsumers,
        entry: EntryRef,
    ) -> Result<String, String> {
        let name = &self.rule.name;
        if consumers.is_partitioned() && entry.partition < 0 {
            return Err(format!(
                "the topic of rule {name:?} is partitioned: give the partition too, as --entry LEDGER:ENTRY:PARTITION (status shows it)"
            ));
        }
        let Some(index) = consumers
            .parts
            .iter()
            .position(|p| p.partition == entry.partition && p.fault.is_some())
        else {
            return Err(format!(
                "rule {name:?} is not stopped on an undecodable entry{}; nothing to skip",
                if entry.partition >= 0 {
                    format!(" of partition {}", entry.partition)
                } else {
                    String::new()
                }
            ));
        };
        let part = &consumers.parts[index];
        let topic = part.topic.clone();
        if let Some(fault) = &part.fault {
            if !fault.may_be(&entry) {
                return Err(format!(
                    "entry {entry} is not the one rule {name:?} is stopped on: {}",
                    fault.describe()
                ));
            }
        }
        consumers
            .ack_one(&topic, id_data(&entry.to_message_id()))
            .await
            .map_err(|err| format!("acknowledging entry {entry} on {topic} failed: {err}"))?;
        let part = &mut consumers.parts[index];
        if let Some(fault) = part.fault.as_mut() {
            fault.skip = Some(entry);
        }
        if part.discarding {
            // Ask for the partition again now rather than at the next scheduled redelivery.
            part.hold_until = Some(tokio::time::Instant::now());
        }
        let message = format!(
            "entry {entry} on {topic} skipped by the operator: acknowledged on Pulsar without being stored, so its messages are in no object"
        );
        warn!(rule = %name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Skipped, message.clone()));
        Ok(message)
    }

    /// Counts redeliveries dropped before encoding, and acknowledges again the positions of
    /// those already acknowledged.
    async fn drop_redelivered(&self, redelivered: Redelivered, consumers: &mut RuleConsumers) {
        RuleStats::add(&self.stats.duplicates_dropped, redelivered.duplicates);
        for pos in redelivered.reack {
            if let Err(err) = consumers.cumulative_ack(&pos.topic, id_data(&pos.id)).await {
                warn!(rule = %self.rule.name, error = %err, "re-acknowledging a redelivered message failed");
            }
        }
    }

    /// Says why the consumers are recreated with `resized` permits.
    fn announce_resize(&self, permits: u32, resized: u32, record_bytes: u64) {
        let message = format!(
            "messages average {} as records: receive window {permits} → {resized} messages to stay near receiver_queue_bytes ({})",
            bytesize::ByteSize(record_bytes),
            bytesize::ByteSize(self.limits.receiver_queue_bytes),
        );
        info!(rule = %self.rule.name, "{message}; reconnecting");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
    }

    /// Writes a batch to the spool. Returns it back if it could not be written (retried later;
    /// nothing is acknowledged meanwhile, so nothing is lost).
    async fn spool_batch(
        &mut self,
        batch: Vec<Incoming>,
        consumers: &mut RuleConsumers,
    ) -> Option<Vec<Incoming>> {
        let now = proto::types::time::now_millis();
        match self.spool.append(&batch, now).await {
            Ok(outcome) => {
                edge::failpoint::hit("ingester:after_spool");
                if self.stats.disk_full.swap(false, Ordering::Relaxed) {
                    info!(rule = %self.rule.name, "spool writable again; consuming");
                    self.record(HistoryEntry::event(
                        HistoryKind::Info,
                        "spool disk has space again; consuming resumed",
                    ));
                }
                RuleStats::add(&self.stats.messages_consumed, outcome.accepted as u64);
                RuleStats::add(&self.stats.duplicates_dropped, outcome.duplicates as u64);
                for segment_no in outcome.closed {
                    self.sealer.seal(self.spool.clone(), segment_no);
                }
                if outcome.accepted > 0 {
                    self.sealer.feed(self.spool.clone());
                }
                for pos in outcome.reack {
                    if let Err(err) = consumers.cumulative_ack(&pos.topic, id_data(&pos.id)).await {
                        warn!(rule = %self.rule.name, error = %err, "re-acknowledging a redelivered message failed");
                    }
                }
                None
            }
            Err(err) => {
                let full = err.is_disk_full();
                let message = if full {
                    format!("spool disk is full; consumption paused, nothing acknowledged: {err}")
                } else {
                    format!("cannot write to the spool: {err}")
                };
                warn!(rule = %self.rule.name, error = %err, "spool write failed; will retry");
                self.stats.set_error(&message);
                if !self.stats.disk_full.swap(full, Ordering::Relaxed) || !full {
                    self.record(HistoryEntry::event(HistoryKind::SpoolError, message));
                }
                // Back off a little so a full disk is not hammered.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some(batch)
            }
        }
    }

    /// Whether the spool may take no more messages now (checked before every read): it holds
    /// `max_spool_bytes` already, or its disk has less free space than the reserve plus what
    /// sealing the unsealed segments will write. Nothing is acknowledged while it is full;
    /// uploads free space, and reading resumes.
    async fn spool_full(&mut self) -> bool {
        let spool = self.spool.stats();
        let quota =
            self.limits.max_spool_bytes > 0 && spool.spooled_bytes >= self.limits.max_spool_bytes;
        let was_full = self.stats.disk_full.load(Ordering::Relaxed);
        let short_of = |room: &Room| {
            let slack = if was_full { RESUME_SLACK } else { 0 };
            room.free < room.needed.saturating_add(slack)
        };
        let disk = self
            .disk
            .check(&self.rule.name, spool.unsealed_bytes)
            .filter(short_of);
        let full = quota || disk.is_some();
        self.stats.disk_full.store(full, Ordering::Relaxed);
        if full && !was_full {
            let message = match disk {
                Some(room) if !quota => format!(
                    "spool disk nearly full: {} free on the data_dir's filesystem, {} must stay free (disk_reserve_bytes {} plus {} to seal the unsealed segments); consumption paused until uploads free space, nothing acknowledged",
                    bytesize::ByteSize(room.free),
                    bytesize::ByteSize(room.needed),
                    bytesize::ByteSize(self.disk.reserve()),
                    bytesize::ByteSize(room.needed.saturating_sub(self.disk.reserve())),
                ),
                _ => format!(
                    "spool full: it holds max_spool_bytes ({}) of records; consumption paused until uploads free space, nothing acknowledged",
                    self.limits.max_spool_bytes
                ),
            };
            warn!(rule = %self.rule.name, "{message}");
            self.stats.set_error(&message);
            self.record(HistoryEntry::event(HistoryKind::SpoolFull, message));
        } else if was_full && !full {
            info!(rule = %self.rule.name, "spool has room again; consuming");
            self.record(HistoryEntry::event(
                HistoryKind::Info,
                "spool has room again; consumption resumed",
            ));
        }
        if full && spool.closed_segments == 0 && spool.open_segment_messages > 0 {
            // Everything spooled is in the open segment, whose window may end in hours: until
            // it is closed nothing can be uploaded, so nothing is freed and the pause never ends.
            self.close_if_due(true).await;
        }
        full
    }

    async fn close_if_due(&mut self, force: bool) -> Option<u64> {
        match self
            .spool
            .close_open(proto::types::time::now_millis(), force)
            .await
        {
            Ok(Some(segment_no)) => {
                self.sealer.seal(self.spool.clone(), segment_no);
                Some(segment_no)
            }
            Ok(None) => None,
            Err(err) => {
                warn!(rule = %self.rule.name, error = %err, "closing the open segment failed");
                self.stats
                    .set_error(format!("cannot close the open segment: {err}"));
                None
            }
        }
    }

    async fn handle_command(&mut self, cmd: Command, consumers: Option<&mut RuleConsumers>) {
        match cmd {
            Command::AckReady => {
                if let Some(consumers) = consumers {
                    self.acknowledge(consumers).await;
                }
            }
            Command::Flush(reply) => {
                let closed = self.close_if_due(true).await;
                let _ = reply.send(closed);
            }
            Command::SetPaused(paused) => {
                self.paused = paused;
            }
            Command::DatabaseReopened => {
                match self.spool.reread() {
                    Ok(to_seal) => {
                        for segment_no in to_seal {
                            self.sealer.seal(self.spool.clone(), segment_no);
                        }
                    }
                    Err(err) => {
                        // Writes stay refused (stale state); the next reopen asks again.
                        warn!(rule = %self.rule.name, error = %err, "re-reading the spool after the database was reopened failed");
                        self.stats
                            .set_error(format!("cannot re-read the spool: {err}"));
                    }
                }
            }
            Command::Skip(entry, reply) => {
                let result = match consumers {
                    Some(consumers) => self.skip_entry(consumers, entry).await,
                    None => Err(format!(
                        "rule {:?} is not connected to Pulsar at the moment; try again when `status` shows it connected",
                        self.rule.name
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Acknowledges the stored prefix of segments, then frees it. The ack is the last step.
    async fn acknowledge(&mut self, consumers: &mut RuleConsumers) {
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
                let messages: u64 = freed.iter().map(|m| m.messages).sum();
                RuleStats::add(&self.stats.messages_acked, messages);
                debug!(rule = %self.rule.name, segments = freed.len(), messages, "acknowledged and freed");
            }
            Err(err) => {
                warn!(rule = %self.rule.name, error = %err, "freeing acknowledged segments failed");
            }
        }
    }

    fn record(&self, entry: HistoryEntry) {
        if let Err(err) = self.history.record(&self.rule.name, &entry) {
            warn!(rule = %self.rule.name, error = %err, "could not write the rule's history");
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

/// Builds the client and subscribes to every partition. Owns what it needs, so the rule task
/// can go on closing windows and answering commands while this runs.
async fn connect(
    service_url: String,
    token: Option<Secret>,
    settings: ConsumerSettings,
    seek_to_ms: Option<u64>,
) -> Result<RuleConsumers, pulsar::Error> {
    let mut builder = Pulsar::builder(service_url, TokioExecutor).with_connection_retry_options(
        ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retries: 10,
            connection_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(10),
            ..ConnectionRetryOptions::default()
        },
    );
    if let Some(token) = &token {
        builder = builder.with_auth(Authentication {
            name: "token".to_string(),
            data: token.expose().as_bytes().to_vec(),
        });
    }
    let pulsar = builder.build().await?;
    RuleConsumers::connect(pulsar, settings, seek_to_ms).await
}

/// How long a partition waits before its failed entry is asked for again: quick at first (a
/// transient failure heals by itself), then every few minutes while it is blocked.
fn redelivery_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

/// Whether `id` is in a later entry than `other`.
fn entry_after(id: &MessageId, other: &MessageId) -> bool {
    (id.ledger, id.entry) > (other.ledger, other.entry)
}

fn id_data(id: &MessageId) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger,
        entry_id: id.entry,
        partition: (id.partition >= 0).then_some(id.partition),
        batch_index: (id.batch_index >= 0).then_some(id.batch_index),
        ..MessageIdData::default()
    }
}

/// Redeliveries dropped from one batch before encoding.
#[derive(Debug, Default)]
struct Redelivered {
    duplicates: u64,
    reack: Vec<Position>,
}

/// Encodes a consumed message once, into the record log's compact form (its JSON line is made
/// when the segment is sealed; only its length is needed now). Takes the message so that its
/// topic and producer name move into the record instead of being copied, message by message.
fn to_incoming(mut msg: PulsarMessage, id: MessageId) -> Incoming {
    let meta = msg.metadata();
    let batch_size = meta.num_messages_in_batch.unwrap_or(0);
    // Producers number the messages of a batch consecutively from the batch's sequence id.
    let sequence_id = meta.sequence_id
        + u64::try_from(id.batch_index.max(0)).unwrap_or(0) * u64::from(batch_size > 0);
    let properties: Vec<(&str, &str)> = meta
        .properties
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    let encryption = crate::record_extras::encryption_of(meta);
    let fields = RecordFields {
        message_id: id,
        topic: &msg.topic,
        publish_time_ms: meta.publish_time,
        event_time_ms: meta.event_time,
        key: meta.partition_key.as_deref(),
        properties: &properties,
        producer_name: &meta.producer_name,
        sequence_id,
        payload: &msg.payload.data,
        chunk: crate::record_extras::chunk_of(meta),
        encryption: encryption.as_ref(),
    };
    let mut body = Vec::with_capacity(msg.payload.data.len() + 32);
    log_record::encode_body(&fields, &mut body);
    let json_len = record_json_len(&fields);
    let publish_time_ms = meta.publish_time;
    Incoming {
        id,
        topic: std::mem::take(&mut msg.topic),
        batch_size,
        publish_time_ms,
        producer_name: std::mem::take(&mut msg.payload.metadata.producer_name),
        body,
        json_len,
    }
}

#[cfg(test)]
mod tests {
    use super::ConsumerLimits;

    fn limits(receiver_queue_bytes: u64) -> ConsumerLimits {
        ConsumerLimits {
            max_spool_bytes: 0,
            receiver_queue: 1000,
            receiver_queue_bytes,
            disk_reserve_bytes: 0,
        }
    }

    #[test]
    fn permits_shrink_for_large_messages_and_grow_back_without_flapping() {
        let l = limits(32_000_000);
        // 1 KB records: 1000 permits are 1 MB, well within 32 MB.
        assert_eq!(l.permits_for(1000, 1_100), None);
        // 1 MiB records: 30 permits.
        assert_eq!(l.permits_for(1000, 1_050_000), Some(30));
        // Sizes within a factor of two of what the permits were sized for: no reconnect.
        assert_eq!(l.permits_for(30, 700_000), None);
        assert_eq!(l.permits_for(30, 1_900_000), None);
        // Small messages again: back to receiver_queue.
        assert_eq!(l.permits_for(30, 1_000), Some(1000));
        // Larger than the whole budget: one message at a time.
        assert_eq!(l.permits_for(1000, 100_000_000), Some(1));
    }

    #[test]
    fn no_byte_bound_keeps_receiver_queue() {
        assert_eq!(limits(0).permits_for(1000, 5_000_000), None);
        assert_eq!(limits(0).permits_for(30, 5_000_000), Some(1000));
    }
}
