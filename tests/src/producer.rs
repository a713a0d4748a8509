//! Deterministic sample messages and a producer for them.
//!
//! The messages are built to catch encoding bugs in the backup path: JSON-looking text, quotes,
//! backslashes, control characters, newlines, multi-byte UTF-8, long bodies and payloads that are
//! not UTF-8 at all (which the records must carry as base64). Every payload embeds its index, so
//! payloads are unique and the oracle can match a record to the message it came from.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use pulsar::producer::{Message, ProducerOptions};
use pulsar::{ConnectionRetryOptions, Pulsar, TokioExecutor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Name every sample producer registers with (records carry it as `producer_name`).
pub const PRODUCER_NAME: &str = "sample-producer";

/// Messages sent but not yet confirmed; bounded so memory stays flat for large counts.
const SEND_WINDOW: usize = 2_000;

/// Event times start here (2023-11-14T22:13:20Z) so they are clearly not "now".
const EVENT_TIME_BASE_MS: u64 = 1_700_000_000_000;

/// One message to produce, and what the backup must reproduce for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SampleMessage {
    pub payload: Vec<u8>,
    /// For a byte key ([`SampleMessage::key_base64`]), its base64 text, as Pulsar carries it.
    pub key: Option<String>,
    pub key_base64: bool,
    pub ordering_key: Option<Vec<u8>>,
    pub properties: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch.
    pub event_time: Option<u64>,
}

impl SampleMessage {
    /// The message as pulsar-rs sends it.
    pub fn to_pulsar(&self) -> Message {
        Message {
            payload: self.payload.clone(),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            partition_key: self.key.clone(),
            partition_key_b64_encoded: self.key_base64.then_some(true),
            ordering_key: self.ordering_key.clone(),
            event_time: self.event_time,
            ..Default::default()
        }
    }
}

/// `n` messages, the same for the same `(n, seed)`; message `i` of a longer run equals message
/// `i` of a shorter run with the same seed.
pub fn sample_messages(n: usize, seed: u64) -> Vec<SampleMessage> {
    (0..n).map(|i| sample_message(i, seed)).collect()
}

/// Message `index` of the sequence for `seed`.
pub fn sample_message(index: usize, seed: u64) -> SampleMessage {
    // One RNG per message (seeded from seed and index) keeps message i independent of n.
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_add(1),
    );
    let payload = if index % 17 == 16 {
        binary_payload(index, &mut rng)
    } else {
        text_payload(index, &mut rng).into_bytes()
    };
    let key = rng.gen_bool(0.75).then(|| match rng.gen_range(0..4) {
        0 => format!("clé-{}", index % 7),
        1 => format!("user:{}", rng.gen_range(0..1000)),
        _ => format!("k{}", index % 16),
    });
    let num_properties = rng.gen_range(0..=3);
    let properties = (0..num_properties)
        .map(|j| {
            let value = match rng.gen_range(0..4) {
                0 => format!("v{index}-{j}"),
                1 => format!("quote \" and \\ {j}"),
                2 => "ünïcødé ✓".to_owned(),
                _ => rng.gen_range(0..1_000_000u32).to_string(),
            };
            (format!("prop-{j}"), value)
        })
        .collect();
    let event_time = rng
        .gen_bool(0.5)
        .then(|| EVENT_TIME_BASE_MS + index as u64 * 1_000 + rng.gen_range(0..1_000));
    // Every ninth keyed message has a byte key (not UTF-8), every fifth an ordering key; drawn
    // after everything else so the other fields are what they were before these existed.
    let key_base64 = key.is_some() && index % 9 == 4;
    let key = if key_base64 {
        let bytes = [&[0xff, 0x00][..], &(index as u32).to_be_bytes()].concat();
        Some(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        key
    };
    let ordering_key = (index % 5 == 3).then(|| {
        let mut k = vec![0x00, 0xfe];
        k.extend_from_slice(&rng.gen::<[u8; 4]>());
        k
    });
    SampleMessage {
        payload,
        key,
        key_base64,
        ordering_key,
        properties,
        event_time,
    }
}

