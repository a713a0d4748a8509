//! Several rules at once, each on its own preloaded topic.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::messages::{preload, topic_name};
use crate::process::{write_bytes, CpuSnapshot};
use crate::stack::{finish_row, timeout_for, wait_backed_up, Bench};
use crate::table::Row;
use crate::KB;

impl Bench {
    /// 1, 4 and 16 rules at once, each on its own preloaded topic; the same total messages.
    pub async fn rules(&self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let total = self.n / 2;
        for rules in [1usize, 4, 16] {
            let mut stack = self.stack(&format!("rules-{rules}")).await?;
            let per_rule = total / rules;
            let topics: Vec<String> = (0..rules).map(|i| topic_name(&format!("r{i}"))).collect();
            let url = stack.pulsar.url();
            futures::future::try_join_all(
                topics
                    .iter()
                    .map(|topic| preload(&url, topic, per_rule, KB)),
            )
            .await?;
            stack.start_ingester().await?;
            stack.start_uploader().await?;
            let io_before = (
                stack.ingester.as_ref().and_then(write_bytes),
                CpuSnapshot::take(&stack),
            );
            let started = Instant::now();
            let mut expected = BTreeMap::new();
            for (i, topic) in topics.iter().enumerate() {
                let name = format!("bench{i}");
                stack.create_rule_async(&name, topic, &[]).await?;
                expected.insert(name, per_rule as u64);
            }
            let statuses = wait_backed_up(&stack, &expected, timeout_for(total * KB)).await?;
            let seconds = started.elapsed().as_secs_f64();
            let mut row = Row {
                scenario: format!("rules ×{rules}"),
                messages: (per_rule * rules) as u64,
                bytes: (per_rule * rules * KB) as u64,
                seconds,
                ..Default::default()
            };
            finish_row(&mut stack, &mut row, io_before, &topics, started, &statuses).await?;
            row.notes = format!("{per_rule} × 1 KB per rule; {}", row.notes);
            rows.push(row);
        }
        Ok(rows)
    }
}
