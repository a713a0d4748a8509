//! Guarantee 2 under crashes: kill -9 of either daemon at random moments and at every named
//! durable step, with a steady stream of messages; every message must end up in exactly one
//! object and the subscription must be drained. Seeded: `E2E_SEED=N` replays a run.

use std::time::Duration;

use harness::{check_exactly_once, produce, sample_messages, SampleMessage};
use rand::{Rng, SeedableRng};

use crate::util::{messages_left, unique_topic, Extra, Stack};

fn seed() -> u64 {
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("E2E_SEED={seed}");
    seed
}

/// Produces `messages` in chunks with pauses, in the background, so crashes hit a live stream.
fn produce_steadily(
    url: String,
    topic: String,
    messages: Vec<SampleMessage>,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        for part in messages.chunks(chunk) {
            produce(&url, &topic, part, true).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    })
}

async fn restart_ingester(stack: &mut Stack) -> anyhow::Result<()> {
    if let Some(mut old) = stack.ingester.take() {
        old.kill9()?;
    }
    stack.start_ingester().await
}

async fn restart_uploader(stack: &mut Stack) -> anyhow::Result<()> {
    if let Some(mut old) = stack.uploader.take() {
        old.kill9()?;
    }
    stack.start_uploader().await
}

async fn finish(
    stack: &mut Stack,
    rule: &str,
    full_topic: &str,
    messages: &[SampleMessage],
) -> anyhow::Result<()> {
    let objects = stack
        .wait_until_stored(rule, messages, Duration::from_secs(180))
        .await?;
    let report = check_exactly_once(&objects, messages)?;
    println!("{rule}: {report:?}");
    assert_eq!(report.records, messages.len());
    if let Some(mut ingester) = stack.ingester.take() {
        ingester.kill9()?;
    }
    let left = messages_left(stack, full_topic).await?;
    assert_eq!(left, 0, "messages left unacknowledged on the subscription");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_either_daemon_at_random_moments_loses_and_duplicates_nothing(
) -> anyhow::Result<()> {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut stack = Stack::start().await?;
    let topic = unique_topic("crash");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "crash",
        &topic,
        &[
            "--max-messages",
            "400",
            "--max-bytes",
            "200KB",
            "--window",
            "2s",
        ],
    )?;
    let messages = sample_messages(8_000, seed);
    let producer = produce_steadily(
        stack.pulsar.url(),
        full_topic.clone(),
        messages.clone(),
        250,
        Duration::from_millis(250),
    );

    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2500))).await;
        let victim = rng.gen_range(0..3);
        println!(
            "round {round}: killing {}",
            ["ingester", "uploader", "both"][victim]
        );
        if victim != 1 {
            if let Some(d) = stack.ingester.as_mut() {
                d.kill9()?;
            }
        }
        if victim != 0 {
            if let Some(d) = stack.uploader.as_mut() {
                d.kill9()?;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..800))).await;
        if victim != 1 {
            restart_ingester(&mut stack).await?;
        }
        if victim != 0 {
            restart_uploader(&mut stack).await?;
        }
    }
    producer.await??;
    finish(&mut stack, "crash", &full_topic, &messages).await
}

