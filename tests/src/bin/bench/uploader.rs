//! The uploader alone (segments sealed beforehand) against a bare aws-sdk-s3 loop uploading the
//! same files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;

use crate::messages::{preload, topic_name};
use crate::process::peak_rss_kb;
use crate::stack::{statuses, tails, timeout_for, Bench, BARE_BUCKET, BUCKET};
use crate::table::{mb_of_kb, row_line, Row};
use crate::{KB, MIB};

/// The uploader's defaults (uploader/src/config.rs): 8 MiB parts, multipart above 8 MiB, 4 at once.
pub const PART_SIZE: usize = 8 * MIB;
pub const UPLOAD_CONCURRENCY: usize = 4;

/// How the `uploader*` scenarios run the uploader.
#[derive(Debug, Clone, Copy)]
pub struct UploaderCase {
    /// Scenario (and stack directory) name.
    pub name: &'static str,
    /// Appended to the rows' names.
    pub label: &'static str,
    /// The S3 server on HTTPS.
    pub https: bool,
    /// The uploader's `read_local` (the default, true: it reads the sealed files from the
    /// ingester's disk, as on one host; false: over ReadSegment, as in a split deployment).
    pub read_local: bool,
}

impl UploaderCase {
    pub const LOCAL: UploaderCase = UploaderCase {
        name: "uploader",
        label: "",
        https: false,
        read_local: true,
    };
    pub const LOCAL_HTTPS: UploaderCase = UploaderCase {
        name: "uploader-https",
        label: ", https",
        https: true,
        read_local: true,
    };
    pub const GRPC: UploaderCase = UploaderCase {
        name: "uploader-grpc",
        label: ", over gRPC",
        https: false,
        read_local: false,
    };
}

impl Bench {
    /// [`Bench::uploader`] `runs` times, each on a fresh stack; see [`median_run`].
    pub async fn uploader_repeated(
        &self,
        case: UploaderCase,
        runs: u32,
    ) -> anyhow::Result<Vec<Row>> {
        let mut all = Vec::new();
        for run in 1..=runs {
            let rows = self.uploader(case).await?;
            if runs > 1 {
                for row in &rows {
                    eprintln!("   run {run}/{runs}: {}", row_line(row));
                }
            }
            all.push(rows);
        }
        Ok(median_run(all))
    }

