//! The spool's compact record form: what a record log holds for each consumed message, turned
//! into the object's JSON line only when its segment is sealed.
//!
//! Why not the JSON line itself: the line's envelope (field names, the topic, an RFC 3339
//! time, a producer name, the message id as text) is ≈300 bytes, so at 100-byte messages the log
//! alone was 4× the payload on disk. Here numbers are varints and the topic and producer name are
//! written only when they differ from the previous record of the same log, so a record costs its
//! payload plus a few dozen bytes.
//!
//! A log is a sequence of frames, read strictly from its start:
//!
//! ```text
//! frame    = varint(len(rest)) rest
//! rest     = flags:u8 [string topic] [string producer_name] [extras] body
//! body     = varint ledger, varint entry, zigzag partition, zigzag batch_index,
//!            varint publish_time_ms, varint event_time_ms (0 = none),
//!            varint(len(key) + 1) key (0 = no key),
//!            varint property_count, (string key, string value) × count,
//!            varint sequence_id, payload (the rest of the frame)
//! extras   = varint kinds (bit 0: chunk, bit 1: encryption, bit 2: keys), [chunk] [encryption]
//!            [keys]
//! chunk    = opt_string uuid, opt_i32 chunk_id, opt_i32 num_chunks, opt_i32 total_size
//! encryption = varint key_count, (string name, bytes value, varint metadata_count,
//!              (string key, string value) × metadata_count) × key_count,
//!              opt_string algorithm, opt_bytes param
//! string   = varint(len) UTF-8 bytes
//! bytes    = varint(len) bytes
//! keys     = u8 key_base64 (0 or 1), opt_bytes ordering_key
//! opt_string, opt_bytes = varint(len + 1) bytes (0 = absent)
//! opt_i32  = varint(zigzag(value) + 1) (0 = absent)
//! ```
//!
//! `flags` bit 0: the topic follows (else it is the previous record's); bit 1: the producer name
//! follows; bit 2: extras follow (the message is a chunk or encrypted, see
//! [`proto::types::record::ChunkFields`]). The first record of a log (and the first after a restart)
//! carries both names. Bit 2 came later: a log written before it has no frame with it and reads
//! as it always did, and frames without extras are written exactly as before. The `keys` extra
//! (a byte key, an ordering key) came later still, the same way.

use proto::types::record::{
    encode_record_into, ChunkFields, EncryptionFields, EncryptionKey, RecordFields,
};
use proto::types::MessageId;

const NEW_TOPIC: u8 = 1;
const NEW_PRODUCER: u8 = 2;
const EXTRAS: u8 = 4;
const KNOWN_FLAGS: u8 = NEW_TOPIC | NEW_PRODUCER | EXTRAS;
const CHUNK: u64 = 1;
const ENCRYPTION: u64 = 2;
const KEYS: u64 = 4;
const KNOWN_EXTRAS: u64 = CHUNK | ENCRYPTION | KEYS;
/// Far above any Pulsar message (5 MB by default): a larger length is damage, and waiting for
/// the rest of such a frame would hold the whole log in memory.
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("damaged record at log offset {offset}: {what}")]
pub struct LogRecordError {
    pub offset: u64,
    pub what: String,
}

/// Appends the body of a record (everything but topic and producer name) to `out`, for
/// [`LogEncoder::append`].
///
/// Its first byte is not the frame's: it holds the frame flags the body itself decides (whether
/// extras follow), which `append` merges into the frame's flags byte, so a body costs no byte
/// more in the log. The extras come next, then the frame's `body` as in the module doc.
pub fn encode_body(fields: &RecordFields<'_>, out: &mut Vec<u8>) {
    let has_keys = fields.key_base64 || fields.ordering_key.is_some();
    let kinds = u64::from(fields.chunk.is_some()) * CHUNK
        + u64::from(fields.encryption.is_some()) * ENCRYPTION
        + u64::from(has_keys) * KEYS;
    if kinds == 0 {
        out.push(0);
    } else {
        out.push(EXTRAS);
        put_varint(out, kinds);
        if let Some(chunk) = &fields.chunk {
            put_opt_bytes(out, chunk.uuid.map(str::as_bytes));
            put_opt_i32(out, chunk.chunk_id);
            put_opt_i32(out, chunk.num_chunks);
            put_opt_i32(out, chunk.total_size);
        }
        if let Some(encryption) = fields.encryption {
            put_varint(out, encryption.keys.len() as u64);
            for key in &encryption.keys {
                put_str(out, key.name);
                put_bytes(out, key.value);
                put_varint(out, key.metadata.len() as u64);
                for (k, v) in &key.metadata {
                    put_str(out, k);
                    put_str(out, v);
                }
            }
            put_opt_bytes(out, encryption.algorithm.map(str::as_bytes));
            put_opt_bytes(out, encryption.param);
        }
        if has_keys {
            out.push(u8::from(fields.key_base64));
            put_opt_bytes(out, fields.ordering_key);
        }
    }
    let id = fields.message_id;
    put_varint(out, id.ledger);
    put_varint(out, id.entry);
    put_varint(out, zigzag(id.partition));
    put_varint(out, zigzag(id.batch_index));
    put_varint(out, fields.publish_time_ms);
    put_varint(out, fields.event_time_ms.unwrap_or(0));
    match fields.key {
        Some(key) => {
            put_varint(out, key.len() as u64 + 1);
            out.extend_from_slice(key.as_bytes());
        }
        None => put_varint(out, 0),
    }
    put_varint(out, fields.properties.len() as u64);
    for (k, v) in fields.properties {
        put_str(out, k);
        put_str(out, v);
    }
    put_varint(out, fields.sequence_id);
    out.extend_from_slice(fields.payload);
}

