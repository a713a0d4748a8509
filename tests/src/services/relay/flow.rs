//! Flow permits counted per message, as an Apache Pulsar broker counts them.
//!
//! A Pulsar client grants a consumer *message* permits (CommandFlow); an Apache Pulsar broker
//! subtracts every message of a batch entry from them and sizes each read from the ledger by the
//! consumer's average messages per entry (starting at 1000 and moving 10 % per dispatch, at most
//! 100 entries a read; `Consumer.sendMessages`, `getRestrictedMaxEntriesForConsumer`). pulsar-lite
//! counts one permit per *entry*. With batching producers the difference is large: pulsar-rs's
//! engine grants the messages of each batch entry it hands on, so pulsar-lite, reading those as
//! entries, sends about as many messages again per message consumed, and the whole backlog
//! streams into the client's unbounded connection queue (a 300 MB backlog became 600 MB of
//! consumer memory). No client-side setting bounds that, and no real broker behaves so.
//!
//! So the relay keeps the client's message permits itself and gives pulsar-lite entry permits in
//! the Apache broker's way: one read outstanding at a time, of `permits / avg` entries (1..=100).
//! Frames are relayed unchanged; only the client's CommandFlow is replaced by the relay's own.

use std::collections::HashMap;

use prost013::Message as _;
use pulsar::message::proto::{base_command::Type, BaseCommand, CommandFlow, MessageMetadata};

/// Apache Pulsar's `dispatcherMaxReadBatchSize` default: entries a single read may ask for.
const MAX_READ_ENTRIES: i64 = 100;

/// Apache Pulsar's first guess of a consumer's messages per entry, before it has sent any.
const INITIAL_MESSAGES_PER_ENTRY: f64 = 1000.0;

/// How much of the old average each dispatch keeps (Apache Pulsar's `avgPercent`).
const AVERAGE_KEEPS: f64 = 0.9;

/// How the relay passes flow permits on to pulsar-lite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowAccounting {
    /// Count permits per message, as Apache Pulsar does (see the module doc).
    #[default]
    PerMessage,
    /// Pass the client's CommandFlow through untouched: pulsar-lite counts it per entry.
    Passthrough,
}

/// One consumer's permits as the relay sees them.
#[derive(Debug, Clone)]
pub struct ConsumerFlow {
    /// Message permits the client granted and no message has used yet (negative after a batch
    /// entry larger than what was left, as on an Apache broker).
    permits: i64,
    /// Entry permits given to the broker and not yet used by an entry.
    outstanding_entries: i64,
    messages_per_entry: f64,
}

impl Default for ConsumerFlow {
    fn default() -> Self {
        ConsumerFlow {
            permits: 0,
            outstanding_entries: 0,
            messages_per_entry: INITIAL_MESSAGES_PER_ENTRY,
        }
    }
}

impl ConsumerFlow {
    /// The client granted `permits` more messages; returns the entry permits to send the broker.
    pub fn granted(&mut self, permits: u32) -> Option<u32> {
        self.permits += i64::from(permits);
        self.next_read()
    }

    /// An entry of `messages` messages went to the client; returns entry permits to send.
    pub fn delivered(&mut self, messages: u32) -> Option<u32> {
        let messages = messages.max(1);
        self.permits -= i64::from(messages);
        self.outstanding_entries = (self.outstanding_entries - 1).max(0);
        self.messages_per_entry = (self.messages_per_entry * AVERAGE_KEEPS
            + (1.0 - AVERAGE_KEEPS) * f64::from(messages))
        .max(1.0);
        self.next_read()
    }

    /// Starts the next "read" once the previous one is used up and the client has permits left.
    fn next_read(&mut self) -> Option<u32> {
        if self.outstanding_entries > 0 || self.permits <= 0 {
            return None;
        }
        // Truncation is the broker's own rounding; at least one entry, as an Apache broker
        // always reads one when any permit is left.
        let entries =
            ((self.permits as f64 / self.messages_per_entry) as i64).clamp(1, MAX_READ_ENTRIES);
        self.outstanding_entries = entries;
        u32::try_from(entries).ok()
    }
}

/// The permits of every consumer on one relayed connection.
#[derive(Debug, Default)]
pub struct ConnectionFlow {
    consumers: HashMap<u64, ConsumerFlow>,
}

