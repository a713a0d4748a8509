//! One task per rule: owns the Pulsar consumer, spools what it receives, and is the only place
//! that acknowledges — after the spool says the segments are stored, in segment order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use proto::types::{
    log_record, record::record_json_len, MessageId, RecordFields, RuleConfig, Secret,
    StartPosition, SubscriptionKind,
};
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::message::proto::MessageIdData;
use pulsar::{Authentication, ConnectionRetryOptions, Consumer, Pulsar, TokioExecutor};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::history::{History, HistoryEntry};
use crate::rules::RuleStore;
use crate::sealer::SealerHandle;
use crate::spool::{AckPlan, Incoming, Position, Redelivery, RuleSpool};
use crate::stats::RuleStats;

/// Most messages taken from the consumer's buffer for one durable spool write.
const MAX_BATCH: usize = 2000;
/// Most record bytes in one durable spool write: a batch is held twice while it is written.
const MAX_BATCH_BYTES: u64 = 4 << 20;
const TICK: Duration = Duration::from_millis(200);
const CONNECTION_CHECK_EVERY: u32 = 25;

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
}

pub enum Command {
    /// Some segment was stored: see what can be acknowledged.
    AckReady,
    /// Close the open segment now.
    Flush(oneshot::Sender<Option<u64>>),
    SetPaused(bool),
}

/// What a rule task needs.
pub struct RuleTask {
    pub rule: RuleConfig,
    pub token: Option<Secret>,
    pub paused: bool,
    pub limits: ConsumerLimits,
    pub start_applied: bool,
    pub spool: Arc<RuleSpool>,
    pub stats: Arc<RuleStats>,
    pub history: Arc<History>,
    pub rules: Arc<RuleStore>,
    pub sealer: SealerHandle,
    pub commands: mpsc::Receiver<Command>,
    pub stop: watch::Receiver<bool>,
}

type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

