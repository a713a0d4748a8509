use super::*;
use proto::types::record::encode_record;

fn fields<'a>(
    topic: &'a str,
    producer: &'a str,
    key: Option<&'a str>,
    props: &'a [(&'a str, &'a str)],
    payload: &'a [u8],
    n: u64,
) -> RecordFields<'a> {
    RecordFields {
        message_id: MessageId {
            ledger: 7 + n,
            entry: n.wrapping_mul(1_000_003),
            partition: if n.is_multiple_of(2) { -1 } else { 3 },
            batch_index: (n % 5) as i32 - 1,
        },
        topic,
        publish_time_ms: 1_764_000_000_000 + n,
        event_time_ms: [None, Some(0), Some(1_764_000_000_123)][(n % 3) as usize],
        key,
        properties: props,
        producer_name: producer,
        sequence_id: n.wrapping_mul(977),
        payload,
        chunk: None,
        key_base64: false,
        ordering_key: None,
        encryption: None,
    }
}

static ENCRYPTION: std::sync::LazyLock<EncryptionFields<'static>> =
    std::sync::LazyLock::new(|| EncryptionFields {
        keys: vec![
            EncryptionKey {
                name: "app-key",
                value: &[0xde, 0xad, 0xbe, 0xef, 0],
                metadata: vec![("version", "2"), ("é\"x", "\n中")],
            },
            EncryptionKey {
                name: "",
                value: &[],
                metadata: Vec::new(),
            },
        ],
        algorithm: Some("RSA/ECB/OAEPWithSHA-256AndMGF1Padding"),
        param: Some(&[9; 12]),
    });

const CHUNK_FIELDS: ChunkFields<'static> = ChunkFields {
    uuid: Some("p-1-977"),
    chunk_id: Some(2),
    num_chunks: Some(3),
    total_size: Some(i32::MAX),
};

fn sample() -> Vec<RecordFields<'static>> {
    const PROPS: &[(&str, &str)] = &[("seq", "1"), ("é\"x", "\n中")];
    vec![
        fields(
            "persistent://public/default/a",
            "p-1",
            None,
            &[],
            b"{\"i\":1}",
            0,
        ),
        fields(
            "persistent://public/default/a",
            "p-1",
            Some("k"),
            PROPS,
            b"plain",
            1,
        ),
        fields(
            "persistent://public/default/a-partition-3",
            "p-1",
            Some(""),
            &[],
            &[0xff, 0, 1],
            2,
        ),
        fields("persistent://public/default/a", "p-2", None, PROPS, b"", 3),
        fields(
            "persistent://public/default/a",
            "p-2",
            None,
            &[],
            &[b'x'; 300],
            u64::MAX / 977,
        ),
    ]
}

/// [`sample`] with chunks and encrypted payloads among the records.
fn sample_with_extras() -> Vec<RecordFields<'static>> {
    let mut records = sample();
    records[1].chunk = Some(CHUNK_FIELDS);
    records[2].encryption = Some(&ENCRYPTION);
    records[3].chunk = Some(ChunkFields {
        uuid: None,
        chunk_id: Some(-1),
        num_chunks: None,
        total_size: Some(0),
    });
    records[3].encryption = Some(&ENCRYPTION);
    let mut plain_after = records[0];
    plain_after.message_id.entry += 1;
    records.push(plain_after);
    let mut empty = records[0];
    empty.encryption = Some(&EMPTY_ENCRYPTION);
    records.push(empty);
    // A byte key alone, an ordering key alone, both with a chunk, an empty ordering key.
    records[1].key_base64 = true;
    records[2].ordering_key = Some(&[0, 0xff, 7]);
    records[3].key_base64 = true;
    records[3].ordering_key = Some(b"ok");
    records[6].ordering_key = Some(&[]);
    records
}

static EMPTY_ENCRYPTION: EncryptionFields<'static> = EncryptionFields {
    keys: Vec::new(),
    algorithm: None,
    param: None,
};

