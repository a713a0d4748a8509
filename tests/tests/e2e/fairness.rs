//! Rules share the uploader: one rule whose uploads keep failing must not stop the others.

use std::time::Duration;

use harness::{produce, sample_messages};

use crate::util::{eventually, unique_topic, Stack};

/// More sealed segments than one ListSealed page holds (the uploader asks for at most 1,000).
const BROKEN_SEGMENTS: usize = 1_050;
const BROKEN_BUCKET: &str = "unwritable-bucket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_whose_uploads_fail_does_not_stop_the_other_rules() -> anyhow::Result<()> {
    let mut stack = Stack::services().await?;
    stack.start_ingester().await?;

    // A rule whose bucket the store cannot write (s3s-fs creates a missing bucket on PutObject,
    // so a plain file takes the bucket's place: every PUT fails), with a backlog of sealed
    // segments older than anything of the good rule: one message per segment.
    std::fs::write(stack.s3.data_dir().join(BROKEN_BUCKET), b"not a bucket")?;
    let broken_topic = unique_topic("broken");
    let url = stack.pulsar.url();
    let endpoint = stack.s3.endpoint();
    stack.ctl_json(&[
        "rule",
        "create",
        "broken",
        "--service-url",
        &url,
        "--topic",
        &broken_topic,
        "--subscription",
        "tdmq-backup",
        "--bucket",
        BROKEN_BUCKET,
        "--region",
        "us-east-1",
        "--endpoint",
        &endpoint,
        "--max-messages",
        "1",
    ])?;
    let broken_messages = sample_messages(BROKEN_SEGMENTS, 41);
    produce(
        &url,
        &format!("persistent://public/default/{broken_topic}"),
        &broken_messages,
        false,
    )
    .await?;
    // Sealed, not only closed (status counts both): a segment still waiting for the sealer
    // would be sealed after the good rule's and queue behind them.
    eventually(
        "the broken rule's segments to be sealed",
        Duration::from_secs(400),
        || {
            let listed = stack.ctl_json(&["segments", "broken"])?;
            let sealed = listed["segments"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|s| s["state"] == "sealed").count());
            Ok((sealed >= BROKEN_SEGMENTS).then_some(()))
        },
    )
    .await?;

    // The good rule's segments are all younger than the broken rule's.
    let good_topic = unique_topic("good");
    stack.create_rule("good", &good_topic, &["--max-messages", "10"])?;
    let good_messages = sample_messages(200, 42);
    produce(
        &url,
        &format!("persistent://public/default/{good_topic}"),
        &good_messages,
        false,
    )
    .await?;

    stack.start_uploader().await?;
    stack
        .wait_until_stored("good", &good_messages, Duration::from_secs(120))
        .await?;
    let broken = stack.rule_status("broken")?;
    assert_eq!(
        broken["messages_acked"].as_u64(),
        Some(0),
        "nothing of the broken rule can be stored: {broken}"
    );
    // Tried (the pages deal both rules), and failing: under load the good rule may be done
    // before the first failure of the broken one is logged, so wait for it.
    eventually(
        "the broken rule's uploads to be tried, and fail",
        Duration::from_secs(60),
        || {
            let uploader_log = std::fs::read_to_string(stack.path("uploader.log"))?;
            Ok(uploader_log
                .lines()
                .any(|l| l.contains("rule=broken") && l.contains("upload failed"))
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}
