//! The baseline: raw consume + cumulative-ack throughput of pulsar-rs on a preloaded topic,
//! which the end-to-end runs are compared with.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, SubType, TokioExecutor};

use crate::messages::{preload, size_label, topic_name};
use crate::process::CpuSnapshot;
use crate::stack::Bench;
use crate::table::Row;

impl Bench {
    /// Raw consume + cumulative-ack throughput of pulsar-rs on a preloaded topic.
    pub async fn baseline(&self, size: usize, count: usize) -> anyhow::Result<Row> {
        let stack = self.stack(&format!("baseline-{size}")).await?;
        let topic = topic_name("baseline");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, size).await?;
        let cpu_before = CpuSnapshot::take(&stack);
        let (seconds, deliveries) = consume_all(&stack.pulsar.url(), &topic, count).await?;
        let cpu = CpuSnapshot::take(&stack);
        Ok(Row {
            scenario: format!("baseline {}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds,
            notes: format!(
                "pulsar-rs Exclusive, cumulative ack /1000; {deliveries} deliveries; CPU s: broker {:.1}, bench (relay + consumer) {:.1}; preload {produce_s:.1} s",
                cpu.broker - cpu_before.broker,
                cpu.bench - cpu_before.bench,
            ),
            ..Default::default()
        })
    }
}

/// Drains `count` unique messages with a pulsar-rs consumer like the ingester's (Exclusive,
/// Earliest, receive queue 1000), acknowledging cumulatively every 1000 messages. Returns the
/// seconds from subscribing to the last unique message acknowledged, and the deliveries seen
/// (pulsar-lite redelivers some).
pub async fn consume_all(url: &str, topic: &str, count: usize) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let pulsar = harness::producer::client(url).await?;
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("baseline")
        .with_subscription_type(SubType::Exclusive)
        .with_consumer_name("bench-baseline")
        .with_batch_size(1000)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .context("subscribing the baseline consumer")?;
    let mut seen: HashSet<(u64, u64, i32)> = HashSet::with_capacity(count);
    let mut deliveries = 0u64;
    let mut since_ack = 0;
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .with_context(|| format!("no message for 30 s after {} of {count}", seen.len()))?
            .context("the consumer stream ended")?
            .context("receiving")?;
        deliveries += 1;
        let id = message.message_id();
        seen.insert((id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1)));
        since_ack += 1;
        if since_ack >= 1000 || seen.len() >= count {
            consumer.cumulative_ack(&message).await?;
            since_ack = 0;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(consumer);
    Ok((seconds, deliveries))
}
