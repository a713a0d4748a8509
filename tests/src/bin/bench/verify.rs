//! `verify` on a backup of 1,000 objects (scaled down by --quick): the default LIST/HEAD-based
//! check and `--deep`, through the real CLI and uploader against s3s-fs.
//!
//! The objects and their manifest entries are written straight into the bucket, as the uploader
//! writes them (gzip JSON Lines, `content-crc32c` metadata, entries naming the PUT's ETag): what
//! verify costs depends on the number and size of the objects, not on how they got there, and
//! 1,000 segments through the whole pipeline would take most of the run.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{bail, Context};
use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{json, Value};

use crate::messages::topic_name;
use crate::stack::{Bench, BUCKET};
use crate::table::Row;

/// Records per object (about 250 bytes each before gzip).
const RECORDS: u64 = 100;

impl Bench {
    pub async fn verify(&self) -> anyhow::Result<Vec<Row>> {
        let objects = (1000 / self.scale).max(10) as u64;
        let mut stack = self.stack("verify").await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        let topic = topic_name("verify");
        let short = topic.rsplit('/').next().unwrap_or_default().to_string();
        stack
            .create_rule_async("bench", &topic, &["--prefix", "v/", "--window", "1h"])
            .await?;
        let client = stack.s3.client();
        let written: Vec<(u64, Value)> = futures::stream::iter(0..objects)
            .map(|i| put_object(&client, &short, i))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let bytes: u64 = written.iter().map(|(size, _)| size).sum();

        let mut rows = Vec::new();
        for (deep, rolled_up) in [(false, false), (true, false), (false, true)] {
            if rolled_up {
                // The hour's rollup, as the uploader writes it once the hour is final: the
                // per-object entries stay, but are no longer read.
                let rollup = json!({
                    "format": 1, "rule": "bench", "hour": "2026-11-24T02:00:00.000Z",
                    "entries": written.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
                });
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key("v/.tdmq-backup/manifest/bench/2026/11/24/02/_hour.json")
                    .body(ByteStream::from(serde_json::to_vec(&rollup)?))
                    .send()
                    .await?;
            }
            let mut args = vec!["verify", "bench"];
            if deep {
                args.push("--deep");
            }
            let started = Instant::now();
            let v = stack.ctl_json_async(&args).await?;
            let seconds = started.elapsed().as_secs_f64();
            if v["objects"] != objects || v["problems"] != Value::Array(vec![]) {
                bail!("verify did not see the {objects} intact objects: {v}");
            }
            rows.push(Row {
                scenario: match (deep, rolled_up) {
                    (true, _) => "verify --deep",
                    (false, false) => "verify",
                    (false, true) => "verify, rolled up",
                }
                .into(),
                messages: objects * RECORDS,
                bytes,
                seconds,
                notes: format!(
                    "{objects} objects, {:.2} s per 1,000 objects, {} store requests (s3s-fs lists no ETag: a HEAD per object)",
                    seconds * 1000.0 / objects as f64,
                    v["requests"]
                ),
                ..Default::default()
            });
        }
        Ok(rows)
    }
}

/// Writes object `i` (ids `5:i*100 ..` of a non-partitioned topic) and its manifest entry;
/// returns the object's size and the entry.
async fn put_object(
    client: &aws_sdk_s3::Client,
    topic: &str,
    i: u64,
) -> anyhow::Result<(u64, Value)> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for r in 0..RECORDS {
        let entry = i * RECORDS + r;
        let publish = 1_795_488_000_000u64 + entry;
        writeln!(
            gz,
            "{}",
            json!({
                "message_id": format!("5:{entry}:-1:-1"),
                "topic": format!("persistent://public/default/{topic}"),
                "publish_time": proto::types::time::rfc3339_from_millis(publish),
                "event_time": null, "key": format!("k{entry}"), "properties": {},
                "producer_name": "bench", "sequence_id": entry,
                "payload": format!("{:0>160x}", u128::from(rand::random::<u64>()) * u128::from(entry + 1)),
                "payload_encoding": "utf8",
            })
        )?;
    }
    let body = gz.finish()?;
    let crc = format!("{:08x}", crc32c::crc32c(&body));
    let name = format!(
        "bench-20261124T020000Z-5_{}_-1_-1-00000000bench000.jsonl.gz",
        i * RECORDS
    );
    let key = format!("v/public/default/{topic}/2026/11/24/02/{name}");
    let size = body.len() as u64;
    let put = client
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .metadata("content-crc32c", &crc)
        .metadata("rule", "bench")
        .body(ByteStream::from(body))
        .send()
        .await
        .with_context(|| format!("putting {key}"))?;
    let first = i * RECORDS;
    let last = first + RECORDS - 1;
    let time = |e: u64| proto::types::time::rfc3339_from_millis(1_795_488_000_000 + e);
    let entry = json!({
        "format": 1, "rule": "bench", "key": key, "size": size, "crc32c": crc,
        "etag": put.e_tag().unwrap_or_default(), "content_encoding": "gzip",
        "messages": RECORDS, "record_bytes": 0, "window_start": "2026-11-24T02:00:00.000Z",
        "min_publish_time": time(first), "max_publish_time": time(last), "source": 0,
        "segment_no": i,
        "partitions": [{
            "partition": -1, "first_message_id": format!("5:{first}:-1:-1"),
            "last_message_id": format!("5:{last}:-1:-1"), "messages": RECORDS,
            "last_completes_entry": true, "min_publish_time": time(first), "max_publish_time": time(last),
        }],
    });
    client
        .put_object()
        .bucket(BUCKET)
        .key(format!(
            "v/.tdmq-backup/manifest/bench/2026/11/24/02/{name}.json"
        ))
        .body(ByteStream::from(serde_json::to_vec(&entry)?))
        .send()
        .await?;
    Ok((size, entry))
}