impl ConnectionFlow {
    /// What to do with a frame from the client: `true` to forward it, `false` to keep it back
    /// (a CommandFlow, whose permits the relay now holds); `grant` receives entry permits to send.
    pub fn on_client_frame(&mut self, frame: &[u8], mut grant: impl FnMut(u64, u32)) -> bool {
        let Some(command) = payloadless_command(frame) else {
            return true;
        };
        if let Some(subscribe) = &command.subscribe {
            // A consumer id is fresh for each subscribe on a connection; start it afresh.
            self.consumers
                .insert(subscribe.consumer_id, ConsumerFlow::default());
        } else if let Some(close) = &command.close_consumer {
            self.consumers.remove(&close.consumer_id);
        } else if let Some(flow) = &command.flow {
            let consumer = self.consumers.entry(flow.consumer_id).or_default();
            if let Some(entries) = consumer.granted(flow.message_permits) {
                grant(flow.consumer_id, entries);
            }
            return false;
        }
        true
    }

    /// Counts a frame from the broker; returns the entry permits to send for it, if any.
    pub fn on_broker_frame(&mut self, frame: &[u8]) -> Option<(u64, u32)> {
        let (consumer_id, messages) = delivered_entry(frame)?;
        let consumer = self.consumers.get_mut(&consumer_id)?;
        consumer
            .delivered(messages)
            .map(|entries| (consumer_id, entries))
    }
}

/// The command of a frame that carries no payload (FLOW, SUBSCRIBE, CLOSE_CONSUMER never do;
/// skipping SEND frames keeps a producer's hot path undecoded).
fn payloadless_command(frame: &[u8]) -> Option<BaseCommand> {
    let cmd_size = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    if frame.len() != 8 + cmd_size {
        return None;
    }
    BaseCommand::decode(frame.get(8..)?).ok()
}

/// The consumer and message count of a MESSAGE frame (as the broker sent it, before the relay
/// adds a checksum block); `None` for other frames.
fn delivered_entry(frame: &[u8]) -> Option<(u64, u32)> {
    let cmd_size = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let payload_at = 8 + cmd_size;
    if frame.len() <= payload_at {
        return None;
    }
    let command = BaseCommand::decode(frame.get(8..payload_at)?).ok()?;
    let consumer_id = command.message?.consumer_id;
    let mut at = payload_at;
    if frame.get(at..at + 2) == Some(&super::MAGIC_CRC32C[..]) {
        at += 6;
    }
    let meta_size = u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?) as usize;
    // A metadata block that does not decode still used a permit: count it as one message.
    let messages = MessageMetadata::decode(frame.get(at + 4..at + 4 + meta_size)?)
        .ok()
        .and_then(|meta| meta.num_messages_in_batch)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1);
    Some((consumer_id, messages))
}

