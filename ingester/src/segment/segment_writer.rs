//! Writes a segment file (the object's exact bytes) from a record log, in as many steps as it
//! takes: the open segment's log is compressed while records are still being appended
//! (presealing), so closing a large segment leaves only its tail to compress, and that is done
//! on every core (`parallel_gzip`). zstd is one streaming encoder on the writer's thread: it
//! compresses several times faster than gzip at its fastest level, so the seal's tail is
//! short without more threads (see docs/benchmarks.md for the CPU it took).
//!
//! The log's compact records (`crate::spool::log_record`) are turned into the object's JSON
//! lines on the way, or into the rows of a Parquet file (`proto::types::parquet_record`), which
//! writes a row group whenever one is full: memory stays bounded either way.
//!
//! A writer tracks what it read: offset, CRC32C and record count of the log bytes. Sealing checks
//! them against the spool's meta before the file is renamed into place, so a writer that read
//! anything other than the segment's exact records is caught and its output thrown away.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::spool::log_record::{LogDecoder, RecordSink};
use proto::types::parquet_record::{ParquetRecordError, ParquetRecordWriter};
use proto::types::record::record_json_len;
use proto::types::{Compression, Format, MessageId, RecordFields};

use crate::error::{IngesterError, Result};
use crate::segment::parallel_gzip::ParallelGzip;
use crate::spool::record_log::RecordLogs;

const BUFFER: usize = 256 * 1024;

/// Blocks compressed at once by one writer: the cores, up to 4. Several seals at once (as many
/// as there are cores, up to 4: `crate::seal`) may oversubscribe the cores briefly; the work is
/// the same.
fn gzip_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// What the writer read from the log and wrote to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub log_bytes: u64,
    pub log_crc32c: u32,
    pub lines: u64,
    /// The JSON lines' bytes: the object's uncompressed size.
    pub json_bytes: u64,
    pub file_bytes: u64,
    pub file_crc32c: u32,
}

/// How a segment's file is written: its format, and the compression (and level) of the whole
/// file (JSON Lines) or of its pages (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub format: Format,
    pub compression: Compression,
    pub level: u32,
}

type Sink = HashingWriter<BufWriter<File>>;

enum Output {
    Gzip(ParallelGzip<Sink>),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
    Plain(Sink),
    Parquet(Box<ParquetRows>),
}

/// The Parquet writer as a [`RecordSink`]: it keeps the first error it meets (a full disk, say)
/// for `feed` to return, and counts the records' JSON bytes, which `max_bytes` and the segment's
/// `record_bytes` are measured in whatever the format.
struct ParquetRows {
    writer: ParquetRecordWriter<Sink>,
    error: Option<ParquetRecordError>,
    json_bytes: u64,
}

impl RecordSink for ParquetRows {
    fn record(&mut self, fields: &RecordFields<'_>) {
        self.json_bytes += record_json_len(fields);
        if self.error.is_none() {
            if let Err(err) = self.writer.push(fields) {
                self.error = Some(err);
            }
        }
    }
}

/// A Parquet writer's error as the IO error it may stand for, so a full disk is still seen as
/// one.
fn parquet_io(err: ParquetRecordError) -> std::io::Error {
    use parquet::errors::ParquetError;
    if let ParquetRecordError::Parquet(ParquetError::External(inner)) = &err {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            };
        }
    }
    std::io::Error::other(err.to_string())
}

pub struct SegmentWriter {
    segment_no: u64,
    codec: Codec,
    tmp: PathBuf,
    out: Output,
    log: Option<File>,
    log_bytes: u64,
    log_crc32c: u32,
    lines: u64,
    json_bytes: u64,
    /// Turns the log's frames into JSON lines.
    decoder: LogDecoder,
    /// Records of the log at or before this id are left out (see `SegmentMeta::skip_through`).
    skip_through: Option<MessageId>,
    /// The JSON lines of one piece of the log, handed to the compressor at once.
    json: Vec<u8>,
    /// The spool's generation when this writer started (see `RuleSpool::reload`).
    pub generation: u64,
}

