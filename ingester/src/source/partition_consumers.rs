//! A rule's Pulsar consumers: one per partition of a partitioned topic (one for a plain topic),
//! each under our control.
//!
//! pulsar-rs's multi-topic consumer hides which partition an error came from, drops a failing
//! partition's consumer and re-adds it 30 s later, and cannot seek. Holding one single-topic
//! consumer per partition lets the rule stop exactly the partition whose entry cannot be decoded
//! (see [`crate::source::decode_fault`]), recreate just that consumer to have the entry redelivered,
//! seek each partition by publish time, and pick up partitions added to the topic later.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use proto::types::MessageId;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::message::proto::MessageIdData;
use pulsar::{Consumer, Pulsar, TokioExecutor};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::source::decode_fault::DecodeFault;

pub type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// How long the broker may take to name a partition's last message.
const LAST_ID_TIMEOUT: Duration = Duration::from_secs(5);
pub type PulsarMessage = pulsar::consumer::Message<Vec<u8>>;

/// How long a consumer may take to close before it is dropped (pulsar-rs's close can hang
/// while messages are still queued).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every consumer of the rule is created with.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub topic: String,
    pub subscription: String,
    pub sub_type: SubType,
    pub consumer_name: String,
    /// Pulsar's consumer priority, when not the broker's default.
    pub priority_level: Option<i32>,
    /// Flow-control permits (and pulsar-rs's receive queue) per consumer.
    pub permits: u32,
    /// Where a new subscription starts.
    pub initial: InitialPosition,
}

/// One partition's consumer and what the rule knows of its progress.
pub struct PartitionConsumer {
    /// The name the consumer subscribed with (`…-partition-N` for a partition).
    pub topic: String,
    /// -1 for a non-partitioned topic.
    pub partition: i32,
    consumer: PulsarConsumer,
    /// The last message that decoded since this consumer was created.
    pub last_decoded: Option<MessageId>,
    /// Stream errors since this consumer was created.
    pub errors_since_created: u32,
    /// Spooling nothing from here on: the rest of a delivery that failed. The stream is read
    /// on only until `discard_until` (or the first message after the failure is seen, which
    /// names the entry), then left alone until `hold_until`, when the consumer is recreated
    /// and the broker redelivers the entry.
    pub discarding: bool,
    pub discard_until: Option<Instant>,
    pub hold_until: Option<Instant>,
    pub fault: Option<DecodeFault>,
    /// The partition's last entry as the broker named it right after subscribing (`None`: it
    /// did not say).
    pub last_at_subscribe: Option<(u64, u64)>,
    /// Something was delivered since the last [`RuleConsumers::check_connections`]: the
    /// connection is alive without asking.
    delivered: bool,
}

impl PartitionConsumer {
    fn readable(&self, now: Instant) -> bool {
        if !self.discarding {
            return true;
        }
        let named = self.fault.as_ref().is_some_and(|f| f.before.is_some());
        !named && self.discard_until.is_some_and(|until| now < until)
    }

    /// Whether the consumer is due to be recreated for a redelivery.
    pub fn due_for_redelivery(&self, now: Instant) -> bool {
        self.discarding && self.hold_until.is_some_and(|at| at <= now)
    }
}

/// An item of one partition's stream: `None` when the stream ended.
pub type PartitionItem = (usize, Option<Result<PulsarMessage, pulsar::Error>>);

pub struct RuleConsumers {
    pulsar: Pulsar<TokioExecutor>,
    settings: ConsumerSettings,
    pub parts: Vec<PartitionConsumer>,
    /// Where the next poll starts, so one busy partition cannot starve the others.
    next_poll: usize,
    /// The broker answered (or was not asked yet) for a partition's last message: one that
    /// never answers costs one timeout per connection, not one per partition.
    last_id_answers: bool,
}

/// What [`RuleConsumers::check_connections`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Every partition delivered something or answered a ping.
    Alive,
    /// A partition's connection did not answer.
    Lost,
    /// Not asked: a request could wait behind a receive queue that is not being read.
    Unknown,
}

