//! Changing what a rule reads from: moves to another broker, `--start` on an existing rule, two
//! rules on one subscription, names that cannot be paths, and the subscriptions a rule leaves
//! behind on `rule delete` and on source edits (`--unsubscribe`).

use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use harness::{backlog_before_marker, check_exactly_once, produce, sample_messages, PulsarLite};
use serde_json::Value;

use crate::util::{eventually, unique_topic, Stack};

const SUBSCRIPTION: &str = "tdmq-backup";

fn full(topic: &str) -> String {
    format!("persistent://public/default/{topic}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The rule's history, newest first.
fn log_entries(stack: &Stack, name: &str) -> anyhow::Result<Vec<Value>> {
    let logs = stack.ctl_json(&["logs", name, "--limit", "1000"])?;
    logs["entries"]
        .as_array()
        .cloned()
        .with_context(|| format!("no entries array: {logs}"))
}

/// Waits until the rule's consumer is connected, i.e. its subscription exists on the broker.
async fn wait_connected(stack: &Stack, name: &str) -> anyhow::Result<()> {
    eventually(
        &format!("rule {name} to connect"),
        Duration::from_secs(60),
        || {
            let s = stack.rule_status(name)?;
            Ok((s["consumer_connected"] == true).then_some(()))
        },
    )
    .await
}

/// A rule moved to a fresh broker (migration, disaster recovery) sees message ids the old one
/// already used: each of them must still be stored, as must everything sent to the old broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_moved_to_another_broker_stores_every_message_sent_to_both() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let fresh = PulsarLite::start().await?;
    let topic = unique_topic("migrated");
    let messages = sample_messages(600, 41);
    let (old, new) = messages.split_at(300);
    stack.create_rule(
        "migrated",
        &topic,
        &["--window", "1h", "--max-messages", "100"],
    )?;
    produce(&stack.pulsar.url(), &full(&topic), old, true).await?;
    stack
        .wait_until_backed_up("migrated", 300, Duration::from_secs(120))
        .await?;

    let moved = stack.ctl_json(&["rule", "edit", "migrated", "--service-url", &fresh.url()])?;
    assert_eq!(moved["service_url"], fresh.url().as_str(), "{moved}");
    produce(&fresh.url(), &full(&topic), new, true).await?;
    let objects = stack
        .wait_until_stored("migrated", &messages, Duration::from_secs(120))
        .await?;
    // Message ids repeat across the two brokers, so each half is checked on its own objects.
    let (before, after): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| {
        o.records.first().is_some_and(|r| {
            harness::oracle::decode_payload(r).is_ok_and(|p| old.iter().any(|m| m.payload == p))
        })
    });
    check_exactly_once(&before, old)?;
    check_exactly_once(&after, new)?;
    let status = stack.rule_status("migrated")?;
    assert_eq!(status["state"], "running", "{status}");
    Ok(())
}