impl SegmentWriter {
    /// A writer of `tmp` in `codec` (the level is ignored for [`Compression::None`]).
    pub fn create(
        tmp: PathBuf,
        segment_no: u64,
        codec: Codec,
        generation: u64,
    ) -> Result<SegmentWriter> {
        let Codec {
            format,
            compression,
            level,
        } = codec;
        let file = File::create(&tmp)
            .map_err(|e| IngesterError::io(format!("creating {}", tmp.display()), e))?;
        let sink = HashingWriter::new(BufWriter::with_capacity(BUFFER, file));
        let out = match (format, compression) {
            (Format::Parquet, _) => Output::Parquet(Box::new(ParquetRows {
                writer: ParquetRecordWriter::new(sink, compression, level).map_err(|e| {
                    IngesterError::io(
                        format!("starting Parquet file {}", tmp.display()),
                        parquet_io(e),
                    )
                })?,
                error: None,
                json_bytes: 0,
            })),
            (Format::Jsonl, Compression::Gzip) => {
                Output::Gzip(ParallelGzip::new(sink, gzip_workers(), level))
            }
            (Format::Jsonl, Compression::Zstd) => {
                let level = i32::try_from(level).unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL);
                let mut encoder = zstd::stream::write::Encoder::new(sink, level)
                    .map_err(|e| IngesterError::io(format!("zstd level {level}"), e))?;
                // The frame's own checksum: a reader (zstd -t, python-zstandard) then tells a
                // damaged object from a good one without our metadata.
                encoder
                    .include_checksum(true)
                    .map_err(|e| IngesterError::io("zstd checksum flag", e))?;
                Output::Zstd(encoder)
            }
            (Format::Jsonl, Compression::None) => Output::Plain(sink),
        };
        Ok(SegmentWriter {
            segment_no,
            codec,
            tmp,
            out,
            log: None,
            log_bytes: 0,
            log_crc32c: 0,
            lines: 0,
            json_bytes: 0,
            decoder: LogDecoder::default(),
            skip_through: None,
            json: Vec::new(),
            generation,
        })
    }

    /// Leaves out the log's records at or before `through` in its partition.
    pub fn skipping_through(mut self, through: Option<MessageId>) -> SegmentWriter {
        self.skip_through = through;
        self
    }

    /// What it leaves out: a writer made for other records is not the segment's any more.
    pub fn skip_through(&self) -> Option<MessageId> {
        self.skip_through
    }

    pub fn compression(&self) -> Compression {
        self.codec.compression
    }

    /// The format, compression and level it writes: a file written with other ones is not the
    /// segment's file any more once the rule changed them.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Reads the log from where the last call stopped up to `upto` bytes, or to its current end
    /// if it is shorter (an open segment's log may still be growing), and writes it out.
    pub fn feed(&mut self, logs: &RecordLogs, upto: u64) -> Result<()> {
        if self.log_bytes >= upto {
            return Ok(());
        }
        let path = logs.path(self.segment_no);
        let io = |what: &str, e| IngesterError::io(format!("{what} {}", path.display()), e);
        if self.log.is_none() {
            let mut file = File::open(&path).map_err(|e| io("opening", e))?;
            file.seek(SeekFrom::Start(self.log_bytes))
                .map_err(|e| io("seeking in", e))?;
            self.log = Some(file);
        }
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let mut buf = vec![0u8; BUFFER];
        while self.log_bytes < upto {
            let want = usize::try_from(upto - self.log_bytes)
                .unwrap_or(BUFFER)
                .min(BUFFER);
            let n = match log.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("reading", e)),
            };
            let chunk = &buf[..n];
            self.log_crc32c = crc32c::crc32c_append(self.log_crc32c, chunk);
            self.log_bytes += n as u64;
            let corrupt = |e| IngesterError::Corrupt(format!("record log {}: {e}", path.display()));
            let writing = |e| IngesterError::io(format!("writing {}", self.tmp.display()), e);
            if let Output::Parquet(rows) = &mut self.out {
                self.lines += self
                    .decoder
                    .decode_after(chunk, rows.as_mut(), self.skip_through)
                    .map_err(corrupt)?;
                if let Some(err) = rows.error.take() {
                    return Err(writing(parquet_io(err)));
                }
                continue;
            }
            self.json.clear();
            self.lines += self
                .decoder
                .decode_after(chunk, &mut self.json, self.skip_through)
                .map_err(corrupt)?;
            self.json_bytes += self.json.len() as u64;
            let written = match &mut self.out {
                Output::Gzip(gz) => gz.write_all(&self.json),
                Output::Zstd(zst) => zst.write_all(&self.json),
                Output::Plain(out) => out.write_all(&self.json),
                Output::Parquet(_) => Ok(()),
            };
            written.map_err(writing)?;
        }
        Ok(())
    }

    /// Ends the stream and syncs the file; it stays at the temporary path.
    pub fn finish(self) -> Result<Written> {
        if !self.decoder.is_at_frame_boundary() {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(IngesterError::Corrupt(format!(
                "record log of segment {} ends inside a record after {} bytes",
                self.segment_no, self.log_bytes
            )));
        }
        let tmp = self.tmp;
        let io = |e| IngesterError::io(format!("writing {}", tmp.display()), e);
        let mut json_bytes = self.json_bytes;
        let sink = match self.out {
            Output::Gzip(gz) => gz.finish().map_err(io)?,
            Output::Zstd(zst) => zst.finish().map_err(io)?,
            Output::Plain(out) => out,
            Output::Parquet(rows) => {
                json_bytes = rows.json_bytes;
                rows.writer.finish().map_err(|e| io(parquet_io(e)))?
            }
        };
        let (file_crc32c, file_bytes, writer) = sink.finish();
        let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(Written {
            log_bytes: self.log_bytes,
            log_crc32c: self.log_crc32c,
            lines: self.lines,
            json_bytes,
            file_bytes,
            file_crc32c,
        })
    }
}

