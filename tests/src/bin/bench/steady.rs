//! Steady throughput: the same end-to-end backup, run several times on fresh stacks, with both
//! clients' raw consume+ack rates on the same broker in the same run as baselines. Reports
//! each run, then the median, the worst and the spread, and what makes a run slow: consumer
//! reconnects, stalls (no progress for over a second while messages wait) and redeliveries.

use std::time::Duration;

use serde::Deserialize;

use crate::baseline::consume_all;
use crate::messages::{preload, topic_name};
use crate::stack::{finish_row, timed_backup, Bench, Progress, TimedRun};
use crate::table::{Judged, Row};
use crate::KB;

/// The rule of the measurement: short windows and small segments, so that many
/// segments are sealed, stored and acknowledged while the topic is drained.
const RULE_ARGS: [&str; 4] = ["--window", "1s", "--max-messages", "5000"];
/// No progress for longer than this while messages wait counts as a stall.
const STALL: Duration = Duration::from_secs(1);

/// What one run measured.
struct Run {
    e2e: Row,
    official_msg_s: Option<f64>,
    pulsar_rs_msg_s: f64,
    reconnects: usize,
    stalls: Vec<f64>,
    duplicates: u64,
}

#[derive(Deserialize)]
pub struct OfficialResult {
    pub seconds: f64,
    pub deliveries: u64,
}

impl Bench {
    /// `runs` end-to-end runs of `count` 1 KB messages, each with its two baselines.
    pub async fn steady(&self, count: usize, runs: u32) -> anyhow::Result<Vec<Row>> {
        let mut done: Vec<Run> = Vec::new();
        for run in 1..=runs {
            eprintln!("   steady run {run}/{runs}");
            done.push(self.steady_run(count, run, runs).await?);
        }
        let mut rows: Vec<Row> = done.iter().map(|r| r.e2e.clone()).collect();
        rows.push(summary(&done, count));
        Ok(rows)
    }

