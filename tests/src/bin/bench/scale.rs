//! Several ingesters on one subscription (docs/design.md, "Several ingesters on one
//! subscription"): a 6-partition topic preloaded, then backed up by 1, 2 and 3 hosts (an
//! ingester and an uploader each, told apart by `node_id`) sharing the rule's Failover
//! subscription, fenced; one unfenced host beside them for what the fence costs; and two hosts
//! on subscriptions of their own, so that every segment meets the other's object (the fence's
//! worst case). Each row counts the S3 requests the uploaders sent per object they stored.
//!
//! On one 2-core machine more hosts cannot be faster; what the rows show is that the work
//! spreads over the hosts, nothing is lost or stored twice (`verify`, the subscription
//! drained), and the requests an object costs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{Daemon, Stack};
use serde_json::Value;

use crate::messages::{preload, topic_name};
use crate::process::peak_rss_kb;
use crate::stack::{stored_bytes, timeout_for, Bench};
use crate::table::Row;
use crate::KB;

const PARTITIONS: u32 = 6;
const RULE: &str = "bench";

/// One host: an ingester and its own uploader.
struct Host {
    ingester: Daemon,
    uploader: Daemon,
    url: String,
    uploader_url: String,
    metrics: std::net::SocketAddr,
}

/// How the hosts share the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// One Failover subscription, the rule fenced or not.
    Subscription { fenced: bool },
    /// A subscription each, fenced: both store every message and meet at every key.
    Apart,
}

impl Bench {
    pub async fn scale(&self, count: usize) -> anyhow::Result<Vec<Row>> {
        let mut rows = vec![
            self.scale_run(1, Sharing::Subscription { fenced: false }, count)
                .await?,
        ];
        for hosts in 1..=3 {
            rows.push(
                self.scale_run(hosts, Sharing::Subscription { fenced: true }, count)
                    .await?,
            );
        }
        rows.push(self.scale_run(2, Sharing::Apart, count).await?);
        Ok(rows)
    }