fn encode_log(records: &[RecordFields<'_>]) -> Vec<u8> {
    let mut encoder = LogEncoder::default();
    let mut log = Vec::new();
    for f in records {
        let mut body = Vec::new();
        encode_body(f, &mut body);
        encoder.append(f.topic, f.producer_name, &body, &mut log);
    }
    log
}

fn json_of(records: &[RecordFields<'_>]) -> Vec<u8> {
    records.iter().flat_map(|f| encode_record(f)).collect()
}

#[test]
fn decodes_to_the_json_lines_of_the_records() {
    let records = sample();
    let log = encode_log(&records);
    let mut decoder = LogDecoder::default();
    let mut json = Vec::new();
    assert_eq!(decoder.decode(&log, &mut json), Ok(records.len() as u64));
    assert!(decoder.is_at_frame_boundary());
    assert_eq!(
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&json_of(&records))
    );
}

#[test]
fn chunks_and_encryption_round_trip_to_their_json_lines() {
    let records = sample_with_extras();
    let log = encode_log(&records);
    let mut decoder = LogDecoder::default();
    let mut json = Vec::new();
    assert_eq!(decoder.decode(&log, &mut json), Ok(records.len() as u64));
    assert_eq!(
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&json_of(&records))
    );
    let lines: Vec<serde_json::Value> = json
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("json"))
        .collect();
    assert!(lines[0].get("chunk").is_none() && lines[0].get("encryption").is_none());
    assert_eq!(lines[1]["chunk"]["total_size"], i32::MAX);
    assert_eq!(lines[2]["encryption"]["keys"][0]["value"], "3q2+7wA=");
    assert_eq!(lines[3]["chunk"]["chunk_id"], -1);
    assert!(lines[3]["chunk"]["uuid"].is_null());
    // A plain record after records with extras has none.
    assert!(lines[5].get("chunk").is_none() && lines[5].get("encryption").is_none());
    assert_eq!(
        lines[6]["encryption"],
        serde_json::json!({"keys":[],"algorithm":null,"param":null})
    );
    assert_eq!(lines[1]["key_encoding"], "base64");
    assert!(lines[1].get("ordering_key").is_none());
    assert!(lines[2].get("key_encoding").is_none());
    assert_eq!(lines[2]["ordering_key"], "AP8H");
    assert_eq!(lines[3]["ordering_key"], "b2s=");
    assert!(
        lines[3].get("key_encoding").is_none(),
        "no key, no key_encoding"
    );
    assert_eq!(lines[6]["ordering_key"], "");
    assert!(lines[5].get("ordering_key").is_none() && lines[5].get("key_encoding").is_none());
}

/// Frames of messages without extras are what the encoder wrote before extras existed, and
/// a log written then (here, bytes spelled out by hand) still decodes.
#[test]
fn logs_written_before_extras_existed_still_decode() {
    #[rustfmt::skip]
    let old: &[u8] = &[
        // frame 1: length 17, flags 3 (topic, producer), "t", "p"
        17, 3, 1, b't', 1, b'p',
        // ledger 7, entry 9, partition -1, batch -1, publish 1000, no event time
        7, 9, 1, 1, 0xe8, 0x07, 0,
        // no key, no properties, sequence id 5, payload "hi"
        0, 0, 5, b'h', b'i',
        // frame 2: length 12, flags 0 (same topic and producer), entry 10, key "k"
        12, 0, 7, 10, 1, 1, 0xe8, 0x07, 0, 2, b'k', 0, 6,
    ];
    let one = RecordFields {
        message_id: MessageId {
            ledger: 7,
            entry: 9,
            partition: -1,
            batch_index: -1,
        },
        topic: "t",
        publish_time_ms: 1000,
        event_time_ms: None,
        key: None,
        properties: &[],
        producer_name: "p",
        sequence_id: 5,
        payload: b"hi",
        chunk: None,
        key_base64: false,
        ordering_key: None,
        encryption: None,
    };
    let two = RecordFields {
        message_id: MessageId {
            entry: 10,
            ..one.message_id
        },
        key: Some("k"),
        sequence_id: 6,
        payload: b"",
        ..one
    };
    let mut json = Vec::new();
    assert_eq!(LogDecoder::default().decode(old, &mut json), Ok(2));
    assert_eq!(json, json_of(&[one, two]));
    assert_eq!(
        encode_log(&[one, two]),
        old,
        "the encoder writes the same bytes"
    );
}