/// A crash at each step where state becomes durable (docs/design.md), one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_durable_step_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("steps");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "steps",
        &topic,
        &["--max-messages", "300", "--window", "1h"],
    )?;
    let messages = sample_messages(9 * 700, 11);
    let points = [
        ("ingester", "ingester:after_spool@1"),
        ("ingester", "ingester:after_seal_file@1"),
        ("ingester", "ingester:after_commit@1"),
        ("ingester", "ingester:before_ack@1"),
        ("ingester", "ingester:after_ack@1"),
        ("uploader", "uploader:after_put@1"),
        ("uploader", "uploader:before_commit@1"),
    ];
    for (i, (daemon, point)) in points.iter().enumerate() {
        let chunk = &messages[i * 700..(i + 1) * 700];
        if *daemon == "ingester" {
            stack.ingester_extra = Extra::failpoint(point);
            restart_ingester(&mut stack).await?;
        } else {
            stack.uploader_extra = Extra::failpoint(point);
            restart_uploader(&mut stack).await?;
        }
        produce(&stack.pulsar.url(), &full_topic, chunk, true).await?;
        // Drive the pipeline until the armed daemon dies at its failpoint.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let victim = if *daemon == "ingester" {
                stack.ingester.as_mut()
            } else {
                stack.uploader.as_mut()
            };
            let Some(victim) = victim else {
                anyhow::bail!("the {daemon} is not running");
            };
            if let Some(status) = victim.try_status()? {
                // Died at the failpoint (it aborts, after saying so), not of anything else: a
                // panic or an error exit would pass this test for the wrong reason.
                let name = point.split('@').next().unwrap_or(point);
                assert!(
                    victim.log().contains(&format!("failpoint {name} reached")),
                    "the {daemon} exited ({status}) without reaching {point}:\n{}",
                    victim.log()
                );
                use std::os::unix::process::ExitStatusExt as _;
                assert_eq!(status.signal(), Some(6), "{point}: not an abort: {status}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "failpoint {point} was never reached"
            );
            let _ = stack.ctl(&["rule", "flush", "steps"]);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        println!("crashed at {point}");
        stack.ingester_extra = Extra::default();
        stack.uploader_extra = Extra::default();
        if *daemon == "ingester" {
            restart_ingester(&mut stack).await?;
        } else {
            restart_uploader(&mut stack).await?;
        }
    }
    // The rest of the messages with no failpoint.
    produce(
        &stack.pulsar.url(),
        &full_topic,
        &messages[points.len() * 700..],
        true,
    )
    .await?;
    finish(&mut stack, "steps", &full_topic, &messages).await
}

/// Broker killed and restarted (same data) mid-stream: the ingester reconnects by itself,
/// `status` shows the outage while it lasts, nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("outage");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "outage",
        &topic,
        &["--max-messages", "500", "--window", "1h"],
    )?;
    let messages = sample_messages(6_000, 5);
    produce(&stack.pulsar.url(), &full_topic, &messages[..3_000], true).await?;
    crate::util::eventually("first half consumed", Duration::from_secs(60), || {
        let s = stack.rule_status("outage")?;
        Ok((s["messages_consumed"].as_u64().unwrap_or(0) >= 3_000).then_some(()))
    })
    .await?;

    stack.pulsar.kill();
    let during =
        crate::util::eventually("status to show the outage", Duration::from_secs(30), || {
            let s = stack.rule_status("outage")?;
            Ok((s["consumer_connected"] == false && s["state"] == "error").then_some(s))
        })
        .await?;
    assert!(
        !during["last_error"].as_str().unwrap_or_default().is_empty(),
        "{during}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.pulsar.restart().await?;

    produce(&stack.pulsar.url(), &full_topic, &messages[3_000..], true).await?;
    crate::util::eventually("the consumer to reconnect", Duration::from_secs(60), || {
        let s = stack.rule_status("outage")?;
        Ok((s["consumer_connected"] == true).then_some(()))
    })
    .await?;
    finish(&mut stack, "outage", &full_topic, &messages).await
}

