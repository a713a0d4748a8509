//! `restore`: a rule's backup put back into another topic through the real daemons and CLI,
//! checked by consuming the target topic with a client: payload bytes, key (text and bytes),
//! ordering key, properties, event time and order, plus the original id and publish time as
//! properties, the producer name and the sequence ids (pulsar-lite has no deduplication, so
//! idempotence shows as what a deduplicating broker would key on).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use harness::{produce, sample_messages, SampleMessage};
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::{Consumer, SubType, TokioExecutor};
use serde_json::Value;

use crate::util::{unique_topic, Stack};

const MESSAGE_ID: &str = "tdmq-backup.message-id";
const PUBLISH_TIME: &str = "tdmq-backup.publish-time";

/// One message as the target topic holds it.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    producer_name: String,
    sequence_id: u64,
    /// Messages in the entry this one came in.
    in_batch: i32,
    payload: Vec<u8>,
    key: Option<String>,
    key_base64: bool,
    ordering_key: Option<Vec<u8>>,
    properties: BTreeMap<String, String>,
    event_time: Option<u64>,
}

/// Backs `messages` up under rule `rule` (objects of at most 500 messages) and waits until all
/// are stored.
async fn backed_up(stack: &Stack, rule: &str, messages: &[SampleMessage]) -> anyhow::Result<()> {
    backed_up_with(stack, rule, messages, &[]).await.map(|_| ())
}

/// [`backed_up`] with more `rule create` flags; returns the source topic's full name.
async fn backed_up_with(
    stack: &Stack,
    rule: &str,
    messages: &[SampleMessage],
    extra: &[&str],
) -> anyhow::Result<String> {
    let topic = unique_topic("src");
    let full = format!("persistent://public/default/{topic}");
    produce(&stack.pulsar.url(), &full, messages, true).await?;
    let mut flags = vec!["--window", "1h", "--max-messages", "500"];
    flags.extend(extra);
    stack.create_rule(rule, &topic, &flags)?;
    stack
        .wait_until_backed_up(rule, messages.len() as u64, Duration::from_secs(180))
        .await?;
    Ok(full)
}

/// Reads messages from `topic` until `count` arrived, then until none arrives for `quiet`.
pub(crate) async fn consume(
    stack: &Stack,
    topic: &str,
    count: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<Got>> {
    consume_from(&stack.pulsar.url(), topic, count, quiet).await
}

/// [`consume`] from the broker at `url` (another cluster than the stack's).
async fn consume_from(
    url: &str,
    topic: &str,
    count: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<Got>> {
    let pulsar = harness::producer::client(url).await?;
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription(format!("check-{}", rand::random::<u32>()))
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .context("subscribing to the target")?;
    let mut got = Vec::new();
    // pulsar-lite redelivers now and then (docs/dependencies.md §3): a message seen again under
    // its broker id is a redelivery to this consumer, not a message the restore produced twice.
    let mut seen = std::collections::HashSet::new();
    loop {
        let wait = if got.len() < count {
            Duration::from_secs(30)
        } else {
            quiet
        };
        let next = match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) if got.len() >= count => return Ok(got),
            Err(_) => bail!(
                "{} of {count} messages on {topic} after 30 s of nothing",
                got.len()
            ),
            Ok(next) => next.context("the consumer ended")??,
        };
        let id = next.message_id();
        if !seen.insert((id.ledger_id, id.entry_id, id.batch_index, id.partition)) {
            consumer.ack(&next).await?;
            continue;
        }
        let meta = next.metadata();
        got.push(Got {
            producer_name: meta.producer_name.clone(),
            sequence_id: sequence_id(meta, id.batch_index)?,
            in_batch: meta.num_messages_in_batch.unwrap_or(1),
            payload: next.payload.data.clone(),
            key: meta.partition_key.clone(),
            key_base64: meta.partition_key_b64_encoded.unwrap_or(false),
            ordering_key: meta.ordering_key.clone(),
            properties: meta
                .properties
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            event_time: meta.event_time,
        });
        consumer.ack(&next).await?;
    }
}

