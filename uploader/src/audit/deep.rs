//! `verify --deep`: one object read whole — its bytes against the manifest's size and CRC32C,
//! every record parsed, each partition's ids and count against the entry's.
//!
//! JSON Lines are checked as they stream in. A Parquet object can only be read from its footer,
//! so it is streamed into an unnamed temporary file first (never whole into memory) and read
//! from there one row group at a time.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use proto::types::manifest::ManifestEntry;
use proto::types::parquet_record::read_records;
use proto::types::{Format, MessageId};

use super::check::{follows, Kind, Problem};
use crate::codec::StreamDecoder;
use crate::error::UploadError;
use crate::store::Body;

/// Per partition, what the records showed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    first: MessageId,
    last: MessageId,
    messages: u64,
}

/// Splits the decompressed bytes into lines and checks each record as it comes.
#[derive(Default)]
struct Records {
    carry: Vec<u8>,
    lines: u64,
    partitions: BTreeMap<i32, Seen>,
    /// The first problem of each kind found inside the object (one is enough to name it).
    problems: Vec<Problem>,
    key: String,
}

#[derive(serde::Deserialize)]
struct Ids<'a> {
    #[serde(borrow)]
    message_id: std::borrow::Cow<'a, str>,
}

impl Records {
    fn line(&mut self, line: &[u8]) {
        self.lines += 1;
        let id = serde_json::from_slice::<Ids<'_>>(line)
            .map_err(|e| e.to_string())
            .and_then(|ids| {
                ids.message_id
                    .parse::<MessageId>()
                    .map_err(|e| e.to_string())
            });
        match id {
            Ok(id) => self.seen(id),
            Err(err) => self.note(
                Kind::Corrupt,
                None,
                format!("record {} cannot be read: {err}", self.lines),
            ),
        }
    }

    /// Record number `self.lines` has `id`: checks it follows its partition's last one.
    fn seen(&mut self, id: MessageId) {
        match self.partitions.get_mut(&id.partition) {
            None => {
                self.partitions.insert(
                    id.partition,
                    Seen {
                        first: id,
                        last: id,
                        messages: 1,
                    },
                );
            }
            Some(seen) => {
                let prev = seen.last;
                seen.last = id;
                seen.messages += 1;
                // Inside one object the batch size is not known: a record may end its entry
                // or not.
                let next_ok =
                    follows(&prev, false, &id).is_ok() || follows(&prev, true, &id).is_ok();
                if !next_ok {
                    let (kind, what) = if id == prev {
                        (
                            Kind::Duplicate,
                            format!("record {} repeats id {id}", self.lines),
                        )
                    } else if !id.is_after(&prev) {
                        (
                            Kind::Overlap,
                            format!("record {} goes back from {prev} to {id}", self.lines),
                        )
                    } else {
                        let missing = follows(&prev, true, &id).err().unwrap_or_default();
                        (
                            Kind::Gap,
                            format!(
                                "between records {} and {} ({prev} → {id}): {missing}",
                                self.lines - 1,
                                self.lines
                            ),
                        )
                    };
                    self.note(kind, Some((id.partition, prev, id)), what);
                }
            }
        }
    }

    fn note(&mut self, kind: Kind, ids: Option<(i32, MessageId, MessageId)>, detail: String) {
        if self.problems.iter().any(|p| p.kind == kind) {
            return;
        }
        let mut problem = Problem::object(kind, &self.key, detail);
        if let Some((partition, first, last)) = ids {
            problem.partition = Some(partition);
            problem.first_id = first.to_string();
            problem.last_id = last.to_string();
        }
        self.problems.push(problem);
    }
}