/// Store down: sealed segments wait, failures show in status and logs with the store's error,
/// nothing is acknowledged; when it returns everything goes up exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_holds_acks_and_recovers() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("store");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "store",
        &topic,
        &["--max-messages", "250", "--window", "1h"],
    )?;
    let messages = sample_messages(2_000, 9);
    produce(&stack.pulsar.url(), &full_topic, &messages[..1_000], true).await?;
    stack
        .wait_until_stored("store", &messages[..1_000], Duration::from_secs(60))
        .await?;
    let acked_before = stack.rule_status("store")?["messages_acked"]
        .as_u64()
        .unwrap_or(0);

    stack.s3.stop().await;
    produce(&stack.pulsar.url(), &full_topic, &messages[1_000..], true).await?;
    let failed = crate::util::eventually(
        "upload failures in the logs",
        Duration::from_secs(60),
        || {
            let _ = stack.ctl(&["rule", "flush", "store"]);
            let logs = stack.ctl_json(&["logs", "store", "--failed"])?;
            let failures = logs["entries"].as_array().cloned().unwrap_or_default();
            Ok((!failures.is_empty()).then_some(failures))
        },
    )
    .await?;
    assert!(
        failed.iter().all(|e| e["kind"] == "upload_failed"),
        "{failed:?}"
    );
    let status = stack.rule_status("store")?;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("upload"),
        "{status}"
    );
    assert!(
        status["sealed_segments"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    assert_eq!(
        status["messages_acked"].as_u64().unwrap_or(0),
        acked_before,
        "acknowledged while the store was down"
    );

    stack.s3.restart().await?;
    finish(&mut stack, "store", &full_topic, &messages).await
}

/// Store answering errors (503, then 500, then connections cut mid-request) instead of being
/// down: failures with the store's answer in status and logs, nothing acknowledged, then
/// everything up exactly once when it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_retried_and_reported_then_heal() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    let proxy = harness::FaultProxy::start(stack.s3.addr())?;
    stack.store_endpoint = Some(proxy.endpoint());
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let topic = unique_topic("flaky");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "flaky",
        &topic,
        &["--max-messages", "200", "--window", "1h"],
    )?;
    let messages = sample_messages(1_500, 29);
    for (mode, part) in [
        (harness::FaultMode::Http503, &messages[..500]),
        (harness::FaultMode::Http500, &messages[500..1_000]),
        (
            harness::FaultMode::DropAfterBytes(2_000),
            &messages[1_000..],
        ),
    ] {
        proxy.set_mode(mode);
        produce(&stack.pulsar.url(), &full_topic, part, true).await?;
        let before = stack.ctl_json(&["logs", "flaky", "--failed", "--limit", "1000"])?["entries"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let failures = crate::util::eventually(
            "new upload failures reported",
            Duration::from_secs(60),
            || {
                let _ = stack.ctl(&["rule", "flush", "flaky"]);
                let logs = stack.ctl_json(&["logs", "flaky", "--failed", "--limit", "1000"])?;
                let n = logs["entries"].as_array().map(Vec::len).unwrap_or(0);
                Ok((n > before).then_some(logs))
            },
        )
        .await?;
        println!("{mode:?}: {}", failures["entries"][0]["message"]);
        // Every request fails in these two modes; a cut connection lets small objects through.
        if matches!(
            mode,
            harness::FaultMode::Http503 | harness::FaultMode::Http500
        ) {
            assert_eq!(
                stack.rule_status("flaky")?["messages_acked"],
                0,
                "acknowledged while the store failed ({mode:?})"
            );
        }
    }
    let logs = stack
        .ctl_json(&["logs", "flaky", "--failed", "--limit", "1000"])?
        .to_string();
    assert!(
        logs.contains("the store answered HTTP 503"),
        "the store's 503 is shown: {logs}"
    );
    proxy.set_mode(harness::FaultMode::Pass);
    finish(&mut stack, "flaky", &full_topic, &messages).await
}

/// kill -9 of the ingester while a large open segment is being compressed ahead of its seal
/// (presealing): the half-written file is thrown away and the seal starts over from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_presealing_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    kill9_while_presealing("preseal", &[], 29).await
}

/// The same with Parquet objects: a Parquet file half written ahead of its seal (row groups
/// flushed, no footer yet) is thrown away, never stored or committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_presealing_parquet_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    kill9_while_presealing("preseal-pq", &["--format", "parquet"], 53).await
}

/// Kills the ingester twice while it compresses a large open segment ahead of its seal, then
/// checks every message is stored exactly once and acknowledged.
async fn kill9_while_presealing(rule: &str, format: &[&str], seed: u64) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic(rule);
    let full_topic = format!("persistent://public/default/{topic}");
    let mut flags = vec![
        "--max-bytes",
        "12MB",
        "--max-messages",
        "100000",
        "--window",
        "1h",
    ];
    flags.extend_from_slice(format);
    stack.create_rule(rule, &topic, &flags)?;
    let mut messages = sample_messages(6_000, seed);
    for m in &mut messages {
        // ~2 KB records: past 4 MiB (where presealing starts) after ~2,000 messages.
        m.payload.resize(m.payload.len() + 2_000, b'q');
    }
    let producer = produce_steadily(
        stack.pulsar.url(),
        full_topic.clone(),
        messages.clone(),
        500,
        Duration::from_millis(200),
    );
    let segments = stack.path("ingester").join("segments").join(rule);
    for round in 0..2 {
        crate::util::eventually("a preseal file", Duration::from_secs(60), || {
            let presealing = std::fs::read_dir(&segments)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".preseal.tmp"))
                })
                .unwrap_or(false);
            Ok(presealing.then_some(()))
        })
        .await?;
        println!("round {round}: killing the ingester while it preseals");
        restart_ingester(&mut stack).await?;
    }
    producer.await??;
    finish(&mut stack, rule, &full_topic, &messages).await
}

