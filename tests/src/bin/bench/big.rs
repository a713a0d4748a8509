//! One big segment of 1 MiB messages, streamed end to end.

use std::time::Instant;

use crate::messages::{preload, topic_name};
use crate::process::{write_bytes, CpuSnapshot};
use crate::stack::{finish_row, timeout_for, wait_backed_up, Bench};
use crate::table::Row;
use crate::MIB;

impl Bench {
    /// One ~500 MB segment (max_bytes 500MB) of 1 MiB messages, streamed end to end.
    pub async fn big(&self) -> anyhow::Result<Vec<Row>> {
        // 470 × 1 MiB records (~1.05 MB each as JSON) stay under max_bytes = 500 MB: one segment.
        let count = 470 / self.scale;
        let base = self.baseline(MIB, count).await?;
        let mut stack = self.stack("big").await?;
        let topic = topic_name("big");
        let max_bytes = if self.scale > 1 { "50MB" } else { "500MB" };
        let produce_s = preload(&stack.pulsar.url(), &topic, count, MIB).await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let io_before = (
            stack.ingester.as_ref().and_then(write_bytes),
            CpuSnapshot::take(&stack),
        );
        let started = Instant::now();
        stack
            .create_rule_async(
                "bench",
                &topic,
                &["--max-bytes", max_bytes, "--max-messages", "1000000"],
            )
            .await?;
        let expected = [("bench".to_string(), count as u64)].into();
        let statuses = wait_backed_up(&stack, &expected, timeout_for(count * MIB) * 2).await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut row = Row {
            scenario: format!("big segment ({max_bytes})"),
            messages: count as u64,
            bytes: (count * MIB) as u64,
            seconds,
            ..Default::default()
        };
        finish_row(
            &mut stack,
            &mut row,
            io_before,
            &[topic],
            started,
            &statuses,
        )
        .await?;
        row.ratio = Some(row.msg_per_s() / base.msg_per_s());
        row.notes = format!("1 MiB messages; {}; preload {produce_s:.1} s", row.notes);
        Ok(vec![base, row])
    }
}
