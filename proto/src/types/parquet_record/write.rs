//! Rows in, a Parquet file out: records are kept as columns until a row group is full.

use std::io::Write;
use std::sync::Arc;

use bytes::BytesMut;

use parquet::basic::{Compression as PageCompression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

use super::{
    ParquetRecordError, CREATED_BY, ROW_GROUP_BYTES, ROW_GROUP_ROWS, SCHEMA, SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
};
use crate::types::record::RecordFields;
use crate::types::rule::Compression;

/// Writes records as a Parquet file into `W`, one row group at a time.
pub struct ParquetRecordWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    columns: Columns,
}

impl<W: Write + Send> ParquetRecordWriter<W> {
    /// A writer whose pages are compressed by `compression` at `level` (ignored for `none`).
    pub fn new(
        out: W,
        compression: Compression,
        level: u32,
    ) -> Result<ParquetRecordWriter<W>, ParquetRecordError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let pages = match compression {
            Compression::Gzip => PageCompression::GZIP(GzipLevel::try_new(level)?),
            Compression::Zstd => PageCompression::ZSTD(ZstdLevel::try_new(
                i32::try_from(level).unwrap_or(i32::MAX),
            )?),
            Compression::None => PageCompression::UNCOMPRESSED,
        };
        let payload = ColumnPath::from("payload");
        let properties = WriterProperties::builder()
            .set_compression(pages)
            .set_created_by(CREATED_BY.into())
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.into(),
                SCHEMA_VERSION.to_string(),
            )]))
            // Payloads rarely repeat and their min/max help no query: a dictionary or statistics
            // of them would only cost memory and CPU.
            .set_column_dictionary_enabled(payload.clone(), false)
            .set_column_statistics_enabled(payload, EnabledStatistics::None)
            .build();
        Ok(ParquetRecordWriter {
            file: SerializedFileWriter::new(out, schema, Arc::new(properties))?,
            columns: Columns::default(),
        })
    }

    /// Adds one record; writes a row group out when it is full.
    pub fn push(&mut self, fields: &RecordFields<'_>) -> Result<(), ParquetRecordError> {
        self.columns.push(fields);
        if self.columns.bytes >= ROW_GROUP_BYTES || self.columns.rows >= ROW_GROUP_ROWS {
            self.write_row_group()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer, and returns the sink.
    pub fn finish(mut self) -> Result<W, ParquetRecordError> {
        self.write_row_group()?;
        Ok(self.file.into_inner()?)
    }

    fn write_row_group(&mut self) -> Result<(), ParquetRecordError> {
        if self.columns.rows == 0 {
            return Ok(());
        }
        let c = &self.columns;
        let mut group = self.file.next_row_group()?;
        let mut leaf = 0;
        while let Some(mut column) = group.next_column()? {
            // The leaves in SCHEMA's order.
            match leaf {
                0 => bytes(&mut column, &c.message_id, None, None)?,
                1 => bytes(&mut column, &c.topic, None, None)?,
                2 => int64(&mut column, &c.publish_time, None)?,
                3 => int64(
                    &mut column,
                    &c.event_time.values,
                    Some(&c.event_time.defined),
                )?,
                4 => optional_bytes(&mut column, &c.key)?,
                5 => optional_bytes(&mut column, &c.key_encoding)?,
                6 => optional_bytes(&mut column, &c.ordering_key)?,
                7 => bytes(
                    &mut column,
                    &c.properties.keys,
                    Some(&c.properties.defined),
                    Some(&c.properties.repeated),
                )?,
                8 => bytes(
                    &mut column,
                    &c.properties.values,
                    Some(&c.properties.defined),
                    Some(&c.properties.repeated),
                )?,
                9 => bytes(&mut column, &c.producer_name, None, None)?,
                10 => int64(&mut column, &c.sequence_id, None)?,
                11 => bytes(&mut column, &c.payload, None, None)?,
                12 => optional_bytes(&mut column, &c.chunk)?,
                13 => optional_bytes(&mut column, &c.encryption)?,
                _ => {
                    return Err(ParquetRecordError::Schema(format!(
                        "the schema has a leaf column {leaf} the writer does not know"
                    )))
                }
            }
            column.close()?;
            leaf += 1;
        }
        group.close()?;
        self.columns = Columns::default();
        Ok(())
    }
}

fn bytes(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[ByteArray],
    defined: Option<&[i16]>,
    repeated: Option<&[i16]>,
) -> Result<(), ParquetRecordError> {
    column
        .typed::<ByteArrayType>()
        .write_batch(values, defined, repeated)?;
    Ok(())
}

fn optional_bytes(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &Optional<ByteArray>,
) -> Result<(), ParquetRecordError> {
    bytes(column, &values.values, Some(&values.defined), None)
}

fn int64(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[i64],
    defined: Option<&[i16]>,
) -> Result<(), ParquetRecordError> {
    column
        .typed::<Int64Type>()
        .write_batch(values, defined, None)?;
    Ok(())
}

/// An optional column: its values, and per row 1 (a value) or 0 (null).
struct Optional<T> {
    values: Vec<T>,
    defined: Vec<i16>,
}

impl<T> Default for Optional<T> {
    fn default() -> Self {
        Optional {
            values: Vec::new(),
            defined: Vec::new(),
        }
    }
}

impl<T> Optional<T> {
    fn push(&mut self, value: Option<T>) {
        match value {
            Some(v) => {
                self.values.push(v);
                self.defined.push(1);
            }
            None => self.defined.push(0),
        }
    }
}

/// The map's two leaves and their levels: a row without properties is one level of 0 and no
/// value; a row with n has n levels of 1, the first starting the row (repetition 0).
#[derive(Default)]
struct Properties {
    keys: Vec<ByteArray>,
    values: Vec<ByteArray>,
    defined: Vec<i16>,
    repeated: Vec<i16>,
}

/// Where a row group's strings and bytes live: a few large blocks that every value points into,
/// rather than an allocation per value (a million 1 KB payloads would otherwise be a million
/// allocations, and the allocator's fragmentation showed in the ingester's RSS).
#[derive(Default)]
struct Arena {
    block: BytesMut,
}

/// Values are copied into blocks of this size (or one of their own, if larger).
const ARENA_BLOCK: usize = 1 << 20;

impl Arena {
    fn value(&mut self, bytes: &[u8]) -> ByteArray {
        if self.block.capacity() - self.block.len() < bytes.len() {
            // The full block stays alive through the values already pointing into it.
            self.block = BytesMut::with_capacity(bytes.len().max(ARENA_BLOCK));
        }
        self.block.extend_from_slice(bytes);
        ByteArray::from(self.block.split().freeze())
    }

    /// `value`'s text, written straight into the block (no String per value).
    fn text(&mut self, value: impl std::fmt::Display) -> ByteArray {
        use std::fmt::Write as _;
        if self.block.capacity() - self.block.len() < 64 {
            self.block = BytesMut::with_capacity(ARENA_BLOCK);
        }
        // Writing into memory cannot fail; a longer text grows the block.
        let _ = write!(self.block, "{value}");
        ByteArray::from(self.block.split().freeze())
    }
}

/// One row group's rows, column by column.
#[derive(Default)]
struct Columns {
    arena: Arena,
    rows: usize,
    /// The buffered values' bytes, roughly: what the row group will hold uncompressed.
    bytes: usize,
    message_id: Vec<ByteArray>,
    topic: Vec<ByteArray>,
    publish_time: Vec<i64>,
    event_time: Optional<i64>,
    key: Optional<ByteArray>,
    key_encoding: Optional<ByteArray>,
    ordering_key: Optional<ByteArray>,
    properties: Properties,
    producer_name: Vec<ByteArray>,
    sequence_id: Vec<i64>,
    payload: Vec<ByteArray>,
    chunk: Optional<ByteArray>,
    encryption: Optional<ByteArray>,
}

/// Pulsar's times and sequence ids are unsigned; Parquet's INT64 is signed. Real values are far
/// below `i64::MAX`, and one above it keeps its bits (a reader casts it back).
fn signed(n: u64) -> i64 {
    n as i64
}

impl Columns {
    fn push(&mut self, f: &RecordFields<'_>) {
        let id = self.arena.text(f.message_id);
        let mut bytes = 48 + id.len() + f.topic.len() + f.producer_name.len() + f.payload.len();
        self.message_id.push(id);
        let arena = &mut self.arena;
        let mut value = |b: &[u8]| arena.value(b);
        self.topic.push(value(f.topic.as_bytes()));
        self.publish_time.push(signed(f.publish_time_ms));
        self.event_time
            .push(f.event_time_ms.filter(|&t| t > 0).map(signed));
        bytes += f.key.map_or(0, str::len);
        self.key.push(f.key.map(|k| value(k.as_bytes())));
        self.key_encoding
            .push((f.key_base64 && f.key.is_some()).then(|| value(b"base64")));
        bytes += f.ordering_key.map_or(0, <[u8]>::len);
        self.ordering_key.push(f.ordering_key.map(&mut value));
        if f.properties.is_empty() {
            self.properties.defined.push(0);
            self.properties.repeated.push(0);
        }
        for (i, (k, v)) in f.properties.iter().enumerate() {
            bytes += k.len() + v.len();
            self.properties.keys.push(value(k.as_bytes()));
            self.properties.values.push(value(v.as_bytes()));
            self.properties.defined.push(1);
            self.properties.repeated.push(i16::from(i > 0));
        }
        self.producer_name.push(value(f.producer_name.as_bytes()));
        self.sequence_id.push(signed(f.sequence_id));
        self.payload.push(value(f.payload));
        let chunk = f.chunk.and_then(|c| serde_json::to_vec(&c).ok());
        let encryption = f.encryption.and_then(|e| serde_json::to_vec(e).ok());
        bytes += chunk.as_ref().map_or(0, Vec::len) + encryption.as_ref().map_or(0, Vec::len);
        self.chunk.push(chunk.as_deref().map(&mut value));
        self.encryption.push(encryption.as_deref().map(&mut value));
        self.rows += 1;
        self.bytes += bytes;
    }
}