impl std::io::Write for Records {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.carry.is_empty() {
                self.line(&rest[..i]);
            } else {
                self.carry.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.carry);
                self.line(&line);
            }
            rest = &rest[i + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where an object's bytes go as they stream in: JSON lines are decompressed and checked on the
/// way; a Parquet object, readable only from its footer, is staged in an unnamed file.
enum Reading {
    Lines(StreamDecoder<Records>),
    Parquet(std::fs::File),
}

/// Reads `body` (the object of `entry`) to its end and returns what does not match, and how
/// many bytes were read. A Parquet object is staged in an unnamed file in `scratch_dir`.
pub async fn check_object(
    entry: &ManifestEntry,
    mut body: Body,
    scratch_dir: &std::path::Path,
) -> Result<(Vec<Problem>, u64), UploadError> {
    let empty = || Records {
        key: entry.key.clone(),
        ..Records::default()
    };
    let parquet = Format::from_key(&entry.key) == Format::Parquet;
    let mut undecodable: Option<String> = None;
    let mut reading = if parquet {
        let file = tempfile::tempfile_in(scratch_dir)
            .map_err(|e| UploadError::io("creating a temporary file in", scratch_dir, e))?;
        Some(Reading::Parquet(file))
    } else {
        let compression = crate::codec::compression_of(&entry.content_encoding, &entry.key);
        match StreamDecoder::new(compression, empty()) {
            Ok(decoder) => Some(Reading::Lines(decoder)),
            Err(err) => {
                undecodable = Some(err.to_string());
                None
            }
        }
    };
    let mut crc = 0u32;
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        crc = crc32c::crc32c_append(crc, &chunk);
        size += chunk.len() as u64;
        match &mut reading {
            Some(Reading::Lines(decoder)) if undecodable.is_none() => {
                if let Err(err) = decoder.write_all(&chunk) {
                    undecodable = Some(err.to_string());
                }
            }
            Some(Reading::Parquet(file)) => std::io::Write::write_all(file, &chunk)
                .map_err(|e| UploadError::io("writing a temporary file in", scratch_dir, e))?,
            _ => {}
        }
    }
    let read = match reading {
        _ if undecodable.is_some() => Ok(empty()),
        Some(Reading::Lines(decoder)) => decoder.finish().map_err(|e| e.to_string()),
        Some(Reading::Parquet(file)) => {
            let mut read = empty();
            parquet_rows(file, &mut read).map(|()| read)
        }
        None => Ok(empty()),
    };
    let mut records = read.unwrap_or_else(|err| {
        undecodable = Some(err);
        empty()
    });
    let mut problems = Vec::new();
    let corrupt = |detail: String| Problem::object(Kind::Corrupt, &entry.key, detail);
    if size != entry.size {
        problems.push(corrupt(format!(
            "read {size} bytes, the manifest says {}",
            entry.size
        )));
    }
    let crc = format!("{crc:08x}");
    if !crc.eq_ignore_ascii_case(&entry.crc32c) {
        problems.push(corrupt(format!(
            "CRC32C of its bytes is {crc}, the manifest says {}",
            entry.crc32c
        )));
    }
    if let Some(err) = undecodable {
        let what = if parquet {
            "cannot be read as Parquet"
        } else {
            "cannot be decompressed"
        };
        problems.push(corrupt(format!("{what}: {err}")));
        return Ok((problems, size));
    }
    if !records.carry.is_empty() {
        problems.push(corrupt(
            "the last record is cut off (no newline)".to_string(),
        ));
    }
    if records.lines != entry.messages {
        problems.push(corrupt(format!(
            "holds {} records, the manifest says {} messages",
            records.lines, entry.messages
        )));
    }
    for span in &entry.partitions {
        let seen = records.partitions.remove(&span.partition);
        let matches = seen.as_ref().is_some_and(|s| {
            s.first.to_string() == span.first_message_id
                && s.last.to_string() == span.last_message_id
                && s.messages == span.messages
        });
        if !matches {
            let found = seen.map_or("nothing".to_string(), |s| {
                format!("{}..{} ({} messages)", s.first, s.last, s.messages)
            });
            problems.push(corrupt(format!(
                "partition {}: the records hold {found}, the manifest says {}..{} ({} messages)",
                span.partition, span.first_message_id, span.last_message_id, span.messages
            )));
        }
    }
    if !entry.partitions.is_empty() {
        for (partition, s) in records.partitions.iter() {
            problems.push(corrupt(format!(
                "partition {partition}: {}..{} ({} messages) are not in the manifest entry",
                s.first, s.last, s.messages
            )));
        }
    }
    problems.append(&mut records.problems);
    Ok((problems, size))
}

