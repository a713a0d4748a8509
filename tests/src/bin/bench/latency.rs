//! Latency: window end → object visible, with a 2 s window and a slow steady producer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::messages::{preload, topic_name, Payloads};
use crate::process::peak_rss_kb;
use crate::stack::{statuses, tails, Bench, BUCKET};
use crate::table::Row;
use crate::KB;

impl Bench {
    /// Window end → object visible, with a 2 s window and a slow steady producer.
    pub async fn latency(&self) -> anyhow::Result<Row> {
        let mut stack = self.stack("latency").await?;
        let topic = topic_name("lat");
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let window_ms: u64 = 2000;
        // Create the topic first and wait until the rule's consumer got a message: with
        // pulsar-lite a consumer that subscribed before the topic existed may not be
        // dispatched to until it reconnects, which would measure the broker, not the backup.
        preload(&stack.pulsar.url(), &topic, 1, KB).await?;
        stack
            .create_rule_async("bench", &topic, &["--window", "2s"])
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = statuses(&stack).await?.remove("bench").unwrap_or_default();
            if s["messages_consumed"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the rule consumed nothing within 60 s: {s}{}",
                    tails(&stack)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first_window_end = {
            let now = now_ms();
            now - now % window_ms + window_ms
        };
        let run_for = Duration::from_secs(if self.scale > 1 { 10 } else { 30 });
        let url = stack.pulsar.url();
        let producer_topic = topic.clone();
        let producer = tokio::spawn(async move {
            steady_produce(&url, &producer_topic, run_for, Duration::from_millis(50)).await
        });
        let client = stack.s3.client();
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        // Poll until the producer has finished and two more windows have passed.
        let give_up = Instant::now() + run_for + Duration::from_secs(120);
        let mut producer_done: Option<Instant> = None;
        loop {
            if producer_done.is_none() && producer.is_finished() {
                producer_done = Some(Instant::now());
            }
            let settled = producer_done
                .is_some_and(|t| t.elapsed() > Duration::from_millis(2 * window_ms + 1500));
            if settled || Instant::now() > give_up {
                break;
            }
            let listed = client.list_objects_v2().bucket(BUCKET).send().await?;
            let now = now_ms();
            for o in listed.contents() {
                if let Some(key) = o.key().filter(|k| !harness::is_manifest_key(k)) {
                    seen.entry(key.to_string()).or_insert(now);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sent = producer.await??;
        let mut latencies: Vec<f64> = Vec::new();
        for (key, at) in &seen {
            let start = window_start_from_key(key, "bench")
                .with_context(|| format!("no window start in object key {key}"))?;
            if start + window_ms <= first_window_end {
                // The window of the set-up message.
                continue;
            }
            let end = start + window_ms;
            latencies.push((*at as f64 - end as f64) / 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        // The first window was entered part way and the last may be cut short: keep them all,
        // since every one of them ends at its window boundary all the same.
        if latencies.is_empty() {
            bail!("no object appeared{}", tails(&stack));
        }
        let median = latencies[latencies.len() / 2];
        let max = latencies[latencies.len() - 1];
        let rss_i = stack.ingester.as_ref().and_then(peak_rss_kb);
        let rss_u = stack.uploader.as_ref().and_then(peak_rss_kb);
        Ok(Row {
            scenario: "latency window end → visible".into(),
            messages: sent as u64,
            bytes: (sent * KB) as u64,
            seconds: median,
            no_rates: true,
            peak_rss_ingester_kb: rss_i,
            peak_rss_uploader_kb: rss_u,
            notes: format!(
                "seconds = median; median {median:.2} s, max {max:.2} s, min {:.2} s over {} windows (2 s window, 20 msg/s, ListObjects every 50 ms)",
                latencies[0],
                latencies.len()
            ),
            ..Default::default()
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The window start (ms since the epoch) in an object key `…/{rule}-YYYYMMDDTHHMMSSZ-…`.
pub fn window_start_from_key(key: &str, rule: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix(rule)?.strip_prefix('-')?;
    let stamp = rest.get(..16)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    u64::try_from(t.and_utc().timestamp_millis()).ok()
}

/// Sends one 1 KB message every `every` for `run_for`, waiting for each receipt. Returns how
/// many were sent.
pub async fn steady_produce(
    url: &str,
    topic: &str,
    run_for: Duration,
    every: Duration,
) -> anyhow::Result<usize> {
    let pulsar = harness::producer::client(url).await?;
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_name("bench-steady")
        .build()
        .await
        .context("creating the steady producer")?;
    let payloads = Payloads::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    while started.elapsed() < run_for {
        tick.tick().await;
        producer
            .send_non_blocking(payloads.message(sent, KB).to_pulsar())
            .await?
            .await?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_start_is_read_from_the_key() {
        let key =
            "public/default/t/2026/11/24/02/bench-20261124T024002Z-12_34_-1_0-5f3a9c01.jsonl.gz";
        // 2026-11-24T02:40:02Z
        assert_eq!(window_start_from_key(key, "bench"), Some(1_795_488_002_000));
        assert_eq!(window_start_from_key(key, "other"), None);
    }
}
