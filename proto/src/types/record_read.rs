//! Reading a record line back: what restore produces again, and what `verify --deep` parses.
//!
//! Lines written before `key_encoding` and `ordering_key` existed read as a text key and no
//! ordering key, which is what their messages had as far as anyone can tell: the ingester
//! stored neither then.

use std::fmt;

use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::message_id::MessageId;

/// One record, owned, with its payload and ordering key as bytes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: MessageId,
    pub topic: String,
    pub publish_time_ms: u64,
    pub event_time_ms: Option<u64>,
    /// As the record holds it: for a byte key ([`Record::key_base64`]), its base64 text, which
    /// is also what Pulsar carries in `partition_key`.
    pub key: Option<String>,
    pub key_base64: bool,
    pub ordering_key: Option<Vec<u8>>,
    /// In the record's order.
    pub properties: Vec<(String, String)>,
    pub producer_name: String,
    pub sequence_id: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not a record: {0}")]
    Json(String),
    #[error("bad `{member}`: {detail}")]
    Member {
        member: &'static str,
        detail: String,
    },
}

/// Properties as a list in the line's order (a map type would sort or hash them).
#[derive(Default)]
struct PropertyList(Vec<(String, String)>);

impl<'de> Deserialize<'de> for PropertyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PropertyList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(PropertyList(out))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PropertyList::default())
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawLine {
    message_id: String,
    topic: String,
    publish_time: String,
    event_time: Option<String>,
    key: Option<String>,
    #[serde(default)]
    key_encoding: Option<String>,
    #[serde(default)]
    ordering_key: Option<String>,
    #[serde(default)]
    properties: PropertyList,
    producer_name: String,
    sequence_id: u64,
    payload: String,
    payload_encoding: String,
}

fn member(member: &'static str, detail: impl fmt::Display) -> RecordError {
    RecordError::Member {
        member,
        detail: detail.to_string(),
    }
}

fn millis(name: &'static str, text: &str) -> Result<u64, RecordError> {
    let t = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| member(name, e))?;
    u64::try_from(t.timestamp_millis()).map_err(|_| member(name, "before 1970"))
}

fn base64(name: &'static str, text: &str) -> Result<Vec<u8>, RecordError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| member(name, e))
}

/// Reads one line (with or without its `\n`).
pub fn decode_record(line: &[u8]) -> Result<Record, RecordError> {
    let raw: RawLine =
        serde_json::from_slice(line).map_err(|e| RecordError::Json(e.to_string()))?;
    let key_base64 = match raw.key_encoding.as_deref() {
        None | Some("utf8") => false,
        Some("base64") => true,
        Some(other) => return Err(member("key_encoding", format!("unknown {other:?}"))),
    };
    let payload = match raw.payload_encoding.as_str() {
        "utf8" => raw.payload.into_bytes(),
        "base64" => base64("payload", &raw.payload)?,
        other => return Err(member("payload_encoding", format!("unknown {other:?}"))),
    };
    Ok(Record {
        message_id: raw
            .message_id
            .parse()
            .map_err(|e| member("message_id", e))?,
        topic: raw.topic,
        publish_time_ms: millis("publish_time", &raw.publish_time)?,
        event_time_ms: raw
            .event_time
            .as_deref()
            .map(|t| millis("event_time", t))
            .transpose()?,
        key: raw.key,
        key_base64,
        ordering_key: raw
            .ordering_key
            .as_deref()
            .map(|k| base64("ordering_key", k))
            .transpose()?,
        properties: raw.properties.0,
        producer_name: raw.producer_name,
        sequence_id: raw.sequence_id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_record, RecordFields};
    use super::*;

    #[test]
    fn reads_back_what_encode_record_wrote() {
        let props = [("z", "1"), ("a", "2"), ("m", "é\n")];
        let fields = RecordFields {
            message_id: MessageId {
                ledger: 7,
                entry: 9,
                partition: 3,
                batch_index: 2,
            },
            topic: "persistent://t/n/x-partition-3",
            publish_time_ms: 1_795_488_259_913,
            event_time_ms: Some(1_795_488_259_001),
            key: Some("AAH/"),
            key_base64: true,
            ordering_key: Some(&[0, 1, 0xff]),
            properties: &props,
            producer_name: "p",
            sequence_id: 41,
            payload: &[0xff, 0, 0x80, b'a'],
            chunk: None,
            encryption: None,
        };
        let r = decode_record(&encode_record(&fields)).expect("decodes");
        assert_eq!(r.message_id, fields.message_id);
        assert_eq!(r.topic, fields.topic);
        assert_eq!(r.publish_time_ms, fields.publish_time_ms);
        assert_eq!(r.event_time_ms, fields.event_time_ms);
        assert_eq!(r.key.as_deref(), Some("AAH/"));
        assert!(r.key_base64);
        assert_eq!(r.ordering_key.as_deref(), Some(&[0u8, 1, 0xff][..]));
        let props: Vec<(&str, &str)> = r
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(props, [("z", "1"), ("a", "2"), ("m", "é\n")]);
        assert_eq!(r.sequence_id, 41);
        assert_eq!(r.payload, fields.payload);
    }

    #[test]
    fn an_old_line_reads_as_a_text_key_without_ordering_key() {
        let line = concat!(
            r#"{"message_id":"12:34:-1:0","topic":"persistent://public/default/orders","#,
            r#""publish_time":"2026-11-24T02:44:19.913Z","event_time":null,"key":"k1","#,
            r#""properties":{"a":"b"},"producer_name":"p-1","sequence_id":7,"#,
            r#""payload":"hello","payload_encoding":"utf8"}"#,
        );
        let r = decode_record(line.as_bytes()).expect("decodes");
        assert_eq!(r.key.as_deref(), Some("k1"));
        assert!(!r.key_base64);
        assert_eq!(r.ordering_key, None);
        assert_eq!(r.event_time_ms, None);
        assert_eq!(r.payload, b"hello");
        assert_eq!(r.properties, vec![("a".into(), "b".into())]);
    }

    #[test]
    fn damage_names_the_member() {
        let bad = br#"{"message_id":"1:2:-1:0","topic":"t","publish_time":"2026-11-24T02:44:19.913Z","event_time":null,"key":null,"properties":{},"producer_name":"p","sequence_id":1,"payload":"%%","payload_encoding":"base64"}"#;
        assert!(matches!(
            decode_record(bad),
            Err(RecordError::Member {
                member: "payload",
                ..
            })
        ));
        assert!(matches!(
            decode_record(b"{\"message_id\":1}"),
            Err(RecordError::Json(_))
        ));
    }
}
