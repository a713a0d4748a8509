//! The oracle: reads what the backup wrote and checks it against what was produced.
//!
//! Guarantee 2 (docs/reference.md §11) is "every message lands in exactly one object". The
//! oracle checks it from the outside, by reading every object back (from S3 or from a `file://`
//! store) and matching records to the produced [`SampleMessage`]s by payload, which embeds each
//! message's index and is therefore unique.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use flate2::read::MultiGzDecoder;
use serde_json::Value;

use crate::producer::SampleMessage;

/// How many offenders an error message lists per kind of problem.
const SHOW: usize = 10;

/// One stored object, decoded.
#[derive(Debug, Clone)]
pub struct BackupObject {
    pub key: String,
    /// User metadata (`x-amz-meta-*`); empty for a `file://` store.
    pub metadata: HashMap<String, String>,
    /// One JSON value per line, in order.
    pub records: Vec<Value>,
    /// Size as stored (compressed size for `.gz`).
    pub content_length: u64,
    /// CRC32C of the object's bytes as stored, `{:08x}` (to compare with its metadata).
    pub content_crc32c: String,
    /// Sum of the uncompressed JSON lines' lengths, newlines included: what `max_bytes` limits.
    pub record_bytes: u64,
}

/// Counts from a successful [`check_exactly_once`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub objects: usize,
    pub records: usize,
    pub max_records_per_object: usize,
    pub max_record_bytes_per_object: u64,
}

/// Whether `key` is one of tdmq-backup's own files (the manifest, under `{prefix}.tdmq-backup/`)
/// rather than a backup object.
pub fn is_manifest_key(key: &str) -> bool {
    key.starts_with(".tdmq-backup/")
        || key.contains("/.tdmq-backup/")
        || key.contains(".tdmq-backup/manifest/")
}

/// The bytes of the object `key` in `bucket`, as stored.
pub async fn object_bytes(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Vec<u8>> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("reading s3://{bucket}/{key}"))?;
    let body = object
        .body
        .collect()
        .await
        .with_context(|| format!("reading s3://{bucket}/{key}"))?;
    Ok(body.into_bytes().to_vec())
}

/// Every object under `prefix` in `bucket` (the manifest's files too), as (key, size), in the
/// store's listing order.
pub async fn list_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
        for o in page.contents() {
            if let Some(key) = o.key() {
                out.push((key.to_string(), o.size().unwrap_or(0)));
            }
        }
    }
    Ok(out)
}

/// The keys of every backup object under `prefix` in `bucket` (the manifest's files left out),
/// sorted.
pub async fn backup_keys(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = list_objects(client, bucket, prefix)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !is_manifest_key(key))
        .collect();
    keys.sort();
    Ok(keys)
}

/// Reads every backup object under `prefix` in `bucket` (the manifest's files left out),
/// sorted by key.
pub async fn read_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<BackupObject>> {
    let keys = backup_keys(client, bucket, prefix).await?;

    let mut objects = Vec::with_capacity(keys.len());
    for key in keys {
        let output = client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .with_context(|| format!("getting s3://{bucket}/{key}"))?;
        let metadata = output.metadata().cloned().unwrap_or_default();
        let body = output
            .body
            .collect()
            .await
            .with_context(|| format!("reading the body of s3://{bucket}/{key}"))?
            .into_bytes();
        objects.push(decode_object(key, metadata, &body)?);
    }
    Ok(objects)
}

/// Reads every object of `bucket` in a `file://` store rooted at `root` (object `K` is the file
/// `root/bucket/K`), sorted by key.
///
/// Only files named like objects (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`, `.parquet`) are read, so temporary files and
/// metadata sidecars the store may keep next to them are not mistaken for objects.
pub fn read_dir_store(root: &Path, bucket: &str) -> anyhow::Result<Vec<BackupObject>> {
    let bucket_dir = root.join(bucket);
    let mut files = Vec::new();
    collect_files(&bucket_dir, &mut files)?;
    let mut objects = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&bucket_dir)
            .with_context(|| format!("{} is outside {}", path.display(), bucket_dir.display()))?;
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if ![".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"]
            .iter()
            .any(|ext| key.ends_with(ext))
        {
            continue;
        }
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        objects.push(decode_object(key, HashMap::new(), &body)?);
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let file_type = entry
            .file_type()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        if file_type.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if file_type.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Decodes one object's bytes: gunzip if the key ends in `.gz`, unzstd if in `.zst` (with the