impl RuleTask {
    pub async fn run(mut self) {
        let name = self.rule.name.clone();
        let mut backoff = Duration::from_millis(500);
        let mut last_recorded_error = String::new();
        let mut permits = self.limits.receiver_queue;
        loop {
            if *self.stop.borrow() {
                break;
            }
            // Acks that were pending when the last consumer went away (or from before a restart).
            // A connect can hang in pulsar-rs's retries: a stop must not wait for it.
            let mut stop = self.stop.clone();
            let connected = tokio::select! {
                result = self.connect(permits) => result,
                _ = stop.changed() => break,
            };
            match connected {
                Ok((consumer, pulsar)) => {
                    self.stats.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                    last_recorded_error.clear();
                    info!(rule = %name, "consumer connected");
                    let end = self.consume(consumer, pulsar, permits).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    match end {
                        ConsumeEnd::Stopped => break,
                        ConsumeEnd::Lost => {}
                        ConsumeEnd::Resize(resized) => {
                            permits = resized;
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
                    if message != last_recorded_error {
                        self.record(HistoryEntry::event("consumer_error", true, &message));
                        last_recorded_error = message;
                    }
                }
            }
            // Wait before reconnecting, still answering commands (flush, pause) meanwhile.
            let deadline = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.stop.changed() => break,
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => { self.handle_command(cmd, None).await; }
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        debug!(rule = %name, "rule task stopped");
    }

    async fn connect(
        &mut self,
        permits: u32,
    ) -> Result<(PulsarConsumer, Pulsar<TokioExecutor>), pulsar::Error> {
        let mut builder = Pulsar::builder(self.rule.service_url.clone(), TokioExecutor)
            .with_connection_retry_options(ConnectionRetryOptions {
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                max_retries: 10,
                connection_timeout: Duration::from_secs(5),
                keep_alive: Duration::from_secs(10),
                ..ConnectionRetryOptions::default()
            });
        if let Some(token) = &self.token {
            builder = builder.with_auth(Authentication {
                name: "token".to_string(),
                data: token.expose().as_bytes().to_vec(),
            });
        }
        let pulsar = builder.build().await?;
        let initial = match self.rule.start {
            StartPosition::Earliest => InitialPosition::Earliest,
            StartPosition::Latest | StartPosition::Timestamp(_) => InitialPosition::Latest,
        };
        let sub_type = match self.rule.subscription_type {
            SubscriptionKind::Failover => SubType::Failover,
            SubscriptionKind::Exclusive => SubType::Exclusive,
        };
        let mut consumer: PulsarConsumer = pulsar
            .consumer()
            .with_topic(self.rule.topic.clone())
            .with_subscription(self.rule.subscription.clone())
            .with_subscription_type(sub_type)
            .with_consumer_name(format!("tdmq-backup-{}", self.rule.name))
            .with_batch_size(permits)
            .with_options(
                ConsumerOptions::default()
                    .with_initial_position(initial)
                    // pulsar-rs queues this many received messages besides the permits in flight.
                    .with_receiver_queue_size(permits)
                    .durable(true),
            )
            .build()
            .await?;
        if !self.start_applied {
            if let StartPosition::Timestamp(ms) = self.rule.start {
                consumer.seek(None, None, Some(ms), pulsar.clone()).await?;
                info!(rule = %self.rule.name, at_ms = ms, "subscription positioned by publish time");
            }
            self.start_applied = true;
            if let Err(err) = self.rules.mark_start_applied(&self.rule.name) {
                warn!(rule = %self.rule.name, error = %err, "could not record that the start position was applied");
            }
        }
        Ok((consumer, pulsar))
    }

    /// Runs until the consumer fails, its permits need resizing, or the rule stops.
    async fn consume(
        &mut self,
        mut consumer: PulsarConsumer,
        _pulsar: Pulsar<TokioExecutor>,
        permits: u32,
    ) -> ConsumeEnd {
        let name = self.rule.name.clone();
        self.acknowledge(&mut consumer).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        // A batch that could not be spooled yet (disk full, IO error): retried before reading more.
        let mut pending: Option<Vec<Incoming>> = None;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.changed() => return ConsumeEnd::Stopped,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd, Some(&mut consumer)).await,
                    None => return ConsumeEnd::Stopped,
                },
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if let Some(batch) = pending.take() {
                        pending = self.spool_batch(batch, &mut consumer).await;
                    }
                    self.close_if_due(false).await;
                    if ticks.is_multiple_of(CONNECTION_CHECK_EVERY) {
                        let check = tokio::time::timeout(Duration::from_secs(3), consumer.check_connection()).await;
                        let ok = matches!(check, Ok(Ok(())));
                        self.stats.connected.store(ok, Ordering::Relaxed);
                        if !ok {
                            self.stats.set_error(format!("lost the connection to Pulsar at {}", self.rule.service_url));
                        }
                    }
                }
                next = consumer.next(), if pending.is_none() && !self.paused && !self.spool_at_quota() => {
                    match next {
                        None => {
                            warn!(rule = %name, "consumer stream ended; reconnecting");
                            // Said before `connected` turns false, so `status` never shows the
                            // outage without its cause.
                            self.stats.set_error(format!(
                                "lost the connection to Pulsar at {}: the consumer stream ended",
                                self.rule.service_url
                            ));
                            return ConsumeEnd::Lost;
                        }
                        Some(Err(err)) => {
                            warn!(rule = %name, error = %err, "consumer error; reconnecting");
                            self.stats.set_error(format!("consumer error: {err}"));
                            return ConsumeEnd::Lost;
                        }
                        Some(Ok(first)) => {
                            let seen = self.spool.seen();
                            let mut batch = Vec::with_capacity(64);
                            let mut redelivered = Redelivered::default();
                            let mut bytes = 0u64;
                            // Returns the record bytes it added to the batch.
                            let mut take = |msg: pulsar::consumer::Message<Vec<u8>>| -> u64 {
                                let id = message_id(&msg);
                                match seen.check(&id) {
                                    Redelivery::New => {
                                        let incoming = to_incoming(msg, id);
                                        let len = incoming.json_len;
                                        batch.push(incoming);
                                        return len;
                                    }
                                    Redelivery::Spooled => redelivered.duplicates += 1,
                                    Redelivery::Acknowledged(acked) => {
                                        redelivered.duplicates += 1;
                                        if !redelivered.reack.contains(acked) {
                                            redelivered.reack.push(acked.clone());
                                        }
                                    }
                                }
                                0
                            };
                            bytes += take(first);
                            // Take whatever else is already buffered: one durable write for all.
                            let mut received = 1;
                            while received < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                                match consumer.next().now_or_never() {
                                    Some(Some(Ok(msg))) => {
                                        bytes += take(msg);
                                        received += 1;
                                    }
                                    _ => break,
                                }
                            }
                            self.drop_redelivered(redelivered, &mut consumer).await;
                            if batch.is_empty() {
                                continue;
                            }
                            let count = batch.len() as u64;
                            pending = self.spool_batch(batch, &mut consumer).await;
                            if pending.is_none() {
                                if let Some(resized) = self.limits.permits_for(permits, bytes / count) {
                                    self.resize_permits(permits, resized, bytes / count, consumer).await;
                                    return ConsumeEnd::Resize(resized);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Counts redeliveries dropped before encoding, and acknowledges again the positions of
    /// those already acknowledged.
    async fn drop_redelivered(&self, redelivered: Redelivered, consumer: &mut PulsarConsumer) {
        RuleStats::add(&self.stats.duplicates_dropped, redelivered.duplicates);
        for pos in redelivered.reack {
            if let Err(err) = consumer
                .cumulative_ack_with_id(&pos.topic, id_data(&pos.id))
                .await
            {
                warn!(rule = %self.rule.name, error = %err, "re-acknowledging a redelivered message failed");
            }
        }
    }

    /// Closes the consumer so that the next one gets `resized` permits, and says why.
    async fn resize_permits(
        &self,
        permits: u32,
        resized: u32,
        record_bytes: u64,
        consumer: PulsarConsumer,
    ) {
        let message = format!(
            "messages average {} as records: receive window {permits} → {resized} messages to stay near receiver_queue_bytes ({})",
            bytesize::ByteSize(record_bytes),
            bytesize::ByteSize(self.limits.receiver_queue_bytes),
        );
        info!(rule = %self.rule.name, "{message}; reconnecting");
        self.record(HistoryEntry::event("info", false, message));
        // pulsar-rs's close can hang while messages are still queued (STACK.md): bounded wait.
        let mut consumer = consumer;
        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
    }

    /// Writes a batch to the spool. Returns it back if it could not be written (retried later;
    /// nothing is acknowledged meanwhile, so nothing is lost).
    async fn spool_batch(
        &mut self,
        batch: Vec<Incoming>,
        consumer: &mut PulsarConsumer,
    ) -> Option<Vec<Incoming>> {
        let now = proto::types::time::now_millis();
        match self.spool.append(&batch, now).await {
            Ok(outcome) => {
                proto::failpoint::hit("ingester:after_spool");
                if self.stats.disk_full.swap(false, Ordering::Relaxed) {
                    info!(rule = %self.rule.name, "spool writable again; consuming");
                    self.record(HistoryEntry::event(
                        "info",
                        false,
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
                    if let Err(err) = consumer
                        .cumulative_ack_with_id(&pos.topic, id_data(&pos.id))
                        .await
                    {
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
                    self.record(HistoryEntry::event("spool_error", true, message));
                }
                // Back off a little so a full disk is not hammered.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some(batch)
            }
        }
    }

    /// Whether the spool holds `max_spool_bytes` already (checked before every read).
    fn spool_at_quota(&self) -> bool {
        if self.limits.max_spool_bytes == 0 {
            return false;
        }
        let full = self.spool.stats().spooled_bytes >= self.limits.max_spool_bytes;
        let was_full = self.stats.disk_full.swap(full, Ordering::Relaxed);
        if full && !was_full {
            let message = format!(
                "spool full: it holds max_spool_bytes ({}) of records; consumption paused until uploads free space, nothing acknowledged",
                self.limits.max_spool_bytes
            );
            warn!(rule = %self.rule.name, "{message}");
            self.stats.set_error(&message);
            self.record(HistoryEntry::event("spool_full", true, message));
        } else if was_full && !full {
            info!(rule = %self.rule.name, "spool below max_spool_bytes again; consuming");
            self.record(HistoryEntry::event(
                "info",
                false,
                "spool has room again; consumption resumed",
            ));
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

    async fn handle_command(&mut self, cmd: Command, consumer: Option<&mut PulsarConsumer>) {
        match cmd {
            Command::AckReady => {
                if let Some(consumer) = consumer {
                    self.acknowledge(consumer).await;
                }
            }
            Command::Flush(reply) => {
                let closed = self.close_if_due(true).await;
                let _ = reply.send(closed);
            }
            Command::SetPaused(paused) => {
                self.paused = paused;
            }
        }
    }

    /// Acknowledges the stored prefix of segments, then frees it. The ack is the last step.
    async fn acknowledge(&mut self, consumer: &mut PulsarConsumer) {
        let Some(plan) = self.spool.ack_plan() else {
            return;
        };
        proto::failpoint::hit("ingester:before_ack");
        if let Err(err) = self.send_acks(consumer, &plan).await {
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

    async fn send_acks(
        &self,
        consumer: &mut PulsarConsumer,
        plan: &AckPlan,
    ) -> Result<(), pulsar::error::ConsumerError> {
        for pos in &plan.positions {
            consumer
                .cumulative_ack_with_id(&pos.topic, id_data(&pos.id))
                .await?;
        }
        Ok(())
    }

    fn record(&self, entry: HistoryEntry) {
        if let Err(err) = self.history.record(&self.rule.name, &entry) {
            warn!(rule = %self.rule.name, error = %err, "could not write the rule's history");
        }
    }
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

fn message_id(msg: &pulsar::consumer::Message<Vec<u8>>) -> MessageId {
    let raw = msg.message_id();
    MessageId {
        ledger: raw.ledger_id,
        entry: raw.entry_id,
        partition: raw.partition.unwrap_or(-1),
        batch_index: raw.batch_index.unwrap_or(-1),
    }
}

/// Encodes a consumed message once, into the record log's compact form (its JSON line is made
/// when the segment is sealed; only its length is needed now). Takes the message so that its
/// topic and producer name move into the record instead of being copied, message by message.
fn to_incoming(mut msg: pulsar::consumer::Message<Vec<u8>>, id: MessageId) -> Incoming {
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
