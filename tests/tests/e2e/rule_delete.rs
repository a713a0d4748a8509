//! `rule delete` never forgets what is stored but not yet acknowledged on Pulsar.

use std::time::Duration;

use anyhow::Context as _;

use harness::{produce, sample_messages};

use crate::util::{eventually, messages_left, unique_topic, Stack};

/// Segments the uploader stored while the rule had no consumer (the broker down since the
/// ingester started) cannot be acknowledged yet: deleting
/// the rule then would leave their messages on the subscription with nothing left that knows
/// they are backed up. Plain `rule delete` refuses, saying why; once the broker is back and the
/// acks went out, it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_delete_waits_for_stored_segments_to_be_acknowledged() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;
    let topic = unique_topic("unacked");
    let full_topic = format!("persistent://public/default/{topic}");
    stack.create_rule(
        "unacked",
        &topic,
        &["--window", "1h", "--max-messages", "100"],
    )?;
    let messages = sample_messages(200, 51);
    produce(&stack.pulsar.url(), &full_topic, &messages, true).await?;
    // Sealed, which is durable (closed is not yet: the ingester is killed below).
    eventually("two full segments sealed", Duration::from_secs(60), || {
        let listed = stack.ctl_json(&["segments", "unacked"])?;
        let sealed = listed["segments"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["state"] == "sealed").count());
        Ok((sealed == 2).then_some(()))
    })
    .await?;

    // The broker goes away and the ingester restarts meanwhile: its rule has no consumer to
    // acknowledge with. Then the uploader stores and commits both segments.
    stack.pulsar.kill();
    if let Some(mut ingester) = stack.ingester.take() {
        ingester.kill9()?;
    }
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let status = eventually(
        "both segments stored, none acknowledged",
        Duration::from_secs(60),
        || {
            let s = stack.rule_status("unacked")?;
            Ok((s["segments_stored"] == 2).then_some(s))
        },
    )
    .await
    .with_context(|| {
        format!(
            "status: {:?}\n--- ingester log tail:\n{}\n--- uploader log tail:\n{}",
            stack.rule_status("unacked").ok(),
            stack.log_tail("ingester.log"),
            stack.log_tail("uploader.log")
        )
    })?;
    assert_eq!(status["messages_acked"], 0, "{status}");

    let refused = stack.ctl(&["rule", "delete", "unacked"]);
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success(),
        "deleted with unacknowledged segments"
    );
    assert!(
        err.contains("not yet acknowledged") && err.contains("--discard"),
        "{err}"
    );
    assert_eq!(
        stack.rule_status("unacked")?["name"],
        "unacked",
        "the rule is still there"
    );

    stack.pulsar.restart().await?;
    eventually(
        "the stored segments acknowledged",
        Duration::from_secs(90),
        || {
            let s = stack.rule_status("unacked")?;
            Ok((s["spooled_messages"] == 0).then_some(()))
        },
    )
    .await?;
    let deleted = stack.ctl_json(&["rule", "delete", "unacked"])?;
    assert_eq!(deleted["deleted"], "unacked", "{deleted}");
    let left = messages_left(&stack, &full_topic).await?;
    assert_eq!(
        left, 0,
        "every stored message was acknowledged before the delete"
    );
    Ok(())
}