/// zstd crate's decoder, not the uploader's code), then one JSON value a line.
pub fn decode_object(
    key: String,
    metadata: HashMap<String, String>,
    body: &[u8],
) -> anyhow::Result<BackupObject> {
    let text = if key.ends_with(".gz") {
        let mut text = Vec::new();
        MultiGzDecoder::new(body)
            .read_to_end(&mut text)
            .with_context(|| format!("gunzipping {key}"))?;
        text
    } else if key.ends_with(".zst") {
        zstd::stream::decode_all(body).with_context(|| format!("unzstding {key}"))?
    } else if key.ends_with(".jsonl") {
        body.to_vec()
    } else if key.ends_with(".parquet") {
        let records = crate::parquet_object::records(&key, body)?;
        // What `max_bytes` counts: the records' JSON Lines bytes (these are close to them).
        let record_bytes = records.iter().map(|r| r.to_string().len() as u64 + 1).sum();
        return Ok(BackupObject {
            key,
            metadata,
            records,
            content_length: body.len() as u64,
            content_crc32c: format!("{:08x}", crc32c::crc32c(body)),
            record_bytes,
        });
    } else {
        bail!("object {key} ends in neither .jsonl, .jsonl.gz, .jsonl.zst nor .parquet");
    };
    let text = String::from_utf8(text).with_context(|| format!("{key} is not UTF-8"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        bail!("{key}: the last line has no newline");
    }
    let mut records = Vec::new();
    for (n, line) in text.split_terminator('\n').enumerate() {
        let value = serde_json::from_str(line)
            .with_context(|| format!("{key}: line {} is not JSON: {line:.200}", n + 1))?;
        records.push(value);
    }
    Ok(BackupObject {
        key,
        metadata,
        records,
        content_length: body.len() as u64,
        content_crc32c: format!("{:08x}", crc32c::crc32c(body)),
        record_bytes: text.len() as u64,
    })
}

/// Checks that every expected message appears in exactly one object exactly once, with its key,
/// properties and event time, and that nothing else does. Errors list the first offenders.
pub fn check_exactly_once(
    objects: &[BackupObject],
    expected: &[SampleMessage],
) -> anyhow::Result<Report> {
    let mut by_payload: HashMap<&[u8], usize> = HashMap::with_capacity(expected.len());
    for (i, message) in expected.iter().enumerate() {
        if let Some(first) = by_payload.insert(&message.payload, i) {
            bail!("expected messages {first} and {i} have the same payload; the oracle needs unique payloads");
        }
    }

    let mut report = Report {
        objects: objects.len(),
        ..Report::default()
    };
    let mut problems = Problems::default();
    // message_id → where it was first seen; payload index → where it was first seen.
    let mut seen_ids: HashMap<String, (String, usize)> = HashMap::new();
    let mut seen_index: HashMap<usize, (String, usize)> = HashMap::new();

    for object in objects {
        report.records += object.records.len();
        report.max_records_per_object = report.max_records_per_object.max(object.records.len());
        report.max_record_bytes_per_object =
            report.max_record_bytes_per_object.max(object.record_bytes);
        if object.records.is_empty() {
            problems.add("empty objects", object.key.clone());
        }
        for (line, record) in object.records.iter().enumerate() {
            let place = format!("{}:{}", object.key, line + 1);
            let message_id = match record.get("message_id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => {
                    problems.add("records without a message_id", place);
                    continue;
                }
            };
            if let Some((first_key, first_line)) = seen_ids.get(&message_id) {
                problems.add(
                    "duplicate message ids",
                    format!("{message_id} at {place} and {first_key}:{first_line}"),
                );
            } else {
                seen_ids.insert(message_id.clone(), (object.key.clone(), line + 1));
            }
            let payload = match decode_payload(record) {
                Ok(payload) => payload,
                Err(error) => {
                    problems.add(
                        "undecodable payloads",
                        format!("{message_id} at {place}: {error:#}"),
                    );
                    continue;
                }
            };
            let Some(&index) = by_payload.get(payload.as_slice()) else {
                problems.add(
                    "unexpected payloads",
                    format!(
                        "{message_id} at {place}: {:.80}",
                        String::from_utf8_lossy(&payload)
                    ),
                );
                continue;
            };
            if let Some((first_key, first_line)) = seen_index.get(&index) {
                problems.add(
                    "duplicate payloads",
                    format!("#{index} ({message_id}) at {place} and {first_key}:{first_line}"),
                );
                continue;
            }
            seen_index.insert(index, (object.key.clone(), line + 1));
            for mismatch in field_mismatches(record, &expected[index]) {
                problems.add(
                    "field mismatches",
                    format!("#{index} ({message_id}) at {place}: {mismatch}"),
                );
            }
        }
    }

    let missing: Vec<usize> = (0..expected.len())
        .filter(|i| !seen_index.contains_key(i))
        .collect();
    for index in &missing {
        problems.add("missing messages (payload indexes)", format!("#{index}"));
    }

    if problems.is_empty() {
        Ok(report)
    } else {
        bail!(
            "backup is not exactly-once ({} objects, {} records, {} expected messages):\n{}",
            report.objects,
            report.records,
            expected.len(),
            problems.render()
        )
    }
}