    /// The uploader alone (segments sealed beforehand) vs a bare aws-sdk-s3 loop, to an S3
    /// server on plain HTTP or HTTPS, reading the sealed files locally or over ReadSegment.
    pub async fn uploader(&self, case: UploaderCase) -> anyhow::Result<Vec<Row>> {
        let label = case.label;
        let mut stack = self.stack_with(case.name, case.https).await?;
        let topic = topic_name("upl");
        let count = self.n;
        preload(&stack.pulsar.url(), &topic, count, KB).await?;
        stack.start_ingester().await?;
        stack
            .create_rule_async(
                "bench",
                &topic,
                &["--max-messages", "100000", "--max-bytes", "64MiB"],
            )
            .await?;
        // Spool everything, then seal the open segment.
        let deadline = Instant::now() + timeout_for(count * KB);
        loop {
            let s = statuses(&stack).await?.remove("bench").unwrap_or_default();
            if s["spooled_messages"].as_u64().unwrap_or(0) >= count as u64 {
                break;
            }
            if Instant::now() > deadline {
                bail!("spooling did not finish: {s}{}", tails(&stack));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stack.ctl_json_async(&["rule", "flush", "bench"]).await?;
        // Wait until every segment is sealed (nothing open or closed-but-unsealed).
        let segments = loop {
            let v = stack.ctl_json_async(&["segments", "bench"]).await?;
            let list = v["segments"].as_array().cloned().unwrap_or_default();
            let all_sealed = !list.is_empty() && list.iter().all(|s| s["state"] == "sealed");
            if all_sealed {
                break list;
            }
            if Instant::now() > deadline {
                bail!("segments were not sealed: {v}{}", tails(&stack));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let seg_dir = stack.path("ingester").join("segments").join("bench");
        let mut files: Vec<Vec<u8>> = Vec::new();
        for entry in
            std::fs::read_dir(&seg_dir).with_context(|| format!("reading {}", seg_dir.display()))?
        {
            let path = entry?.path();
            // Sealed segment files only: the record logs (`.log`) sit in the same folder.
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_file() && (name.ends_with(".jsonl.gz") || name.ends_with(".jsonl")) {
                files.push(std::fs::read(&path)?);
            }
        }
        let listed_bytes: u64 = segments
            .iter()
            .map(|s| s["file_bytes"].as_u64().unwrap_or(0))
            .sum();
        let file_bytes: u64 = files.iter().map(|f| f.len() as u64).sum();
        if files.len() != segments.len() || file_bytes != listed_bytes {
            eprintln!(
                "   note: {} files ({file_bytes} B) in {} vs {} sealed segments ({listed_bytes} B)",
                files.len(),
                seg_dir.display(),
                segments.len()
            );
        }

        let rss_spooled = stack.ingester.as_ref().and_then(peak_rss_kb);
        // Both timed phases (the uploader's and the bare loop's) start with no dirty page cache
        // left by what came before them, so neither pays the other's writeback.
        flush_page_cache().await;
        let started = Instant::now();
        let read_local = if case.read_local { "true" } else { "false" };
        stack.uploader_extra.args = vec!["--read-local".into(), read_local.into()];
        stack.start_uploader().await?;
        // The objects' arrival is watched in the store itself (a cheap in-process ListObjects),
        // as `status` answers slowly while the ingester acknowledges and frees the spool.
        let mut stored_s: Option<f64> = None;
        let store = stack.s3.client();
        loop {
            if stored_s.is_none() {
                let listed = store.list_objects_v2().bucket(BUCKET).send().await?;
                let objects = listed
                    .contents()
                    .iter()
                    .filter(|o| !o.key().is_some_and(harness::is_manifest_key))
                    .count();
                if objects >= segments.len() {
                    stored_s = Some(started.elapsed().as_secs_f64());
                }
                if started.elapsed() > timeout_for(count * KB) {
                    bail!("the objects did not appear{}", tails(&stack));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let s = statuses(&stack).await?.remove("bench").unwrap_or_default();
            if s["sealed_segments"].as_u64() == Some(0) && s["spooled_messages"].as_u64() == Some(0)
            {
                break;
            }
            if started.elapsed() > timeout_for(count * KB) {
                bail!("uploads did not finish: {s}{}", tails(&stack));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let rss_u = stack.uploader.as_ref().and_then(peak_rss_kb);
        let rss_i = stack.ingester.as_ref().and_then(peak_rss_kb);
        // The segments upload side by side: the slowest one's read → stored time is the
        // uploader's own share, without its process start and first ListSealed.
        let uploader_log = stack.uploader.as_ref().map(|u| u.log()).unwrap_or_default();
        let upload_s = max_upload_ms(&uploader_log).map(|ms| ms as f64 / 1000.0);
        let sources = read_sources(&uploader_log);
        stack.uploader = None;
        stack.ingester = None;

        flush_page_cache().await;
        let bare_s = bare_sdk_loop(&stack.s3.client(), &files).await?;
        let sizes: Vec<String> = files
            .iter()
            .map(|f| format!("{:.1}", f.len() as f64 / 1e6))
            .collect();
        let bare = Row {
            scenario: format!("bare SDK PUT/multipart{label}"),
            messages: count as u64,
            bytes: file_bytes,
            seconds: bare_s,
            notes: format!(
                "aws-sdk-s3, {} objects [{} MB], multipart > 8 MiB (8 MiB parts), {UPLOAD_CONCURRENCY} at once",
                files.len(),
                sizes.join(", ")
            ),
            ..Default::default()
        };
        let stored_s = stored_s.unwrap_or(seconds);
        let upl = Row {
            scenario: format!("uploader alone{label}"),
            messages: count as u64,
            bytes: file_bytes,
            seconds,
            ratio: Some(bare_s / seconds),
            peak_rss_ingester_kb: rss_i,
            peak_rss_uploader_kb: rss_u,
            notes: format!(
                "{} sealed segments; uploader start → all committed, acked and freed (spool empty); MB = object bytes; ingester peak RSS before the uploader started: {}",
                segments.len(),
                rss_spooled.map(|k| format!("{:.0} MB", mb_of_kb(k))).unwrap_or_default()
            ),
            ..Default::default()
        };
        let committed = Row {
            scenario: format!("uploader alone, to stored{label}"),
            seconds: stored_s,
            ratio: Some(bare_s / stored_s),
            notes: format!(
                "uploader start → every object listed in the store (ListObjects every 20 ms; commit, ack and free not included); segments read from: {sources}{}",
                upload_s
                    .map(|u| format!(
                        "; the uploads themselves (slowest segment's upload_ms in the uploader's log) took {u:.2} s = {:.2} × the bare loop's speed, the rest is process start and first ListSealed",
                        bare_s / u
                    ))
                    .unwrap_or_default()
            ),
            ..upl.clone()
        };
        Ok(vec![upl, committed, bare])
    }
}

/// How many segments the uploader read from each source (`source=X` in its log), e.g.
/// "4 local_file".
pub fn read_sources(log: &str) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for source in harness::stored_segment_sources(log) {
        *counts.entry(source).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    parts.join(", ")
}

/// The largest `upload_ms=N` in a daemon log (text format, colours or not).
pub fn max_upload_ms(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|line| {
            let plain = harness::daemon_log::strip_ansi(line);
            let rest = plain.split("upload_ms=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
}

/// Writes every dirty page to disk (`sync`): a timed phase should not pay for the writeback of
/// the one before it. Best effort: without `sync` the phase just starts.
pub async fn flush_page_cache() {
    if let Err(err) = tokio::process::Command::new("sync").status().await {
        eprintln!("   note: sync failed: {err}");
    }
}

/// Of several runs of the same scenario, the rows of the run whose "to stored" ratio is the
/// median, with every run's ratio (and bare-loop time) added to the notes.
pub fn median_run(mut runs: Vec<Vec<Row>>) -> Vec<Row> {
    if runs.len() < 2 {
        return runs.pop().unwrap_or_default();
    }
    let to_stored = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.scenario.contains("to stored"))
            .and_then(|r| r.ratio)
            .unwrap_or(0.0)
    };
    let bare_s = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.scenario.starts_with("bare"))
            .map_or(0.0, |r| r.seconds)
    };
    runs.sort_by(|a, b| to_stored(a).total_cmp(&to_stored(b)));
    let ratios: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2}", to_stored(r)))
        .collect();
    let bares: Vec<String> = runs.iter().map(|r| format!("{:.2}", bare_s(r))).collect();
    let n = runs.len();
    let mut median = runs.swap_remove(n / 2);
    for row in &mut median {
        row.notes.push_str(&format!(
            "; the median of {n} runs by the to-stored ratio (to stored: {}; bare loop: {} s)",
            ratios.join(" / "),
            bares.join(" / ")
        ));
    }
    median
}

/// PUTs `objects` (multipart above 8 MiB, 8 MiB parts), `UPLOAD_CONCURRENCY` at a time.
pub async fn bare_sdk_loop(
    client: &aws_sdk_s3::Client,
    objects: &[Vec<u8>],
) -> anyhow::Result<f64> {
    let objects: Vec<Arc<Vec<u8>>> = objects.iter().cloned().map(Arc::new).collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(objects.into_iter().enumerate())
        .map(|(i, body)| {
            let client = client.clone();
            async move { put_one(&client, &format!("bare/{i}.bin"), body).await }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn put_one(
    client: &aws_sdk_s3::Client,
    key: &str,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    if body.len() <= PART_SIZE {
        client
            .put_object()
            .bucket(BARE_BUCKET)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .with_context(|| format!("PUT {key}"))?;
        return Ok(());
    }
    let upload = client
        .create_multipart_upload()
        .bucket(BARE_BUCKET)
        .key(key)
        .send()
        .await
        .with_context(|| format!("CreateMultipartUpload {key}"))?;
    let upload_id = upload.upload_id().context("no upload id")?.to_string();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
        let number = i32::try_from(i + 1)?;
        let part = client
            .upload_part()
            .bucket(BARE_BUCKET)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .with_context(|| format!("UploadPart {key} #{number}"))?;
        parts.push(
            CompletedPart::builder()
                .set_e_tag(part.e_tag().map(str::to_string))
                .part_number(number)
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BARE_BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .with_context(|| format!("CompleteMultipartUpload {key}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_run_picks_the_middle_ratio_and_lists_them_all() {
        let run = |stored: f64, bare: f64| {
            vec![
                Row {
                    scenario: "uploader alone".into(),
                    ratio: Some(stored - 0.02),
                    ..Row::default()
                },
                Row {
                    scenario: "uploader alone, to stored".into(),
                    ratio: Some(stored),
                    ..Row::default()
                },
                Row {
                    scenario: "bare SDK PUT/multipart".into(),
                    seconds: bare,
                    ..Row::default()
                },
            ]
        };
        let picked = median_run(vec![run(0.78, 0.41), run(0.66, 0.40), run(0.74, 0.43)]);
        assert_eq!(picked[1].ratio, Some(0.74));
        assert_eq!(picked[2].seconds, 0.43);
        assert!(
            picked[1].notes.contains("to stored: 0.66 / 0.74 / 0.78"),
            "{}",
            picked[1].notes
        );
        assert!(picked[2].notes.contains("bare loop: 0.40 / 0.43 / 0.41 s"));
        let single = median_run(vec![run(0.7, 0.4)]);
        assert!(single[1].notes.is_empty());
    }

    #[test]
    fn upload_ms_is_read_from_coloured_and_plain_logs() {
        let log =
            "x \u{1b}[3mupload_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m508 \u{1b}[3mattempt\u{1b}[0m=1\n\
                   y upload_ms=546 attempt=1\nz no timing here\n";
        assert_eq!(max_upload_ms(log), Some(546));
        assert_eq!(max_upload_ms("nothing"), None);
        let log = "a segment stored and committed upload_ms=5 source=local_file attempt=1\n\
                   b segment stored and committed upload_ms=6 \u{1b}[3msource\u{1b}[0m\u{1b}[2m=\u{1b}[0mlocal_file x\n\
                   c segment stored and committed upload_ms=7 source=ingester attempt=2\n\
                   d retrying source=ingester\n";
        assert_eq!(read_sources(log), "1 ingester, 2 local_file");
    }
}
