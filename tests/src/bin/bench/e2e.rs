//! End to end: rule creation → every message of a preloaded topic stored and acknowledged.

use std::time::Instant;

use crate::messages::{preload, size_label, topic_name};
use crate::process::{write_bytes, CpuSnapshot};
use crate::stack::{finish_row, timeout_for, wait_backed_up, Bench};
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
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let io_before = (
            stack.ingester.as_ref().and_then(write_bytes),
            CpuSnapshot::take(&stack),
        );
        let started = Instant::now();
        stack.create_rule_async("bench", &topic, rule_args).await?;
        let expected = [("bench".to_string(), count as u64)].into();
        let statuses = wait_backed_up(&stack, &expected, timeout_for(count * size)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut row = Row {
            scenario: format!("e2e {}{label}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds,
            ..Default::default()
        };
        row.ratio = baseline.map(|b| row.msg_per_s() / b);
        finish_row(
            &mut stack,
            &mut row,
            io_before,
            &[topic],
            started,
            &statuses,
        )
        .await?;
        row.notes = format!("{}; preload {produce_s:.1} s", row.notes);
        Ok(vec![row])
    }
}
