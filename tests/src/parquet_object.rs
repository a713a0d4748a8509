//! A Parquet object's rows as the JSON records the oracle checks, read with the `parquet`
//! crate's own row reader (not tdmq-backup's): each row becomes the record the JSON Lines format
//! would hold for the same message, so [`crate::check_exactly_once`] checks every field of both.

use anyhow::{bail, Context};
use base64::Engine as _;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use crate::oracle::format_time_ms;

/// Every row of the Parquet file `body`, in order.
pub fn records(key: &str, body: &[u8]) -> anyhow::Result<Vec<Value>> {
    let reader = SerializedFileReader::new(bytes::Bytes::copy_from_slice(body))
        .with_context(|| format!("{key} is not a Parquet file"))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("reading the rows of {key}"))?;
    let mut out = Vec::new();
    for (n, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{key}: row {}", n + 1))?;
        let mut record = Map::new();
        for (name, field) in row.get_column_iter() {
            record.insert(name.clone(), json_of(field));
        }
        out.push(jsonl_shape(key, n, record)?);
    }
    Ok(out)
}

/// A field as JSON: strings as text, bytes as base64 (marked), times as milliseconds.
fn json_of(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Str(s) => Value::from(s.clone()),
        Field::Bytes(b) => Value::from(base64::engine::general_purpose::STANDARD.encode(b.data())),
        Field::Long(n) | Field::TimestampMillis(n) => Value::from(*n),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let name = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (name, json_of(v))
                })
                .collect(),
        ),
        other => Value::from(other.to_string()),
    }
}

/// The row's columns renamed and re-encoded as the JSON Lines record has them.
fn jsonl_shape(key: &str, n: usize, mut row: Map<String, Value>) -> anyhow::Result<Value> {
    let time = |v: Option<Value>| -> Value {
        v.and_then(|v| v.as_i64())
            .and_then(|ms| u64::try_from(ms).ok())
            .and_then(format_time_ms)
            .map_or(Value::Null, Value::from)
    };
    let Some(Value::String(payload64)) = row.remove("payload") else {
        bail!("{key}: row {} has no payload", n + 1);
    };
    let payload = base64::engine::general_purpose::STANDARD.decode(&payload64)?;
    let (payload, encoding) = match String::from_utf8(payload) {
        Ok(text) => (Value::from(text), "utf8"),
        Err(_) => (Value::from(payload64), "base64"),
    };
    let mut record = Map::new();
    for member in ["message_id", "topic"] {
        record.insert(member.into(), row.remove(member).unwrap_or(Value::Null));
    }
    record.insert("publish_time".into(), time(row.remove("publish_time")));
    record.insert("event_time".into(), time(row.remove("event_time")));
    record.insert("key".into(), row.remove("key").unwrap_or(Value::Null));
    if let Some(encoding @ Value::String(_)) = row.remove("key_encoding") {
        record.insert("key_encoding".into(), encoding);
    }
    if let Some(ordering @ Value::String(_)) = row.remove("ordering_key") {
        record.insert("ordering_key".into(), ordering);
    }
    for member in ["properties", "producer_name", "sequence_id"] {
        record.insert(member.into(), row.remove(member).unwrap_or(Value::Null));
    }
    record.insert("payload".into(), payload);
    record.insert("payload_encoding".into(), Value::from(encoding));
    Ok(Value::Object(record))
}
