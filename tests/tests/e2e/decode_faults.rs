//! Entries the Pulsar client cannot decode (guarantee 6: nothing is skipped silently).
//!
//! The relay damages the compressed data of chosen entries (see `FaultPlan`): once, as a
//! transient fault that a redelivery heals, or at every delivery, as a corrupt entry that only
//! `rule skip` can pass.

use std::collections::HashMap;
use std::time::Duration;

use harness::{
    check_exactly_once, produce_zlib, read_all, sample_messages, FaultPlan, Faults, PulsarLite,
};

use crate::util::{eventually, unique_topic, Stack, BUCKET};

async fn stack_with_faults(
    partitions: u32,
    plan: FaultPlan,
) -> anyhow::Result<(Stack, std::sync::Arc<Faults>)> {
    let faults = Faults::new(plan);
    let pulsar = PulsarLite::start_with_faults(partitions, faults.clone()).await?;
    let stack = Stack::builder().pulsar(pulsar).start().await?;
    Ok((stack, faults))
}

/// Payloads of the sample messages found in the store, by payload.
async fn stored_payloads(stack: &Stack) -> anyhow::Result<HashMap<Vec<u8>, usize>> {
    let mut found = HashMap::new();
    for object in read_all(&stack.s3.client(), BUCKET, "").await? {
        for record in &object.records {
            let payload = harness::oracle::decode_payload(record)?;
            *found.entry(payload).or_insert(0) += 1;
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_damaged_once_is_redelivered_and_stored() -> anyhow::Result<()> {
    let (stack, faults) = stack_with_faults(
        0,
        FaultPlan {
            damage_once: vec![1, 4],
            damage_always: None,
            ..FaultPlan::default()
        },
    )
    .await?;
    let topic = unique_topic("damaged-once");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(4_000, 21);
    produce_zlib(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    stack.create_rule(
        "damaged-once",
        &topic,
        &["--window", "1s", "--max-messages", "500"],
    )?;

    let objects = stack
        .wait_until_stored("damaged-once", &messages, Duration::from_secs(90))
        .await?;
    let report = check_exactly_once(&objects, &messages)?;
    assert_eq!(report.records, messages.len(), "{report:?}");
    let damaged = faults.damaged();
    assert_eq!(
        damaged.len(),
        2,
        "the relay damaged two entries once each: {damaged:?}"
    );

    let kinds = stack.log_entries("damaged-once")?;
    // The second damaged entry may have passed while the first one's delivery was being
    // discarded (then its redelivery decodes and it never fails as far as the rule sees).
    let failed = kinds.iter().filter(|(k, _)| k == "decode_failed").count();
    assert!(
        (1..=2).contains(&failed),
        "a decode_failed entry per failure seen: {kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(k, m)| k == "info" && m.contains("decoded on redelivery")),
        "{kinds:?}"
    );
    let status = stack.rule_status("damaged-once")?;
    assert_eq!(status["state"], "running", "{status}");
    Ok(())
}

/// Blocks a rule on an entry that never decodes, checks what is stored meanwhile, then skips it.
async fn undecodable_entry_blocks_until_skipped(partitions: u32) -> anyhow::Result<()> {
    let (stack, faults) = stack_with_faults(
        partitions,
        FaultPlan {
            damage_once: Vec::new(),
            damage_always: Some(2),
            ..FaultPlan::default()
        },
    )
    .await?;
    let rule = "never-decodes";
    let topic = unique_topic("never-decodes");
    let full_topic = format!("persistent://public/default/{topic}");
    let messages = sample_messages(3_000, 5);
    produce_zlib(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    stack.create_rule(rule, &topic, &["--window", "1s", "--max-messages", "400"])?;

    let status = eventually("the rule to be blocked", Duration::from_secs(90), || {
        let status = stack.rule_status(rule)?;
        Ok((status["state"] == "blocked").then_some(status))
    })
    .await?;
    let damaged = faults.damaged();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    let (ledger, entry, partition) = damaged[0].key;
    let name = if partition >= 0 {
        format!("{ledger}:{entry}:{partition}")
    } else {
        format!("{ledger}:{entry}")
    };
    assert_eq!(
        status["blocked_entries"],
        serde_json::json!([name.clone()]),
        "status names the damaged entry: {status}"
    );
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&name) && reason.contains("rule skip"),
        "{reason}"
    );

    // Everything the rule read before the entry is stored and acknowledged: windows keep
    // closing, the spool drains, and no message is stored twice.
    let settled = eventually(
        "what precedes the entry to be stored",
        Duration::from_secs(60),
        || {
            let status = stack.rule_status(rule)?;
            let acked = status["messages_acked"].as_u64().unwrap_or(0);
            Ok((status["spooled_messages"] == 0 && acked > 0).then_some(acked))
        },
    )
    .await?;
    let stored = stored_payloads(&stack).await?;
    assert!(stored.values().all(|n| *n == 1), "stored twice");
    assert_eq!(stored.len() as u64, settled, "acknowledged = stored");
    assert!(
        stored.len() < messages.len(),
        "the damaged entry's messages cannot be stored"
    );
    if partitions == 0 {
        // One partition: what is stored is exactly what precedes the entry.
        let prefix = messages
            .iter()
            .take_while(|m| stored.contains_key(&m.payload))
            .count();
        assert_eq!(
            prefix,
            stored.len(),
            "stored messages are a prefix of the topic"
        );
    }

    // A wrong entry is refused, naming the right one.
    let wrong = if partitions > 0 {
        format!("{ledger}:{}:{partition}", entry + 50)
    } else {
        format!("{ledger}:{}", entry + 50)
    };
    let out = stack.ctl(&["rule", "skip", rule, "--entry", &wrong]);
    assert!(!out.status.success(), "a wrong entry must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&name),
        "the refusal names the blocking entry: {err}"
    );

    let out = stack.ctl(&["rule", "skip", rule, "--entry", &name]);
    assert!(
        out.status.success(),
        "rule skip failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everything but the skipped entry's messages lands, exactly once.
    let in_entry = damaged[0].messages as usize;
    let wanted = messages.len() - in_entry;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let status = stack.rule_status(rule)?;
        let stored = stored_payloads(&stack).await?;
        if status["spooled_messages"] == 0 && status["state"] == "running" && stored.len() >= wanted
        {
            break stored;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} of {wanted} stored after skipping: {status}\n--- ingester log tail:\n{}",
            stored.len(),
            stack.log_tail("ingester.log")
        );
        let _ = stack.ctl(&["rule", "flush", rule]);
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    assert_eq!(
        stored.len(),
        wanted,
        "every message but the skipped entry's {in_entry}"
    );
    assert!(stored.values().all(|n| *n == 1), "stored twice");
    let kinds = stack.log_entries(rule)?;
    assert!(
        kinds
            .iter()
            .any(|(k, m)| k == "blocked" && m.contains(&name)),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(k, m)| k == "skipped" && m.contains(&name)),
        "{kinds:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_blocks_its_rule_until_skipped() -> anyhow::Result<()> {
    undecodable_entry_blocks_until_skipped(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_stops_only_its_partition_until_skipped() -> anyhow::Result<()> {
    undecodable_entry_blocks_until_skipped(3).await
}