    async fn scale_run(&self, hosts: usize, sharing: Sharing, count: usize) -> anyhow::Result<Row> {
        let label = match sharing {
            Sharing::Subscription { fenced: false } => format!("scale {hosts} ingester, unfenced"),
            Sharing::Subscription { fenced: true } => format!(
                "scale {hosts} ingester{}, fenced",
                if hosts == 1 { "" } else { "s" }
            ),
            Sharing::Apart => format!("scale {hosts} ingesters apart, fenced"),
        };
        let mut stack = self
            .stack_partitioned(&format!("scale-{hosts}-{sharing:?}"), PARTITIONS)
            .await?;
        stack
            .uploader_extra
            .args
            .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
        let topic = topic_name("scale");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, KB).await?;
        let mut started_hosts = Vec::new();
        for i in 0..hosts {
            started_hosts.push(start_host(&stack, i).await?);
        }
        let started = Instant::now();
        let creates = started_hosts.iter().enumerate().map(|(i, host)| {
            let mut rule_args: Vec<String> = ["--window", "10s", "--max-messages"]
                .map(String::from)
                .to_vec();
            // Apart, the hosts cut at other places (as their clocks would), so their objects
            // overlap and the fence trims; on one subscription the cut does not matter.
            rule_args.push(match (sharing, i % 2) {
                (Sharing::Apart, 0) => "4000".into(),
                (Sharing::Apart, _) => "3000".into(),
                _ => "20000".into(),
            });
            if sharing != (Sharing::Subscription { fenced: false }) {
                rule_args.push("--fence".into());
            }
            if sharing == Sharing::Apart {
                rule_args.extend(["--subscription".into(), format!("tdmq-backup-h{i}")]);
            }
            let rule_args: Vec<&str> = rule_args.iter().map(String::as_str).collect();
            let mut args = vec!["--ingester".to_string(), host.url.clone()];
            args.extend(stack.create_rule_args(RULE, &topic, &rule_args));
            let stack = &stack;
            async move {
                ctl(
                    stack,
                    host,
                    &args.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .await
            }
        });
        let timeout = timeout_for(count * KB);
        let mut phases = String::new();
        let mut stalled = Vec::new();
        let consumed = if sharing == Sharing::Apart {
            // In turns, each host storing (or finding stored) every message: the second meets
            // the first's object at each of its keys. At once, they would race on the same
            // keys, which only a store with an atomic If-None-Match settles (s3s-fs checks,
            // then writes: docs/design.md).
            let mut consumed = Vec::new();
            for (create, host) in creates.zip(&started_hosts) {
                let phase = Instant::now();
                create.await?;
                consumed.extend(
                    wait_all_acked(
                        &stack,
                        std::slice::from_ref(host),
                        count as u64,
                        timeout,
                        &mut stalled,
                    )
                    .await?,
                );
                phases.push_str(&format!("{:.1} s, ", phase.elapsed().as_secs_f64()));
            }
            consumed
        } else {
            // On every host at once. Which host gets which partition is the broker's choice:
            // Apache Pulsar spreads them by consumer name; pulsar-lite gives a partition to a
            // consumer that subscribed first, or hands it to one that joins while it is read
            // (without sending the newcomer what the first had not acknowledged, and moving
            // the cursor back when the first acknowledges it: docs/design.md).
            futures::future::try_join_all(creates).await?;
            wait_all_acked(&stack, &started_hosts, count as u64, timeout, &mut stalled).await?
        };
        let seconds = started.elapsed().as_secs_f64();

        let mut requests: BTreeMap<String, u64> = BTreeMap::new();
        let mut conflicts = 0u64;
        for host in &started_hosts {
            let text = harness::http::metrics(host.metrics).await?;
            for (operation, n) in store_requests(&text) {
                *requests.entry(operation).or_default() += n;
            }
            conflicts += series_sum(&text, "tdmq_backup_uploader_fence_conflicts_total");
        }
        let (objects, object_bytes) = stored_bytes(&stack).await?;
        let verify = ctl(&stack, &started_hosts[0], &["verify", RULE]).await;
        let verified = match &verify {
            Ok(v) => {
                let problems = v["problems"].as_array().cloned().unwrap_or_default();
                format!(
                    "verify: {} messages, {} problems{}",
                    v["messages"],
                    problems.len(),
                    problems
                        .first()
                        .map(|p| format!(" (first: {p})"))
                        .unwrap_or_default()
                )
            }
            Err(e) => format!("verify FAILED: {e:#}"),
        };
        let peak =
            |f: fn(&Host) -> &Daemon| started_hosts.iter().filter_map(|h| peak_rss_kb(f(h))).max();
        let row_rss = (peak(|h| &h.ingester), peak(|h| &h.uploader));
        drop(started_hosts);
        let mut left = 0;
        let subscriptions: Vec<String> = match sharing {
            Sharing::Apart => (0..hosts).map(|i| format!("tdmq-backup-h{i}")).collect(),
            Sharing::Subscription { .. } => vec!["tdmq-backup".to_string()],
        };
        for subscription in &subscriptions {
            // The hosts' consumers were just killed: the broker may drop the first
            // subscribe while it closes them.
            let mut attempt = 0;
            left += loop {
                attempt += 1;
                match harness::assert_subscription_drained(
                    &stack.pulsar.url(),
                    &topic,
                    subscription,
                    Duration::from_millis(1500),
                )
                .await
                {
                    Ok(n) => break n,
                    Err(e) if attempt < 3 => eprintln!("   drain check: {e:#}; again"),
                    Err(e) => return Err(e),
                }
            };
        }
        let total_requests: u64 = requests.values().sum();
        let per_object = total_requests as f64 / objects.max(1) as f64;
        let breakdown = requests
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Row {
            scenario: label,
            messages: count as u64,
            bytes: (count * KB) as u64,
            seconds,
            peak_rss_ingester_kb: row_rss.0,
            peak_rss_uploader_kb: row_rss.1,
            notes: format!(
                "{}consumed per host {consumed:?}{}; {objects} objects, {:.1} MB; S3 requests {total_requests} = {per_object:.2} per object ({breakdown}); {conflicts} fence conflicts; {verified}; {}; preload {produce_s:.1} s",
                stalled.iter().map(|s| format!("{s}; ")).collect::<String>(),
                if phases.is_empty() {
                    String::new()
                } else {
                    format!(" (in turns: {})", phases.trim_end_matches(", "))
                },
                object_bytes as f64 / 1e6,
                if left == 0 {
                    "drained".to_string()
                } else {
                    format!("NOT drained: {left} redelivered")
                },
            ),
            ..Default::default()
        })
    }
}

