//! The whole path against real services: produce → ingester → spool → segment → uploader → S3 →
//! commit → ack. Guarantees 1–3 and the record format of docs/reference.md.

use std::time::Duration;

use harness::{
    assert_subscription_drained, check_exactly_once, produce, read_all, sample_messages,
};

use crate::util::{eventually, messages_left, unique_topic, Stack, BUCKET};

const MAX_MESSAGES: u64 = 1000;
const MAX_BYTES: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_lands_in_exactly_one_object_then_is_acknowledged() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("orders");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(12_000, 7);
    let (before, after) = messages.split_at(6_000);

    // Half the topic exists before the rule (start = earliest), half arrives while it runs.
    produce(&stack.pulsar.url(), &full_topic, before, true).await?;
    let token_file = stack.path("pulsar-token");
    std::fs::write(&token_file, "tok-very-secret-123\n")?;
    let token_file = token_file.to_string_lossy().into_owned();
    let rule = stack.create_rule(
        "orders-bk",
        &topic,
        &[
            "--prefix",
            "e2e/",
            "--window",
            "1h",
            "--max-messages",
            "1000",
            "--max-bytes",
            "300KB",
            "--cluster",
            "cluster-a",
            "--token-file",
            &token_file,
        ],
    )?;
    assert_eq!(rule["name"], "orders-bk");
    assert_eq!(rule["topic"], full_topic.as_str());
    assert_eq!(rule["has_token"], true);
    produce(&stack.pulsar.url(), &full_topic, after, true).await?;

    let status = stack
        .wait_until_backed_up("orders-bk", messages.len() as u64, Duration::from_secs(180))
        .await?;
    assert_eq!(status["state"], "running", "{status}");

    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    let report = check_exactly_once(&objects, &messages)?;
    println!("backup report: {report:?}");
    assert_eq!(report.records, messages.len());
    assert!(
        report.max_records_per_object as u64 <= MAX_MESSAGES,
        "{report:?}"
    );
    assert!(
        report.max_record_bytes_per_object <= MAX_BYTES,
        "{report:?}"
    );
    assert!(
        report.objects >= 12,
        "12,000 messages at 1,000 per object: {report:?}"
    );

    let key_prefix = format!("e2e/public/default/{topic}/");
    for object in &objects {
        assert!(object.key.starts_with(&key_prefix), "{}", object.key);
        assert!(object.key.ends_with(".jsonl.gz"), "{}", object.key);
        let name = object.key.rsplit('/').next().unwrap_or_default();
        assert!(name.starts_with("orders-bk-"), "{}", object.key);
        assert!(
            !object.records.is_empty(),
            "never an empty object: {}",
            object.key
        );
        let md = &object.metadata;
        assert_eq!(
            md.get("rule").map(String::as_str),
            Some("orders-bk"),
            "{md:?}"
        );
        assert_eq!(
            md.get("cluster").map(String::as_str),
            Some("cluster-a"),
            "{md:?}"
        );
        assert_eq!(
            md.get("message-count"),
            Some(&object.records.len().to_string()),
            "{md:?}"
        );
        assert_eq!(
            md.get("first-message-id").map(String::as_str),
            object.records[0]["message_id"].as_str()
        );
        let last = object
            .records
            .last()
            .map(|r| r["message_id"].clone())
            .unwrap_or_default();
        assert_eq!(md.get("last-message-id").map(String::as_str), last.as_str());
        assert_eq!(
            md.get("content-crc32c"),
            Some(&object.content_crc32c),
            "the metadata checksum is the stored content's: {}",
            object.key
        );
        // The JSON lines are made at seal from the compact spool log; their size, which
        // max_bytes caps, is predicted per message and must be the object's real one.
        assert_eq!(
            md.get("record-bytes"),
            Some(&object.record_bytes.to_string()),
            "{}",
            object.key
        );
        for record in &object.records {
            assert_eq!(record["topic"], full_topic.as_str());
            assert_eq!(record["producer_name"], "sample-producer");
            let publish = record["publish_time"].as_str().unwrap_or_default();
            assert!(publish.ends_with('Z') && publish.len() == 24, "{publish}");
        }
    }
    // Uploader and ingester share this host, so the uploader read the sealed files from disk
    // (read_local's default) rather than over ReadSegment.
    let uploader_log = stack.uploader.as_ref().map(|d| d.log()).unwrap_or_default();
    let sources = harness::stored_segment_sources(&uploader_log);
    assert!(
        sources.len() >= objects.len() && sources.iter().all(|s| s == "local_file"),
        "{sources:?}\n{uploader_log}"
    );
    let ingester_log = stack.ingester.as_ref().map(|d| d.log()).unwrap_or_default();
    assert!(
        !uploader_log.contains('\x1b') && !ingester_log.contains('\x1b'),
        "no colour codes in logs written to a file"
    );
    assert!(
        !ingester_log.contains("record bytes differ from the prediction"),
        "every record's JSON length was predicted exactly (keys, properties, event times, \
         non-UTF-8 payloads):\n{ingester_log}"
    );

    // The CLI sees the same history.
    let logs = stack.ctl_json(&["logs", "orders-bk", "--limit", "500"])?;
    let stored = logs["entries"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == "stored").count())
        .unwrap_or(0);
    assert_eq!(
        stored,
        objects.len(),
        "one `stored` log line per object: {logs}"
    );
    let segments = stack.ctl_json(&["segments", "orders-bk"])?;
    assert_eq!(
        segments["segments"].as_array().map(Vec::len),
        Some(0),
        "{segments}"
    );

    // The Pulsar token never leaves the ingester.
    let shown = stack.ctl_json(&["rule", "show", "orders-bk"])?.to_string();
    let status = stack.ctl_json(&["status"])?.to_string();
    for text in [
        shown,
        status,
        logs.to_string(),
        stack.log_tail("ingester.log"),
        stack.log_tail("uploader.log"),
    ] {
        assert!(
            !text.contains("tok-very-secret-123"),
            "token leaked: {text}"
        );
    }

    // Nothing is left to deliver on the subscription once the backup's consumer is gone.
    let mut stack = stack;
    if let Some(mut ingester) = stack.ingester.take() {
        ingester.kill9()?;
    }
    let left = messages_left(&stack, &full_topic).await?;
    assert_eq!(left, 0, "messages still unacknowledged on the subscription");
    Ok(())
}

