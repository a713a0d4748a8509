use super::*;
use prost013::Message as _;
use pulsar::message::proto::{
    base_command::Type, command_lookup_topic_response::LookupType, CommandLookupTopicResponse,
    CommandMessage, MessageIdData,
};

fn frame(cmd: &BaseCommand, payload: &[u8]) -> Vec<u8> {
    let cmd = cmd.encode_to_vec();
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + cmd.len() + payload.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
    out.extend_from_slice(&cmd);
    out.extend_from_slice(payload);
    out
}

fn message_cmd() -> BaseCommand {
    BaseCommand {
        r#type: Type::Message as i32,
        message: Some(CommandMessage {
            consumer_id: 1,
            message_id: MessageIdData {
                ledger_id: 3,
                entry_id: 4,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lookup_cmd(url: Option<&str>, tls: Option<&str>) -> BaseCommand {
    BaseCommand {
        r#type: Type::LookupResponse as i32,
        lookup_topic_response: Some(CommandLookupTopicResponse {
            broker_service_url: url.map(str::to_owned),
            broker_service_url_tls: tls.map(str::to_owned),
            response: Some(LookupType::Connect as i32),
            request_id: 7,
            authoritative: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn split(frame: &[u8]) -> (u32, BaseCommand, Vec<u8>) {
    let total = u32::from_be_bytes(frame[0..4].try_into().expect("4 bytes"));
    let cmd_size = u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes")) as usize;
    let cmd = BaseCommand::decode(&frame[8..8 + cmd_size]).expect("command decodes");
    (total, cmd, frame[8 + cmd_size..].to_vec())
}

#[test]
fn inserts_magic_and_crc_before_a_bare_payload() {
    let payload = b"\x00\x00\x00\x05metadata-and-body".to_vec();
    let input = frame(&message_cmd(), &payload);
    let out = rewrite_frame(&input, "pulsar://127.0.0.1:1").expect("rewrites");
    let (total, cmd, rest) = split(&out);
    assert_eq!(total as usize, input.len() - 4 + 6);
    assert_eq!(total as usize, out.len() - 4);
    assert_eq!(cmd, message_cmd());
    assert_eq!(&rest[..2], &[0x0e, 0x01]);
    assert_eq!(
        u32::from_be_bytes(rest[2..6].try_into().expect("4 bytes")),
        crc32c::crc32c(&payload)
    );
    assert_eq!(&rest[6..], &payload[..]);
}

#[test]
fn leaves_a_checksummed_payload_alone() {
    let mut payload = vec![0x0e, 0x01];
    payload.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 1, 9]);
    let input = frame(&message_cmd(), &payload);
    assert_eq!(rewrite_frame(&input, "pulsar://x:1").expect("ok"), input);
}

#[test]
fn rewrites_lookup_urls_to_the_relay() {
    let input = frame(
        &lookup_cmd(
            Some("pulsar://127.0.0.1:6650"),
            Some("pulsar+ssl://127.0.0.1:6651"),
        ),
        b"",
    );
    let out = rewrite_frame(&input, "pulsar://127.0.0.1:9999").expect("rewrites");
    let (total, cmd, rest) = split(&out);
    assert_eq!(total as usize, out.len() - 4);
    assert!(rest.is_empty());
    let lookup = cmd.lookup_topic_response.expect("still a lookup response");
    assert_eq!(
        lookup.broker_service_url.as_deref(),
        Some("pulsar://127.0.0.1:9999")
    );
    assert_eq!(
        lookup.broker_service_url_tls.as_deref(),
        Some("pulsar://127.0.0.1:9999")
    );
    assert_eq!(lookup.request_id, 7);
}

#[test]
fn lookup_without_url_and_other_commands_pass_unchanged() {
    let input = frame(&lookup_cmd(None, None), b"");
    assert_eq!(rewrite_frame(&input, "pulsar://x:1").expect("ok"), input);
    let ping = BaseCommand {
        r#type: Type::Ping as i32,
        ping: Some(Default::default()),
        ..Default::default()
    };
    let input = frame(&ping, b"");
    assert_eq!(rewrite_frame(&input, "pulsar://x:1").expect("ok"), input);
}

#[test]
fn take_frame_waits_for_a_whole_frame() {
    let a = frame(&message_cmd(), &vec![7u8; 3 * 1024 * 1024]);
    let b = frame(&lookup_cmd(Some("pulsar://b:1"), None), b"");
    let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    // Feed in awkward chunk sizes, as partial TCP reads would.
    for chunk in stream.chunks(4093) {
        buf.extend_from_slice(chunk);
        while let Some(f) = take_frame(&mut buf).expect("valid sizes") {
            frames.push(f.to_vec());
        }
    }
    assert!(buf.is_empty());
    assert_eq!(frames, vec![a, b]);
    assert_eq!(frame_total(&frames[1]), Some(frames[1].len() as u32 - 4));
}

#[test]
fn take_frame_refuses_absurd_sizes() {
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert!(take_frame(&mut buf).is_err());
}

/// A MESSAGE frame with `meta` and `data`, with or without the checksum block.
fn message_frame(meta: &MessageMetadata, data: &[u8], checksummed: bool) -> Vec<u8> {
    let meta = meta.encode_to_vec();
    let mut payload = (meta.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(data);
    if checksummed {
        let mut block = MAGIC_CRC32C.to_vec();
        block.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        block.extend_from_slice(&payload);
        payload = block;
    }
    frame(&message_cmd(), &payload)
}

/// Metadata and data of a MESSAGE frame, checking its sizes and checksum block on the way.
fn open_message(frame: &[u8]) -> (MessageMetadata, Vec<u8>) {
    let (total, _, payload) = split(frame);
    assert_eq!(total as usize, frame.len() - 4);
    let payload = if payload.starts_with(&MAGIC_CRC32C) {
        let crc = u32::from_be_bytes(payload[2..6].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32c::crc32c(&payload[6..]), "checksum block");
        payload[6..].to_vec()
    } else {
        payload
    };
    let size = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    let meta = MessageMetadata::decode(&payload[4..4 + size]).expect("metadata decodes");
    (meta, payload[4 + size..].to_vec())
}

#[test]
fn annotates_chunk_and_encryption_metadata_keeping_the_data() {
    let chunk = r#"{"uuid":"p-7","chunk_id":1,"num_chunks":3,"total_size":2500}"#;
    let encryption = r#"{"keys":[{"name":"k1","value":"AAEC","metadata":{"v":"2"}}],"algorithm":null,"param":"/w=="}"#;
    let meta = MessageMetadata {
        producer_name: "p".into(),
        sequence_id: 7,
        publish_time: 1,
        properties: vec![
            KeyValue {
                key: "a".into(),
                value: "b".into(),
            },
            KeyValue {
                key: CHUNK_PROPERTY.into(),
                value: chunk.into(),
            },
            KeyValue {
                key: ENCRYPTION_PROPERTY.into(),
                value: encryption.into(),
            },
        ],
        ..Default::default()
    };
    for checksummed in [false, true] {
        let input = message_frame(&meta, b"\xffdata", checksummed);
        let out = annotate_metadata(&input, 8 + message_cmd().encoded_len())
            .expect("annotates")
            .expect("asked for");
        let (got, data) = open_message(&out);
        assert_eq!(data, b"\xffdata");
        assert_eq!(got.properties, meta.properties[..1].to_vec());
        assert_eq!(got.uuid.as_deref(), Some("p-7"));
        assert_eq!(got.chunk_id, Some(1));
        assert_eq!(got.num_chunks_from_msg, Some(3));
        assert_eq!(got.total_chunk_msg_size, Some(2500));
        assert_eq!(
            got.encryption_keys,
            vec![EncryptionKeys {
                key: "k1".into(),
                value: vec![0, 1, 2],
                metadata: vec![KeyValue {
                    key: "v".into(),
                    value: "2".into(),
                }],
            }]
        );
        assert_eq!(got.encryption_algo, None);
        assert_eq!(got.encryption_param, Some(vec![0xff]));
        assert_eq!(got.sequence_id, 7);
    }
    // Nothing asked for: passed on as it is.
    let plain = MessageMetadata {
        properties: meta.properties[..1].to_vec(),
        ..meta.clone()
    };
    let input = message_frame(&plain, b"x", false);
    assert_eq!(
        annotate_metadata(&input, 8 + message_cmd().encoded_len()).expect("reads"),
        None
    );
}

#[test]
fn rejects_inconsistent_sizes() {
    let mut input = frame(&message_cmd(), b"abc");
    input[7] = 0xff; // cmd_size now exceeds total
    assert!(rewrite_frame(&input, "pulsar://x:1").is_err());
}
