//! A scenario's stack (the harness's [`Stack`], numbered under the bench's directory, with the
//! bench's broker settings and binaries) and what the scenarios read from it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use harness::Stack;
use serde_json::Value;

use crate::process::{peak_rss_kb, write_bytes, CpuSnapshot};
use crate::table::{mb_of_kb, Row};

pub const BUCKET: &str = "bench-bucket";
/// Where the bare SDK loop writes.
pub const BARE_BUCKET: &str = "bench-bare";
/// pulsar-lite settings for every broker the bench starts (see `Bench::stack`).
const BROKER_TOML: &str = "pulsar_channel_write_buffer_high_water_mark_bytes = 268435456\n\
                           pulsar_channel_write_buffer_low_water_mark_bytes = 134217728";

pub struct Bench {
    pub bin_dir: PathBuf,
    pub root: PathBuf,
    /// Messages of the 1 KB baseline / e2e runs (already divided for --quick).
    pub n: usize,
    /// 10 with --quick, else 1.
    pub scale: usize,
    /// Stacks started so far (numbers their directories).
    pub stacks: std::sync::atomic::AtomicUsize,
}

/// What [`wait_backed_up`] saw.
pub struct BackedUp {
    pub statuses: BTreeMap<String, Value>,
    /// When every rule's messages were first all in its spool (or already acknowledged).
    pub all_spooled: Instant,
    /// The slowest `status` call while waiting (bounds the timing error).
    pub slowest_poll: Duration,
    /// The ingester's peak RSS (KiB) when everything was first spooled.
    pub rss_spooled: Option<u64>,
    /// Every poll's totals over the rules, from the first.
    pub progress: Vec<Progress>,
}

/// One `status` poll's totals over the rules.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Since the wait began.
    pub seconds: f64,
    pub consumed: u64,
    pub acked: u64,
}

impl Bench {
    pub async fn stack(&self, name: &str) -> anyhow::Result<Stack> {
        self.stack_with(name, false).await
    }

    /// `https`: the S3 server on HTTPS with its own CA, which the uploader trusts through
    /// `SSL_CERT_FILE` and the bench's clients directly.
    pub async fn stack_with(&self, name: &str, https: bool) -> anyhow::Result<Stack> {
        self.stack_of(name, https, 0).await
    }

    /// A stack whose broker gives every topic `partitions` partitions.
    pub async fn stack_partitioned(&self, name: &str, partitions: u32) -> anyhow::Result<Stack> {
        self.stack_of(name, false, partitions).await
    }

    async fn stack_of(&self, name: &str, https: bool, partitions: u32) -> anyhow::Result<Stack> {
        // Numbered: a scenario may run twice (e2e at 1 KB in `e2e` and in `sizes`).
        let seq = self
            .stacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut builder = Stack::builder()
            .dir(self.root.join(format!("{seq:02}-{name}")))
            .bin_dir(self.bin_dir.clone())
            .bucket(BUCKET)
            .extra_bucket(BARE_BUCKET)
            .ready_timeout(Duration::from_secs(30))
            .partitions(partitions);
        // Extra pulsar-lite settings, before the harness's own in its broker.toml. With its
        // default write-buffer water marks pulsar-lite stops dispatching 1 MiB messages through
        // the relay after ~20 of them (docs/benchmarks.md); BENCH_BROKER_TOML replaces these
        // settings ("" for the broker's defaults).
        let settings = std::env::var("BENCH_BROKER_TOML").unwrap_or_else(|_| BROKER_TOML.into());
        if !settings.is_empty() {
            builder = builder.broker_settings(&settings.replace("\\n", "\n"));
        }
        if https {
            builder = builder.https_s3();
        }
        builder.services().await
    }
}

/// Every rule's status, by name.
pub async fn statuses(stack: &Stack) -> anyhow::Result<BTreeMap<String, Value>> {
    let status = stack.ctl_json_async(&["status"]).await?;
    Ok(status["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| Some((r["name"].as_str()?.to_string(), r.clone())))
                .collect()
        })
        .unwrap_or_default())
}

