//! What one read from the consumers yields: each delivered message is checked against what the
//! spool has seen (redeliveries are dropped before anything is encoded, and those already
//! acknowledged are acknowledged again), left out if published before a timestamp start, and
//! otherwise encoded once into the record log's compact form.

use proto::types::{record::record_json_len, MessageId, RecordFields, StartPosition};
use tracing::warn;

use super::ack::id_data;
use super::connection::ConsumeEnd;
use super::faults::entry_after;
use super::reack::Reacks;
use super::RuleTask;
use crate::source::decode_fault::AfterFault;
use crate::source::partition_consumers::{message_id, PartitionItem, PulsarMessage, RuleConsumers};
use crate::source::record_extras;
use crate::spool::log_record;
use crate::spool::{Incoming, Position, Redelivery, Seen};
use crate::stats::RuleStats;

/// Most messages taken from the consumer's buffer for one durable spool write.
pub(super) const MAX_BATCH: usize = 2000;
/// Most record bytes in one durable spool write: a batch is held twice while it is written.
pub(super) const MAX_BATCH_BYTES: u64 = 4 << 20;

/// What one read from the consumers gathers before the durable write.
#[derive(Default)]
pub(super) struct Intake {
    pub(super) batch: Vec<Incoming>,
    pub(super) redelivered: Redelivered,
    /// Record bytes in `batch`.
    pub(super) bytes: u64,
    pub(super) received: usize,
    /// Messages published before the rule's start time (dropped, see [`RuleTask::take`]).
    pub(super) before_start: u64,
    /// A partition's stream went back below what it delivered before: a redelivery burst, or
    /// pulsar-rs's consumer engine subscribed again by itself after its connection broke (on a
    /// broker that may have lost the topic).
    pub(super) rewound: bool,
    /// The read took everything the consumers had buffered (it did not stop at a batch cap), so
    /// their engines are not stuck behind a full queue.
    pub(super) drained: bool,
}

/// Redeliveries dropped from one batch before encoding.
#[derive(Debug, Default)]
pub(super) struct Redelivered {
    pub(super) duplicates: u64,
    pub(super) reack: Vec<Position>,
}

impl RuleTask {
    /// Handles one item of a partition's stream. `Some` ends the connection.
    pub(super) fn take(
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
                match record_extras::not_as_sent(msg.metadata()) {
                    None => self.on_message(consumers, index, msg, seen, intake),
                    // One failure per entry, as pulsar-rs reports one: its first message's.
                    Some(_) if msg.message_id().batch_index.unwrap_or(0) > 0 => {}
                    Some(why) => self.on_stream_error(consumers, index, why, seen),
                }
                None
            }
        }
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
        if part.last_decoded.is_some_and(|last| id < last) {
            intake.rewound = true;
        }
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
                RuleStats::add(&self.stats.consumed_bytes, msg.payload.data.len() as u64);
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

    /// Counts redeliveries dropped before encoding, and acknowledges again the positions of
    /// those already acknowledged (each at most once per interval, see [`Reacks`]).
    pub(super) async fn drop_redelivered(
        &self,
        redelivered: Redelivered,
        consumers: &mut RuleConsumers,
        reacks: &mut Reacks,
    ) {
        RuleStats::add(&self.stats.duplicates_dropped, redelivered.duplicates);
        let now = tokio::time::Instant::now();
        for pos in redelivered.reack {
            if !reacks.due(&pos.topic, &pos.id, now) {
                continue;
            }
            if let Err(err) = consumers.cumulative_ack(&pos.topic, id_data(&pos.id)).await {
                warn!(rule = %self.rule.name, error = %err, "re-acknowledging a redelivered message failed");
            }
        }
    }
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
    let encryption = record_extras::encryption_of(meta);
    let fields = RecordFields {
        message_id: id,
        topic: &msg.topic,
        publish_time_ms: meta.publish_time,
        event_time_ms: meta.event_time,
        key: meta.partition_key.as_deref(),
        key_base64: meta.partition_key_b64_encoded.unwrap_or(false),
        ordering_key: meta.ordering_key.as_deref(),
        properties: &properties,
        producer_name: &meta.producer_name,
        sequence_id,
        payload: &msg.payload.data,
        chunk: record_extras::chunk_of(meta),
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
