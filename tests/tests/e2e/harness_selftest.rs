//! Proves the harness itself: pulsar-lite + relay deliver everything intact to pulsar-rs (also
//! across a broker kill and restart), the drain check sees acked subscriptions as empty, and the
//! in-process S3 server plus oracle read back what was stored.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use futures::StreamExt;
use harness::oracle::format_time_ms;
use harness::{
    assert_subscription_drained, check_exactly_once, produce, read_all, read_dir_store,
    sample_messages, PulsarLite, S3Server, SampleMessage,
};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, SubType, TokioExecutor};

fn unique_topic(name: &str) -> String {
    format!(
        "persistent://public/default/{name}-{}",
        rand::random::<u32>()
    )
}

/// Consumes from `topic` until every expected payload was seen (or `timeout`), acking each
/// message, and checks key, properties and event time of each. Returns the number of deliveries
/// (duplicates included: pulsar-lite delivers some, docs/dependencies.md §3).
async fn consume_all(
    url: &str,
    topic: &str,
    subscription: &str,
    expected: &[SampleMessage],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let by_payload: HashMap<&[u8], usize> = expected
        .iter()
        .enumerate()
        .map(|(i, m)| (m.payload.as_slice(), i))
        .collect();
    let pulsar = harness::producer::client(url).await?;
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription(subscription)
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .context("subscribing")?;

    let mut seen = vec![false; expected.len()];
    let mut num_seen = 0;
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while num_seen < expected.len() {
        let message = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Err(_) => anyhow::bail!(
                "timed out with {num_seen}/{} unique messages ({deliveries} deliveries)",
                expected.len()
            ),
            Ok(None) => anyhow::bail!("consumer stream ended at {num_seen}/{}", expected.len()),
            Ok(Some(message)) => message.context("receiving")?,
        };
        deliveries += 1;
        let index = *by_payload
            .get(message.payload.data.as_slice())
            .with_context(|| format!("unexpected payload {:?}", message.payload.data))?;
        let want = &expected[index];
        let metadata = message.metadata();
        anyhow::ensure!(message.key() == want.key, "key of #{index}");
        let properties: std::collections::BTreeMap<String, String> = metadata
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        anyhow::ensure!(properties == want.properties, "properties of #{index}");
        let event_time = metadata.event_time.filter(|&t| t != 0);
        anyhow::ensure!(event_time == want.event_time, "event time of #{index}");
        if !seen[index] {
            seen[index] = true;
            num_seen += 1;
        }
        consumer.ack(&message).await.context("acking")?;
    }
    // Let the acks reach the broker before the connection goes away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), consumer.close()).await;
    drop(consumer);
    drop(pulsar);
    Ok(deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_lite_relay_delivers_batched_messages_intact_and_drains() -> anyhow::Result<()> {
    let broker = PulsarLite::start().await?;
    let topic = unique_topic("selftest-batched");
    let messages = sample_messages(2_000, 7);
    assert!(messages
        .iter()
        .any(|m| std::str::from_utf8(&m.payload).is_err()));

    produce(&broker.url(), &topic, &messages, true).await?;
    let deliveries = consume_all(
        &broker.url(),
        &topic,
        "selftest-sub",
        &messages,
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("broker log:\n{}", broker.log_tail(4096)))?;
    eprintln!("2000 unique messages in {deliveries} deliveries");

    let left = assert_subscription_drained(
        &broker.url(),
        &topic,
        "selftest-sub",
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(left, 0, "acked subscription still delivers messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_batched_messages_and_a_fresh_subscription_sees_everything() -> anyhow::Result<()> {
    let broker = PulsarLite::start().await?;
    let topic = unique_topic("selftest-plain");
    let messages = sample_messages(300, 11);
    produce(&broker.url(), &topic, &messages, false).await?;
    consume_all(
        &broker.url(),
        &topic,
        "sub-a",
        &messages,
        Duration::from_secs(30),
    )
    .await?;
    // A subscription that never acked sees the whole topic.
    let pending =
        assert_subscription_drained(&broker.url(), &topic, "sub-b", Duration::from_secs(2)).await?;
    assert!(pending >= messages.len(), "sub-b saw only {pending}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill_and_restart_keeps_data_and_the_relay_reconnects() -> anyhow::Result<()> {
    let mut broker = PulsarLite::start().await?;
    let url = broker.url();
    let addr = broker.broker_addr();
    let topic = unique_topic("selftest-restart");
    let messages = sample_messages(1_000, 3);

    produce(&url, &topic, &messages[..500], true).await?;
    broker.kill();
    assert!(!broker.is_running());
    broker.restart().await?;
    assert!(broker.is_running());
    assert_eq!(broker.broker_addr(), addr);
    assert_eq!(
        broker.url(),
        url,
        "the relay keeps its port across broker restarts"
    );
    produce(&url, &topic, &messages[500..], true).await?;

    consume_all(
        &url,
        &topic,
        "after-restart",
        &messages,
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("broker log:\n{}", broker.log_tail(4096)))?;
    Ok(())
}

fn record_line(id: &str, m: &SampleMessage) -> String {
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&m.payload),
            "base64",
        ),
    };
    let mut record = serde_json::json!({
        "message_id": id,
        "topic": "persistent://public/default/t",
        "publish_time": "2026-01-01T00:00:00.000Z",
        "event_time": m.event_time.and_then(format_time_ms),
        "key": m.key,
        "properties": m.properties,
        "producer_name": "sample-producer",
        "sequence_id": 0,
        "payload": payload,
        "payload_encoding": encoding,
    });
    // The record's extensions, as the ingester writes them (present only when the message has them).
    if m.key_base64 {
        record["key_encoding"] = serde_json::json!("base64");
    }
    if let Some(k) = &m.ordering_key {
        record["ordering_key"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(k));
    }
    format!("{record}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_stores_gzipped_jsonl_and_the_oracle_reads_it() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    s3.create_bucket("backup-selftest").await?;
    let messages = sample_messages(40, 5);
    let text: String = messages
        .iter()
        .enumerate()
        .map(|(i, m)| record_line(&format!("9:{i}:-1:-1"), m))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())?;
    let body = gz.finish()?;
    let key = "backups/public/default/t/2026/01/01/00/seg-1.jsonl.gz";
    s3.client()
        .put_object()
        .bucket("backup-selftest")
        .key(key)
        .metadata("message-count", "40")
        .body(body.clone().into())
        .send()
        .await?;

    let objects = read_all(&s3.client(), "backup-selftest", "backups/").await?;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].key, key);
    assert_eq!(objects[0].content_length, body.len() as u64);
    assert_eq!(
        objects[0].metadata.get("message-count").map(String::as_str),
        Some("40")
    );
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, 40);
    assert_eq!(report.max_record_bytes_per_object, text.len() as u64);

    // The data dir doubles as a file:// store layout: bucket/key.
    let from_dir = read_dir_store(s3.data_dir(), "backup-selftest")?;
    assert_eq!(from_dir.len(), 1);
    assert_eq!(from_dir[0].records, objects[0].records);

    // A store outage: requests fail while stopped and work again, with the data, after restart.
    s3.stop().await;
    assert!(!s3.is_running());
    let down = s3
        .client()
        .list_objects_v2()
        .bucket("backup-selftest")
        .send()
        .await;
    assert!(down.is_err(), "requests must fail while the store is down");
    s3.restart().await?;
    let objects = read_all(&s3.client(), "backup-selftest", "").await?;
    assert_eq!(objects.len(), 1);

    // SigV4 is checked: a wrong secret is refused.
    let wrong = harness::s3::client_for(&s3.endpoint(), s3.access_key(), "wrong-secret");
    assert!(wrong
        .list_objects_v2()
        .bucket("backup-selftest")
        .send()
        .await
        .is_err());
    Ok(())
}