/// Writes frames into one log, remembering the last topic and producer name it wrote. A fresh
/// encoder (a new log, or a log reopened after a restart) writes both with its first frame.
#[derive(Debug, Default, Clone)]
pub struct LogEncoder {
    topic: Option<String>,
    producer_name: Option<String>,
}

impl LogEncoder {
    /// Appends one frame of a body made by [`encode_body`] to `out`; returns its length in
    /// bytes.
    pub fn append(
        &mut self,
        topic: &str,
        producer_name: &str,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> u64 {
        let start = out.len();
        // The body's own flags byte (see `encode_body`); only the extras bit is the body's to set.
        let (mut flags, body) = match body.split_first() {
            Some((&flags, rest)) => (flags & EXTRAS, rest),
            None => (0, body),
        };
        let mut len = 1 + body.len();
        if self.topic.as_deref() != Some(topic) {
            flags |= NEW_TOPIC;
            len += varint_len(topic.len() as u64) + topic.len();
        }
        if self.producer_name.as_deref() != Some(producer_name) {
            flags |= NEW_PRODUCER;
            len += varint_len(producer_name.len() as u64) + producer_name.len();
        }
        put_varint(out, len as u64);
        out.push(flags);
        if flags & NEW_TOPIC != 0 {
            put_str(out, topic);
            self.topic = Some(topic.to_string());
        }
        if flags & NEW_PRODUCER != 0 {
            put_str(out, producer_name);
            self.producer_name = Some(producer_name.to_string());
        }
        out.extend_from_slice(body);
        (out.len() - start) as u64
    }
}

/// Where [`LogDecoder`] puts the records it decodes: JSON lines appended to a buffer, or rows of a
/// Parquet file. It cannot refuse one: a sink that fails keeps its error for its owner to see
/// (the log itself was fine).
pub trait RecordSink {
    fn record(&mut self, fields: &RecordFields<'_>);
}

/// Each record as its JSON line, newline included.
impl RecordSink for Vec<u8> {
    fn record(&mut self, fields: &RecordFields<'_>) {
        encode_record_into(fields, self);
    }
}

/// Hands on only the records after `through` in its partition: a fenced segment cut to what
/// another ingester's object does not hold (its log keeps the records it no longer owns).
pub struct After<'s, S> {
    pub sink: &'s mut S,
    pub through: MessageId,
    pub skipped: u64,
}

impl<S: RecordSink> RecordSink for After<'_, S> {
    fn record(&mut self, fields: &RecordFields<'_>) {
        let id = &fields.message_id;
        if id.partition == self.through.partition && !id.is_after(&self.through) {
            self.skipped += 1;
        } else {
            self.sink.record(fields);
        }
    }
}

impl LogDecoder {
    /// [`LogDecoder::decode`], leaving out the records at or before `skip_through` (in its
    /// partition); returns how many it handed on.
    pub fn decode_after<S: RecordSink>(
        &mut self,
        piece: &[u8],
        sink: &mut S,
        skip_through: Option<MessageId>,
    ) -> Result<u64, LogRecordError> {
        match skip_through {
            None => self.decode(piece, sink),
            Some(through) => {
                let mut after = After {
                    sink,
                    through,
                    skipped: 0,
                };
                let decoded = self.decode(piece, &mut after)?;
                Ok(decoded - after.skipped)
            }
        }
    }
}

/// Turns a log's frames into records, in as many pieces of the log as it takes (a frame may
/// span two pieces: its start is kept until the rest arrives).
#[derive(Debug, Default)]
pub struct LogDecoder {
    topic: Option<String>,
    producer_name: Option<String>,
    /// Bytes of an incomplete frame from the previous piece.
    partial: Vec<u8>,
    /// Log offset of the first byte not yet consumed (for error messages).
    offset: u64,
}

