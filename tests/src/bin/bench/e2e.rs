//! End to end: rule creation → every message of a preloaded topic stored and acknowledged.

use crate::messages::{preload, size_label, topic_name};
use crate::stack::{finish_row, timed_backup, Bench};
use crate::table::Row;
use crate::KB;

impl Bench {
    /// The 1 KB end-to-end run (gzip), then the same with zstd and uncompressed: how much of
    /// the gap to the baseline is compression's CPU, and what zstd saves of it.
    pub async fn e2e_with_and_without_gzip(
        &self,
        baseline: Option<f64>,
    ) -> anyhow::Result<Vec<Row>> {
        let mut rows = self.e2e(KB, self.n, baseline).await?;
        for (args, label) in [
            (["--compression", "zstd"], ", zstd"),
            (["--compression", "none"], ", uncompressed"),
        ] {
            rows.extend(self.e2e_rule(KB, self.n, baseline, &args, label).await?);
        }
        Ok(rows)
    }

    /// Rule creation → every message stored and acknowledged, on a preloaded topic.
    pub async fn e2e(
        &self,
        size: usize,
        count: usize,
        baseline: Option<f64>,
    ) -> anyhow::Result<Vec<Row>> {
        self.e2e_rule(size, count, baseline, &[], "").await
    }

    pub async fn e2e_rule(
        &self,
        size: usize,
        count: usize,
        baseline: Option<f64>,
        rule_args: &[&str],
        label: &str,
    ) -> anyhow::Result<Vec<Row>> {
        let mut stack = self.stack(&format!("e2e-{size}")).await?;
        let topic = topic_name("e2e");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, size).await?;
        let run = timed_backup(&mut stack, &topic, rule_args, count, size).await?;
        let mut row = Row {
            scenario: format!("e2e {}{label}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds: run.seconds,
            ..Default::default()
        };
        row.ratio = baseline.map(|b| row.msg_per_s() / b);
        finish_row(
            &mut stack,
            &mut row,
            run.before,
            &[topic],
            run.started,
            &run.backed,
        )
        .await?;
        row.notes = format!("{}; preload {produce_s:.1} s", row.notes);
        Ok(vec![row])
    }
}
