//! The JSON Lines record: one consumed message, one line, field order as in CONTRACT.md.
//!
//! A record is encoded exactly once, when the message is spooled; the bytes stored in the spool
//! are the bytes that end up in the object.

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::message_id::MessageId;
use super::time::rfc3339_from_millis;

/// What a record is made of, borrowed from the consumed message.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    pub message_id: MessageId,
    /// Full topic name the message came from (a partition's name for partitioned topics).
    pub topic: &'a str,
    pub publish_time_ms: u64,
    /// Pulsar's event time; 0 or absent means none.
    pub event_time_ms: Option<u64>,
    pub key: Option<&'a str>,
    pub properties: &'a [(&'a str, &'a str)],
    pub producer_name: &'a str,
    pub sequence_id: u64,
    pub payload: &'a [u8],
}

/// A JSON object of the properties in the order given (Pulsar keeps them as a list).
struct Properties<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    message_id: String,
    topic: &'a str,
    publish_time: String,
    event_time: Option<String>,
    key: Option<&'a str>,
    properties: Properties<'a>,
    producer_name: &'a str,
    sequence_id: u64,
    payload: std::borrow::Cow<'a, str>,
    payload_encoding: &'static str,
}

/// Encodes one record as a JSON line, newline included.
pub fn encode_record(fields: &RecordFields<'_>) -> Vec<u8> {
    let (payload, payload_encoding) = match std::str::from_utf8(fields.payload) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), "utf8"),
        Err(_) => (
            std::borrow::Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(fields.payload),
            ),
            "base64",
        ),
    };
    let line = Line {
        message_id: fields.message_id.to_string(),
        topic: fields.topic,
        publish_time: rfc3339_from_millis(fields.publish_time_ms),
        event_time: fields
            .event_time_ms
            .filter(|&t| t > 0)
            .map(rfc3339_from_millis),
        key: fields.key,
        properties: Properties(fields.properties),
        producer_name: fields.producer_name,
        sequence_id: fields.sequence_id,
        payload,
        payload_encoding,
    };
    let mut out = Vec::with_capacity(fields.payload.len() + 256);
    // Serialising plain strings and integers into a Vec cannot fail.
    if serde_json::to_writer(&mut out, &line).is_err() {
        out.clear();
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(payload: &'a [u8], props: &'a [(&'a str, &'a str)]) -> RecordFields<'a> {
        RecordFields {
            message_id: MessageId {
                ledger: 12,
                entry: 34,
                partition: -1,
                batch_index: 0,
            },
            topic: "persistent://public/default/orders",
            publish_time_ms: 1_795_488_259_913,
            event_time_ms: None,
            key: Some("k1"),
            properties: props,
            producer_name: "p-1",
            sequence_id: 7,
            payload,
        }
    }

    #[test]
    fn matches_the_contract_example_byte_for_byte() {
        let line = encode_record(&fields(b"hello", &[("a", "b")]));
        let expected = concat!(
            r#"{"message_id":"12:34:-1:0","topic":"persistent://public/default/orders","#,
            r#""publish_time":"2026-11-24T02:44:19.913Z","event_time":null,"key":"k1","#,
            r#""properties":{"a":"b"},"producer_name":"p-1","sequence_id":7,"#,
            r#""payload":"hello","payload_encoding":"utf8"}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(line).unwrap_or_default(), expected);
    }

    #[test]
    fn non_utf8_payload_is_base64() {
        let line = encode_record(&fields(&[0xff, 0x00, 0x80], &[]));
        let v: serde_json::Value = serde_json::from_slice(&line).expect("valid json");
        assert_eq!(v["payload"], "/wCA");
        assert_eq!(v["payload_encoding"], "base64");
        assert_eq!(v["properties"], serde_json::json!({}));
    }

    #[test]
    fn absent_key_and_event_time_are_null_present_ones_are_kept() {
        let mut f = fields(b"x\n\"y\"", &[]);
        f.key = None;
        let v: serde_json::Value = serde_json::from_slice(&encode_record(&f)).expect("json");
        assert!(v["key"].is_null() && v["event_time"].is_null());
        assert_eq!(v["payload"], "x\n\"y\"");
        f.event_time_ms = Some(1_795_488_259_000);
        let v: serde_json::Value = serde_json::from_slice(&encode_record(&f)).expect("json");
        assert_eq!(v["event_time"], "2026-11-24T02:44:19.000Z");
    }

    #[test]
    fn one_line_per_record() {
        let line = encode_record(&fields("multi\nline\u{2028}".as_bytes(), &[("k\n", "v\n")]));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
    }
}