/// Guarantee 1 from the other side: with no uploader, segments are sealed but never stored, so
/// nothing may be acknowledged — the subscription still holds every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_until_the_object_is_stored() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("held");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(800, 3);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    stack.create_rule("held", &topic, &["--max-messages", "200"])?;

    eventually(
        "all messages spooled and sealed",
        Duration::from_secs(60),
        || {
            // Flushed only once everything is spooled: a flush while messages still arrive
            // would seal a short segment and make five.
            let s = stack.rule_status("held")?;
            if s["spooled_messages"].as_u64() != Some(800) {
                return Ok(None);
            }
            if s["open_segment_messages"].as_u64() != Some(0) {
                let _ = stack.ctl(&["rule", "flush", "held"]);
                return Ok(None);
            }
            Ok(Some(()))
        },
    )
    .await?;
    let segments = stack.ctl_json(&["segments", "held"])?;
    let states: Vec<String> = segments["segments"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["state"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(states.len(), 4, "{segments}");
    assert!(
        states.iter().all(|s| s == "sealed" || s == "sealing"),
        "{states:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.rule_status("held")?["messages_acked"], 0);

    if let Some(mut ingester) = stack.ingester.take() {
        ingester.kill9()?;
    }
    let redelivered = assert_subscription_drained(
        &stack.pulsar.url(),
        &full_topic,
        "tdmq-backup",
        Duration::from_secs(5),
    )
    .await?;
    assert!(redelivered >= messages.len(), "only {redelivered} of {} messages still on the subscription: some were acknowledged before being stored", messages.len());

    // And once an uploader runs, the spool (kept across the kill) goes up and is acknowledged.
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    stack
        .wait_until_backed_up("held", 800, Duration::from_secs(90))
        .await?;
    let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, 800);
    Ok(())
}

/// Bad input is refused whole, naming the field, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rule_is_refused_naming_the_field() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let url = stack.pulsar.url();
    let out = stack.ctl(&[
        "rule",
        "create",
        "bad-prefix",
        "--service-url",
        &url,
        "--topic",
        "t",
        "--subscription",
        "s",
        "--bucket",
        "bucket-1",
        "--region",
        "ap-guangzhou",
        "--prefix",
        "logs",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), r#"error: prefix "logs" must end with "/""#);
    let out = stack.ctl(&[
        "rule",
        "create",
        "bad-region",
        "--service-url",
        &url,
        "--topic",
        "t",
        "--subscription",
        "s",
        "--bucket",
        "bucket-1",
        "--region",
        "mars-1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("region"),
        "{out:?}"
    );
    let rules = stack.ctl_json(&["rule", "list"])?;
    assert_eq!(rules["rules"].as_array().map(Vec::len), Some(0), "{rules}");

    // An unreachable daemon is named in a one-line error.
    let out = std::process::Command::new(harness::bin_path("tdmq-backup"))
        .args(["--ingester", "http://127.0.0.1:9", "rule", "list"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ingester") && stderr.contains("127.0.0.1:9"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    Ok(())
}

/// Large messages: the consumer lowers its flow-control permits to stay near
/// `receiver_queue_bytes` (memory bounded whatever the message size), says so in the rule's
/// history, and the reconnect that costs loses and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_shrink_the_receive_window_and_lose_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.ingester_extra = crate::util::Extra {
        args: vec!["--receiver-queue-bytes".into(), "500KB".into()],
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let topic = unique_topic("large");
    let full_topic = format!("persistent://public/default/{topic}");
    let mut messages = sample_messages(40, 23);
    for m in &mut messages {
        // ASCII padding keeps text payloads text and binary ones binary.
        m.payload.resize(m.payload.len() + 100_000, b'p');
    }
    produce(&stack.pulsar.url(), &full_topic, &messages, false).await?;
    stack.create_rule("large", &topic, &["--max-bytes", "1MB", "--window", "1h"])?;
    let objects = stack
        .wait_until_stored("large", &messages, Duration::from_secs(120))
        .await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, messages.len());

    let history = stack
        .ctl_json(&["logs", "large", "--limit", "1000"])?
        .to_string();
    let window: u32 = history
        .split("receive window 1000 → ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no receive window resize in the history: {history}"))?;
    // 500 KB over records of 100–140 KB each.
    assert!((3..=5).contains(&window), "window {window}: {history}");
    if let Some(mut ingester) = stack.ingester.take() {
        ingester.kill9()?;
    }
    let left = messages_left(&stack, &full_topic).await?;
    assert_eq!(left, 0, "messages left unacknowledged on the subscription");
    Ok(())
}
