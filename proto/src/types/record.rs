//! The JSON Lines record: one consumed message, one line, field order as in docs/reference.md §9.
//!
//! The spool keeps records in a compact form (the ingester's `spool::log_record`) and makes their lines here
//! when a segment is sealed; [`record_json_len`] gives a line's length at consumption time, for
//! the `max_bytes` cut, without making it.
//!
//! Two members follow `payload_encoding` only when the message has them: `chunk` (one chunk of a
//! message its producer split) and `encryption` (an end-to-end-encrypted payload's keys). The
//! client reassembles and decrypts neither, so the record keeps what doing it later takes; a
//! message without them gives the same bytes as before they existed.
//!
//! Two more follow `key` only when the message has them, for the same reason: `key_encoding`
//! (`"base64"` when the producer set a byte key, which Pulsar carries as its base64 text with a
//! flag) and `ordering_key` (bytes, base64). Restore needs both to put a message back as it was.
//!
//! [`decode_record`] reads a line back (restore, `verify --deep`), old lines without the later
//! members included.

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
    /// The key is the base64 text of a byte key (Pulsar's `partition_key_b64_encoded`).
    pub key_base64: bool,
    /// Pulsar's `ordering_key` (bytes; Key_Shared subscriptions order by it instead of the key).
    pub ordering_key: Option<&'a [u8]>,
    pub properties: &'a [(&'a str, &'a str)],
    pub producer_name: &'a str,
    pub sequence_id: u64,
    pub payload: &'a [u8],
    /// Set when the message is one chunk of a larger one (the record's `chunk`).
    pub chunk: Option<ChunkFields<'a>>,
    /// Set when the payload is end-to-end encrypted (the record's `encryption`).
    pub encryption: Option<&'a EncryptionFields<'a>>,
}

/// A chunk of a message its producer split because it exceeded the broker's size limit: every
/// chunk is an entry of its own, and the consumer, not the broker, puts them together again.
/// The members are those of Pulsar's `MessageMetadata` (`uuid`, `chunk_id`,
/// `num_chunks_from_msg`, `total_chunk_msg_size`); one the producer left unset is `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ChunkFields<'a> {
    /// Names the whole message; the same in all its chunks (a Java producer writes
    /// `{producer name}-{sequence id}`).
    pub uuid: Option<&'a str>,
    /// This chunk's place, from 0.
    pub chunk_id: Option<i32>,
    pub num_chunks: Option<i32>,
    /// Bytes of the whole message (its chunks' payloads concatenated).
    pub total_size: Option<i32>,
}

impl ChunkFields<'_> {
    pub fn is_empty(&self) -> bool {
        *self == ChunkFields::default()
    }
}

/// What decrypting an end-to-end-encrypted payload takes besides the consumer's private key:
/// the message's data key, encrypted once per public key the producer used, the algorithm and
/// its parameter (Pulsar's `encryption_keys`, `encryption_algo`, `encryption_param`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionFields<'a> {
    pub keys: Vec<EncryptionKey<'a>>,
    pub algorithm: Option<&'a str>,
    /// For Pulsar's clients, the initialisation vector of the payload's AES-GCM encryption.
    pub param: Option<&'a [u8]>,
}

impl EncryptionFields<'_> {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.algorithm.is_none() && self.param.is_none()
    }
}

/// One encrypted copy of a message's data key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionKey<'a> {
    /// The name the producer's key reader gave the public key.
    pub name: &'a str,
    /// The data key, encrypted with that public key.
    pub value: &'a [u8],
    pub metadata: Vec<(&'a str, &'a str)>,
}

/// Bytes as a base64 JSON string.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl Serialize for EncryptionKey<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("name", self.name)?;
        map.serialize_entry("value", &Base64(self.value))?;
        map.serialize_entry("metadata", &Properties(&self.metadata))?;
        map.end()
    }
}