/// A message's own sequence id. pulsar-rs hands every message of a batch entry the entry's
/// metadata, whose sequence id is the batch's first (a Java client reports each message's own,
/// from its single-message metadata). The restore producer gives a batch's messages their
/// positions; where those are consecutive (one target topic, no time range, as in these tests)
/// the i-th message's is the first + i, and no more than the entry's `highest_sequence_id`.
fn sequence_id(
    meta: &pulsar::message::proto::MessageMetadata,
    batch_index: Option<i32>,
) -> anyhow::Result<u64> {
    let Some(n) = meta.num_messages_in_batch else {
        return Ok(meta.sequence_id);
    };
    let index = u64::try_from(batch_index.unwrap_or(0))?;
    let highest = meta
        .highest_sequence_id
        .context("a batch entry without highest_sequence_id")?;
    let id = meta.sequence_id + index;
    anyhow::ensure!(
        id <= highest && index < u64::try_from(n)?,
        "message {index} of a batch of {n} from {} to {highest}",
        meta.sequence_id
    );
    Ok(id)
}

/// Checks that `got[i]` is `sent[i]` as a restore must put it back.
pub(crate) fn assert_restored(sent: &[SampleMessage], got: &[Got], producer: &str) {
    assert_eq!(got.len(), sent.len());
    let mut last_id = None;
    for (i, (want, got)) in sent.iter().zip(got).enumerate() {
        assert_eq!(got.payload, want.payload, "message {i}: payload");
        assert_eq!(got.key, want.key, "message {i}: key");
        assert_eq!(got.key_base64, want.key_base64, "message {i}: byte key");
        assert_eq!(
            got.ordering_key, want.ordering_key,
            "message {i}: ordering key"
        );
        assert_eq!(got.event_time, want.event_time, "message {i}: event time");
        let mut props = got.properties.clone();
        let id = props
            .remove(MESSAGE_ID)
            .expect("the original id as a property");
        let published = props
            .remove(PUBLISH_TIME)
            .expect("the publish time as a property");
        assert!(
            chrono::DateTime::parse_from_rfc3339(&published).is_ok(),
            "{published}"
        );
        assert_eq!(props, want.properties, "message {i}: properties");
        assert_eq!(got.producer_name, producer, "message {i}");
        // Order kept: the original ids increase (one partition, one ledger here).
        let id: proto::types::MessageId = id.parse().expect("a message id");
        if let Some(last) = last_id {
            assert!(id.is_after(&last), "message {i}: {id} after {last}");
        }
        last_id = Some(id);
    }
}