fn text_payload(index: usize, rng: &mut StdRng) -> String {
    match rng.gen_range(0..6) {
        0 => format!("message {index}"),
        1 => format!(
            r#"{{"index":{index},"name":"item \"{index}\"","tags":["a","b"],"nested":{{"ok":true,"n":null}}}}"#
        ),
        2 => format!("line one of {index}\nline two\r\n\ttabbed line\n"),
        3 => format!("héllo wörld — 你好 🚀 Ωmega #{index}"),
        4 => {
            let len = rng.gen_range(200..4_000);
            let mut body = format!("long {index}: ");
            while body.len() < len {
                body.push_str("lorem ipsum dolor sit amet, consectetur adipiscing elit. ");
            }
            body
        }
        _ => format!("escapes {index}: back\\slash \u{0007}bell \u{0000}nul \"dq\" 'sq' </tag>"),
    }
}

fn binary_payload(index: usize, rng: &mut StdRng) -> Vec<u8> {
    // 0xff can never occur in UTF-8, so this payload is always non-UTF-8.
    let mut payload = vec![0xff, 0xfe, 0x00];
    payload.extend_from_slice(&(index as u64).to_be_bytes());
    let extra = rng.gen_range(0..200);
    payload.extend((0..extra).map(|_| rng.gen::<u8>()));
    payload
}

/// Retry options that ride out a broker restart of a few seconds (the defaults give up after
/// 12 retries and back off up to 30 s): docs/dependencies.md §6.
pub fn retry_options() -> ConnectionRetryOptions {
    ConnectionRetryOptions {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        max_retries: 60,
        connection_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(5),
        ..Default::default()
    }
}

/// A pulsar-rs client for `url` with [`retry_options`].
pub async fn client(url: &str) -> anyhow::Result<Pulsar<TokioExecutor>> {
    Pulsar::builder(url, TokioExecutor)
        .with_connection_retry_options(retry_options())
        .build()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Produces `messages` to `topic` in order and waits until the broker confirmed every one.
pub async fn produce(
    url: &str,
    topic: &str,
    messages: &[SampleMessage],
    batching: bool,
) -> anyhow::Result<()> {
    produce_with(url, topic, messages, batching, None).await
}

/// Like [`produce`], each entry compressed with zlib (the relay's fault mode damages only
/// compressed entries, whose damage the client is sure to notice).
pub async fn produce_zlib(
    url: &str,
    topic: &str,
    messages: &[SampleMessage],
    batching: bool,
) -> anyhow::Result<()> {
    let zlib =
        pulsar::compression::Compression::Zlib(pulsar::compression::CompressionZlib::default());
    produce_with(url, topic, messages, batching, Some(zlib)).await
}

async fn produce_with(
    url: &str,
    topic: &str,
    messages: &[SampleMessage],
    batching: bool,
    compression: Option<pulsar::compression::Compression>,
) -> anyhow::Result<()> {
    let pulsar = client(url).await?;
    let options = ProducerOptions {
        compression,
        // send_non_blocking fails with SlowDown once ~100 sends are queued unless this is set
        // (docs/dependencies.md §4).
        block_queue_if_full: true,
        batch_size: batching.then_some(500),
        batch_byte_size: batching.then_some(1024 * 1024),
        batch_timeout: batching.then_some(Duration::from_millis(10)),
        ..Default::default()
    };
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_name(PRODUCER_NAME)
        .with_options(options)
        .build()
        .await
        .with_context(|| format!("creating a producer on {topic}"))?;

    let mut in_flight = VecDeque::with_capacity(SEND_WINDOW);
    for (i, message) in messages.iter().enumerate() {
        if in_flight.len() >= SEND_WINDOW {
            if let Some((j, receipt)) = in_flight.pop_front() {
                await_receipt(j, receipt, topic).await?;
            }
        }
        let receipt = producer
            .send_non_blocking(message.to_pulsar())
            .await
            .with_context(|| format!("sending message {i} to {topic}"))?;
        in_flight.push_back((i, receipt));
    }
    if batching {
        producer
            .send_batch()
            .await
            .with_context(|| format!("flushing the last batch to {topic}"))?;
    }
    while let Some((j, receipt)) = in_flight.pop_front() {
        await_receipt(j, receipt, topic).await?;
    }
    // Close so the broker forgets the producer name before the next produce() on this topic; a
    // hung close must not fail a run whose messages are all confirmed.
    let _ = tokio::time::timeout(Duration::from_secs(5), producer.close()).await;
    Ok(())
}

async fn await_receipt(
    index: usize,
    receipt: pulsar::producer::SendFuture,
    topic: &str,
) -> anyhow::Result<()> {
    receipt
        .await
        .with_context(|| format!("message {index} to {topic} was not confirmed"))?;
    Ok(())
}