/// A full spool pauses consumption (nothing acknowledged, nothing lost) and resumes when uploads
/// free space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_pauses_consumption_then_resumes() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.ingester_extra = Extra {
        args: vec!["--max-spool-bytes".into(), "150KB".into()],
        env: Vec::new(),
    };
    stack.start_ingester().await?;
    let topic = unique_topic("quota");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "quota",
        &topic,
        &["--max-messages", "100", "--window", "1h"],
    )?;
    let messages = sample_messages(3_000, 13);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    let full = crate::util::eventually("the spool to report full", Duration::from_secs(30), || {
        let s = stack.rule_status("quota")?;
        Ok((s["state"] == "error").then_some(s))
    })
    .await?;
    assert!(
        full["state_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("spool"),
        "{full}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed = stack.rule_status("quota")?["messages_consumed"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        consumed < 3_000,
        "kept consuming into a full spool: {consumed}"
    );
    let logs = stack.ctl_json(&["logs", "quota", "--failed"])?;
    assert!(logs.to_string().contains("spool_full"), "{logs}");

    stack.start_uploader().await?;
    finish(&mut stack, "quota", &full_topic, &messages).await
}

/// A damaged segment file is detected by checksum, quarantined, reported, never uploaded as if
/// good, and written again from the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_is_quarantined_and_rewritten() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("damage");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "damage",
        &topic,
        &["--max-messages", "1000", "--window", "1h"],
    )?;
    let messages = sample_messages(600, 17);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    crate::util::eventually(
        "every message in sealed segments",
        Duration::from_secs(30),
        || {
            let _ = stack.ctl(&["rule", "flush", "damage"]);
            let segs = stack.ctl_json(&["segments", "damage"])?;
            let list = segs["segments"].as_array().cloned().unwrap_or_default();
            let total: u64 = list
                .iter()
                .map(|s| s["messages"].as_u64().unwrap_or(0))
                .sum();
            let all_sealed = list.iter().all(|s| s["state"] == "sealed");
            Ok((total == 600 && all_sealed).then_some(()))
        },
    )
    .await?;
    let dir = stack.path("ingester").join("segments").join("damage");
    let file = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .ok_or_else(|| anyhow::anyhow!("no segment file in {}", dir.display()))?;
    let mut bytes = std::fs::read(&file)?;
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes)?;

    stack.start_uploader().await?;
    let objects = stack
        .wait_until_stored("damage", &messages, Duration::from_secs(90))
        .await?;
    assert_eq!(check_exactly_once(&objects, &messages)?.records, 600);
    let logs = stack.ctl_json(&["logs", "damage", "--failed"])?;
    assert!(logs.to_string().contains("quarantined"), "{logs}");
    // The uploader shares the ingester's disk: its first attempt read the damaged file itself,
    // failed the checksum, and the retry went through ReadSegment, where the ingester checks
    // the file and quarantines it.
    assert!(
        logs.to_string().contains("integrity check failed"),
        "{logs}"
    );
    assert!(
        stack
            .uploader
            .as_ref()
            .map(|d| d.log())
            .unwrap_or_default()
            .contains("reading the segment over gRPC from now on"),
        "{}",
        stack.log_tail("uploader.log")
    );
    let status = stack.rule_status("damage")?;
    assert!(
        status["quarantined_segments"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    let quarantine = stack.path("ingester").join("quarantine").join("damage");
    assert_eq!(
        std::fs::read_dir(&quarantine)?.count(),
        1,
        "the damaged file is kept for inspection"
    );
    finish(&mut stack, "damage", &full_topic, &messages).await
}

/// SIGTERM: the ingester stops within its grace period and resumes where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_promptly_and_resumes() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("term");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule("term", &topic, &["--max-messages", "300", "--window", "1h"])?;
    let messages = sample_messages(2_000, 19);
    produce(&stack.pulsar.url(), &full_topic, &messages[..1_000], true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for daemon in [stack.ingester.as_mut(), stack.uploader.as_mut()]
        .into_iter()
        .flatten()
    {
        let started = std::time::Instant::now();
        daemon.terminate()?;
        let status = daemon.wait_timeout(Duration::from_secs(25))?;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly on SIGTERM: {status:?}",
            daemon.name()
        );
        println!("{} stopped in {:?}", daemon.name(), started.elapsed());
    }
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    produce(&stack.pulsar.url(), &full_topic, &messages[1_000..], true).await?;
    finish(&mut stack, "term", &full_topic, &messages).await
}
