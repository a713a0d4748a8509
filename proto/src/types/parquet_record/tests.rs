use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::*;
use crate::types::record::{ChunkFields, EncryptionFields, EncryptionKey, RecordFields};
use crate::types::rule::Compression;
use crate::types::MessageId;

fn id(entry: u64, batch_index: i32) -> MessageId {
    MessageId {
        ledger: 7,
        entry,
        partition: 2,
        batch_index,
    }
}

fn plain<'a>(entry: u64, payload: &'a [u8]) -> RecordFields<'a> {
    RecordFields {
        message_id: id(entry, -1),
        topic: "persistent://public/default/orders-partition-2",
        publish_time_ms: 1_764_000_000_000 + entry,
        event_time_ms: None,
        key: None,
        key_base64: false,
        ordering_key: None,
        properties: &[],
        producer_name: "p-1",
        sequence_id: entry,
        payload,
        chunk: None,
        encryption: None,
    }
}

fn written(records: &[RecordFields<'_>], compression: Compression, level: u32) -> Bytes {
    let mut writer = ParquetRecordWriter::new(Vec::new(), compression, level).expect("a writer");
    for r in records {
        writer.push(r).expect("push");
    }
    Bytes::from(writer.finish().expect("finish"))
}

#[test]
fn every_field_round_trips_through_a_parquet_file() {
    let props = [("a", "b"), ("trace", "x-1")];
    let encryption = EncryptionFields {
        keys: vec![EncryptionKey {
            name: "k1",
            value: b"\x00\x01",
            metadata: vec![("v", "2")],
        }],
        algorithm: Some("AES-GCM"),
        param: Some(b"\x09"),
    };
    let binary = [0u8, 159, 146, 150, 255];
    let records = [
        RecordFields {
            message_id: id(1, 0),
            event_time_ms: Some(1_700_000_000_123),
            key: Some("k1"),
            properties: &props,
            ..plain(1, b"hello")
        },
        RecordFields {
            message_id: id(1, 1),
            // A byte key (its base64 text) and an ordering key.
            key: Some("AAEC"),
            key_base64: true,
            ordering_key: Some(b"\x00\xffo"),
            ..plain(1, &binary)
        },
        RecordFields {
            chunk: Some(ChunkFields {
                uuid: Some("p-1-9"),
                chunk_id: Some(0),
                num_chunks: Some(2),
                total_size: Some(10),
            }),
            encryption: Some(&encryption),
            sequence_id: u64::MAX,
            ..plain(2, b"")
        },
    ];
    for (compression, level) in [
        (Compression::Zstd, 3),
        (Compression::Gzip, 6),
        (Compression::None, 0),
    ] {
        let file = written(&records, compression, level);
        assert_eq!(&file[..4], b"PAR1", "{compression:?}");
        let read = read_records(file).expect("opens");
        assert_eq!(read.total(), 3);
        let read: Vec<_> = read.collect::<Result<_, _>>().expect("every row reads");
        assert_eq!(read.len(), 3);
        for (r, f) in read.iter().zip(&records) {
            assert_eq!(r.message_id, f.message_id);
            assert_eq!(r.topic, f.topic);
            assert_eq!(r.publish_time_ms, f.publish_time_ms);
            assert_eq!(r.event_time_ms, f.event_time_ms);
            assert_eq!(r.key.as_deref(), f.key);
            assert_eq!(r.key_base64, f.key_base64);
            assert_eq!(r.ordering_key.as_deref(), f.ordering_key);
            let props: Vec<(&str, &str)> = r
                .properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(props, f.properties);
            assert_eq!(r.producer_name, f.producer_name);
            assert_eq!(r.sequence_id, f.sequence_id);
            assert_eq!(r.payload, f.payload, "raw bytes, no base64");
        }
    }
}

#[test]
fn chunk_and_encryption_are_the_jsonl_members_as_json_text() {
    let chunk = ChunkFields {
        uuid: Some("p-1-9"),
        chunk_id: Some(1),
        num_chunks: Some(2),
        total_size: None,
    };
    let file = written(
        &[RecordFields {
            chunk: Some(chunk),
            ..plain(3, b"x")
        }],
        Compression::Zstd,
        3,
    );
    let reader = SerializedFileReader::new(file).expect("opens");
    let row = reader
        .get_row_iter(None)
        .expect("rows")
        .next()
        .expect("a row")
        .expect("reads");
    let text = row
        .get_column_iter()
        .find(|(name, _)| name.as_str() == "chunk")
        .map(|(_, field)| field.to_string())
        .expect("a chunk column");
    assert!(
        text.contains(r#"\"uuid\":\"p-1-9\""#) || text.contains(r#""uuid":"p-1-9""#),
        "{text}"
    );
}

#[test]
fn row_groups_are_cut_as_they_fill_and_carry_time_statistics() {
    // 20 payloads of 1 MiB: more than one row group's bytes, so the writer cannot have held
    // them all at once.
    let payload = vec![b'x'; 1 << 20];
    let records: Vec<RecordFields<'_>> = (0..20).map(|n| plain(n, &payload)).collect();
    let file = written(&records, Compression::None, 0);
    let reader = SerializedFileReader::new(file.clone()).expect("opens");
    let metadata = reader.metadata();
    assert!(
        metadata.num_row_groups() >= 2,
        "{}",
        metadata.num_row_groups()
    );
    let rows: i64 = metadata.row_groups().iter().map(|g| g.num_rows()).sum();
    assert_eq!(rows, 20);
    let first = metadata.row_group(0);
    let time = first
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "publish_time")
        .and_then(|c| c.statistics())
        .expect("publish_time has statistics");
    assert!(time.min_bytes_opt().is_some() && time.max_bytes_opt().is_some());
    assert_eq!(
        read_records(file).expect("opens").count(),
        20,
        "every row reads back"
    );
}

#[test]
fn a_cut_file_is_refused() {
    let file = written(&[plain(1, b"x")], Compression::Zstd, 3);
    let cut = file.slice(..file.len() - 10);
    assert!(read_records(cut).is_err());
    assert!(read_records(Bytes::from_static(b"{\"message_id\":\"1:2:-1:-1\"}\n")).is_err());
}
