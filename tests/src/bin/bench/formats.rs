//! What each object format costs and gives: the same end-to-end backup written as gzip JSON
//! Lines, zstd JSON Lines and Parquet, each on a fresh stack with the official client's and
//! pulsar-rs's raw consume+ack rates on the same broker as its baselines; then DuckDB's time for a count and for
//! a time-range filter (the middle tenth of the publish times) over the objects stored, read
//! straight from the S3 server's directory.

use serde::Deserialize;

use crate::baseline::consume_all;
use crate::messages::{preload, topic_name};
use crate::stack::{finish_row, stored_bytes, timed_backup, Bench, BUCKET};
use crate::steady::official_consume;
use crate::table::{mb_of_kb, Judged, Row};
use crate::KB;

/// The formats compared: label, rule flags, object extension, and the end-to-end target as a
/// fraction of the official client's rate (the issue's; 0: none). The last row writes Parquet
/// segments of up to 500 MB, each many row groups: the writer's memory must not grow with them.
const FORMATS: [(&str, &[&str], &str, f64); 5] = [
    ("gzip JSONL", &[], ".jsonl.gz", 0.0),
    ("zstd JSONL", &["--compression", "zstd"], ".jsonl.zst", 0.7),
    // zstd's own default level, the rules' default before: the CPU it costs, the bytes it saves.
    (
        "zstd JSONL, level 3",
        &["--compression", "zstd", "--compression-level", "3"],
        ".jsonl.zst",
        0.0,
    ),
    ("Parquet", &["--format", "parquet"], ".parquet", 0.5),
    (
        "Parquet, 500 MB segments",
        &[
            "--format",
            "parquet",
            "--max-messages",
            "1000000",
            "--max-bytes",
            "500MB",
            "--window",
            "1h",
        ],
        ".parquet",
        0.0,
    ),
];

/// What `scripts/bench/duckdb_query.py` printed.
#[derive(Deserialize)]
struct QueryTimes {
    count: u64,
    count_s: f64,
    range_count: u64,
    range_s: f64,
    from: String,
    to: String,
}

impl Bench {
    /// One row per format, `count` 1 KB messages each.
    pub async fn formats(&self, count: usize) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        for (label, flags, extension, target) in FORMATS {
            eprintln!("   {label}");
            rows.push(
                self.format_run(count, label, flags, extension, target)
                    .await?,
            );
        }
        Ok(rows)
    }

    async fn format_run(
        &self,
        count: usize,
        label: &str,
        flags: &[&str],
        extension: &str,
        target: f64,
    ) -> anyhow::Result<Row> {
        let mut stack = self.stack("formats").await?;
        let topic = topic_name("formats");
        let url = stack.pulsar.url();
        let produce_s = preload(&url, &topic, count, KB).await?;
        let official = official_consume(&url, &topic, "official", count).await;
        let official_msg_s = official.as_ref().ok().map(|o| count as f64 / o.seconds);
        // pulsar-rs, the client the ingester is built on, drains its own subscription.
        let (rs_seconds, rs_deliveries) = consume_all(&url, &topic, count).await?;
        let pulsar_rs_msg_s = count as f64 / rs_seconds;

        let run = timed_backup(&mut stack, &topic, flags, count, KB).await?;
        let mut row = Row {
            scenario: format!("formats: {label}"),
            messages: count as u64,
            bytes: (count * KB) as u64,
            seconds: run.seconds,
            ..Default::default()
        };
        row.ratio = official_msg_s.map(|o| row.msg_per_s() / o);
        let (_, stored) = stored_bytes(&stack).await?;
        finish_row(
            &mut stack,
            &mut row,
            run.before,
            &[topic],
            run.started,
            &run.backed,
        )
        .await?;

        let objects = stack.s3.data_dir().join(BUCKET);
        let query = duckdb_query(&objects, extension).await;
        anyhow::ensure!(
            query.as_ref().map_or(true, |q| q.count == count as u64),
            "DuckDB counted {} messages, {count} were backed up",
            query.as_ref().map_or(0, |q| q.count)
        );
        let query_note = match &query {
            Ok(q) => format!(
                "DuckDB count {:.3} s, time-range filter {:.3} s ({} rows from {} to {})",
                q.count_s, q.range_s, q.range_count, q.from, q.to
            ),
            Err(err) => format!("DuckDB not measured: {err:#}"),
        };
        let official_note = match (&official, official_msg_s) {
            (Ok(o), Some(rate)) => {
                format!(
                    "official client {rate:.0} msg/s ({} deliveries)",
                    o.deliveries
                )
            }
            (Err(err), _) => format!("official client not measured: {err:#}"),
            _ => String::new(),
        };
        row.notes = format!(
            "{official_note}; pulsar-rs {pulsar_rs_msg_s:.0} msg/s ({rs_deliveries} deliveries), e2e = {:.2} × pulsar-rs; {:.1} MB stored ({:.2} × payload); {query_note}; {}; preload {produce_s:.1} s",
            row.msg_per_s() / pulsar_rs_msg_s,
            stored as f64 / 1e6,
            stored as f64 / row.bytes.max(1) as f64,
            row.notes
        );
        if target > 0.0 {
            let what = format!("{label} ≥ {target} × official client");
            row.judged.push(Judged {
                target: what,
                figure: row.ratio,
                met: row.ratio.is_some_and(|r| r >= target),
                count: false,
            });
        }
        let rss = [row.peak_rss_ingester_kb, row.peak_rss_uploader_kb]
            .into_iter()
            .flatten()
            .map(mb_of_kb)
            .fold(None, |max: Option<f64>, mb| {
                Some(max.map_or(mb, |m| m.max(mb)))
            });
        row.judged.push(Judged {
            target: format!("{label}: peak RSS ≤ 150 MB per daemon"),
            figure: rss,
            met: rss.is_some_and(|mb| mb <= 150.0),
            count: false,
        });
        Ok(row)
    }
}

/// Runs `scripts/bench/duckdb_query.py` over every object ending `extension` under `dir`.
async fn duckdb_query(dir: &std::path::Path, extension: &str) -> anyhow::Result<QueryTimes> {
    let glob = format!("{}/**/*{extension}", dir.display());
    crate::script::run_json("scripts/bench/duckdb_query.py", &[&glob]).await
}