pub(crate) async fn wait_for_state(
    stack: &Stack,
    job: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let show = stack.ctl_json_async(&["restore", "show", job]).await?;
        if show["state"] == state {
            return Ok(show);
        }
        if show["state"] == "failed" || tokio::time::Instant::now() > deadline {
            bail!(
                "job {job} is not {state}: {show}\n--- uploader:\n{}\n--- ingester:\n{}",
                stack.log_tail("uploader.log"),
                stack.log_tail("ingester.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restores all of rule `rule`'s backup into a new topic as job `job`, waits until it is done,
/// and checks the topic holds `sent`, every field and the order kept.
pub(crate) async fn restore_rule_and_check(
    stack: &Stack,
    job: &str,
    rule: &str,
    sent: &[SampleMessage],
) -> anyhow::Result<()> {
    let to = format!("persistent://public/default/{}", unique_topic(job));
    let url = target(stack);
    stack.ctl_json(&[
        "restore",
        "create",
        job,
        "--rule",
        rule,
        "--to-topic",
        &to,
        "--service-url",
        &url,
    ])?;
    let done = wait_for_state(stack, job, "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"], sent.len() as u64, "{done}");
    let got = consume(stack, &to, sent.len(), Duration::from_secs(2)).await?;
    assert_restored(sent, &got, &format!("restore-{job}--1"));
    Ok(())
}

pub(crate) fn target(stack: &Stack) -> String {
    format!("pulsar://{}", stack.pulsar.broker_addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_another_topic_keeps_every_field_and_the_order() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let sent = sample_messages(3_000, 17);
    assert!(sent.iter().any(|m| m.key_base64) && sent.iter().any(|m| m.ordering_key.is_some()));
    assert!(sent
        .iter()
        .any(|m| std::str::from_utf8(&m.payload).is_err()));
    backed_up(&stack, "orders-bk", &sent).await?;
    let to = format!("persistent://public/default/{}", unique_topic("restored"));
    let url = target(&stack);

    // A dry run plans and records nothing.
    let plan = stack.ctl_json(&[
        "restore",
        "create",
        "dry",
        "--rule",
        "orders-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--dry-run",
    ])?;
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["messages"], 3_000, "{plan}");
    assert!(
        plan["objects"].as_u64().unwrap_or(0) >= 6,
        "500 per object: {plan}"
    );
    assert_eq!(plan["target_partitions"], 0, "{plan}");
    assert_eq!(plan["partitions"][0]["target_partition"], -1, "{plan}");
    assert!(
        !plan["min_publish_time"].as_str().unwrap_or("").is_empty(),
        "{plan}"
    );
    assert_eq!(stack.ctl_json(&["restore", "list"])?, serde_json::json!([]));

    let token_file = stack.path("target-token");
    std::fs::write(&token_file, "target-secret-token-42\n")?;
    let created = stack.ctl_json(&[
        "restore",
        "create",
        "back",
        "--rule",
        "orders-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--token-file",
        &token_file.to_string_lossy(),
    ])?;
    assert_eq!(created["state"], "running", "{created}");
    let done = wait_for_state(&stack, "back", "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"], 3_000, "{done}");
    let got = consume(&stack, &to, 3_000, Duration::from_secs(2)).await?;
    assert_restored(&sent, &got, "restore-back--1");
    // The sequence ids are the positions in the plan: 0, 1, 2, ...
    let ids: Vec<u64> = got.iter().map(|g| g.sequence_id).collect();
    assert_eq!(ids, (0..3_000).collect::<Vec<u64>>());
    // ... sent as batch entries (one entry per message was the slow way).
    let batched = got.iter().filter(|g| g.in_batch > 1).count();
    assert!(batched >= 2_900, "{batched} of 3,000 in batches");

    // Done: the ingester forgot the target and its token.
    crate::util::eventually("the target dropped", Duration::from_secs(20), || {
        Ok(stack
            .log_tail("ingester.log")
            .contains("restore target and token dropped job=back")
            .then_some(()))
    })
    .await?;
    // The token is in no reply and no log.
    let listed = stack.ctl(&["-o", "json", "restore", "list"]);
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(shown.contains("\"done\""), "{shown}");
    for text in [
        shown.to_string(),
        stack.log_tail("ingester.log"),
        stack.log_tail("uploader.log"),
    ] {
        assert!(!text.contains("target-secret-token-42"));
    }
    // A finished job cannot be paused.
    let out = stack.ctl(&["restore", "pause", "back"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("done"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_survives_kill9_of_both_daemons_and_duplicates_at_most_a_batch(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let sent = sample_messages(3_000, 23);
    backed_up(&stack, "crash-bk", &sent).await?;
    let to = format!("persistent://public/default/{}", unique_topic("restored"));
    let url = target(&stack);
    // Slow enough to be killed in the middle.
    stack.ctl_json(&[
        "restore",
        "create",
        "crashy",
        "--rule",
        "crash-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--rate",
        "600/s",
    ])?;
    for _ in 0..2 {
        let before = stack.ctl_json_async(&["restore", "show", "crashy"]).await?["produced"]
            .as_u64()
            .unwrap_or(0);
        crate::util::eventually("the job to move on", Duration::from_secs(30), || {
            let show = stack.ctl_json(&["restore", "show", "crashy"])?;
            Ok((show["produced"].as_u64().unwrap_or(0) >= before + 500).then_some(()))
        })
        .await?;
        stack.ingester.as_mut().context("ingester")?.kill9()?;
        stack.uploader.as_mut().context("uploader")?.kill9()?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
    }
    let done = wait_for_state(&stack, "crashy", "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"].as_u64(), Some(3_000), "{done}");

    let got = consume(&stack, &to, 3_000, Duration::from_secs(3)).await?;
    // Every message arrived; a repeat is one the broker had not confirmed before a kill, sent
    // again with the same producer name and sequence id (which a deduplicating broker drops).
    let mut first_seen: HashMap<String, (String, u64)> = HashMap::new();
    let mut duplicates = 0;
    let mut unique = Vec::new();
    for g in &got {
        let id = g
            .properties
            .get(MESSAGE_ID)
            .cloned()
            .context("message id property")?;
        match first_seen.get(&id) {
            Some(first) => {
                duplicates += 1;
                assert_eq!(first, &(g.producer_name.clone(), g.sequence_id), "{id}");
            }
            None => {
                first_seen.insert(id, (g.producer_name.clone(), g.sequence_id));
                unique.push(g.clone());
            }
        }
    }
    println!(
        "restore through two kills: {} delivered, {duplicates} repeated",
        got.len()
    );
    assert!(
        duplicates <= 2 * 500,
        "at most the batch in flight at each of two kills: {duplicates}"
    );
    assert_restored(&sent, &unique, "restore-crashy--1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_range_partitions_pause_resume_and_cancel() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("src");
    let full = format!("persistent://public/default/{topic}");
    let all = sample_messages(1_500, 31);
    let (a, rest) = all.split_at(500);
    let (b, c) = rest.split_at(500);
    // Three bursts a few hundred milliseconds apart: the middle one is selected by time.
    produce(&stack.pulsar.url(), &full, a, true).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    produce(&stack.pulsar.url(), &full, b, true).await?;
    let to_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&stack.pulsar.url(), &full, c, true).await?;
    stack.create_rule(
        "range-bk",
        &topic,
        &["--window", "1h", "--max-messages", "400"],
    )?;
    stack
        .wait_until_backed_up("range-bk", 1_500, Duration::from_secs(180))
        .await?;

    let to = format!("persistent://public/default/{}", unique_topic("middle"));
    let url = target(&stack);
    stack.ctl_json(&[
        "restore",
        "create",
        "middle",
        "--rule",
        "range-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--from",
        &from,
        "--to",
        &to_time,
        "--partitions=-1",
    ])?;
    let done = wait_for_state(&stack, "middle", "done", Duration::from_secs(60)).await?;
    assert_eq!(done["produced"], 500, "{done}");
    assert_eq!(
        done["skipped"].as_u64().unwrap_or(0) + 500,
        done["messages"].as_u64().unwrap_or(0),
        "{done}"
    );
    let got = consume(&stack, &to, 500, Duration::from_secs(2)).await?;
    assert_restored(b, &got, "restore-middle--1");

    // Pause, resume, cancel a slow job.
    let to = format!("persistent://public/default/{}", unique_topic("slow"));
    stack.ctl_json(&[
        "restore",
        "create",
        "slow",
        "--rule",
        "range-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--rate",
        "300/s",
    ])?;
    crate::util::eventually("some progress", Duration::from_secs(30), || {
        let show = stack.ctl_json(&["restore", "show", "slow"])?;
        Ok((show["produced"].as_u64().unwrap_or(0) > 0).then_some(()))
    })
    .await?;
    let paused = stack.ctl_json(&["restore", "pause", "slow"])?;
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a1 = stack.ctl_json(&["restore", "show", "slow"])?["produced"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a2 = stack.ctl_json(&["restore", "show", "slow"])?["produced"].clone();
    assert_eq!(a1, a2, "nothing produced while paused");
    assert_eq!(
        stack.ctl_json(&["restore", "resume", "slow"])?["state"],
        "running"
    );
    crate::util::eventually("progress after resume", Duration::from_secs(30), || {
        let show = stack.ctl_json(&["restore", "show", "slow"])?;
        Ok((show["produced"].as_u64() > a2.as_u64()).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "--- uploader:\n{}\n--- ingester:\n{}",
            stack.log_tail("uploader.log"),
            stack.log_tail("ingester.log")
        )
    })?;
    assert_eq!(
        stack.ctl_json(&["restore", "cancel", "slow"])?["state"],
        "cancelled"
    );
    let out = stack.ctl(&["restore", "resume", "slow"]);
    assert!(!out.status.success(), "a cancelled job stays cancelled");
    let list = stack.ctl_json(&["restore", "list"])?;
    let states: Vec<&str> = list
        .as_array()
        .map(|jobs| jobs.iter().filter_map(|j| j["state"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(states, ["done", "cancelled"], "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_p_goes_to_partition_p_in_order() -> anyhow::Result<()> {
    let pulsar = harness::PulsarLite::start_with_partitions(2).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    let sent = sample_messages(1_200, 41);
    backed_up(&stack, "parts-bk", &sent).await?;
    let to = format!("persistent://public/default/{}", unique_topic("parts"));
    let plan = stack.ctl_json(&[
        "restore",
        "create",
        "parts",
        "--rule",
        "parts-bk",
        "--to-topic",
        &to,
        "--service-url",
        &target(&stack),
        "--dry-run",
    ])?;
    assert_eq!(plan["target_partitions"], 2, "{plan}");
    let mapping: Vec<(i64, i64)> = plan["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    (
                        p["source_partition"].as_i64().unwrap_or(-9),
                        p["target_partition"].as_i64().unwrap_or(-9),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(mapping, [(0, 0), (1, 1)], "{plan}");
    stack.ctl_json(&[
        "restore",
        "create",
        "parts",
        "--rule",
        "parts-bk",
        "--to-topic",
        &to,
        "--service-url",
        &target(&stack),
    ])?;
    wait_for_state(&stack, "parts", "done", Duration::from_secs(120)).await?;
    let by_payload: HashMap<&[u8], &SampleMessage> =
        sent.iter().map(|m| (m.payload.as_slice(), m)).collect();
    let mut total = 0;
    for p in 0..2i32 {
        let planned = plan["partitions"][p as usize]["messages"]
            .as_u64()
            .unwrap_or(0) as usize;
        let got = consume(
            &stack,
            &format!("{to}-partition-{p}"),
            planned,
            Duration::from_secs(2),
        )
        .await?;
        assert_eq!(got.len(), planned, "partition {p}");
        let mut want = Vec::new();
        for g in &got {
            let id: proto::types::MessageId = g.properties[MESSAGE_ID].parse()?;
            assert_eq!(
                id.partition, p,
                "a message of source partition {} in target partition {p}",
                id.partition
            );
            want.push(
                (*by_payload
                    .get(g.payload.as_slice())
                    .context("a sent payload")?)
                .clone(),
            );
        }
        assert_restored(&want, &got, &format!("restore-parts-{p}"));
        total += got.len();
    }
    assert_eq!(total, sent.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_missing_an_object_fails_naming_it_and_resumes_once_it_is_back() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let sent = sample_messages(1_000, 43);
    backed_up(&stack, "gone-bk", &sent).await?;
    let objects = harness::read_all(&stack.s3.client(), crate::util::BUCKET, "").await?;
    let victim = objects
        .iter()
        .map(|o| o.key.clone())
        .filter(|k| !k.contains(".tdmq-backup/"))
        .nth(1)
        .context("a second object")?;
    let client = stack.s3.client();
    let body = client
        .get_object()
        .bucket(crate::util::BUCKET)
        .key(&victim)
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    client
        .delete_object()
        .bucket(crate::util::BUCKET)
        .key(&victim)
        .send()
        .await?;

    let to = format!("persistent://public/default/{}", unique_topic("gone"));
    stack.ctl_json(&[
        "restore",
        "create",
        "gone",
        "--rule",
        "gone-bk",
        "--to-topic",
        &to,
        "--service-url",
        &target(&stack),
    ])?;
    let failed = crate::util::eventually("the job to fail", Duration::from_secs(60), || {
        let show = stack.ctl_json(&["restore", "show", "gone"])?;
        Ok((show["state"] == "failed").then_some(show))
    })
    .await?;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&victim) && reason.contains("not in the bucket"),
        "{failed}"
    );
    let table =
        String::from_utf8_lossy(&stack.ctl(&["restore", "show", "gone"]).stdout).into_owned();
    assert!(
        table.contains("failed") && table.contains(&victim),
        "{table}"
    );

    // Put back, resumed: everything arrives, the part before the gap once.
    client
        .put_object()
        .bucket(crate::util::BUCKET)
        .key(&victim)
        .body(body.into())
        .send()
        .await?;
    assert_eq!(
        stack.ctl_json(&["restore", "resume", "gone"])?["state"],
        "running"
    );
    wait_for_state(&stack, "gone", "done", Duration::from_secs(60)).await?;
    let got = consume(&stack, &to, sent.len(), Duration::from_secs(2)).await?;
    assert_restored(&sent, &got, "restore-gone--1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_partition_backup_restored_into_two_partitions_keeps_each_key_together_in_order(
) -> anyhow::Result<()> {
    let pulsar = harness::PulsarLite::start_with_partitions(3).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    // The target is another cluster whose topics have two partitions: routing by key.
    let other = harness::PulsarLite::start_with_partitions(2).await?;
    let sent = sample_messages(1_500, 47);
    backed_up(&stack, "keys-bk", &sent).await?;
    let to = format!("persistent://public/default/{}", unique_topic("rekeyed"));
    let url = format!("pulsar://{}", other.broker_addr());
    let args = [
        "restore",
        "create",
        "rekey",
        "--rule",
        "keys-bk",
        "--to-topic",
        &to,
        "--service-url",
        &url,
    ];
    let plan = stack.ctl_json(&[&args[..], &["--dry-run"]].concat())?;
    assert_eq!(plan["target_partitions"], 2, "{plan}");
    let targets: Vec<i64> = plan["partitions"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["target_partition"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        targets,
        [-2, -2, -2],
        "three source partitions, by key: {plan}"
    );
    stack.ctl_json(&args)?;
    let done = wait_for_state(&stack, "rekey", "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"], 1_500, "{done}");
    // Each object holds all three partitions and is fetched once, not once per partition.
    assert_eq!(done["objects_read"], done["objects"], "{done}");
    assert!(done["objects"].as_u64() >= Some(3), "{done}");

    // Every message once, in one of the two partitions.
    let by_payload: HashMap<&[u8], &SampleMessage> =
        sent.iter().map(|m| (m.payload.as_slice(), m)).collect();
    let mut seen = std::collections::HashSet::new();
    // Per key: the target partitions it landed in, and its original ids in arrival order.
    let mut keys: HashMap<
        String,
        (
            std::collections::BTreeSet<i32>,
            Vec<proto::types::MessageId>,
        ),
    > = HashMap::new();
    for p in 0..2i32 {
        let got = consume_from(
            &other.url(),
            &format!("{to}-partition-{p}"),
            1,
            Duration::from_secs(3),
        )
        .await?;
        assert!(got.len() > 100, "partition {p} has {} messages", got.len());
        for g in &got {
            let want = by_payload
                .get(g.payload.as_slice())
                .context("a payload that was sent")?;
            assert_eq!(g.key, want.key);
            let id: proto::types::MessageId = g.properties[MESSAGE_ID].parse()?;
            assert!(seen.insert(id), "{id} arrived twice");
            assert_eq!(g.producer_name, format!("restore-rekey-{}", id.partition));
            if let Some(key) = &g.key {
                let entry = keys.entry(key.clone()).or_default();
                entry.0.insert(p);
                entry.1.push(id);
            }
        }
    }
    assert_eq!(seen.len(), sent.len(), "every message arrived");
    assert!(keys.len() > 10, "{} keys", keys.len());
    for (key, (partitions, ids)) in &keys {
        assert_eq!(
            partitions.len(),
            1,
            "key {key:?} in target partitions {partitions:?}"
        );
        // Within each source partition, the key's messages arrived in the order they were
        // published (ids of different source partitions are not comparable).
        for pair in ids.windows(2) {
            if pair[0].partition == pair[1].partition {
                assert!(
                    pair[1].is_after(&pair[0]),
                    "key {key:?}: {} after {}",
                    pair[1],
                    pair[0]
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_by_bucket_prefix_and_topic_after_its_rule_is_gone() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let sent = sample_messages(1_200, 53);
    let source = backed_up_with(&stack, "gone-rule", &sent, &["--prefix", "dr/"]).await?;
    // Another rule's backup under the same prefix, of another topic: not replayed.
    backed_up_with(
        &stack,
        "other-rule",
        &sample_messages(300, 54),
        &["--prefix", "dr/"],
    )
    .await?;
    stack.ctl_json(&["rule", "delete", "gone-rule"])?;
    let to = format!("persistent://public/default/{}", unique_topic("dr"));
    let url = target(&stack);
    let base = [
        "restore",
        "create",
        "dr",
        "--to-topic",
        &to,
        "--service-url",
        &url,
        "--bucket",
        crate::util::BUCKET,
        "--region",
        "us-east-1",
    ];
    let with = |prefix: &str, topic: &str, extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(&["--prefix", prefix, "--topic", topic])
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let refused = |args: Vec<String>| -> String {
        let out = stack.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{args:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Flags: the rule and the bucket group together, or part of the group, are refused naming
    // the flags.
    let both = refused(with("dr/", &source, &["--rule", "other-rule"]));
    assert!(
        both.contains("--rule conflicts with --bucket, --region, --prefix, --topic"),
        "{both}"
    );
    let partial = refused(
        base.iter()
            .chain(&["--topic", "x"])
            .map(|a| a.to_string())
            .collect(),
    );
    assert!(partial.contains("also needs --prefix"), "{partial}");
    // Errors that name why: no manifest under the prefix; no object of the topic.
    let empty = refused(with("elsewhere/", &source, &["--dry-run"]));
    assert!(empty.contains("no tdmq-backup manifest under"), "{empty}");
    let unknown = refused(with("dr/", "never-backed-up", &["--dry-run"]));
    assert!(
        unknown.contains("list no object of topic persistent://public/default/never-backed-up")
            && unknown.contains("gone-rule"),
        "{unknown}"
    );

    let run =
        |args: Vec<String>| stack.ctl_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let plan = run(with("dr/", &source, &["--dry-run"]))?;
    assert_eq!(plan["messages"], 1_200, "{plan}");
    assert_eq!(plan["source_topic"], source.as_str(), "{plan}");
    assert_eq!(
        plan["manifest_rules"],
        serde_json::json!(["gone-rule"]),
        "{plan}"
    );
    let created = run(with("dr/", &source, &["--rate", "800/s"]))?;
    assert_eq!(created["state"], "running", "{created}");
    // Killed mid-way: the resumed job reads the same bucket, prefix and topic from its own
    // file (there is no rule to look them up in).
    crate::util::eventually("some progress", Duration::from_secs(30), || {
        let show = stack.ctl_json(&["restore", "show", "dr"])?;
        Ok((show["produced"].as_u64().unwrap_or(0) >= 300).then_some(()))
    })
    .await?;
    stack.uploader.as_mut().context("uploader")?.kill9()?;
    stack.start_uploader().await?;
    let done = wait_for_state(&stack, "dr", "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"], 1_200, "{done}");
    assert_eq!(done["bucket"], crate::util::BUCKET, "{done}");
    assert_eq!(done["prefix"], "dr/", "{done}");
    let got = consume(&stack, &to, 1_200, Duration::from_secs(2)).await?;
    // A kill repeats at most the batch that was in flight; what a deduplicating broker drops.
    let mut ids = std::collections::HashSet::new();
    let unique: Vec<Got> = got
        .iter()
        .filter(|g| ids.insert(g.properties.get(MESSAGE_ID).cloned()))
        .cloned()
        .collect();
    assert!(
        got.len() - unique.len() <= 500,
        "{} repeated",
        got.len() - unique.len()
    );
    assert_restored(&sent, &unique, "restore-dr--1");
    // show and list name the source.
    let shown = String::from_utf8_lossy(&stack.ctl(&["restore", "show", "dr"]).stdout).into_owned();
    assert!(
        shown.contains(&format!("{source} in {}/dr/", crate::util::BUCKET)),
        "{shown}"
    );
    let listed = String::from_utf8_lossy(&stack.ctl(&["restore", "list"]).stdout).into_owned();
    assert!(listed.contains(&source), "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulsar_ssl_target_is_reached_over_tls_with_the_ingester_s_pulsar_ca_file(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    // The broker's certificate (for localhost) comes from a private CA the ingester is told
    // about with pulsar_ca_file; an impostor's, from another CA, is refused.
    let certs = harness::TestCerts::generate("restore test CA", "pulsar broker")?;
    let files = certs.write(stack.dir.path())?;
    stack.ingester_extra = crate::util::Extra {
        args: vec![
            "--pulsar-ca-file".into(),
            files.ca.to_string_lossy().into_owned(),
        ],
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let broker = stack.pulsar.broker_addr();
    let front = harness::services::pulsar_tls::PulsarTlsFront::start(broker, &certs).await?;
    let impostor_certs = harness::TestCerts::generate("another CA", "impostor")?;
    let impostor =
        harness::services::pulsar_tls::PulsarTlsFront::start(broker, &impostor_certs).await?;

    let sent = sample_messages(1_000, 31);
    backed_up(&stack, "tls-bk", &sent).await?;
    let to = format!("persistent://public/default/{}", unique_topic("restored"));

    let out = stack.ctl(&[
        "restore",
        "create",
        "impostor",
        "--rule",
        "tls-bk",
        "--to-topic",
        &to,
        "--service-url",
        &impostor.url(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("TLS to localhost:") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );

    let token_file = stack.path("target-token");
    std::fs::write(&token_file, "tls-target-token-7\n")?;
    let created = stack.ctl_json(&[
        "restore",
        "create",
        "over-tls",
        "--rule",
        "tls-bk",
        "--to-topic",
        &to,
        "--service-url",
        &front.url(),
        "--token-file",
        &token_file.to_string_lossy(),
    ])?;
    assert_eq!(created["state"], "running", "{created}");
    let done = wait_for_state(&stack, "over-tls", "done", Duration::from_secs(120)).await?;
    assert_eq!(done["produced"], 1_000, "{done}");
    // Read back in plain text through the relay: every field as it was backed up.
    let got = consume(&stack, &to, 1_000, Duration::from_secs(2)).await?;
    assert_restored(&sent, &got, "restore-over-tls--1");
    Ok(())
}

/// The uploader sends a `RestoreProduce` call again when it did not get the answer (a lost
/// connection, or it was restarted before it recorded the progress). The ingester sends only
/// what the broker has not confirmed on that lane, so even a broker without deduplication gets
/// each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_again_produces_nothing_the_broker_confirmed() -> anyhow::Result<()> {
    use proto::v1::{RestoreMessage, RestoreProduceRequest, RestoreTargetRequest};
    let stack = Stack::start().await?;
    let to = format!("persistent://public/default/{}", unique_topic("retried"));
    let channel = tonic::transport::Endpoint::from_shared(stack.ingester_url())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut ingester = proto::IngesterClient::new(channel);
    ingester
        .set_restore_target(RestoreTargetRequest {
            job: "again".into(),
            to_topic: to.clone(),
            service_url: target(&stack),
            token: String::new(),
            dry_run: false,
        })
        .await?;
    let call = |positions: std::ops::Range<u64>| RestoreProduceRequest {
        job: "again".into(),
        source_partition: -1,
        messages: positions
            .map(|i| RestoreMessage {
                sequence_id: i,
                target_partition: -1,
                payload: format!("m{i}").into_bytes(),
                ..Default::default()
            })
            .collect(),
    };
    ingester.restore_produce(call(0..100)).await?;
    // The same call again, then one that starts inside it.
    ingester.restore_produce(call(0..100)).await?;
    ingester.restore_produce(call(50..150)).await?;

    let got = consume(&stack, &to, 150, Duration::from_secs(3)).await?;
    let payloads: Vec<String> = got
        .iter()
        .map(|g| String::from_utf8_lossy(&g.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..150).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want);
    Ok(())
}
