//! The Parquet form of a segment's records: one row per message, typed columns, written and read
//! here so the ingester (which writes it) and the uploader (whose `verify --deep` and restore read
//! it) cannot disagree on the schema.
//!
//! ```text
//! message tdmq_backup_record {
//!   required binary message_id (STRING);        "ledger:entry:partition:batch_index", as in JSONL
//!   required binary topic (STRING);
//!   required int64 publish_time (TIMESTAMP(MILLIS,true));
//!   optional int64 event_time (TIMESTAMP(MILLIS,true));
//!   optional binary key (STRING);
//!   optional binary key_encoding (STRING);      "base64" for a byte key, else null
//!   optional binary ordering_key;               raw bytes
//!   required group properties (MAP) { repeated group key_value {
//!     required binary key (STRING); required binary value (STRING); } }
//!   required binary producer_name (STRING);
//!   required int64 sequence_id;
//!   required binary payload;                    raw bytes: no base64, no payload_encoding
//!   optional binary chunk (JSON);               the JSONL record's `chunk` member
//!   optional binary encryption (JSON);          the JSONL record's `encryption` member
//! }
//! ```
//!
//! Memory stays bounded whatever the segment's size: rows are buffered as columns only until a
//! row group is full ([`ROW_GROUP_BYTES`] of payload and strings, or [`ROW_GROUP_ROWS`] rows),
//! then written out. Every column chunk and page carries min/max statistics, so an engine skips
//! the row groups a `publish_time` filter excludes.

mod read;
mod write;

pub use read::{read_records, ParquetRecords};
pub use write::ParquetRecordWriter;

/// A row group is written once its buffered values reach this many bytes...
pub const ROW_GROUP_BYTES: usize = 16 << 20;
/// ...or this many rows, whichever comes first.
pub const ROW_GROUP_ROWS: usize = 131_072;

/// The schema every Parquet object has, in Parquet's message-type syntax.
pub const SCHEMA: &str = "
message tdmq_backup_record {
  required binary message_id (STRING);
  required binary topic (STRING);
  required int64 publish_time (TIMESTAMP(MILLIS,true));
  optional int64 event_time (TIMESTAMP(MILLIS,true));
  optional binary key (STRING);
  optional binary key_encoding (STRING);
  optional binary ordering_key;
  required group properties (MAP) {
    repeated group key_value {
      required binary key (STRING);
      required binary value (STRING);
    }
  }
  required binary producer_name (STRING);
  required int64 sequence_id;
  required binary payload;
  optional binary chunk (JSON);
  optional binary encryption (JSON);
}";

/// The file's `created_by`, and the key-value metadata that says which schema it has.
const CREATED_BY: &str = concat!("tdmq-backup ", env!("CARGO_PKG_VERSION"));
const SCHEMA_VERSION_KEY: &str = "tdmq_backup.schema_version";
const SCHEMA_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ParquetRecordError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("row {row}: column `{column}` {detail}")]
    Column {
        row: u64,
        column: &'static str,
        detail: String,
    },
    #[error("not a tdmq-backup Parquet object: {0}")]
    Schema(String),
}

#[cfg(test)]
mod tests;