/// Counts and checksums what goes through it: the segment's size and CRC32C come for free.
struct HashingWriter<W: Write> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            crc: 0,
            len: 0,
        }
    }

    fn finish(self) -> (u32, u64, W) {
        (self.crc, self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record_log::LogWrite;

    fn jsonl(compression: Compression, level: u32) -> Codec {
        Codec {
            format: Format::Jsonl,
            compression,
            level,
        }
    }

    /// A log of `count` small records, and each record's end offset in it.
    fn small_log(count: u64) -> (Vec<u8>, Vec<u64>) {
        use crate::spool::log_record::{encode_body, LogEncoder};
        let mut encoder = LogEncoder::default();
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for n in 0..count {
            let payload = format!("{{\"n\":{n}}}");
            let fields = proto::types::RecordFields {
                message_id: proto::types::MessageId {
                    ledger: 1,
                    entry: n,
                    partition: -1,
                    batch_index: -1,
                },
                topic: "persistent://t/n/a",
                publish_time_ms: 1,
                event_time_ms: None,
                key: None,
                properties: &[],
                producer_name: "p",
                sequence_id: n,
                payload: payload.as_bytes(),
                chunk: None,
                key_base64: false,
                ordering_key: None,
                encryption: None,
            };
            let mut body = Vec::new();
            encode_body(&fields, &mut body);
            encoder.append(fields.topic, fields.producer_name, &body, &mut bytes);
            ends.push(bytes.len() as u64);
        }
        (bytes, ends)
    }

    #[test]
    fn stops_at_upto_even_when_the_log_holds_more() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let logs = RecordLogs::new(dir.path().to_path_buf());
        let (bytes, ends) = small_log(3);
        logs.append_durably(&[LogWrite {
            segment_no: 1,
            fresh: true,
            bytes: bytes.clone(),
        }])?;
        let tmp = dir.path().join("x.tmp");
        let mut writer = SegmentWriter::create(tmp.clone(), 1, jsonl(Compression::None, 0), 0)?;
        writer.feed(&logs, ends[1])?;
        let done = writer.finish()?;
        assert_eq!((done.log_bytes, done.lines), (ends[1], 2));
        let len = usize::try_from(ends[1]).map_err(|e| IngesterError::Corrupt(e.to_string()))?;
        assert_eq!(done.log_crc32c, crc32c::crc32c(&bytes[..len]));
        let file = std::fs::read(&tmp).map_err(|e| IngesterError::io("reading", e))?;
        assert_eq!(file.iter().filter(|&&b| b == b'\n').count(), 2);
        Ok(())
    }

    #[test]
    fn a_compact_log_fed_in_steps_becomes_the_records_json_lines() -> Result<()> {
        for (compression, level) in [
            (Compression::Gzip, 1),
            (Compression::Zstd, 3),
            (Compression::Zstd, 19),
        ] {
            fed_in_steps_round_trips(compression, level)?;
        }
        Ok(())
    }

    fn fed_in_steps_round_trips(compression: Compression, level: u32) -> Result<()> {
        use crate::spool::log_record::{encode_body, LogEncoder};
        use proto::types::{encode_record, ChunkFields, MessageId, RecordFields};

        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let logs = RecordLogs::new(dir.path().to_path_buf());
        let payloads: Vec<String> = (0..3000).map(|i| format!("{{\"n\":{i}}}")).collect();
        let fields = |i: usize| RecordFields {
            message_id: MessageId {
                ledger: 1,
                entry: i as u64,
                partition: -1,
                batch_index: -1,
            },
            topic: if i % 1000 < 500 {
                "persistent://t/n/a"
            } else {
                "persistent://t/n/b"
            },
            publish_time_ms: 1_764_000_000_000 + i as u64,
            event_time_ms: None,
            key: Some("k"),
            properties: &[("p", "v")],
            producer_name: "producer-1",
            sequence_id: i as u64,
            payload: payloads[i].as_bytes(),
            // Some chunks among them: a frame's extras must not disturb its neighbours.
            chunk: (i % 7 == 3).then_some(ChunkFields {
                uuid: Some("producer-1-9"),
                chunk_id: Some(i as i32),
                num_chunks: Some(3000),
                total_size: None,
            }),
            key_base64: false,
            ordering_key: None,
            encryption: None,
        };
        let expected: Vec<u8> = (0..payloads.len())
            .flat_map(|i| encode_record(&fields(i)))
            .collect();
        let tmp = dir.path().join("00000000000000000004.preseal.tmp");
        let mut writer = SegmentWriter::create(tmp.clone(), 4, jsonl(compression, level), 0)?;
        let mut encoder = LogEncoder::default();
        let (mut log_len, mut crc) = (0u64, 0u32);
        for (batch, range) in [0..700, 700..701, 701..2999, 2999..3000]
            .into_iter()
            .enumerate()
        {
            let mut bytes = Vec::new();
            for i in range {
                let mut body = Vec::new();
                encode_body(&fields(i), &mut body);
                encoder.append(fields(i).topic, "producer-1", &body, &mut bytes);
            }
            log_len += bytes.len() as u64;
            crc = crc32c::crc32c_append(crc, &bytes);
            logs.append_durably(&[LogWrite {
                segment_no: 4,
                fresh: batch == 0,
                bytes,
            }])?;
            // An odd stopping point: pieces end inside frames, the decoder carries them over.
            writer.feed(&logs, log_len.saturating_sub(3))?;
        }
        writer.feed(&logs, log_len)?;
        let done = writer.finish()?;
        assert_eq!(
            (done.log_bytes, done.log_crc32c, done.lines),
            (log_len, crc, 3000)
        );
        assert_eq!(done.json_bytes, expected.len() as u64);
        assert!(
            log_len * 2 < expected.len() as u64,
            "the compact log is much smaller"
        );
        let file = std::fs::read(&tmp).map_err(|e| IngesterError::io("reading", e))?;
        let mut json = Vec::new();
        let decoded = match compression {
            Compression::Gzip => {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&file[..]), &mut json)
            }
            // zstd's own decoder, single frame: the writer ends one frame, with its checksum.
            Compression::Zstd => zstd::stream::read::Decoder::new(&file[..])
                .map(|d| d.single_frame())
                .and_then(|mut d| std::io::Read::read_to_end(&mut d, &mut json)),
            Compression::None => {
                json.extend_from_slice(&file);
                Ok(json.len())
            }
        };
        decoded.map_err(|e| IngesterError::io("decompressing", e))?;
        if compression == Compression::Zstd {
            // Frame header descriptor: bit 2 is the content checksum flag.
            assert_eq!(&file[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
            assert_ne!(file[4] & 0b100, 0, "the frame carries its checksum");
        }
        assert_eq!(
            String::from_utf8_lossy(&json),
            String::from_utf8_lossy(&expected)
        );
        Ok(())
    }

    #[test]
    fn a_compact_log_cut_inside_a_record_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let logs = RecordLogs::new(dir.path().to_path_buf());
        let mut bytes = Vec::new();
        crate::spool::log_record::LogEncoder::default().append("t", "p", b"\x01\x02", &mut bytes);
        logs.append_durably(&[LogWrite {
            segment_no: 2,
            fresh: true,
            bytes: bytes[..bytes.len() - 1].to_vec(),
        }])?;
        let tmp = dir.path().join("y.tmp");
        let mut writer = SegmentWriter::create(tmp.clone(), 2, jsonl(Compression::None, 0), 0)?;
        writer.feed(&logs, 100)?;
        let err = writer.finish().expect_err("cut inside a record");
        assert!(err.to_string().contains("ends inside a record"), "{err}");
        assert!(!tmp.exists(), "no temporary file left");
        Ok(())
    }

    #[test]
    fn a_compact_log_fed_in_steps_becomes_a_parquet_file_of_its_records() -> Result<()> {
        use crate::spool::log_record::{encode_body, LogEncoder};
        use proto::types::parquet_record::read_records;
        use proto::types::{MessageId, RecordFields};

        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let logs = RecordLogs::new(dir.path().to_path_buf());
        let payloads: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                if i % 3 == 0 {
                    i.to_be_bytes().to_vec() // not UTF-8 for some
                } else {
                    format!("{{\"n\":{i}}}").into_bytes()
                }
            })
            .collect();
        let props = [("p", "v")];
        let fields = |i: usize| RecordFields {
            message_id: MessageId {
                ledger: 1,
                entry: i as u64,
                partition: 0,
                batch_index: -1,
            },
            topic: "persistent://t/n/a-partition-0",
            publish_time_ms: 1_764_000_000_000 + i as u64,
            event_time_ms: i.is_multiple_of(2).then_some(1_700_000_000_000),
            key: Some("k"),
            properties: if i.is_multiple_of(5) { &[] } else { &props },
            producer_name: "producer-1",
            sequence_id: i as u64,
            payload: &payloads[i],
            chunk: None,
            key_base64: false,
            ordering_key: None,
            encryption: None,
        };
        let tmp = dir.path().join("00000000000000000009.preseal.tmp");
        let codec = Codec {
            format: Format::Parquet,
            compression: Compression::Zstd,
            level: 3,
        };
        let mut writer = SegmentWriter::create(tmp.clone(), 9, codec, 0)?;
        let mut encoder = LogEncoder::default();
        let mut log_len = 0u64;
        let mut json_len = 0u64;
        for (batch, range) in [0..999, 999..2000].into_iter().enumerate() {
            let mut bytes = Vec::new();
            for i in range {
                let mut body = Vec::new();
                encode_body(&fields(i), &mut body);
                encoder.append(fields(i).topic, "producer-1", &body, &mut bytes);
                json_len += record_json_len(&fields(i));
            }
            log_len += bytes.len() as u64;
            logs.append_durably(&[LogWrite {
                segment_no: 9,
                fresh: batch == 0,
                bytes,
            }])?;
            writer.feed(&logs, log_len.saturating_sub(5))?;
        }
        writer.feed(&logs, log_len)?;
        let done = writer.finish()?;
        assert_eq!((done.log_bytes, done.lines), (log_len, 2000));
        assert_eq!(
            done.json_bytes, json_len,
            "record bytes are JSON bytes in every format"
        );
        let file = std::fs::read(&tmp).map_err(|e| IngesterError::io("reading", e))?;
        assert_eq!(done.file_bytes, file.len() as u64);
        assert_eq!(done.file_crc32c, crc32c::crc32c(&file));
        let records = read_records(bytes::Bytes::from(file))
            .map_err(|e| IngesterError::Corrupt(e.to_string()))?;
        let mut n = 0;
        for (i, record) in records.enumerate() {
            let record = record.map_err(|e| IngesterError::Corrupt(e.to_string()))?;
            let f = fields(i);
            assert_eq!(record.message_id, f.message_id);
            assert_eq!(record.payload, f.payload);
            assert_eq!(record.event_time_ms, f.event_time_ms);
            assert_eq!(record.properties.len(), f.properties.len());
            n += 1;
        }
        assert_eq!(n, 2000);
        Ok(())
    }
}