/// The outcome of one [`RuleConsumers::check_connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCheck {
    pub liveness: Liveness,
    /// Every partition was idle and answered a ping: its consumer engine is free, so another
    /// request (consumer stats) is answered now rather than after the queued messages.
    pub engines_free: bool,
}

impl RuleConsumers {
    /// Subscribes to every partition of the topic (or to the topic itself when it is not
    /// partitioned); `seek_to_ms` positions each subscription by publish time first.
    pub async fn connect(
        pulsar: Pulsar<TokioExecutor>,
        settings: ConsumerSettings,
        seek_to_ms: Option<u64>,
    ) -> Result<RuleConsumers, pulsar::Error> {
        let partitions = pulsar
            .lookup_partitioned_topic_number(settings.topic.clone())
            .await?;
        let mut consumers = RuleConsumers {
            pulsar,
            settings,
            parts: Vec::new(),
            next_poll: 0,
            last_id_answers: true,
        };
        if partitions == 0 {
            let topic = consumers.settings.topic.clone();
            consumers
                .add(topic, -1, consumers.settings.initial.clone(), seek_to_ms)
                .await?;
        } else {
            for partition in 0..partitions {
                let initial = consumers.settings.initial.clone();
                consumers
                    .add_partition(partition, initial, seek_to_ms)
                    .await?;
            }
        }
        Ok(consumers)
    }

    fn partition_topic(&self, partition: u32) -> String {
        format!("{}-partition-{partition}", self.settings.topic)
    }

    async fn add_partition(
        &mut self,
        partition: u32,
        initial: InitialPosition,
        seek_to_ms: Option<u64>,
    ) -> Result<(), pulsar::Error> {
        let topic = self.partition_topic(partition);
        let index = i32::try_from(partition).unwrap_or(i32::MAX);
        self.add(topic, index, initial, seek_to_ms).await
    }