/// The payload bytes of a record, per its `payload_encoding`.
pub fn decode_payload(record: &Value) -> anyhow::Result<Vec<u8>> {
    let payload = record
        .get("payload")
        .and_then(Value::as_str)
        .context("no string `payload`")?;
    match record.get("payload_encoding").and_then(Value::as_str) {
        Some("utf8") => Ok(payload.as_bytes().to_vec()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .context("`payload` is not valid base64"),
        other => bail!("unknown payload_encoding {other:?}"),
    }
}

/// `event_time` as the contract writes it: RFC 3339, UTC, milliseconds, `Z`.
pub fn format_time_ms(ms: u64) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    Some(DateTime::from_timestamp_millis(ms)?.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn field_mismatches(record: &Value, expected: &SampleMessage) -> Vec<String> {
    let mut out = Vec::new();

    let key = record.get("key").unwrap_or(&Value::Null);
    let want_key = expected.key.as_deref().map_or(Value::Null, Value::from);
    if key != &want_key {
        out.push(format!("key {key} != expected {want_key}"));
    }
    let key_encoding = record.get("key_encoding").unwrap_or(&Value::Null);
    let want_encoding = if expected.key_base64 && expected.key.is_some() {
        Value::from("base64")
    } else {
        Value::Null
    };
    if key_encoding != &want_encoding {
        out.push(format!(
            "key_encoding {key_encoding} != expected {want_encoding}"
        ));
    }
    let ordering_key = record.get("ordering_key").unwrap_or(&Value::Null);
    let want_ordering = expected.ordering_key.as_ref().map_or(Value::Null, |k| {
        Value::from(base64::engine::general_purpose::STANDARD.encode(k))
    });
    if ordering_key != &want_ordering {
        out.push(format!(
            "ordering_key {ordering_key} != expected {want_ordering}"
        ));
    }

    let properties: Option<BTreeMap<String, String>> = match record.get("properties") {
        None | Some(Value::Null) => Some(BTreeMap::new()),
        Some(value) => serde_json::from_value(value.clone()).ok(),
    };
    if properties.as_ref() != Some(&expected.properties) {
        out.push(format!(
            "properties {} != expected {:?}",
            record.get("properties").unwrap_or(&Value::Null),
            expected.properties
        ));
    }

    let event_time = record.get("event_time").unwrap_or(&Value::Null);
    let want_time = expected
        .event_time
        .and_then(format_time_ms)
        .map_or(Value::Null, Value::from);
    if event_time != &want_time {
        out.push(format!("event_time {event_time} != expected {want_time}"));
    }
    out
}

/// Offenders grouped by kind, in the order first seen.
#[derive(Default)]
struct Problems {
    kinds: Vec<(&'static str, usize, Vec<String>)>,
}

impl Problems {
    fn add(&mut self, kind: &'static str, detail: String) {
        let position = match self.kinds.iter().position(|(k, _, _)| *k == kind) {
            Some(position) => position,
            None => {
                self.kinds.push((kind, 0, Vec::new()));
                self.kinds.len() - 1
            }
        };
        let (_, count, shown) = &mut self.kinds[position];
        *count += 1;
        if shown.len() < SHOW {
            shown.push(detail);
        }
    }

    fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (kind, count, shown) in &self.kinds {
            out.push_str(&format!("  {count} {kind}; first {}:\n", shown.len()));
            for detail in shown {
                out.push_str(&format!("    {detail}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::sample_messages;
    use serde_json::json;

    fn record(id: &str, m: &SampleMessage) -> Value {
        let (payload, encoding) = match std::str::from_utf8(&m.payload) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&m.payload),
                "base64",
            ),
        };
        let mut r = json!({
            "message_id": id,
            "key": m.key,
            "properties": m.properties,
            "event_time": m.event_time.and_then(format_time_ms),
            "payload": payload,
            "payload_encoding": encoding,
        });
        if m.key_base64 {
            r["key_encoding"] = json!("base64");
        }
        if let Some(k) = &m.ordering_key {
            r["ordering_key"] = json!(base64::engine::general_purpose::STANDARD.encode(k));
        }
        r
    }

    fn object(key: &str, records: Vec<Value>) -> BackupObject {
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        decode_object(key.to_owned(), HashMap::new(), text.as_bytes()).expect("valid jsonl")
    }

    #[test]
    fn accepts_an_exact_backup_and_counts() {
        let msgs = sample_messages(40, 1);
        let a: Vec<Value> = (0..25)
            .map(|i| record(&format!("1:{i}:-1:0"), &msgs[i]))
            .collect();
        let b: Vec<Value> = (25..40)
            .map(|i| record(&format!("1:{i}:-1:0"), &msgs[i]))
            .collect();
        let objects = vec![object("t/a.jsonl", a), object("t/b.jsonl", b)];
        let report = check_exactly_once(&objects, &msgs).expect("exactly once");
        assert_eq!(report.objects, 2);
        assert_eq!(report.records, 40);
        assert_eq!(report.max_records_per_object, 25);
        assert_eq!(
            report.max_record_bytes_per_object,
            objects[0].record_bytes.max(objects[1].record_bytes)
        );
        assert!(msgs
            .iter()
            .any(|m| std::str::from_utf8(&m.payload).is_err()));
    }

    #[test]
    fn reports_duplicates_missing_and_mismatches() {
        let msgs = sample_messages(20, 2);
        let mut a: Vec<Value> = (0..10)
            .map(|i| record(&format!("1:{i}:-1:0"), &msgs[i]))
            .collect();
        a.push(record("1:3:-1:0", &msgs[3])); // same id, same payload again
        let mut wrong = record("1:11:-1:0", &msgs[11]);
        wrong["key"] = json!("not-the-key");
        let b = vec![wrong];
        let error = check_exactly_once(&[object("a.jsonl", a), object("b.jsonl", b)], &msgs)
            .expect_err("not exactly once")
            .to_string();
        assert!(error.contains("duplicate message ids"), "{error}");
        assert!(error.contains("duplicate payloads"), "{error}");
        assert!(error.contains("missing messages"), "{error}");
        assert!(error.contains("#10"), "{error}");
        assert!(error.contains("field mismatches"), "{error}");
    }

    #[test]
    fn gzip_objects_decode_and_bad_keys_are_refused() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"a\":1}\n{\"a\":2}\n")
            .expect("in-memory write");
        let body = gz.finish().expect("in-memory gzip");
        let object = decode_object("x.jsonl.gz".into(), HashMap::new(), &body).expect("decodes");
        assert_eq!(object.records, vec![json!({"a":1}), json!({"a":2})]);
        assert_eq!(object.record_bytes, 16);
        assert!(decode_object("x.txt".into(), HashMap::new(), b"").is_err());
        assert_eq!(
            format_time_ms(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }
}
