use super::*;

fn message(sequence_id: u64, size: usize) -> OutMessage {
    OutMessage {
        sequence_id,
        payload: vec![sequence_id as u8; size],
        ..Default::default()
    }
}

fn sequence_ids(batch: &[OutMessage]) -> Vec<u64> {
    batch.iter().map(|m| m.sequence_id).collect()
}

#[test]
fn batches_are_cut_in_order_by_count_and_bytes_and_a_large_message_goes_alone() {
    let messages: Vec<_> = (0..7).map(|i| message(i, 10)).collect();
    let batches = cut_batches(&messages, 3, 1_000);
    let ids: Vec<_> = batches.iter().map(|b| sequence_ids(b)).collect();
    assert_eq!(ids, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);

    let messages = vec![
        message(10, 40),
        message(11, 40),
        message(12, 40),
        message(13, 500),
        message(14, 10),
    ];
    let batches = cut_batches(&messages, 100, 100);
    let ids: Vec<_> = batches.iter().map(|b| sequence_ids(b)).collect();
    assert_eq!(ids, vec![vec![10, 11], vec![12], vec![13], vec![14]]);
    assert!(cut_batches(&[], 10, 10).is_empty());
}

/// Reads a batch entry's payload back the way a consumer does (as pulsar-rs's
/// `parse_batched_message`, which is private to the crate).
fn parse_batch(mut payload: &[u8]) -> Vec<(SingleMessageMetadata, Vec<u8>)> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let (size, rest) = payload.split_at(4);
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize;
        let (meta, rest) = rest.split_at(size);
        let meta = SingleMessageMetadata::decode(meta).expect("single metadata");
        let (data, rest) = rest.split_at(meta.payload_size as usize);
        out.push((meta, data.to_vec()));
        payload = rest;
    }
    out
}

#[test]
fn a_batch_keeps_every_message_s_sequence_id_and_fields() {
    let batch = vec![
        OutMessage {
            sequence_id: 41,
            payload: vec![0xff, 0, 1],
            key: Some("/wAB".into()),
            key_base64: true,
            ordering_key: Some(vec![0, 0xfe]),
            properties: vec![("z".into(), "1".into()), ("a".into(), "é".into())],
            event_time_ms: Some(1_700_000_000_000),
        },
        OutMessage {
            sequence_id: 43,
            payload: b"second".to_vec(),
            key: Some("k".into()),
            ..Default::default()
        },
        OutMessage {
            sequence_id: 44,
            payload: Vec::new(),
            ..Default::default()
        },
    ];
    let parsed = parse_batch(&encode_batch(&batch).expect("encodes"));
    assert_eq!(parsed.len(), 3);
    for (want, (meta, data)) in batch.iter().zip(&parsed) {
        assert_eq!(meta.sequence_id, Some(want.sequence_id));
        assert_eq!(data, &want.payload);
        assert_eq!(meta.partition_key, want.key);
        assert_eq!(
            meta.partition_key_b64_encoded.unwrap_or(false),
            want.key_base64
        );
        assert_eq!(meta.ordering_key, want.ordering_key);
        assert_eq!(meta.event_time, want.event_time_ms);
        let props: Vec<_> = meta
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(props, want.properties);
    }
}

#[test]
fn a_batch_entry_names_its_first_and_last_sequence_id_and_a_shared_key_only() {
    let keyed = |seq: u64, key: &str, ordering: u8| OutMessage {
        sequence_id: seq,
        payload: vec![1, 2, 3],
        key: Some(key.to_string()),
        ordering_key: Some(vec![ordering]),
        ..Default::default()
    };
    let batch = [keyed(7, "a", 1), keyed(8, "a", 1), keyed(10, "a", 1)];
    let SendParts {
        send,
        meta,
        payload,
    } = send_parts(&batch, 3, "restore-j-0")
        .expect("encodes")
        .expect("not empty");
    assert_eq!((send.producer_id, send.sequence_id), (3, 7));
    assert_eq!(send.highest_sequence_id, Some(10));
    assert_eq!(send.num_messages, Some(3));
    assert_eq!(meta.producer_name, "restore-j-0");
    assert_eq!((meta.sequence_id, meta.highest_sequence_id), (7, Some(10)));
    assert_eq!(meta.num_messages_in_batch, Some(3));
    assert_eq!(meta.uncompressed_size, Some(payload.len() as u32));
    // One key (and ordering key) throughout: the entry carries it for Key_Shared routing.
    assert_eq!(meta.partition_key.as_deref(), Some("a"));
    assert_eq!(meta.ordering_key, Some(vec![1]));
    let ids: Vec<_> = parse_batch(&payload)
        .iter()
        .map(|(m, _)| m.sequence_id)
        .collect();
    assert_eq!(ids, vec![Some(7), Some(8), Some(10)]);

    // Mixed keys: the entry has none; each message keeps its own.
    let batch = [keyed(1, "a", 1), keyed(2, "b", 1)];
    let SendParts { meta, payload, .. } =
        send_parts(&batch, 3, "p").expect("encodes").expect("some");
    assert_eq!(meta.partition_key, None);
    assert_eq!(meta.ordering_key, Some(vec![1]));
    let keys: Vec<_> = parse_batch(&payload)
        .into_iter()
        .map(|(m, _)| m.partition_key)
        .collect();
    assert_eq!(keys, vec![Some("a".to_string()), Some("b".to_string())]);

    // A lone message goes as itself.
    let SendParts {
        send,
        meta,
        payload,
    } = send_parts(&batch[..1], 3, "p")
        .expect("encodes")
        .expect("some");
    assert_eq!(
        (send.num_messages, send.highest_sequence_id),
        (Some(1), None)
    );
    assert_eq!(meta.num_messages_in_batch, None);
    assert_eq!(meta.partition_key.as_deref(), Some("a"));
    assert_eq!(&payload[..], &[1, 2, 3]);
    assert!(send_parts(&[], 3, "p").expect("empty is fine").is_none());
}

#[test]
fn pulsar_and_pulsar_ssl_urls() {
    let e = |url: &str| Endpoint::parse(url).ok().map(|e| (e.addr(), e.tls));
    assert_eq!(e("pulsar://h:6650"), Some(("h:6650".into(), false)));
    assert_eq!(e("pulsar://h:6650/"), Some(("h:6650".into(), false)));
    assert_eq!(e("pulsar+ssl://h:6651"), Some(("h:6651".into(), true)));
    for bad in [
        "http://h:80",
        "pulsar://h",
        "pulsar://",
        "pulsar+ssl://h:x",
        "pulsar://h:0",
        "pulsar://:6650",
    ] {
        assert!(
            matches!(Endpoint::parse(bad), Err(ProduceError::Url(_))),
            "{bad}"
        );
    }
}
