//! What the e2e tests share besides the harness's [`Stack`]: unique topic names and polling.

use std::time::{Duration, Instant};

use anyhow::bail;

pub use harness::stack::{Extra, Stack, BUCKET};

/// Messages still unacknowledged on the daemons' subscription (`tdmq-backup`) of `full_topic`,
/// read by a consumer attached once the daemons are stopped, waiting 3 s for any to arrive.
pub async fn messages_left(stack: &Stack, full_topic: &str) -> anyhow::Result<usize> {
    harness::assert_subscription_drained(
        &stack.pulsar.url(),
        full_topic,
        "tdmq-backup",
        Duration::from_secs(3),
    )
    .await
}

/// A topic name no other test uses.
pub fn unique_topic(stem: &str) -> String {
    format!("{stem}-{}", rand::random::<u32>())
}

/// Runs `rule create NAME` on `topic` with `extra` flags, expects it refused, and returns what
/// ctl printed on stderr (the error naming the field).
pub fn refused_rule_create(stack: &Stack, name: &str, topic: &str, extra: &[&str]) -> String {
    let args = stack.create_rule_args(name, topic, extra);
    let out = stack.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !out.status.success(),
        "rule create {extra:?} was not refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `check` until it returns Some or the timeout passes.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