#[test]
fn pieces_may_cut_frames_anywhere() {
    let records = sample_with_extras();
    let log = encode_log(&records);
    let expected = json_of(&records);
    for step in [1, 2, 3, 7, 64] {
        let mut decoder = LogDecoder::default();
        let mut json = Vec::new();
        let mut count = 0;
        for piece in log.chunks(step) {
            count += decoder.decode(piece, &mut json).expect("decodes");
        }
        assert_eq!(count, records.len() as u64, "step {step}");
        assert!(decoder.is_at_frame_boundary());
        assert_eq!(json, expected, "step {step}");
    }
}

#[test]
fn topic_and_producer_are_written_once_per_run() {
    let records = sample();
    let log = encode_log(&records);
    let topic = b"persistent://public/default/a";
    let count = log.windows(topic.len()).filter(|w| w == topic).count();
    // a, then a-partition-3 (which starts with a), then a again.
    assert_eq!(count, 3);
    // A 100-byte payload costs well under 100 bytes of envelope once the topic is known.
    let payload = [b'x'; 100];
    let f = fields(
        "persistent://public/default/a",
        "p-2",
        Some("k10"),
        &[("seq", "157290")],
        &payload,
        9,
    );
    let mut body = Vec::new();
    encode_body(&f, &mut body);
    let mut encoder = LogEncoder::default();
    let mut log = Vec::new();
    encoder.append(f.topic, f.producer_name, &body, &mut log);
    let second = encoder.append(f.topic, f.producer_name, &body, &mut log);
    assert!(second < 150, "{second} bytes");
    assert!(encode_record(&f).len() > 350);
}

#[test]
fn damage_is_named_not_panicked_on() {
    let records = sample_with_extras();
    let log = encode_log(&records);
    // Unknown flags.
    let mut bad = log.clone();
    bad[1] = 0x80;
    let err = LogDecoder::default()
        .decode(&bad, &mut Vec::new())
        .expect_err("flags");
    assert!(err.to_string().contains("offset 0"), "{err}");
    // A first record that refers to a previous topic.
    let mut bad = log.clone();
    bad[1] = 0;
    assert!(LogDecoder::default().decode(&bad, &mut Vec::new()).is_err());
    // Extras of a kind this version does not know.
    let mut one = Vec::new();
    let mut body = Vec::new();
    let mut chunk_only = records[1];
    chunk_only.key_base64 = false;
    encode_body(&chunk_only, &mut body);
    LogEncoder::default().append("t", "p", &body, &mut one);
    let kinds_at = 1 + 1 + 2 + 2; // length, flags, "t", "p"
    assert_eq!(one[1], NEW_TOPIC | NEW_PRODUCER | EXTRAS);
    assert_eq!(u64::from(one[kinds_at]), CHUNK);
    one[kinds_at] = 8;
    let err = LogDecoder::default()
        .decode(&one, &mut Vec::new())
        .expect_err("unknown extras");
    assert!(err.to_string().contains("unknown extras"), "{err}");
    // Every truncation either waits for more or decodes a prefix; never panics.
    for cut in 0..log.len() {
        let mut decoder = LogDecoder::default();
        let _ = decoder.decode(&log[..cut], &mut Vec::new());
    }
    // Random bytes: errors or partial frames, never a panic.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let mut junk = Vec::new();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push(x as u8);
        }
        let _ = LogDecoder::default().decode(&junk, &mut Vec::new());
    }
}

#[test]
fn varints_and_zigzag_round_trip() {
    for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v));
        assert_eq!(Reader { buf: &out, pos: 0 }.varint(), Some(v));
    }
    for v in [0i32, -1, 1, i32::MIN, i32::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, zigzag(v));
        assert_eq!(Reader { buf: &out, pos: 0 }.zigzag(), Some(v));
    }
    // Eleven continuation bytes: too long, not an overflow panic.
    assert_eq!(
        Reader {
            buf: &[0xff; 11],
            pos: 0
        }
        .varint(),
        None
    );
}