impl LogDecoder {
    /// Decodes every complete frame of `piece` (after what an earlier piece left over), handing
    /// each record to `sink` (a `Vec<u8>` gets JSON lines); returns how many records it decoded.
    pub fn decode<S: RecordSink>(
        &mut self,
        piece: &[u8],
        json: &mut S,
    ) -> Result<u64, LogRecordError> {
        if self.partial.is_empty() {
            let (records, used) = self.decode_frames(piece, json)?;
            self.partial.extend_from_slice(&piece[used..]);
            Ok(records)
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(piece);
            let (records, used) = self.decode_frames(&joined, json)?;
            joined.drain(..used);
            self.partial = joined;
            Ok(records)
        }
    }

    /// Whether the log read so far ended on a frame boundary.
    pub fn is_at_frame_boundary(&self) -> bool {
        self.partial.is_empty()
    }

    fn decode_frames<S: RecordSink>(
        &mut self,
        buf: &[u8],
        json: &mut S,
    ) -> Result<(u64, usize), LogRecordError> {
        let mut pos = 0usize;
        let mut records = 0u64;
        // Reused for every record of the piece: no allocation per record.
        let mut properties: Vec<(&str, &str)> = Vec::new();
        while pos < buf.len() {
            let mut reader = Reader {
                buf: &buf[pos..],
                pos: 0,
            };
            let Some(len) = reader.varint() else {
                break; // the length itself is cut: wait for more
            };
            let frame_len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= MAX_FRAME)
                .ok_or_else(|| self.error(pos, &format!("a frame of {len} bytes")))?;
            let header = reader.pos;
            if buf.len() - pos - header < frame_len {
                break;
            }
            let frame = &buf[pos + header..pos + header + frame_len];
            self.decode_frame(frame, pos, &mut properties, json)?;
            properties.clear();
            pos += header + frame_len;
            records += 1;
        }
        self.offset += pos as u64;
        Ok((records, pos))
    }

    fn decode_frame<'a, S: RecordSink>(
        &mut self,
        frame: &'a [u8],
        at: usize,
        properties: &mut Vec<(&'a str, &'a str)>,
        json: &mut S,
    ) -> Result<(), LogRecordError> {
        let offset = self.offset + at as u64;
        let err = |what: &str| LogRecordError {
            offset,
            what: what.to_string(),
        };
        let mut r = Reader { buf: frame, pos: 0 };
        let flags = r.byte().ok_or_else(|| err("empty frame"))?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(err(&format!("unknown flags {flags:#04x}")));
        }
        if flags & NEW_TOPIC != 0 {
            let topic = r.str().ok_or_else(|| err("topic"))?;
            self.topic = Some(topic.to_string());
        }
        if flags & NEW_PRODUCER != 0 {
            let producer = r.str().ok_or_else(|| err("producer name"))?;
            self.producer_name = Some(producer.to_string());
        }
        let extras = if flags & EXTRAS != 0 {
            read_extras(&mut r).map_err(|what| err(&what))?
        } else {
            Extras::default()
        };
        let message_id = MessageId {
            ledger: r.varint().ok_or_else(|| err("ledger id"))?,
            entry: r.varint().ok_or_else(|| err("entry id"))?,
            partition: r.zigzag().ok_or_else(|| err("partition"))?,
            batch_index: r.zigzag().ok_or_else(|| err("batch index"))?,
        };
        let publish_time_ms = r.varint().ok_or_else(|| err("publish time"))?;
        let event_time_ms = r.varint().ok_or_else(|| err("event time"))?;
        let key = match r.varint().ok_or_else(|| err("key"))? {
            0 => None,
            n => {
                let len = usize::try_from(n - 1).map_err(|_| err("key length"))?;
                Some(r.str_of(len).ok_or_else(|| err("key"))?)
            }
        };
        let count = r.varint().ok_or_else(|| err("property count"))?;
        for _ in 0..count {
            let k = r.str().ok_or_else(|| err("property key"))?;
            let v = r.str().ok_or_else(|| err("property value"))?;
            properties.push((k, v));
        }
        let sequence_id = r.varint().ok_or_else(|| err("sequence id"))?;
        let payload = &frame[r.pos..];
        let (Some(topic), Some(producer_name)) = (&self.topic, &self.producer_name) else {
            return Err(err(
                "refers to a previous topic or producer, but is the log's first record",
            ));
        };
        let fields = RecordFields {
            message_id,
            topic,
            publish_time_ms,
            event_time_ms: Some(event_time_ms).filter(|&t| t > 0),
            key,
            key_base64: extras.key_base64,
            ordering_key: extras.ordering_key,
            properties,
            producer_name,
            sequence_id,
            payload,
            chunk: extras.chunk,
            encryption: extras.encryption.as_ref(),
        };
        json.record(&fields);
        Ok(())
    }

    fn error(&self, at: usize, what: &str) -> LogRecordError {
        LogRecordError {
            offset: self.offset + at as u64,
            what: what.to_string(),
        }
    }
}

