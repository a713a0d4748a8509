//! A Parquet object's rows as records again (restore, `verify --deep`), read one row group at a
//! time from any of Parquet's readers (bytes in memory, a file).

use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};

use super::ParquetRecordError;
use crate::types::record_read::Record;
use crate::types::MessageId;

/// The columns a record cannot be made without; the others may be absent (null).
const REQUIRED: [&str; 6] = [
    "message_id",
    "topic",
    "publish_time",
    "producer_name",
    "sequence_id",
    "payload",
];

/// The records of one Parquet object, in row order.
pub struct ParquetRecords {
    rows: RowIter<'static>,
    row: u64,
    total: u64,
}

/// Opens a Parquet object: its footer is read and its schema checked here, its rows as the
/// iterator is advanced.
pub fn read_records<R: ChunkReader + 'static>(
    input: R,
) -> Result<ParquetRecords, ParquetRecordError> {
    let reader = SerializedFileReader::new(input)?;
    let metadata = reader.metadata().file_metadata();
    let schema = metadata.schema_descr();
    let names: Vec<&str> = schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name())
        .collect();
    if let Some(missing) = REQUIRED.iter().find(|c| !names.contains(c)) {
        return Err(ParquetRecordError::Schema(format!(
            "it has no `{missing}` column"
        )));
    }
    let total = u64::try_from(metadata.num_rows()).unwrap_or(0);
    Ok(ParquetRecords {
        rows: RowIter::from_file_into(Box::new(reader)),
        row: 0,
        total,
    })
}

impl ParquetRecords {
    /// How many rows the footer says the file holds.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Iterator for ParquetRecords {
    type Item = Result<Record, ParquetRecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.rows.next()?;
        self.row += 1;
        Some(
            row.map_err(ParquetRecordError::from)
                .and_then(|row| record_of(self.row, &row)),
        )
    }
}

fn record_of(row_no: u64, row: &Row) -> Result<Record, ParquetRecordError> {
    let bad = |column: &'static str, detail: String| ParquetRecordError::Column {
        row: row_no,
        column,
        detail,
    };
    let mut record = Record {
        message_id: MessageId {
            ledger: 0,
            entry: 0,
            partition: -1,
            batch_index: -1,
        },
        topic: String::new(),
        publish_time_ms: 0,
        event_time_ms: None,
        key: None,
        key_base64: false,
        ordering_key: None,
        properties: Vec::new(),
        producer_name: String::new(),
        sequence_id: 0,
        payload: Vec::new(),
    };
    for (name, field) in row.get_column_iter() {
        match name.as_str() {
            "message_id" => {
                let text = string("message_id", field).map_err(|d| bad("message_id", d))?;
                record.message_id = text
                    .parse()
                    .map_err(|e| bad("message_id", format!("{text:?}: {e}")))?;
            }
            "topic" => record.topic = string("topic", field).map_err(|d| bad("topic", d))?,
            "publish_time" => {
                record.publish_time_ms = millis(field)
                    .map_err(|d| bad("publish_time", d))?
                    .unwrap_or(0)
            }
            "event_time" => {
                record.event_time_ms = millis(field).map_err(|d| bad("event_time", d))?
            }
            "key" => record.key = optional_string("key", field).map_err(|d| bad("key", d))?,
            "key_encoding" => {
                record.key_base64 = optional_string("key_encoding", field)
                    .map_err(|d| bad("key_encoding", d))?
                    .is_some_and(|e| e == "base64")
            }
            "ordering_key" => {
                record.ordering_key = optional_bytes(field).map_err(|d| bad("ordering_key", d))?
            }
            "properties" => {
                record.properties = properties(field).map_err(|d| bad("properties", d))?
            }
            "producer_name" => {
                record.producer_name =
                    string("producer_name", field).map_err(|d| bad("producer_name", d))?
            }
            "sequence_id" => {
                record.sequence_id = match field {
                    // The writer's cast, undone.
                    Field::Long(n) => *n as u64,
                    other => return Err(bad("sequence_id", format!("is {other:?}"))),
                }
            }
            "payload" => {
                record.payload = optional_bytes(field)
                    .map_err(|d| bad("payload", d))?
                    .ok_or_else(|| bad("payload", "is null".into()))?
            }
            // `chunk`, `encryption`, and columns a later version may add: nothing restore needs.
            _ => {}
        }
    }
    Ok(record)
}

fn optional_string(column: &str, field: &Field) -> Result<Option<String>, String> {
    match field {
        Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s.clone())),
        other => Err(format!("is {other:?}, not a {column} string")),
    }
}

fn string(column: &str, field: &Field) -> Result<String, String> {
    optional_string(column, field)?.ok_or_else(|| "is null".to_string())
}

fn millis(field: &Field) -> Result<Option<u64>, String> {
    match field {
        Field::Null => Ok(None),
        // The writer's cast, undone.
        Field::TimestampMillis(ms) | Field::Long(ms) => Ok(Some(*ms as u64)),
        other => Err(format!("is {other:?}, not a timestamp")),
    }
}

fn optional_bytes(field: &Field) -> Result<Option<Vec<u8>>, String> {
    match field {
        Field::Null => Ok(None),
        Field::Bytes(b) => Ok(Some(b.data().to_vec())),
        Field::Str(s) => Ok(Some(s.as_bytes().to_vec())),
        other => Err(format!("is {other:?}, not bytes")),
    }
}

fn properties(field: &Field) -> Result<Vec<(String, String)>, String> {
    match field {
        Field::Null => Ok(Vec::new()),
        Field::MapInternal(map) => map
            .entries()
            .iter()
            .map(|(k, v)| Ok((string("property key", k)?, string("property value", v)?)))
            .collect(),
        other => Err(format!("is {other:?}, not a map")),
    }
}