    async fn add(
        &mut self,
        topic: String,
        partition: i32,
        initial: InitialPosition,
        seek_to_ms: Option<u64>,
    ) -> Result<(), pulsar::Error> {
        let mut consumer = self.subscribe(&topic, initial).await?;
        if let Some(ms) = seek_to_ms {
            consumer
                .seek(None, None, Some(ms), self.pulsar.clone())
                .await?;
            info!(topic = %topic, at_ms = ms, "subscription positioned by publish time");
        }
        // Asked now, before the broker can fill the receive queue: a request goes through
        // pulsar-rs's consumer engine, which answers only after it has handed every message
        // ahead of it to a queue that nothing reads until this returns.
        let last_at_subscribe = if self.last_id_answers {
            let last = last_entry(&topic, &mut consumer, LAST_ID_TIMEOUT).await;
            self.last_id_answers = last.is_ok();
            last.ok().flatten()
        } else {
            None
        };
        self.parts.push(PartitionConsumer {
            topic,
            partition,
            consumer,
            last_decoded: None,
            errors_since_created: 0,
            discarding: false,
            discard_until: None,
            hold_until: None,
            fault: None,
            last_at_subscribe,
            delivered: false,
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        initial: InitialPosition,
    ) -> Result<PulsarConsumer, pulsar::Error> {
        let s = &self.settings;
        let mut options = ConsumerOptions::default()
            .with_initial_position(initial)
            // pulsar-rs queues this many received messages besides the permits in flight.
            .with_receiver_queue_size(s.permits)
            .durable(true);
        if let Some(level) = s.priority_level {
            options = options.with_priority_level(level);
        }
        self.pulsar
            .consumer()
            .with_topic(topic)
            .with_subscription(s.subscription.clone())
            .with_subscription_type(s.sub_type)
            .with_consumer_name(s.consumer_name.clone())
            .with_batch_size(s.permits)
            .with_options(options)
            .build()
            .await
    }

    /// Looks the partition count up again and subscribes to partitions added since; they start
    /// at the earliest message, since everything in them was published after the rule began.
    /// Returns the partitions added.
    pub async fn add_new_partitions(&mut self) -> Result<Vec<i32>, pulsar::Error> {
        if self.parts.first().is_some_and(|p| p.partition < 0) {
            return Ok(Vec::new());
        }
        let count = self
            .pulsar
            .lookup_partitioned_topic_number(self.settings.topic.clone())
            .await?;
        let known = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
        let mut added = Vec::new();
        for partition in known..count {
            self.add_partition(partition, InitialPosition::Earliest, None)
                .await?;
            added.push(i32::try_from(partition).unwrap_or(i32::MAX));
        }
        Ok(added)
    }

    /// Each partition's last message as the broker tells it (ledger, entry), `None` for an
    /// empty partition or one whose broker did not answer; `None` overall when no partition's
    /// broker answered (without the command, or no answer in time). Waits on the consumer
    /// engines: call it with the receive queues drained, or expect a timeout.
    pub async fn last_entries(
        &mut self,
        timeout: Duration,
    ) -> Option<Vec<(i32, Option<(u64, u64)>)>> {
        // All partitions at once: a broker that never answers costs one timeout, not one each.
        let asks = self.parts.iter_mut().map(|part| async move {
            let last = last_entry(&part.topic, &mut part.consumer, timeout).await;
            (part.partition, last)
        });
        let answers = futures::future::join_all(asks).await;
        answers.iter().any(|(_, last)| last.is_ok()).then(|| {
            answers
                .into_iter()
                .map(|(partition, last)| (partition, last.ok().flatten()))
                .collect()
        })
    }

    /// Whether the broker answered for a partition's last message when subscribing (a broker
    /// that does not is not asked mid-stream either).
    pub fn answers_last_id(&self) -> bool {
        self.last_id_answers
    }

    /// Each partition's last message as the broker named it right after subscribing.
    pub fn last_entries_at_subscribe(&self) -> Vec<(i32, Option<(u64, u64)>)> {
        self.parts
            .iter()
            .map(|part| (part.partition, part.last_at_subscribe))
            .collect()
    }

    /// Closes a partition's consumer and subscribes again: the broker then redelivers everything
    /// after the partition's acknowledged position.
    pub async fn recreate(&mut self, index: usize) -> Result<(), pulsar::Error> {
        let Some(part) = self.parts.get(index) else {
            return Ok(());
        };
        let topic = part.topic.clone();
        // An existing subscription keeps its position; the initial position only matters for a
        // subscription the broker lost meanwhile, where the earliest message loses nothing.
        let fresh = self.subscribe(&topic, InitialPosition::Earliest).await?;
        let part = &mut self.parts[index];
        let mut old = std::mem::replace(&mut part.consumer, fresh);
        part.last_decoded = None;
        part.errors_since_created = 0;
        part.discarding = false;
        part.discard_until = None;
        part.hold_until = None;
        part.delivered = false;
        debug!(topic = %topic, "partition consumer recreated");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.close()).await;
        Ok(())
    }

    /// The next item from any partition that is being read.
    pub async fn next(&mut self) -> PartitionItem {
        poll_fn(|cx| {
            let now = Instant::now();
            let n = self.parts.len();
            for i in 0..n {
                let index = (self.next_poll + i) % n;
                let part = &mut self.parts[index];
                if !part.readable(now) {
                    continue;
                }
                if let Poll::Ready(item) = part.consumer.poll_next_unpin(cx) {
                    part.delivered = true;
                    self.next_poll = (index + 1) % n;
                    return Poll::Ready((index, item));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// An item that is already buffered, if any.
    pub fn try_next(&mut self) -> Option<PartitionItem> {
        self.next().now_or_never()
    }

    fn consumer_for(&mut self, topic: &str) -> Option<&mut PulsarConsumer> {
        self.parts
            .iter_mut()
            .find(|p| p.topic == topic)
            .map(|p| &mut p.consumer)
    }

    pub async fn cumulative_ack(
        &mut self,
        topic: &str,
        id: MessageIdData,
    ) -> Result<(), pulsar::error::ConsumerError> {
        match self.consumer_for(topic) {
            Some(consumer) => consumer.cumulative_ack_with_id(topic, id).await,
            None => Err(unknown_topic(topic)),
        }
    }

    /// Acknowledges one entry alone (`rule skip`).
    pub async fn ack_one(
        &mut self,
        topic: &str,
        id: MessageIdData,
    ) -> Result<(), pulsar::error::ConsumerError> {
        match self.consumer_for(topic) {
            Some(consumer) => consumer.ack_with_id(topic, id).await,
            None => Err(unknown_topic(topic)),
        }
    }

    /// Whether every partition's connection is alive: one that delivered something since the
    /// last check is; an idle one is pinged, but only when `queues_read` says its receive
    /// queue was read all along. A ping goes through pulsar-rs's consumer engine, which is
    /// stuck handing a message to a full queue while the rule does not read (spool full), and
    /// waiting on it would stall the rule for the whole timeout and call a busy connection lost.
    pub async fn check_connections(&mut self, queues_read: bool) -> ConnectionCheck {
        let mut check = ConnectionCheck {
            liveness: Liveness::Alive,
            engines_free: queues_read,
        };
        for part in &mut self.parts {
            if std::mem::take(&mut part.delivered) {
                check.engines_free = false;
                continue;
            }
            if !queues_read {
                check.liveness = Liveness::Unknown;
                continue;
            }
            let pinged =
                tokio::time::timeout(Duration::from_secs(3), part.consumer.check_connection())
                    .await;
            if !matches!(pinged, Ok(Ok(()))) {
                return ConnectionCheck {
                    liveness: Liveness::Lost,
                    engines_free: false,
                };
            }
        }
        check
    }

    /// The messages the broker holds for this subscription over every partition (its backlog,
    /// which includes what is spooled but not yet acknowledged); `None` if a broker does not say.
    /// Waits on the consumer engines (see [`RuleConsumers::check_connections`]).
    pub async fn broker_backlog(&mut self) -> Option<u64> {
        let mut total = 0u64;
        for part in &mut self.parts {
            let stats = tokio::time::timeout(Duration::from_secs(2), part.consumer.get_stats())
                .await
                .ok()?
                .ok()?;
            for s in stats {
                total = total.saturating_add(s.msg_backlog?);
            }
        }
        Some(total)
    }

    /// Closes every consumer (bounded: see [`CLOSE_TIMEOUT`]).
    pub async fn close(mut self) {
        for part in &mut self.parts {
            if tokio::time::timeout(CLOSE_TIMEOUT, part.consumer.close())
                .await
                .is_err()
            {
                warn!(topic = %part.topic, "closing a consumer timed out; dropping it");
            }
        }
    }

    pub fn is_partitioned(&self) -> bool {
        self.parts.first().is_some_and(|p| p.partition >= 0)
    }
}

/// A partition's last entry (ledger, entry) as the broker names it: `Ok(None)` for an empty
/// topic, `Err` when the broker did not answer in time or refused the command.
async fn last_entry(
    topic: &str,
    consumer: &mut PulsarConsumer,
    timeout: Duration,
) -> Result<Option<(u64, u64)>, ()> {
    match tokio::time::timeout(timeout, consumer.get_last_message_id()).await {
        // An empty topic's "last" entry is -1 (u64::MAX on the wire): nothing to compare.
        Ok(Ok(ids)) => Ok(ids
            .first()
            .map(|id| (id.ledger_id, id.entry_id))
            .filter(|&(ledger, entry)| ledger != u64::MAX && entry != u64::MAX)),
        Ok(Err(err)) => {
            debug!(topic = %topic, error = %err, "the broker did not name the last message");
            Err(())
        }
        Err(_) => {
            debug!(topic = %topic, "the broker did not name the last message in time");
            Err(())
        }
    }
}

fn unknown_topic(topic: &str) -> pulsar::error::ConsumerError {
    pulsar::error::ConsumerError::Io(std::io::Error::other(format!(
        "no consumer of this rule reads {topic}"
    )))
}

/// A received message's id, with the partition known from the topic when the broker left it out.
pub fn message_id(msg: &PulsarMessage, partition: i32) -> MessageId {
    let raw = msg.message_id();
    MessageId {
        ledger: raw.ledger_id,
        entry: raw.entry_id,
        partition: if partition >= 0 {
            partition
        } else {
            raw.partition.unwrap_or(-1)
        },
        batch_index: raw.batch_index.unwrap_or(-1),
    }
}