/// The ends of the running daemons' logs, for an error message.
pub fn tails(stack: &Stack) -> String {
    let mut out = String::new();
    for (name, daemon) in [("ingester", &stack.ingester), ("uploader", &stack.uploader)] {
        if daemon.is_some() {
            out.push_str(&format!(
                "\n--- {name} log tail:\n{}",
                stack.log_tail(&format!("{name}.log"))
            ));
        }
    }
    out
}

/// Waits until each rule's `expected` messages are acknowledged and its spool is empty.
/// Seals each rule's open segment once all its messages are spooled (a rule's last segment
/// would otherwise wait for its window to end), and again every 2 s while not done.
pub async fn wait_backed_up(
    stack: &Stack,
    expected: &BTreeMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<BackedUp> {
    let deadline = Instant::now() + timeout;
    let mut last_flush: BTreeMap<String, Instant> = BTreeMap::new();
    let mut all_spooled: Option<Instant> = None;
    let mut rss_spooled: Option<u64> = None;
    let mut slowest_poll = Duration::ZERO;
    // seconds, then per rule consumed/spooled/acked: written to timeline.csv for analysis.
    let waiting_since = Instant::now();
    let mut timeline = String::from("seconds,rule,consumed,dups,spooled,sealed,acked\n");
    let mut progress = Vec::new();
    loop {
        let poll_started = Instant::now();
        let statuses = statuses(stack).await?;
        slowest_poll = slowest_poll.max(poll_started.elapsed());
        let total = |key: &str| -> u64 {
            statuses
                .values()
                .map(|s| s[key].as_u64().unwrap_or(0))
                .sum()
        };
        progress.push(Progress {
            seconds: waiting_since.elapsed().as_secs_f64(),
            consumed: total("messages_consumed"),
            acked: total("messages_acked"),
        });
        for (rule, s) in &statuses {
            timeline.push_str(&format!(
                "{:.3},{rule},{},{},{},{},{}\n",
                waiting_since.elapsed().as_secs_f64(),
                s["messages_consumed"],
                s["duplicates_dropped"],
                s["spooled_messages"],
                s["sealed_segments"],
                s["messages_acked"],
            ));
        }
        let mut done = true;
        let mut all_in_everywhere = true;
        for (rule, &want) in expected {
            let s = statuses.get(rule).cloned().unwrap_or(Value::Null);
            let acked = s["messages_acked"].as_u64().unwrap_or(0);
            let spooled = s["spooled_messages"].as_u64().unwrap_or(u64::MAX);
            if acked >= want && spooled == 0 {
                continue;
            }
            done = false;
            let all_in = spooled != u64::MAX && acked + spooled >= want;
            all_in_everywhere &= all_in;
            let due = last_flush
                .get(rule)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2));
            if all_in && s["open_segment_messages"].as_u64().unwrap_or(0) > 0 && due {
                stack.ctl_json_async(&["rule", "flush", rule]).await?;
                last_flush.insert(rule.clone(), Instant::now());
            }
        }
        if all_in_everywhere && all_spooled.is_none() {
            all_spooled = Some(Instant::now());
            rss_spooled = stack.ingester.as_ref().and_then(peak_rss_kb);
        }
        if done {
            let _ = std::fs::write(stack.path("timeline.csv"), &timeline);
            return Ok(BackedUp {
                all_spooled: all_spooled.unwrap_or_else(Instant::now),
                statuses,
                slowest_poll,
                rss_spooled,
                progress,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "not backed up within {timeout:?}: {}{}",
                serde_json::to_string(&statuses)?,
                tails(stack)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Total size of the objects under the bench bucket.
pub async fn stored_bytes(stack: &Stack) -> anyhow::Result<(u64, u64)> {
    let client = stack.s3.client();
    let mut pages = client
        .list_objects_v2()
        .bucket(BUCKET)
        .into_paginator()
        .send();
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(page) = pages.next().await {
        for o in page?.contents() {
            if o.key().is_some_and(harness::is_manifest_key) {
                continue;
            }
            n += 1;
            bytes += o.size().unwrap_or(0).max(0) as u64;
        }
    }
    Ok((n, bytes))
}

/// Stops the ingester, then checks that nothing is left to deliver on the subscription.
pub async fn drained(stack: &mut Stack, topics: &[String]) -> anyhow::Result<String> {
    stack.ingester = None;
    let mut left = 0;
    for topic in topics {
        left += harness::assert_subscription_drained(
            &stack.pulsar.url(),
            topic,
            "tdmq-backup",
            Duration::from_millis(1500),
        )
        .await?;
    }
    Ok(if left == 0 {
        "drained".into()
    } else {
        format!("NOT drained: {left} redelivered")
    })
}

/// One rule `bench` backing up `count` messages of `size` bytes already in `topic`: both daemons
/// started, then timed from `rule create` until everything is acknowledged.
pub struct TimedRun {
    /// Disk written and CPU used before the rule was created (for [`finish_row`]).
    pub before: (Option<u64>, CpuSnapshot),
    pub started: Instant,
    pub backed: BackedUp,
    pub seconds: f64,
}

pub async fn timed_backup(
    stack: &mut Stack,
    topic: &str,
    rule_args: &[&str],
    count: usize,
    size: usize,
) -> anyhow::Result<TimedRun> {
    stack.start_ingester().await?;
    stack.start_uploader().await?;
    let before = (
        stack.ingester.as_ref().and_then(write_bytes),
        CpuSnapshot::take(stack),
    );
    let started = Instant::now();
    stack.create_rule_async("bench", topic, rule_args).await?;
    let expected = [("bench".to_string(), count as u64)].into();
    let backed = wait_backed_up(stack, &expected, timeout_for(count * size)).await?;
    Ok(TimedRun {
        before,
        started,
        backed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fills in RSS, disk written and notes after a timed run, then stops the daemons and checks the
/// subscriptions are drained.
pub async fn finish_row(
    stack: &mut Stack,
    row: &mut Row,
    before: (Option<u64>, CpuSnapshot),
    topics: &[String],
    started: Instant,
    backed: &BackedUp,
) -> anyhow::Result<()> {
    let (io_before, cpu_before) = before;
    let cpu = CpuSnapshot::take(stack).since(cpu_before);
    let spooled_s = backed
        .all_spooled
        .saturating_duration_since(started)
        .as_secs_f64();
    let (objects, object_bytes) = stored_bytes(stack).await?;
    row.peak_rss_ingester_kb = stack.ingester.as_ref().and_then(peak_rss_kb);
    row.peak_rss_uploader_kb = stack.uploader.as_ref().and_then(peak_rss_kb);
    let io_after = stack.ingester.as_ref().and_then(write_bytes);
    if let (Some(before), Some(after)) = (io_before, io_after) {
        row.disk_written_per_payload = Some((after - before) as f64 / row.bytes.max(1) as f64);
    }
    let dups: u64 = backed
        .statuses
        .values()
        .map(|s| s["duplicates_dropped"].as_u64().unwrap_or(0))
        .sum();
    stack.uploader = None;
    let drained = drained(stack, topics).await?;
    row.notes = format!(
        "all spooled at {spooled_s:.1} s (slowest status poll {:.2} s; ingester peak RSS by then {}); {objects} objects, {:.1} MB stored; {dups} dups dropped; {drained}; {cpu}",
        backed.slowest_poll.as_secs_f64(),
        backed
            .rss_spooled
            .map(|k| format!("{:.0} MB", mb_of_kb(k)))
            .unwrap_or_default(),
        object_bytes as f64 / 1e6
    );
    Ok(())
}

/// Generous time limits: 1 MB/s at worst, and at least 2 minutes.
pub fn timeout_for(bytes: usize) -> Duration {
    Duration::from_secs((bytes as u64 / 1_000_000).max(120))
}