/// What a frame's extras hold.
#[derive(Default)]
struct Extras<'a> {
    chunk: Option<ChunkFields<'a>>,
    encryption: Option<EncryptionFields<'a>>,
    key_base64: bool,
    ordering_key: Option<&'a [u8]>,
}

/// The chunk, encryption and keys of a frame with extras; `Err` names what is damaged.
fn read_extras<'a>(r: &mut Reader<'a>) -> Result<Extras<'a>, String> {
    let what = |s: &str| s.to_string();
    let kinds = r.varint().ok_or_else(|| what("extras"))?;
    if kinds & !KNOWN_EXTRAS != 0 || kinds == 0 {
        return Err(format!("unknown extras {kinds:#x}"));
    }
    let chunk = if kinds & CHUNK != 0 {
        Some(ChunkFields {
            uuid: r.opt_str().ok_or_else(|| what("chunk uuid"))?,
            chunk_id: r.opt_i32().ok_or_else(|| what("chunk id"))?,
            num_chunks: r.opt_i32().ok_or_else(|| what("chunk count"))?,
            total_size: r.opt_i32().ok_or_else(|| what("chunked message size"))?,
        })
    } else {
        None
    };
    let encryption = if kinds & ENCRYPTION != 0 {
        let count = r.varint().ok_or_else(|| what("encryption key count"))?;
        // No capacity from the count: a damaged count must fail on reading, not allocate.
        let mut keys = Vec::new();
        for _ in 0..count {
            let name = r.str().ok_or_else(|| what("encryption key name"))?;
            let value = r.bytes().ok_or_else(|| what("encryption key"))?;
            let n = r
                .varint()
                .ok_or_else(|| what("encryption key metadata count"))?;
            let mut metadata = Vec::new();
            for _ in 0..n {
                let k = r.str().ok_or_else(|| what("encryption key metadata"))?;
                let v = r.str().ok_or_else(|| what("encryption key metadata"))?;
                metadata.push((k, v));
            }
            keys.push(EncryptionKey {
                name,
                value,
                metadata,
            });
        }
        Some(EncryptionFields {
            keys,
            algorithm: r.opt_str().ok_or_else(|| what("encryption algorithm"))?,
            param: r.opt_bytes().ok_or_else(|| what("encryption parameter"))?,
        })
    } else {
        None
    };
    let (key_base64, ordering_key) = if kinds & KEYS != 0 {
        let key_base64 = match r.byte() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(what("key encoding")),
        };
        (
            key_base64,
            r.opt_bytes().ok_or_else(|| what("ordering key"))?,
        )
    } else {
        (false, None)
    };
    Ok(Extras {
        chunk,
        encryption,
        key_base64,
        ordering_key,
    })
}

/// The JSON line of one record given in parts (topic, producer name, body), as the segment file
/// will hold it.
pub fn json_line(topic: &str, producer_name: &str, body: &[u8]) -> Result<Vec<u8>, LogRecordError> {
    let mut frame = Vec::with_capacity(body.len() + topic.len() + producer_name.len() + 8);
    LogEncoder::default().append(topic, producer_name, body, &mut frame);
    let mut json = Vec::new();
    LogDecoder::default().decode(&frame, &mut json)?;
    Ok(json)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A LEB128 varint of at most 10 bytes; None if it is cut short or too long.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i32> {
        let v = self.varint()?;
        Some(unzigzag(u32::try_from(v).ok()?))
    }

    fn str_of(&mut self, len: usize) -> Option<&'a str> {
        std::str::from_utf8(self.bytes_of(len)?).ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.str_of(len)
    }

    fn bytes_of(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.bytes_of(len)
    }

    /// Outer `None`: damaged; inner: absent.
    fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.varint()? {
            0 => Some(None),
            n => Some(Some(self.bytes_of(usize::try_from(n - 1).ok()?)?)),
        }
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(bytes) => Some(Some(std::str::from_utf8(bytes).ok()?)),
        }
    }

    fn opt_i32(&mut self) -> Option<Option<i32>> {
        match self.varint()? {
            0 => Some(None),
            n => Some(Some(unzigzag(u32::try_from(n - 1).ok()?))),
        }
    }
}

fn zigzag(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as u64 + 1);
            out.extend_from_slice(b);
        }
        None => put_varint(out, 0),
    }
}

fn put_opt_i32(out: &mut Vec<u8>, v: Option<i32>) {
    put_varint(out, v.map_or(0, |v| zigzag(v) + 1));
}

#[cfg(test)]
mod tests;
