//! Two ingesters on one Failover subscription (docs/design.md, "Two ingesters on one
//! subscription"): the standby takes over when the active one dies; every message is stored at
//! least once, every record carries its message id, and no two ingesters write the same key.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use harness::{produce, read_all, sample_messages, Daemon};

use crate::util::{messages_left, unique_topic, Stack, BUCKET};

struct Standby {
    ingester: Daemon,
    _uploader: Daemon,
    url: String,
}

async fn start_standby(stack: &Stack) -> anyhow::Result<Standby> {
    // Both on port 0; the ingester's ready line says where it listens.
    let mut ingester = stack.spawn_ingester("ingester-b", 0)?;
    let url = format!("http://{}", ingester.wait_ready(stack.ready_timeout).await?);
    let mut uploader = stack.spawn_uploader("uploader-b", &url)?;
    uploader.wait_ready(stack.ready_timeout).await?;
    Ok(Standby {
        ingester,
        _uploader: uploader,
        url,
    })
}

fn consumed(stack: &Stack, ingester: &str) -> u64 {
    stack
        .ctl_json(&["--ingester", ingester, "status", "fo"])
        .ok()
        .and_then(|s| s["rules"][0]["messages_consumed"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_ingester_takes_over_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let topic = unique_topic("failover");
    let full_topic = format!("persistent://public/default/{topic}");
    let rule_args = ["--max-messages", "300", "--window", "1h"];
    stack.create_rule("fo", &topic, &rule_args)?;
    let standby = start_standby(&stack).await?;
    let url = stack.pulsar.url();
    let endpoint = stack.s3.endpoint();
    let mut args = vec![
        "--ingester",
        standby.url.as_str(),
        "--output",
        "json",
        "rule",
        "create",
        "fo",
        "--service-url",
        url.as_str(),
        "--topic",
        topic.as_str(),
        "--subscription",
        "tdmq-backup",
        "--bucket",
        BUCKET,
        "--region",
        "us-east-1",
        "--endpoint",
        endpoint.as_str(),
    ];
    args.extend_from_slice(&rule_args);
    let out = stack.ctl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let messages = sample_messages(4_000, 23);
    produce(&stack.pulsar.url(), &full_topic, &messages[..2_000], true).await?;
    // The first subscriber (ingester A) is the active one; kill it mid-stream, segments unstored.
    crate::util::eventually("ingester A consuming", Duration::from_secs(30), || {
        Ok((consumed(&stack, &stack.ingester_url()) > 0).then_some(()))
    })
    .await?;
    assert_eq!(
        consumed(&stack, &standby.url),
        0,
        "the standby consumed while A was active"
    );
    // Kill A once it has sealed a segment: a seal flushes its spool's index, so that segment
    // survives the kill -9 and A has something of its own to ship when it comes back. (Records
    // spooled in the last half second before a kill -9 may be cut from the spool at restart;
    // they were never acknowledged, so Pulsar delivers them again — to the standby here.)
    crate::util::eventually(
        "ingester A sealing a segment",
        Duration::from_secs(30),
        || {
            // `segments` shows a segment `sealed` only once its seal is flushed; `status`'s
            // `sealed_segments` also counts closed ones, which a kill -9 may cut from the spool
            // (A then has nothing of its own to ship, and the test saw one spool id, not two).
            let s = stack.ctl_json(&["--ingester", &stack.ingester_url(), "segments", "fo"])?;
            let durable = s["segments"].as_array().is_some_and(|segments| {
                segments
                    .iter()
                    .any(|seg| matches!(seg["state"].as_str(), Some("sealed" | "stored")))
            });
            // Or stored and acknowledged already (then freed from the list).
            let status = stack.ctl_json(&["--ingester", &stack.ingester_url(), "status", "fo"])?;
            let acked = status["rules"][0]["messages_acked"].as_u64().unwrap_or(0);
            Ok((durable || acked > 0).then_some(()))
        },
    )
    .await?;
    if let Some(mut a) = stack.ingester.take() {
        a.kill9()?;
    }
    produce(&stack.pulsar.url(), &full_topic, &messages[2_000..], true).await?;

    // Everything reaches the store through the standby.
    let wanted: HashSet<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let objects = loop {
        let _ = stack.ctl(&["--ingester", &standby.url, "rule", "flush", "fo"]);
        let objects = read_all(&stack.s3.client(), BUCKET, "").await?;
        let found: HashSet<Vec<u8>> = objects
            .iter()
            .flat_map(|o| o.records.iter())
            .filter_map(|r| harness::oracle::decode_payload(r).ok())
            .collect();
        if wanted.iter().all(|p| found.contains(*p)) {
            break objects;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} messages stored after the takeover\n{}",
                found.len(),
                wanted.len(),
                standby.ingester.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    // At least once; a duplicate is the same message (same id, same payload).
    let mut by_id: HashMap<String, Vec<u8>> = HashMap::new();
    for record in objects.iter().flat_map(|o| o.records.iter()) {
        let id = record["message_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let payload = harness::oracle::decode_payload(record)?;
        if let Some(before) = by_id.insert(id.clone(), payload.clone()) {
            assert_eq!(
                before, payload,
                "message {id} stored twice with different payloads"
            );
        }
    }
    assert_eq!(
        by_id.len(),
        messages.len(),
        "distinct message ids = messages produced"
    );

    // The takeover leaves nothing behind: the standby acknowledged all of it.
    crate::util::eventually(
        "the standby's spool to empty",
        Duration::from_secs(60),
        || {
            let s = stack.ctl_json(&["--ingester", &standby.url, "status", "fo"])?;
            Ok((s["rules"][0]["spooled_messages"] == 0).then_some(()))
        },
    )
    .await?;
    let Standby {
        mut ingester,
        _uploader,
        ..
    } = standby;
    ingester.kill9()?;
    let left = messages_left(&stack, &full_topic).await?;
    assert_eq!(left, 0, "messages left unacknowledged after the takeover");

    // Ingester A comes back and ships what it had spooled: duplicates at most, never an overwrite
    // of the other ingester's objects (each data dir's spool id is in its keys). Its acks are
    // behind the subscription's cursor; Apache Pulsar ignores those, pulsar-lite rewinds to them
    // and redelivers, which A stores again: more duplicates, still nothing lost.
    stack.start_ingester().await?;
    crate::util::eventually(
        "ingester A's spool to empty",
        Duration::from_secs(90),
        || {
            let _ = stack.ctl(&["rule", "flush", "fo"]);
            let s = stack.rule_status("fo")?;
            Ok((s["spooled_messages"] == 0).then_some(()))
        },
    )
    .await?;
    let after = read_all(&stack.s3.client(), BUCKET, "").await?;
    let mut ids: HashSet<String> = HashSet::new();
    for record in after.iter().flat_map(|o| o.records.iter()) {
        ids.insert(
            record["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        ids.len(),
        messages.len(),
        "an overwrite lost messages, or foreign ones appeared"
    );
    let spool_ids: HashSet<String> = after
        .iter()
        .filter_map(|o| {
            o.key
                .rsplit('-')
                .next()
                .map(|s| s.trim_end_matches(".jsonl.gz").to_string())
        })
        .collect();
    assert_eq!(
        spool_ids.len(),
        2,
        "objects from both ingesters, told apart by spool id: {spool_ids:?}\nkeys: {:?}\n\
         ingester A's log:\n{}",
        after.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        stack.log_tail("ingester.log")
    );
    Ok(())
}