/// `rule create` with all the flags of [`Stack::create_rule`], run as is (not expecting success).
fn try_create(stack: &Stack, name: &str, topic: &str, extra: &[&str]) -> Output {
    let args = stack.create_rule_args(name, topic, extra);
    stack.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Refused, with a one-line error that starts by naming `field` (the command line holds every
/// field's name, so only the message's start tells which one was blamed).
fn assert_refused_naming(out: &Output, field: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "accepted: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let message = err.trim().trim_start_matches("error: ");
    assert!(
        message.starts_with(&format!("{field} ")),
        "does not name {field}: {err}"
    );
}

/// A non-persistent topic (no redelivery: a backup could lose messages) and `.`/`..` path parts
/// (they name other objects, and another directory in a `file://` store) are refused whole,
/// naming the field: by ctl before it connects, and by the ingester on `rule edit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_persistent_topics_and_dot_path_parts_are_refused_naming_the_field(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("dots");
    let refused = try_create(
        &stack,
        "ticks",
        &format!("non-persistent://public/default/{topic}"),
        &[],
    );
    assert_refused_naming(&refused, "topic");
    assert!(
        stderr(&refused).contains("non-persistent"),
        "{}",
        stderr(&refused)
    );
    for bad in [
        "persistent://public/../orders",
        "persistent://./default/orders",
    ] {
        assert_refused_naming(&try_create(&stack, "dots", bad, &[]), "topic");
    }
    for bad in ["../", "backup/./", "a/../b/"] {
        assert_refused_naming(
            &try_create(&stack, "dots", &topic, &["--prefix", bad]),
            "prefix",
        );
    }
    assert_eq!(
        stack.ctl_json(&["rule", "list"])?["rules"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    // The ingester refuses the same when an edit brings them in, and keeps the rule as it was.
    stack.create_rule("dots", &topic, &["--prefix", "backup/"])?;
    assert_refused_naming(
        &stack.ctl(&["rule", "edit", "dots", "--prefix", "backup/../"]),
        "prefix",
    );
    assert_refused_naming(
        &stack.ctl(&[
            "rule",
            "edit",
            "dots",
            "--topic",
            &format!("non-persistent://public/default/{topic}"),
        ]),
        "topic",
    );
    let rule = stack.ctl_json(&["rule", "show", "dots"])?;
    assert_eq!(rule["prefix"], "backup/", "{rule}");
    assert_eq!(rule["topic"], full(&topic).as_str(), "{rule}");
    Ok(())
}

/// A start position applies when the subscription is created. On an existing rule `--start`
/// would change nothing (the subscription reads on from its own position, and the spool drops
/// re-read messages as already acknowledged), so it is refused, saying why and what to do; given
/// with a new subscription it applies to that subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_edit_start_is_refused_unless_the_source_changes() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topic = unique_topic("start");
    let messages = sample_messages(200, 43);
    let (first, second) = messages.split_at(100);
    stack.create_rule("started", &topic, &["--window", "1h"])?;
    produce(&stack.pulsar.url(), &full(&topic), first, true).await?;
    stack
        .wait_until_backed_up("started", 100, Duration::from_secs(60))
        .await?;

    let refused = stack.ctl(&["rule", "edit", "started", "--start", "latest"]);
    assert_refused_naming(&refused, "start");
    let err = stderr(&refused);
    assert!(
        err.contains("when the subscription is created") && err.contains("--subscription"),
        "does not say why and what to do: {err}"
    );
    // Nothing changed, and the history does not claim otherwise.
    assert_eq!(
        stack.ctl_json(&["rule", "show", "started"])?["start"],
        "earliest"
    );
    let entries = log_entries(&stack, "started")?;
    assert!(
        entries.iter().all(|e| e["kind"] != "rule_edited"),
        "{entries:?}"
    );
    // The value it has already is no change (a rule file can be applied again).
    stack.ctl_json(&[
        "rule", "edit", "started", "--start", "earliest", "--window", "2h",
    ])?;

    // With a new subscription the start applies to it: at `latest`, what the topic holds
    // already (the first 100, stored once by the old subscription) is not read again.
    let edited = stack.ctl_json(&[
        "rule",
        "edit",
        "started",
        "--subscription",
        "second-sub",
        "--start",
        "latest",
    ])?;
    assert_eq!(edited["start"], "latest", "{edited}");
    wait_connected(&stack, "started").await?;
    produce(&stack.pulsar.url(), &full(&topic), second, true).await?;
    let objects = stack
        .wait_until_stored("started", &messages, Duration::from_secs(60))
        .await?;
    check_exactly_once(&objects, &messages)?;
    Ok(())
}

/// Two rules on one subscription split its messages (Failover sends them all to one rule while
/// the other shows `running`): the second is refused naming `subscription`, whether its topic is
/// written short or in full, and so is an edit that would make two rules share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rule_on_the_same_subscription_is_refused() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("twice");
    stack.create_rule("first", &topic, &[])?;

    let clash = try_create(&stack, "second", &full(&topic), &[]);
    assert_refused_naming(&clash, "subscription");
    assert!(stderr(&clash).contains("\"first\""), "{}", stderr(&clash));

    // Another subscription, another topic or another cluster: no clash.
    stack.create_rule("other-sub", &topic, &["--subscription", "other"])?;
    stack.create_rule("other-topic", &unique_topic("else"), &[])?;
    // A port held for the test and never listened on: no broker there, and nothing else gets it.
    let nowhere = harness::PortHold::any()?;
    let elsewhere = format!("pulsar://{}", nowhere.addr());
    stack.create_rule("other-cluster", &topic, &["--service-url", &elsewhere])?;

    let clash = stack.ctl(&["rule", "edit", "other-sub", "--subscription", SUBSCRIPTION]);
    assert_refused_naming(&clash, "subscription");
    let rule = stack.ctl_json(&["rule", "show", "other-sub"])?;
    assert_eq!(rule["subscription"], "other", "{rule}");
    let clash = stack.ctl(&[
        "rule",
        "edit",
        "other-cluster",
        "--service-url",
        &stack.pulsar.url(),
    ]);
    assert_refused_naming(&clash, "subscription");
    assert_eq!(
        stack.ctl_json(&["rule", "list"])?["rules"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    Ok(())
}

/// A subscription outlives the rule that read it and keeps every new message (against TDMQ's
/// backlog quota). `--unsubscribe` removes it when the rule is deleted or moved to another
/// source; without it the reply and the history say it was left behind and how to remove it.
/// Told apart on the broker: a kept subscription delivers what was produced since; a removed one
/// is created anew at `latest` and delivers nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_source_edits_remove_the_subscription_only_with_unsubscribe(
) -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let url = stack.pulsar.url();
    let topics: Vec<String> = (0..4).map(|i| unique_topic(&format!("left{i}"))).collect();
    let rules = ["deleted-kept", "deleted-gone", "moved-gone", "moved-kept"];
    for (rule, topic) in rules.iter().zip(&topics) {
        stack.create_rule(rule, topic, &[])?;
    }
    for rule in rules {
        wait_connected(&stack, rule).await?;
    }

    let kept = stack.ctl_json(&["rule", "delete", "deleted-kept"])?;
    assert_eq!(kept["unsubscribed"], false, "{kept}");
    let notice = kept["notice"].as_str().unwrap_or_default();
    assert!(
        notice.contains("left behind")
            && notice.contains(&full(&topics[0]))
            && notice.contains(SUBSCRIPTION)
            && notice.contains("--unsubscribe"),
        "{kept}"
    );
    let gone = stack.ctl(&["rule", "delete", "deleted-gone", "--unsubscribe"]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    let text = String::from_utf8_lossy(&gone.stdout);
    assert!(text.contains("removed subscription"), "{text}");

    // An edit that keeps the source has no subscription to remove.
    let refused = stack.ctl(&[
        "rule",
        "edit",
        "moved-kept",
        "--window",
        "2h",
        "--unsubscribe",
    ]);
    assert_refused_naming(&refused, "--unsubscribe");
    let moved = stack.ctl_json(&[
        "rule",
        "edit",
        "moved-gone",
        "--topic",
        &unique_topic("moved"),
        "--unsubscribe",
    ])?;
    assert!(
        moved["notice"]
            .as_str()
            .is_some_and(|n| n.contains("removed")),
        "{moved}"
    );
    let moved = stack.ctl_json(&[
        "rule",
        "edit",
        "moved-kept",
        "--topic",
        &unique_topic("moved"),
    ])?;
    assert!(
        moved["notice"]
            .as_str()
            .is_some_and(|n| n.contains("left behind")),
        "{moved}"
    );
    let entries = log_entries(&stack, "moved-kept")?;
    assert!(
        entries.iter().any(|e| e["kind"] == "rule_edited"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("left behind") && m.contains(&full(&topics[3])))),
        "{entries:?}"
    );

    let since = sample_messages(20, 47);
    for topic in &topics {
        produce(&url, &full(topic), &since, true).await?;
    }
    let mut backlogs = Vec::new();
    for topic in &topics {
        backlogs.push(
            backlog_before_marker(&url, &full(topic), SUBSCRIPTION, Duration::from_secs(30))
                .await?,
        );
    }
    println!("backlogs: {backlogs:?}");
    assert_eq!(backlogs, vec![20, 0, 0, 20], "kept, removed, removed, kept");
    Ok(())
}