/// Reads every row of the Parquet object in `file` into `records`; `Err` when the file is not
/// Parquet or not ours. A row that cannot be read is noted as one, like a JSON line.
fn parquet_rows(mut file: std::fs::File, records: &mut Records) -> Result<(), String> {
    use std::io::{Seek as _, SeekFrom};
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let rows = read_records(file).map_err(|e| e.to_string())?;
    for row in rows {
        records.lines += 1;
        match row {
            Ok(record) => records.seen(record.message_id),
            Err(err) => records.note(
                Kind::Corrupt,
                None,
                format!("record {} cannot be read: {err}", records.lines),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proto::types::manifest::{PartitionSpan, FORMAT};
    use std::io::Write as _;

    fn line(id: &str) -> String {
        format!("{{\"message_id\":\"{id}\",\"topic\":\"t\",\"payload\":\"x\"}}\n")
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn entry(bytes: &[u8], first: &str, last: &str, messages: u64) -> ManifestEntry {
        ManifestEntry {
            format: FORMAT,
            rule: "r".into(),
            key: "k".into(),
            size: bytes.len() as u64,
            crc32c: format!("{:08x}", crc32c::crc32c(bytes)),
            etag: String::new(),
            content_encoding: "gzip".into(),
            messages,
            record_bytes: 0,
            window_start: String::new(),
            min_publish_time: String::new(),
            max_publish_time: String::new(),
            source: 0,
            segment_no: 0,
            topic: String::new(),
            partitions: vec![PartitionSpan {
                partition: -1,
                first_message_id: first.into(),
                last_message_id: last.into(),
                messages,
                last_completes_entry: true,
                min_publish_time: String::new(),
                max_publish_time: String::new(),
            }],
        }
    }

    /// `check_object` of `bytes` as `e`'s object, staged (if Parquet) in the temp dir.
    async fn checked(e: &ManifestEntry, bytes: Vec<u8>) -> (Vec<Problem>, u64) {
        check_object(e, body(bytes), &std::env::temp_dir())
            .await
            .expect("read")
    }

    fn body(bytes: Vec<u8>) -> Body {
        // Split in two to cross a chunk boundary mid-record.
        let half = bytes.len() / 2;
        let (a, b) = (
            Bytes::from(bytes[..half].to_vec()),
            Bytes::from(bytes[half..].to_vec()),
        );
        futures::stream::iter([Ok(a), Ok(b)]).boxed()
    }

    #[tokio::test]
    async fn an_intact_object_passes_and_damage_is_named() {
        let text: String = (0..5).map(|e| line(&format!("1:{e}:-1:-1"))).collect();
        let bytes = gzip(&text);
        let e = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 5);
        let (problems, read) = checked(&e, bytes.clone()).await;
        assert_eq!(problems, vec![]);
        assert_eq!(read, bytes.len() as u64);

        // Truncated: size, checksum and decompression all fail.
        let cut = bytes[..bytes.len() - 10].to_vec();
        let (problems, _) = checked(&e, cut).await;
        assert!(
            problems.iter().all(|p| p.kind == Kind::Corrupt) && problems.len() >= 2,
            "{problems:?}"
        );

        // A record missing inside the object: a gap between the records around it.
        let text: String = [0, 1, 3, 4]
            .iter()
            .map(|e| line(&format!("1:{e}:-1:-1")))
            .collect();
        let bytes = gzip(&text);
        let e = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 4);
        let (problems, _) = checked(&e, bytes).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, Kind::Gap);
        assert_eq!(
            (problems[0].first_id.as_str(), problems[0].last_id.as_str()),
            ("1:1:-1:-1", "1:3:-1:-1")
        );

        // The entry says more than the records hold.
        let text: String = (0..3).map(|e| line(&format!("1:{e}:-1:-1"))).collect();
        let bytes = gzip(&text);
        let e = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 5);
        let (problems, _) = checked(&e, bytes).await;
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[tokio::test]
    async fn a_zstd_object_is_read_by_its_content_encoding() {
        let text: String = (0..5).map(|e| line(&format!("1:{e}:-1:-1"))).collect();
        let bytes = zstd::encode_all(text.as_bytes(), 3).expect("zstd");
        let mut e = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 5);
        e.content_encoding = "zstd".into();
        let (problems, _) = checked(&e, bytes.clone()).await;
        assert_eq!(problems, vec![]);

        // Read as gzip (what it was before zstd existed), it is named undecodable.
        e.content_encoding = "gzip".into();
        let (problems, _) = checked(&e, bytes.clone()).await;
        assert!(
            problems
                .iter()
                .any(|p| p.detail.contains("cannot be decompressed")),
            "{problems:?}"
        );

        // Cut inside the frame.
        e.content_encoding = "zstd".into();
        let cut = bytes[..bytes.len() - 4].to_vec();
        let (problems, _) = checked(&e, cut).await;
        assert!(
            problems
                .iter()
                .any(|p| p.detail.contains("cannot be decompressed")),
            "{problems:?}"
        );
    }

    fn parquet(entries: &[u64]) -> Vec<u8> {
        use proto::types::parquet_record::ParquetRecordWriter;
        let mut writer = ParquetRecordWriter::new(Vec::new(), proto::types::Compression::Zstd, 3)
            .expect("writer");
        for &entry in entries {
            writer
                .push(&proto::types::RecordFields {
                    message_id: MessageId {
                        ledger: 1,
                        entry,
                        partition: -1,
                        batch_index: -1,
                    },
                    topic: "t",
                    publish_time_ms: 1,
                    event_time_ms: None,
                    key: None,
                    key_base64: false,
                    ordering_key: None,
                    properties: &[],
                    producer_name: "p",
                    sequence_id: entry,
                    payload: b"x",
                    chunk: None,
                    encryption: None,
                })
                .expect("push");
        }
        writer.finish().expect("finish")
    }

    #[tokio::test]
    async fn a_parquet_object_is_read_row_by_row_and_damage_is_named() {
        let bytes = parquet(&[0, 1, 2, 3, 4]);
        let mut e = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 5);
        e.key = "a/b.parquet".into();
        e.content_encoding = "identity".into();
        let (problems, read) = checked(&e, bytes.clone()).await;
        assert_eq!(problems, vec![]);
        assert_eq!(read, bytes.len() as u64);

        // A row missing: a gap named by the ids around it.
        let bytes = parquet(&[0, 1, 3, 4]);
        let mut gap = entry(&bytes, "1:0:-1:-1", "1:4:-1:-1", 4);
        gap.key = e.key.clone();
        let (problems, _) = checked(&gap, bytes).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, Kind::Gap);

        // Cut short: its footer is gone, so it is not Parquet any more.
        let bytes = parquet(&[0, 1, 2, 3, 4]);
        let cut = bytes[..bytes.len() - 20].to_vec();
        let (problems, _) = checked(&e, cut).await;
        assert!(
            problems
                .iter()
                .any(|p| p.detail.contains("cannot be read as Parquet")),
            "{problems:?}"
        );
    }
}
