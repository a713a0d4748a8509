//! Checks that a subscription has nothing left to deliver (guarantee 1's other half: once the
//! backup says it acked, the broker must agree).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, SubType, TokioExecutor};

use crate::producer::client;

/// Attaches to `subscription` on `topic` and counts the messages delivered within `wait`
/// (callers assert the count is 0). Nothing is acked, so the subscription is left as found.
///
/// Failover is used so this works whether the backup's consumer used Exclusive or Failover — and
/// the backup's consumer must be stopped first, or the broker routes messages to it instead.
pub async fn assert_subscription_drained(
    url: &str,
    topic: &str,
    subscription: &str,
    wait: Duration,
) -> anyhow::Result<usize> {
    let mut consumer = attach(
        url,
        topic,
        subscription,
        "drain-check",
        InitialPosition::Earliest,
    )
    .await?;

    let deadline = tokio::time::Instant::now() + wait;
    let mut count = 0;
    loop {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_elapsed) => break,
            Ok(None) => break,
            Ok(Some(Ok(_message))) => count += 1,
            Ok(Some(Err(error))) => {
                return Err(error).with_context(|| format!("receiving from {topic}"));
            }
        }
    }
    // Dropped, not closed: close() can hang while messages sit unacked in the receive queue
    // (docs/dependencies.md §5). The broker redelivers them to the next consumer.
    drop(consumer);
    Ok(count)
}

/// How many messages `subscription` on `topic` still holds for its next consumer, told apart
/// from a subscription that no longer exists: attaches at `latest` (which only applies when the
/// subscription has to be created), produces one marker message and counts what is delivered
/// before the marker. A kept subscription delivers its backlog first; a removed one is created
/// anew at the end of the topic and delivers the marker alone (0). Waits for the marker, not for
/// a time.
pub async fn backlog_before_marker(
    url: &str,
    topic: &str,
    subscription: &str,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let mut consumer = attach(
        url,
        topic,
        subscription,
        "backlog-check",
        InitialPosition::Latest,
    )
    .await?;
    let marker = format!("backlog-marker-{}", rand::random::<u64>()).into_bytes();
    let message = crate::producer::SampleMessage {
        payload: marker.clone(),
        key: None,
        properties: Default::default(),
        event_time: None,
        ..Default::default()
    };
    crate::producer::produce(url, topic, &[message], false).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut before = 0;
    loop {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_elapsed) => anyhow::bail!(
                "the marker sent to {topic} did not arrive within {timeout:?} ({before} other messages did)"
            ),
            Ok(None) => anyhow::bail!("the consumer of {topic} ended before the marker arrived"),
            Ok(Some(Ok(msg))) if msg.payload.data == marker => break,
            Ok(Some(Ok(_))) => before += 1,
            Ok(Some(Err(error))) => {
                return Err(error).with_context(|| format!("receiving from {topic}"));
            }
        }
    }
    drop(consumer);
    Ok(before)
}

/// A Failover consumer on `subscription`, as the checks above attach; `initial` applies only when
/// the subscription has to be created.
async fn attach(
    url: &str,
    topic: &str,
    subscription: &str,
    name: &str,
    initial: InitialPosition,
) -> anyhow::Result<Consumer<Vec<u8>, TokioExecutor>> {
    let pulsar = client(url).await?;
    pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription(subscription)
        .with_subscription_type(SubType::Failover)
        .with_consumer_name(name)
        .with_options(ConsumerOptions::default().with_initial_position(initial))
        .build()
        .await
        .with_context(|| format!("subscribing to {topic} as {subscription}"))
}