async fn start_host(stack: &Stack, i: usize) -> anyhow::Result<Host> {
    let node = format!("h{i}");
    let mut ingester =
        stack.spawn_ingester_with(&format!("ingester-{i}"), 0, &["--node-id", &node])?;
    let url = format!("http://{}", ingester.wait_ready(stack.ready_timeout).await?);
    let mut uploader = stack.spawn_uploader(&format!("uploader-{i}"), &url)?;
    let uploader_url = format!("http://{}", uploader.wait_ready(stack.ready_timeout).await?);
    let metrics = uploader.wait_metrics_addr(stack.ready_timeout).await?;
    Ok(Host {
        ingester,
        uploader,
        url,
        uploader_url,
        metrics,
    })
}

/// `tdmq-backup -o json ARGS` against this host's ingester and uploader; exit 0 (or 3 from
/// `verify`, with its report) gives the JSON. Not `Stack::ctl_json_async`: that names the
/// stack's own uploader, which these stacks do not run, and ctl takes one `--uploader`.
async fn ctl(stack: &Stack, host: &Host, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = vec!["--output", "json", "--uploader", &host.uploader_url];
    if !args.contains(&"--ingester") {
        full.extend(["--ingester", &host.url]);
    }
    full.extend_from_slice(args);
    let out = tokio::process::Command::new(stack.bin("tdmq-backup"))
        .args(&full)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running tdmq-backup")?;
    if !matches!(out.status.code(), Some(0 | 3)) {
        bail!(
            "tdmq-backup {full:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("tdmq-backup printed no JSON")
}

/// Waits until the hosts together acknowledged (or dropped as already stored) `expected`
/// messages and spool nothing, flushing
/// their open segments once everything is in; returns what each host consumed. A run that stops
/// short is noted in `stalled` and measured on (verify and the drain check then say whether
/// anything was lost or only not delivered).
async fn wait_all_acked(
    stack: &Stack,
    hosts: &[Host],
    expected: u64,
    timeout: Duration,
    stalled: &mut Vec<String>,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + timeout;
    let mut last_flush = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for host in hosts {
            let status = ctl(stack, host, &["status", RULE]).await?;
            statuses.push(status["rules"][0].clone());
        }
        let sum =
            |key: &str| -> u64 { statuses.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum() };
        // What a host drops as a duplicate after another's object covered it is stored: it
        // counts towards done (verify and the drain check say whether that was so).
        let (acked, spooled) = (
            sum("messages_acked") + sum("duplicates_dropped"),
            sum("spooled_messages"),
        );
        let timed_out = Instant::now() > deadline;
        if timed_out {
            stalled.push(format!(
                "STALLED: {acked} of {expected} acknowledged, {spooled} spooled, {} consumed, {} duplicates dropped after {timeout:?}",
                sum("messages_consumed"),
                sum("duplicates_dropped")
            ));
        }
        if (acked >= expected && spooled == 0) || timed_out {
            return Ok(statuses
                .iter()
                .map(|s| s["messages_consumed"].as_u64().unwrap_or(0))
                .collect());
        }
        if acked + spooled >= expected && last_flush.elapsed() > Duration::from_secs(2) {
            for host in hosts {
                ctl(stack, host, &["rule", "flush", RULE]).await?;
            }
            last_flush = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tdmq_backup_uploader_store_requests_total{operation="X"} N` lines of a scrape.
fn store_requests(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let rest =
                line.strip_prefix("tdmq_backup_uploader_store_requests_total{operation=\"")?;
            let (operation, value) = rest.split_once("\"} ")?;
            Some((operation.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` (any labels) in a scrape.
fn series_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