/// A CommandFlow frame giving `consumer_id` `permits`.
pub fn flow_frame(consumer_id: u64, permits: u32) -> Vec<u8> {
    let command = BaseCommand {
        r#type: Type::Flow as i32,
        flow: Some(CommandFlow {
            consumer_id,
            message_permits: permits,
        }),
        ..Default::default()
    };
    let cmd = command.encode_to_vec();
    // A CommandFlow is a few bytes: its sizes always fit.
    let cmd_len = cmd.len() as u32;
    let mut out = Vec::with_capacity(8 + cmd.len());
    out.extend_from_slice(&(4 + cmd_len).to_be_bytes());
    out.extend_from_slice(&cmd_len.to_be_bytes());
    out.extend_from_slice(&cmd);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_one_entry_and_adapts_to_batches() {
        let mut flow = ConsumerFlow::default();
        // 1000 permits at the initial guess of 1000 messages per entry: one entry.
        assert_eq!(flow.granted(1000), Some(1));
        // No second read while one is outstanding.
        assert_eq!(flow.granted(500), None);
        // A 100-message batch entry: 1400 permits left, the average moves towards 100.
        let next = flow.delivered(100).expect("a new read");
        assert_eq!(next, 1, "1400 / 910 messages per entry");
        // After many 100-message entries the average is ~100 and reads grow, bounded by permits.
        for _ in 0..60 {
            if let Some(entries) = flow.delivered(100) {
                assert!(entries >= 1);
            }
            flow.granted(100);
        }
        assert!((flow.messages_per_entry - 100.0).abs() < 5.0);
        flow.outstanding_entries = 0;
        flow.permits = 1000;
        let entries = flow.next_read().expect("a read");
        assert!(
            (9..=10).contains(&entries),
            "1000 permits / ~100 per entry, got {entries}"
        );
    }

    #[test]
    fn a_batch_larger_than_the_permits_leaves_them_negative_until_granted_again() {
        let mut flow = ConsumerFlow::default();
        assert_eq!(flow.granted(10), Some(1));
        // One entry of 1000 messages: 990 permits short, no further read.
        assert_eq!(flow.delivered(1000), None);
        assert_eq!(flow.permits, -990);
        // pulsar-rs then grants what the batch used and its window again.
        assert_eq!(flow.granted(1000), Some(1));
    }

    #[test]
    fn single_messages_ramp_up_to_the_read_cap() {
        let mut flow = ConsumerFlow::default();
        assert_eq!(flow.granted(100_000), Some(100));
        let mut last = None;
        for _ in 0..200 {
            if let Some(entries) = flow.delivered(1) {
                last = Some(entries);
            }
        }
        assert_eq!(last, Some(100), "never more than 100 entries a read");
        assert!(flow.messages_per_entry < 1.5);
    }

    #[test]
    fn entry_permits_never_exceed_what_the_client_granted_in_messages() {
        // The property the module exists for: with batches of 1000, messages in flight stay
        // within the client's window plus one entry, however long the stream runs.
        let mut flow = ConsumerFlow::default();
        let window = 1000_i64;
        let mut in_flight_entries = i64::from(flow.granted(1000).unwrap_or(0));
        let mut consumed = 0_i64;
        let mut granted_total = window;
        for _ in 0..10_000 {
            if in_flight_entries == 0 {
                break;
            }
            in_flight_entries -= 1;
            consumed += 1000;
            if let Some(e) = flow.delivered(1000) {
                in_flight_entries += i64::from(e);
            }
            // pulsar-rs grants back what was used, keeping its window.
            granted_total += 1000;
            if let Some(e) = flow.granted(1000) {
                in_flight_entries += i64::from(e);
            }
            assert!(in_flight_entries * 1000 <= granted_total - consumed + 1000);
        }
        assert!(consumed > 1_000_000, "the stream kept flowing");
    }

    #[test]
    fn the_connection_holds_back_client_flow_and_counts_broker_messages() {
        use pulsar::message::proto::{CommandMessage, CommandSubscribe, MessageIdData};
        let mut connection = ConnectionFlow::default();
        let subscribe = BaseCommand {
            r#type: Type::Subscribe as i32,
            subscribe: Some(CommandSubscribe {
                consumer_id: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let encoded = subscribe.encode_to_vec();
        let mut frame = Vec::new();
        frame.extend_from_slice(&(4 + encoded.len() as u32).to_be_bytes());
        frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        frame.extend_from_slice(&encoded);
        let mut grants = Vec::new();
        assert!(connection.on_client_frame(&frame, |c, p| grants.push((c, p))));
        assert!(!connection.on_client_frame(&flow_frame(7, 1000), |c, p| grants.push((c, p))));
        assert_eq!(grants, vec![(7, 1)]);
        assert_eq!(
            payloadless_command(&flow_frame(7, 1))
                .and_then(|c| c.flow)
                .map(|f| f.message_permits),
            Some(1)
        );

        // A MESSAGE frame of a 3-message batch for consumer 7.
        let message = BaseCommand {
            r#type: Type::Message as i32,
            message: Some(CommandMessage {
                consumer_id: 7,
                message_id: MessageIdData::default(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let meta = MessageMetadata {
            num_messages_in_batch: Some(3),
            ..Default::default()
        }
        .encode_to_vec();
        let cmd = message.encode_to_vec();
        let mut payload = Vec::new();
        payload.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        payload.extend_from_slice(&meta);
        payload.extend_from_slice(b"data");
        let mut frame = Vec::new();
        frame.extend_from_slice(&((4 + cmd.len() + payload.len()) as u32).to_be_bytes());
        frame.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        frame.extend_from_slice(&cmd);
        frame.extend_from_slice(&payload);
        assert_eq!(delivered_entry(&frame), Some((7, 3)));
        assert_eq!(connection.on_broker_frame(&frame), Some((7, 1)));
    }
}