/// Every message is still had after the broker is killed and restarted mid-stream. pulsar-rs
/// usually reconnects by itself; under load its consumer sometimes gives up instead ("connection
/// error, not retryable") and its stream ends. Then a new consumer is subscribed, as the ingester
/// does; either way nothing may be missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_a_broker_kill_mid_stream() -> anyhow::Result<()> {
    harness::init_test_tracing();
    let mut broker = PulsarLite::start().await?;
    let url = broker.url();
    let topic = unique_topic("selftest-midstream");
    let messages = sample_messages(3_000, 13);
    produce(&url, &topic, &messages, true).await?;
    let by_payload: HashMap<&[u8], usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.payload.as_slice(), i))
        .collect();

    let subscribe = || async {
        let pulsar = harness::producer::client(&url).await?;
        let consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
            .consumer()
            .with_topic(&topic)
            .with_subscription("midstream")
            .with_subscription_type(SubType::Exclusive)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build()
            .await?;
        anyhow::Ok(consumer)
    };
    let mut consumer = subscribe().await?;
    let mut seen = vec![false; messages.len()];
    let mut num_seen = 0;
    let mut deliveries = 0;
    let mut killed = false;
    let mut ack_failures = 0;
    let mut resubscribed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while num_seen < messages.len() {
        let next = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .with_context(|| format!("timed out at {num_seen} unique"))?;
        let message = match next {
            Some(Ok(message)) => message,
            ended => {
                anyhow::ensure!(killed, "the stream ended before the kill: {ended:?}");
                resubscribed += 1;
                anyhow::ensure!(resubscribed <= 5, "the stream keeps ending: {ended:?}");
                drop(consumer);
                consumer = subscribe().await?;
                continue;
            }
        };
        deliveries += 1;
        let index = *by_payload
            .get(message.payload.data.as_slice())
            .context("unexpected payload")?;
        if !seen[index] {
            seen[index] = true;
            num_seen += 1;
        }
        if let Err(err) = consumer.ack(&message).await {
            // Around the kill the crate may be swapping its engine for a new connection: the
            // ack is lost and the broker redelivers the message, which `seen` absorbs.
            anyhow::ensure!(killed, "ack failed before the broker was killed: {err}");
            ack_failures += 1;
        }
        if num_seen == 1_000 && !killed {
            killed = true;
            broker.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            broker.restart().await?;
        }
    }
    eprintln!(
        "mid-stream kill: 3000 unique in {deliveries} deliveries ({ack_failures} acks lost, {resubscribed} new consumers)"
    );
    assert!(killed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_binary_serves_clients_and_stops_on_sigterm() -> anyhow::Result<()> {
    let broker = PulsarLite::start().await?;
    let log = broker.dir().join("relay-bin.log");
    let mut relay = harness::Daemon::spawn(
        "tdmq-backup-relay",
        &[
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--broker".to_owned(),
            broker.broker_addr().to_string(),
        ],
        &[("RUST_LOG".to_owned(), "info,pulsar=error".to_owned())],
        log,
    )?;
    // On port 0: it says where it listens ("relay running url=pulsar://ADDR").
    let url = relay
        .wait_for_log(
            "its URL (relay running url=)",
            Duration::from_secs(10),
            |log| harness::daemon_log::field_of(log, "relay running", "url"),
        )
        .await?;
    let topic = unique_topic("selftest-relay-bin");
    let messages = sample_messages(100, 17);
    produce(&url, &topic, &messages, false).await?;
    consume_all(&url, &topic, "bin", &messages, Duration::from_secs(30)).await?;

    relay.terminate()?;
    let status = relay
        .wait_timeout_async(Duration::from_secs(10))
        .await?
        .with_context(|| format!("relay ignored SIGTERM; log:\n{}", relay.log()))?;
    assert!(
        status.success(),
        "relay exited with {status}; log:\n{}",
        relay.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_closes_clients_when_the_broker_dies_and_redials_after_restart() -> anyhow::Result<()>
{
    use tokio::io::AsyncReadExt as _;
    let mut broker = PulsarLite::start().await?;
    let mut client = tokio::net::TcpStream::connect(broker.relay_addr()).await?;
    // Give the relay time to dial the broker for this connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.kill();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .context("the relay kept the client connection open after the broker died")?
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {n} bytes");

    broker.restart().await?;
    let topic = unique_topic("selftest-redial");
    let messages = sample_messages(20, 19);
    produce(&broker.url(), &topic, &messages, false).await?;
    consume_all(
        &broker.url(),
        &topic,
        "redial",
        &messages,
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_cross_the_relay() -> anyhow::Result<()> {
    let broker = PulsarLite::start().await?;
    let topic = unique_topic("selftest-large");
    // Just under pulsar-lite's default max_message_size_bytes (5 MiB), so frames are ~4 MiB.
    let messages: Vec<SampleMessage> = (0..4u8)
        .map(|i| {
            let mut payload = vec![b'a' + i; 4 * 1024 * 1024];
            payload[..8].copy_from_slice(format!("large-{i}:").as_bytes());
            SampleMessage {
                payload,
                key: Some(format!("big-{i}")),
                properties: Default::default(),
                event_time: None,
                ..Default::default()
            }
        })
        .collect();
    produce(&broker.url(), &topic, &messages, false).await?;
    consume_all(
        &broker.url(),
        &topic,
        "large",
        &messages,
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("broker log:\n{}", broker.log_tail(4096)))?;
    Ok(())
}