impl Serialize for EncryptionFields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("keys", &self.keys)?;
        map.serialize_entry("algorithm", &self.algorithm)?;
        map.serialize_entry("param", &self.param.map(Base64))?;
        map.end()
    }
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
    // Left out when absent, like `chunk` below, so that other records keep their old bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering_key: Option<Base64<'a>>,
    properties: Properties<'a>,
    producer_name: &'a str,
    sequence_id: u64,
    payload: std::borrow::Cow<'a, str>,
    payload_encoding: &'static str,
    // Left out when absent, not null: records of plain messages keep their old bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<ChunkFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<&'a EncryptionFields<'a>>,
}

/// Encodes one record as a JSON line, newline included.
pub fn encode_record(fields: &RecordFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.payload.len() + 256);
    encode_record_into(fields, &mut out);
    out
}

/// Appends the line [`encode_record`] returns to `out`, so a caller can batch records in one
/// buffer; bytes already in `out` are left as they are.
pub fn encode_record_into(fields: &RecordFields<'_>, out: &mut Vec<u8>) {
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
        key_encoding: key_encoding(fields),
        ordering_key: fields.ordering_key.map(Base64),
        properties: Properties(fields.properties),
        producer_name: fields.producer_name,
        sequence_id: fields.sequence_id,
        payload,
        payload_encoding,
        chunk: fields.chunk,
        encryption: fields.encryption,
    };
    let start = out.len();
    // Serialising plain strings and integers into a Vec cannot fail; should it anyway, a partial
    // object must not be left behind the caller's earlier records.
    if serde_json::to_writer(&mut *out, &line).is_err() {
        out.truncate(start);
    }
    out.push(b'\n');
}

/// The record's `key_encoding`: only a byte key has one.
fn key_encoding(fields: &RecordFields<'_>) -> Option<&'static str> {
    (fields.key_base64 && fields.key.is_some()).then_some(KEY_BASE64)
}

const KEY_BASE64: &str = "base64";

/// Keys of [`Line`] in serialisation order, the optional `chunk` and `encryption` left out; they
/// need no escaping.
const KEYS: [&str; 10] = [
    "message_id",
    "topic",
    "publish_time",
    "event_time",
    "key",
    "properties",
    "producer_name",
    "sequence_id",
    "payload",
    "payload_encoding",
];

/// Everything in a JSON object with `keys` that does not depend on the values: braces, quoted
/// keys, colons and commas.
const fn object_fixed_len(keys: &[&str]) -> u64 {
    let mut n = 2 + (keys.len() as u64 - 1);
    let mut i = 0;
    while i < keys.len() {
        n += keys[i].len() as u64 + 3;
        i += 1;
    }
    n
}

/// Everything in a line that does not depend on the values, the trailing newline included.
const FIXED_LEN: u64 = object_fixed_len(&KEYS) + 1;

/// `,"chunk":` and the chunk object without its values.
const CHUNK_FIXED_LEN: u64 = 1
    + "chunk".len() as u64
    + 3
    + object_fixed_len(&["uuid", "chunk_id", "num_chunks", "total_size"]);

/// `,"encryption":` and the encryption object without its values.
const ENCRYPTION_FIXED_LEN: u64 =
    1 + "encryption".len() as u64 + 3 + object_fixed_len(&["keys", "algorithm", "param"]);

/// `,"key_encoding":"base64"`.
const KEY_ENCODING_LEN: u64 = 1 + "key_encoding".len() as u64 + 3 + 2 + KEY_BASE64.len() as u64;

/// `,"ordering_key":` without its value.
const ORDERING_KEY_FIXED_LEN: u64 = 1 + "ordering_key".len() as u64 + 3;

/// One key of `encryption.keys` without its values.
const ENCRYPTION_KEY_FIXED_LEN: u64 = object_fixed_len(&["name", "value", "metadata"]);

/// Bytes serde_json's compact formatter adds when it escapes a byte inside a string: `\"`,
/// `\\` and the short control escapes take two bytes, other control bytes `\u00XX` six.
const JSON_ESCAPE_EXTRA: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = 5;
        b += 1;
    }
    t[0x08] = 1;
    t[0x09] = 1;
    t[0x0a] = 1;
    t[0x0c] = 1;
    t[0x0d] = 1;
    t[b'"' as usize] = 1;
    t[b'\\' as usize] = 1;
    t
};