    async fn steady_run(&self, count: usize, run: u32, runs: u32) -> anyhow::Result<Run> {
        let mut stack = self.stack("steady").await?;
        let topic = topic_name("steady");
        let url = stack.pulsar.url();
        let produce_s = preload(&url, &topic, count, KB).await?;
        // Each client drains the same preloaded topic on its own subscription.
        let official = official_consume(&url, &topic, "official", count).await;
        let (rs_seconds, rs_deliveries) = consume_all(&url, &topic, count).await?;
        let pulsar_rs_msg_s = count as f64 / rs_seconds;

        let TimedRun {
            before,
            started,
            backed,
            seconds,
        } = timed_backup(&mut stack, &topic, &RULE_ARGS, count, KB).await?;
        let stalls = stalls(&backed.progress, count as u64);
        let duplicates = backed.statuses["bench"]["duplicates_dropped"]
            .as_u64()
            .unwrap_or(0);
        let log = std::fs::read_to_string(stack.path("ingester.log")).unwrap_or_default();
        let reconnects = reconnects(&log);
        let official_msg_s = official.as_ref().ok().map(|o| count as f64 / o.seconds);
        let mut e2e = Row {
            scenario: format!("steady e2e 1 KB, run {run}/{runs}"),
            messages: count as u64,
            bytes: (count * KB) as u64,
            seconds,
            ..Default::default()
        };
        e2e.ratio = official_msg_s.map(|o| e2e.msg_per_s() / o);
        finish_row(&mut stack, &mut e2e, before, &[topic], started, &backed).await?;
        let official_note = match &official {
            Ok(o) => format!(
                "official client {:.0} msg/s ({} deliveries)",
                count as f64 / o.seconds,
                o.deliveries
            ),
            Err(err) => format!("official client not measured: {err:#}"),
        };
        e2e.notes = format!(
            "{official_note}; pulsar-rs {pulsar_rs_msg_s:.0} msg/s ({rs_deliveries} deliveries), e2e = {:.2} × pulsar-rs; {reconnects} consumer reconnects; {} stalls > 1 s{}; {duplicates} redelivered duplicates; {}; preload {produce_s:.1} s",
            e2e.msg_per_s() / pulsar_rs_msg_s,
            stalls.len(),
            if stalls.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    stalls
                        .iter()
                        .map(|s| format!("{s:.1} s"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            e2e.notes
        );
        Ok(Run {
            e2e,
            official_msg_s,
            pulsar_rs_msg_s,
            reconnects,
            stalls,
            duplicates,
        })
    }
}

/// Runs `scripts/bench/official_consume.py` with the venv's Python (`BENCH_PYTHON` overrides;
/// `scripts/bench.sh` installs pulsar-client there).
pub async fn official_consume(
    url: &str,
    topic: &str,
    subscription: &str,
    count: usize,
) -> anyhow::Result<OfficialResult> {
    crate::script::run_json(
        "scripts/bench/official_consume.py",
        &[url, topic, subscription, &count.to_string()],
    )
    .await
}

/// Consumer reconnects in an ingester log: connections after a rule's first, and the Pulsar
/// client's own reconnects of a consumer whose connection went bad.
fn reconnects(log: &str) -> usize {
    let connected = log.matches("consumer connected").count();
    let inner = log.matches("is not valid").count();
    connected.saturating_sub(1) + inner
}

/// The stalls (seconds each) in a run's progress: spans over [`STALL`] in which neither the
/// messages consumed nor those acknowledged grew, between the first message consumed and the
/// last acknowledged.
fn stalls(progress: &[Progress], expected: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut last_change: Option<&Progress> = None;
    for p in progress.iter().filter(|p| p.consumed > 0) {
        match last_change {
            None => last_change = Some(p),
            Some(prev) if (p.consumed, p.acked) == (prev.consumed, prev.acked) => {
                if p.acked >= expected {
                    break;
                }
            }
            Some(prev) => {
                let gap = p.seconds - prev.seconds;
                if gap > STALL.as_secs_f64() {
                    out.push(gap);
                }
                last_change = Some(p);
            }
        }
    }
    out
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The summary row: the median run's figures, the worst run and the spread, judged against
/// the steady-throughput targets.
fn summary(runs: &[Run], count: usize) -> Row {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.e2e.msg_per_s()).collect();
    let median_rate = median(&mut rates);
    let worst = rates.first().copied().unwrap_or(0.0);
    let best = rates.last().copied().unwrap_or(0.0);
    let mut official: Vec<f64> = runs.iter().filter_map(|r| r.official_msg_s).collect();
    let median_official = (!official.is_empty()).then(|| median(&mut official));
    let mut pulsar_rs: Vec<f64> = runs.iter().map(|r| r.pulsar_rs_msg_s).collect();
    let median_rs = median(&mut pulsar_rs);
    let reconnects: usize = runs.iter().map(|r| r.reconnects).sum();
    let stalls: usize = runs.iter().map(|r| r.stalls.len()).sum();
    let duplicates: u64 = runs.iter().map(|r| r.duplicates).sum();
    let rss_max = |f: fn(&Row) -> Option<u64>| runs.iter().filter_map(|r| f(&r.e2e)).max();
    let mut row = Row {
        scenario: format!("steady e2e 1 KB, median of {}", runs.len()),
        messages: count as u64,
        bytes: (count * KB) as u64,
        seconds: count as f64 / median_rate.max(1e-9),
        ratio: median_official.map(|o| median_rate / o),
        peak_rss_ingester_kb: rss_max(|r| r.peak_rss_ingester_kb),
        peak_rss_uploader_kb: rss_max(|r| r.peak_rss_uploader_kb),
        notes: format!(
            "worst {worst:.0}, best {best:.0} msg/s (worst = {:.2} × median, spread {:.0} %); official client median {}; pulsar-rs median {median_rs:.0} msg/s (e2e = {:.2} ×); {reconnects} reconnects, {stalls} stalls > 1 s, {duplicates} duplicates over all runs",
            worst / median_rate.max(1e-9),
            (best - worst) / median_rate.max(1e-9) * 100.0,
            median_official
                .map(|o| format!("{o:.0} msg/s"))
                .unwrap_or_else(|| "not measured".into()),
            median_rate / median_rs.max(1e-9),
        ),
        ..Default::default()
    };
    row.judged = vec![
        Judged::new(
            "steady: e2e median ≥ 0.6 × official client",
            median_official.map(|o| median_rate / o),
            |x| x >= 0.6,
        ),
        Judged::new(
            "steady: e2e median ≥ 0.8 × pulsar-rs raw",
            Some(median_rate / median_rs.max(1e-9)),
            |x| x >= 0.8,
        ),
        Judged::new(
            "steady: worst run ≥ 0.7 × median",
            Some(worst / median_rate.max(1e-9)),
            |x| x >= 0.7,
        ),
        Judged::count("steady: consumer reconnects", reconnects),
        Judged::count("steady: stalls over 1 s", stalls),
    ];
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seconds: f64, consumed: u64, acked: u64) -> Progress {
        Progress {
            seconds,
            consumed,
            acked,
        }
    }

    #[test]
    fn a_stall_is_a_second_without_progress_while_messages_wait() {
        let progress = [
            p(0.0, 0, 0),
            // Connecting takes 2 s: not a stall (nothing consumed yet).
            p(2.0, 0, 0),
            p(2.1, 500, 0),
            p(2.2, 1000, 0),
            p(2.3, 1000, 0),
            // 1.5 s without progress.
            p(3.7, 1000, 0),
            p(3.8, 1500, 500),
            p(3.9, 2000, 1000),
            // Done: waiting after the last acknowledgement is not a stall.
            p(3.95, 2000, 2000),
            p(6.0, 2000, 2000),
        ];
        let found = stalls(&progress, 2000);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!((found[0] - 1.6).abs() < 1e-9, "{found:?}");
        let smooth = [p(0.0, 100, 0), p(0.5, 200, 0), p(1.2, 300, 100)];
        assert!(stalls(&smooth, 300).is_empty());
    }

    #[test]
    fn reconnects_count_connections_after_the_first_and_the_clients_own() {
        let log = "consumer connected\nx\nconsumer connected\nConsumer: connection 3 is not valid: Disconnected\n";
        assert_eq!(reconnects(log), 2);
        assert_eq!(reconnects("consumer connected\n"), 0);
        assert_eq!(reconnects(""), 0);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pair_s_mean() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
