//! Restore: a backed-up topic put back into a new topic through both daemons, against raw
//! pulsar-rs producing the same messages to the same broker.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::messages::{preload, size_label, topic_name};
use crate::stack::{timeout_for, wait_backed_up, Bench};
use crate::table::Row;

impl Bench {
    /// Preloads `count` messages of `size` bytes (the raw produce figure: pulsar-rs, batching,
    /// the same broker), backs them up, then restores them into a new topic and times the job
    /// from `restore create` to `done`.
    pub async fn restore(&self, size: usize, count: usize) -> anyhow::Result<Vec<Row>> {
        let mut stack = self.stack(&format!("restore-{size}")).await?;
        let topic = topic_name("restore-src");
        let produce_s = preload(&stack.pulsar.url(), &topic, count, size).await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        stack
            .create_rule_async("bench", &topic, &["--max-messages", "20000"])
            .await?;
        let expected = [("bench".to_string(), count as u64)].into();
        wait_backed_up(&stack, &expected, timeout_for(count * size)).await?;

        let target = topic_name("restored");
        let service_url = format!("pulsar://{}", stack.pulsar.broker_addr());
        let started = Instant::now();
        stack
            .ctl_json_async(&[
                "restore",
                "create",
                "bench",
                "--rule",
                "bench",
                "--to-topic",
                &target,
                "--service-url",
                &service_url,
            ])
            .await?;
        let deadline = started + timeout_for(count * size) + Duration::from_secs(60);
        loop {
            let show = stack.ctl_json_async(&["restore", "show", "bench"]).await?;
            match show["state"].as_str() {
                Some("done") => {
                    if show["produced"].as_u64() != Some(count as u64) {
                        bail!("restore done with {show}");
                    }
                    break;
                }
                Some("failed") => bail!("restore failed: {show}"),
                _ if Instant::now() > deadline => bail!("restore not done in time: {show}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let raw = Row {
            scenario: format!("raw produce {} (pulsar-rs)", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds: produce_s,
            notes: "pulsar-rs producer, batching, through the relay".into(),
            ..Default::default()
        };
        let mut row = Row {
            scenario: format!("restore {}", size_label(size)),
            messages: count as u64,
            bytes: (count * size) as u64,
            seconds,
            ..Default::default()
        };
        row.ratio = Some(row.msg_per_s() / raw.msg_per_s());
        row.peak_rss_ingester_kb = stack
            .ingester
            .as_ref()
            .and_then(crate::process::peak_rss_kb);
        row.peak_rss_uploader_kb = stack
            .uploader
            .as_ref()
            .and_then(crate::process::peak_rss_kb);
        row.notes = "restore create → done: manifest plan, GET + gunzip, RestoreProduce calls of 500, batch entries of ≤ 1,000 messages or 128 KB, 2 in flight, each call returns once all are confirmed; ratio vs raw produce".into();
        Ok(vec![raw, row])
    }
}