/// Last millisecond whose year chrono writes with four digits; later years get a sign and more
/// digits, so their length is not constant.
const LAST_FOUR_DIGIT_YEAR_MS: u64 = 253_402_300_799_999;
/// `"2026-11-24T02:44:19.913Z"`, quotes included.
const QUOTED_TIMESTAMP_LEN: u64 = 26;

/// Length of `s` as a JSON string, quotes included.
fn json_str_len(s: &[u8]) -> u64 {
    let extra: u64 = s
        .iter()
        .map(|&b| u64::from(JSON_ESCAPE_EXTRA[usize::from(b)]))
        .sum();
    2 + s.len() as u64 + extra
}

fn u64_digits(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

fn i32_digits(n: i32) -> u64 {
    u64::from(n < 0) + u64_digits(u64::from(n.unsigned_abs()))
}

/// Length of `bytes` as a base64 JSON string, quotes included (base64 needs no escaping).
fn base64_len(bytes: &[u8]) -> u64 {
    2 + (bytes.len() as u64).div_ceil(3) * 4
}

/// Length of a JSON object of `properties`.
fn properties_len(properties: &[(&str, &str)]) -> u64 {
    2 + properties
        .iter()
        .map(|(k, v)| json_str_len(k.as_bytes()) + 1 + json_str_len(v.as_bytes()))
        .sum::<u64>()
        + (properties.len() as u64).saturating_sub(1)
}

fn chunk_len(chunk: &ChunkFields<'_>) -> u64 {
    const NULL_LEN: u64 = 4;
    let number = |n: Option<i32>| n.map_or(NULL_LEN, i32_digits);
    CHUNK_FIXED_LEN
        + chunk.uuid.map_or(NULL_LEN, |u| json_str_len(u.as_bytes()))
        + number(chunk.chunk_id)
        + number(chunk.num_chunks)
        + number(chunk.total_size)
}

fn encryption_len(encryption: &EncryptionFields<'_>) -> u64 {
    const NULL_LEN: u64 = 4;
    let keys = 2
        + encryption
            .keys
            .iter()
            .map(|k| {
                ENCRYPTION_KEY_FIXED_LEN
                    + json_str_len(k.name.as_bytes())
                    + base64_len(k.value)
                    + properties_len(&k.metadata)
            })
            .sum::<u64>()
        + (encryption.keys.len() as u64).saturating_sub(1);
    ENCRYPTION_FIXED_LEN
        + keys
        + encryption
            .algorithm
            .map_or(NULL_LEN, |a| json_str_len(a.as_bytes()))
        + encryption.param.map_or(NULL_LEN, base64_len)
}

fn timestamp_len(ms: u64) -> u64 {
    if ms <= LAST_FOUR_DIGIT_YEAR_MS {
        QUOTED_TIMESTAMP_LEN
    } else {
        json_str_len(rfc3339_from_millis(ms).as_bytes())
    }
}

/// Exactly `encode_record(fields).len()`, computed without building the line: it runs for every
/// consumed message, where serialising twice would double the cost of spooling.
pub fn record_json_len(fields: &RecordFields<'_>) -> u64 {
    const NULL_LEN: u64 = 4;
    let id = &fields.message_id;
    let message_id = 2
        + u64_digits(id.ledger)
        + 1
        + u64_digits(id.entry)
        + 1
        + i32_digits(id.partition)
        + 1
        + i32_digits(id.batch_index);
    let event_time = fields
        .event_time_ms
        .filter(|&t| t > 0)
        .map_or(NULL_LEN, timestamp_len);
    let key = fields.key.map_or(NULL_LEN, |k| json_str_len(k.as_bytes()))
        + key_encoding(fields).map_or(0, |_| KEY_ENCODING_LEN)
        + fields
            .ordering_key
            .map_or(0, |k| ORDERING_KEY_FIXED_LEN + base64_len(k));
    let properties = properties_len(fields.properties);
    let (payload, payload_encoding) = match std::str::from_utf8(fields.payload) {
        Ok(_) => (json_str_len(fields.payload), "utf8"),
        Err(_) => (base64_len(fields.payload), "base64"),
    };
    FIXED_LEN
        + message_id
        + json_str_len(fields.topic.as_bytes())
        + timestamp_len(fields.publish_time_ms)
        + event_time
        + key
        + properties
        + json_str_len(fields.producer_name.as_bytes())
        + u64_digits(fields.sequence_id)
        + payload
        + 2
        + payload_encoding.len() as u64
        + fields.chunk.as_ref().map_or(0, chunk_len)
        + fields.encryption.map_or(0, encryption_len)
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
            key_base64: false,
            ordering_key: None,
            properties: props,
            producer_name: "p-1",
            sequence_id: 7,
            payload,
            chunk: None,
            encryption: None,
        }
    }

    fn sample_encryption() -> EncryptionFields<'static> {
        EncryptionFields {
            keys: vec![
                EncryptionKey {
                    name: "app-key",
                    value: &[0xde, 0xad, 0xbe, 0xef],
                    metadata: vec![("version", "2"), ("q\"", "é")],
                },
                EncryptionKey {
                    name: "reader",
                    value: &[],
                    metadata: Vec::new(),
                },
            ],
            algorithm: None,
            param: Some(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
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

    /// Records of messages without chunk or encryption metadata are what they were before those
    /// members existed, byte for byte (objects already stored and their readers stay valid).
    #[test]
    fn records_without_chunk_or_encryption_keep_their_bytes() {
        let mut f = fields(&[0xff, 0x00, 0x80], &[("a", "b"), ("c", "d")]);
        f.key = None;
        f.event_time_ms = Some(1_795_488_259_000);
        let line = encode_record(&f);
        let expected = concat!(
            r#"{"message_id":"12:34:-1:0","topic":"persistent://public/default/orders","#,
            r#""publish_time":"2026-11-24T02:44:19.913Z","event_time":"2026-11-24T02:44:19.000Z","#,
            r#""key":null,"properties":{"a":"b","c":"d"},"producer_name":"p-1","sequence_id":7,"#,
            r#""payload":"/wCA","payload_encoding":"base64"}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(line).unwrap_or_default(), expected);
    }

    #[test]
    fn chunk_and_encryption_follow_the_payload_when_present() {
        let encryption = sample_encryption();
        let mut f = fields(b"part", &[]);
        f.chunk = Some(ChunkFields {
            uuid: Some("p-1-7"),
            chunk_id: Some(1),
            num_chunks: Some(3),
            total_size: Some(12_000),
        });
        f.encryption = Some(&encryption);
        let line = String::from_utf8(encode_record(&f)).unwrap_or_default();
        let expected = concat!(
            r#""payload":"part","payload_encoding":"utf8","#,
            r#""chunk":{"uuid":"p-1-7","chunk_id":1,"num_chunks":3,"total_size":12000},"#,
            r#""encryption":{"keys":[{"name":"app-key","value":"3q2+7w==","#,
            r#""metadata":{"version":"2","q\"":"é"}},{"name":"reader","value":"","metadata":{}}],"#,
            r#""algorithm":null,"param":"AQIDBAUGBwgJCgsM"}}"#,
            "\n"
        );
        assert!(line.ends_with(expected), "{line}");
        assert_eq!(record_json_len(&f), line.len() as u64);

        // Each on its own; members the producer left unset are null.
        f.encryption = None;
        f.chunk = Some(ChunkFields {
            uuid: Some("u"),
            ..ChunkFields::default()
        });
        let v: serde_json::Value = serde_json::from_slice(&encode_record(&f)).expect("json");
        assert_eq!(
            v["chunk"],
            serde_json::json!({"uuid":"u","chunk_id":null,"num_chunks":null,"total_size":null})
        );
        assert!(v.get("encryption").is_none());
        f.chunk = None;
        f.encryption = Some(&encryption);
        let v: serde_json::Value = serde_json::from_slice(&encode_record(&f)).expect("json");
        assert!(v.get("chunk").is_none());
        assert_eq!(v["encryption"]["keys"][0]["value"], "3q2+7w==");
    }

    /// A byte key and an ordering key follow `key`; a record without them is as before.
    #[test]
    fn byte_key_and_ordering_key_follow_the_key_when_present() {
        let mut f = fields(b"x", &[]);
        f.key = Some("AAH/");
        f.key_base64 = true;
        f.ordering_key = Some(&[0xfe, 0x00]);
        let line = String::from_utf8(encode_record(&f)).unwrap_or_default();
        assert!(
            line.contains(
                r#""key":"AAH/","key_encoding":"base64","ordering_key":"/gA=","properties":{}"#
            ),
            "{line}"
        );
        assert_eq!(record_json_len(&f), line.len() as u64);
        // A text key with an ordering key; a base64 flag without a key says nothing.
        f.key_base64 = false;
        let line = String::from_utf8(encode_record(&f)).unwrap_or_default();
        assert!(
            line.contains(r#""key":"AAH/","ordering_key":"/gA=","#),
            "{line}"
        );
        f.key = None;
        f.key_base64 = true;
        f.ordering_key = None;
        let line = String::from_utf8(encode_record(&f)).unwrap_or_default();
        assert!(line.contains(r#""key":null,"properties""#), "{line}");
        assert_eq!(record_json_len(&f), line.len() as u64);
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

    #[test]
    fn encode_record_into_appends_after_existing_bytes() {
        let f = fields(b"hello", &[("a", "b")]);
        let mut out = b"previous line\n".to_vec();
        encode_record_into(&f, &mut out);
        let (head, tail) = out.split_at(14);
        assert_eq!(head, b"previous line\n");
        assert_eq!(tail, encode_record(&f).as_slice());
        encode_record_into(&f, &mut out);
        assert_eq!(out.len(), 14 + 2 * encode_record(&f).len());
    }

    #[test]
    fn timestamp_length_is_constant_up_to_year_9999_only() {
        for ms in [0, 1, 1_795_488_259_913, LAST_FOUR_DIGIT_YEAR_MS] {
            assert_eq!(
                rfc3339_from_millis(ms).len() as u64 + 2,
                QUOTED_TIMESTAMP_LEN
            );
        }
        assert_eq!(
            rfc3339_from_millis(LAST_FOUR_DIGIT_YEAR_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_from_millis(LAST_FOUR_DIGIT_YEAR_MS + 1),
            "+10000-01-01T00:00:00.000Z"
        );
        for ms in [
            LAST_FOUR_DIGIT_YEAR_MS,
            LAST_FOUR_DIGIT_YEAR_MS + 1,
            u64::MAX,
        ] {
            assert_eq!(timestamp_len(ms), rfc3339_from_millis(ms).len() as u64 + 2);
        }
    }

    /// xorshift64*: deterministic, so a failure reproduces without a new dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }

        fn string(&mut self, alphabet: &[char]) -> String {
            let len = self.pick(&[0, 1, 2, 5, 17, 64]);
            (0..len).map(|_| self.pick(alphabet)).collect()
        }

        fn bytes(&mut self, alphabet: &[char]) -> Vec<u8> {
            match self.below(4) {
                0 => Vec::new(),
                1 => self.string(alphabet).into_bytes(),
                2 => {
                    let len = self.below(40);
                    (0..len).map(|_| self.next() as u8).collect()
                }
                _ => {
                    // Valid text cut at a random byte, often in the middle of a multi-byte char.
                    let mut b = self.string(alphabet).into_bytes();
                    let cut = self.below(b.len() as u64 + 1) as usize;
                    b.truncate(cut);
                    b
                }
            }
        }

        fn u64_value(&mut self) -> u64 {
            match self.below(5) {
                0 => 0,
                1 => u64::MAX,
                2 => self.below(1000),
                _ => self.next() >> self.below(64),
            }
        }

        fn i32_value(&mut self) -> i32 {
            match self.below(5) {
                0 => -1,
                1 => i32::MIN,
                2 => i32::MAX,
                3 => 0,
                _ => self.next() as i32,
            }
        }

        fn millis(&mut self) -> u64 {
            match self.below(9) {
                0 => 0,
                8 => LAST_FOUR_DIGIT_YEAR_MS + 1,
                1 => 1_795_488_259_913,
                2 => LAST_FOUR_DIGIT_YEAR_MS,
                3 => LAST_FOUR_DIGIT_YEAR_MS + 1 + self.below(1 << 50),
                4 => u64::MAX,
                5 => i64::MAX as u64,
                _ => self.below(LAST_FOUR_DIGIT_YEAR_MS + 1),
            }
        }
    }

    /// An encryption key's name, value and metadata, owned.
    type OwnedKey = (String, Vec<u8>, Vec<(String, String)>);

    #[test]
    fn record_json_len_matches_encode_record_on_random_records() {
        let mut alphabet: Vec<char> = (0u8..0x20).map(char::from).collect();
        alphabet.extend([
            '"', '\\', '\u{7f}', 'é', '中', '😀', 'a', 'Z', '0', ' ', '/', ':',
        ]);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let topic = rng.string(&alphabet);
            let producer = rng.string(&alphabet);
            let key = match rng.below(3) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(rng.string(&alphabet)),
            };
            let owned_props: Vec<(String, String)> = (0..rng.below(4))
                .map(|_| (rng.string(&alphabet), rng.string(&alphabet)))
                .collect();
            let props: Vec<(&str, &str)> = owned_props
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let payload = rng.bytes(&alphabet);
            let event_time_ms = match rng.below(4) {
                0 => None,
                1 => Some(0),
                _ => Some(rng.millis()),
            };
            let uuid = rng.string(&alphabet);
            let opt_i32 = |rng: &mut Rng| (rng.below(4) > 0).then(|| rng.i32_value());
            let chunk = (rng.below(3) == 0).then(|| ChunkFields {
                uuid: (rng.below(4) > 0).then_some(uuid.as_str()),
                chunk_id: opt_i32(&mut rng),
                num_chunks: opt_i32(&mut rng),
                total_size: opt_i32(&mut rng),
            });
            let key_parts: Vec<OwnedKey> = (0..rng.below(3))
                .map(|_| {
                    let name = rng.string(&alphabet);
                    let value = rng.bytes(&alphabet);
                    let meta = (0..rng.below(3))
                        .map(|_| (rng.string(&alphabet), rng.string(&alphabet)))
                        .collect();
                    (name, value, meta)
                })
                .collect();
            let algorithm = rng.string(&alphabet);
            let param = rng.bytes(&alphabet);
            let ordering_key = rng.bytes(&alphabet);
            let encryption = EncryptionFields {
                keys: key_parts
                    .iter()
                    .map(|(name, value, meta)| EncryptionKey {
                        name,
                        value,
                        metadata: meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                    })
                    .collect(),
                algorithm: (rng.below(2) == 0).then_some(algorithm.as_str()),
                param: (rng.below(3) > 0).then_some(param.as_slice()),
            };
            let f = RecordFields {
                message_id: MessageId {
                    ledger: rng.u64_value(),
                    entry: rng.u64_value(),
                    partition: rng.i32_value(),
                    batch_index: rng.i32_value(),
                },
                topic: &topic,
                publish_time_ms: rng.millis(),
                event_time_ms,
                key: key.as_deref(),
                key_base64: rng.below(3) == 0,
                ordering_key: (rng.below(3) == 0).then_some(ordering_key.as_slice()),
                properties: &props,
                producer_name: &producer,
                sequence_id: rng.u64_value(),
                payload: &payload,
                chunk,
                encryption: (rng.below(3) == 0).then_some(&encryption),
            };
            let line = encode_record(&f);
            assert_eq!(
                record_json_len(&f),
                line.len() as u64,
                "case {case}: {f:?}\nline: {}",
                String::from_utf8_lossy(&line)
            );
        }
    }
}
