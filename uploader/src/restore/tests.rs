use super::run::{next_object, occurrences, to_message, Cursor};
use super::*;
use proto::types::manifest::PartitionSpan;

fn entry(key: &str, source: u32, spans: &[(i32, &str, u64)]) -> ManifestEntry {
    ManifestEntry {
        format: 1,
        rule: "r".into(),
        key: key.into(),
        size: 1,
        crc32c: "00000000".into(),
        etag: String::new(),
        content_encoding: "gzip".into(),
        messages: spans.iter().map(|s| s.2).sum(),
        record_bytes: 1,
        window_start: "2026-11-24T02:00:00.000Z".into(),
        min_publish_time: String::new(),
        max_publish_time: String::new(),
        source,
        segment_no: 0,
        topic: String::new(),
        partitions: spans
            .iter()
            .map(|&(partition, first, messages)| PartitionSpan {
                partition,
                first_message_id: first.into(),
                last_message_id: first.into(),
                messages,
                last_completes_entry: true,
                min_publish_time: String::new(),
                max_publish_time: String::new(),
            })
            .collect(),
    }
}

#[test]
fn objects_are_ordered_by_message_id_not_key_and_partitions_mapped() {
    // Key order puts "1_10" before "1_9"; message order is the other way round.
    let entries = [
        entry("a-1_10", 0, &[(0, "1:10:0:-1", 5), (1, "2:3:1:-1", 2)]),
        entry("a-1_9", 0, &[(0, "1:9:0:-1", 1)]),
        entry("b-new-source", 1, &[(0, "1:1:0:-1", 3)]),
    ];
    let all: Vec<&ManifestEntry> = entries.iter().collect();
    let n = source_partitions(&entries);
    assert_eq!(n, 2);
    let parts = plan(&all, n, &[], 2).expect("plan");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].objects, ["a-1_9", "a-1_10", "b-new-source"]);
    assert_eq!(parts[0].messages, 9);
    assert_eq!(parts[0].target_partition, 0);
    assert_eq!(parts[1].target_partition, 1);
    // Other partition counts: by key; a plain target: the topic itself; a selection.
    assert_eq!(
        plan(&all, n, &[], 3).expect("plan")[0].target_partition,
        BY_KEY
    );
    assert_eq!(
        plan(&all, n, &[], 0).expect("plan")[1].target_partition,
        PLAIN
    );
    let only = plan(&all, n, &[1], 2).expect("plan");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].objects, ["a-1_10"]);
}

/// The keys `next_object` picks until every partition has read all its objects.
fn reading_order(parts: &[PartPlan]) -> Vec<String> {
    let mut cursors: Vec<Cursor> = parts.iter().map(Cursor::start).collect();
    let at = occurrences(parts);
    let mut read = Vec::new();
    while let Some(key) = next_object(parts, &cursors, &at) {
        for (part, cursor) in parts.iter().zip(cursors.iter_mut()) {
            if part.objects.get(cursor.next) == Some(&key) {
                cursor.next += 1;
            }
        }
        read.push(key);
    }
    read
}

#[test]
fn each_object_is_read_once_for_all_its_partitions() {
    // Three partitions cut into four objects; partition 2 is not in "b", 0 not in "d".
    let entries = [
        entry(
            "a",
            0,
            &[(0, "1:1:0:-1", 3), (1, "2:1:1:-1", 3), (2, "3:1:2:-1", 2)],
        ),
        entry("b", 0, &[(0, "1:4:0:-1", 3), (1, "2:4:1:-1", 1)]),
        entry(
            "c",
            0,
            &[(0, "1:7:0:-1", 1), (1, "2:5:1:-1", 2), (2, "3:3:2:-1", 4)],
        ),
        entry("d", 0, &[(1, "2:7:1:-1", 2), (2, "3:7:2:-1", 1)]),
    ];
    let all: Vec<&ManifestEntry> = entries.iter().collect();
    let parts = plan(&all, 3, &[], 2).expect("plan");
    assert_eq!(parts[0].counts, [3, 3, 1]);
    assert_eq!(reading_order(&parts), ["a", "b", "c", "d"]);

    // Orders that cross (never from one rule's stream; a hand-made bucket could): each
    // partition still gets its objects in its order; those behind the crossing are read
    // again for the partition that reaches them later.
    let mut crossed = parts.clone();
    crossed[1].objects = vec!["c".into(), "a".into(), "b".into(), "d".into()];
    let order = reading_order(&crossed);
    assert_eq!(order, ["a", "b", "c", "a", "b", "d"]);
    for part in &crossed {
        let mut want = part.objects.iter();
        let mut next = want.next();
        for key in &order {
            if Some(key) == next {
                next = want.next();
            }
        }
        assert_eq!(next, None, "{order:?} reads {:?} in order", part.objects);
    }

    // A resumed partition starts past the objects its position has gone through.
    let mut resumed = parts[0].clone();
    resumed.position = 6;
    let cursor = Cursor::start(&resumed);
    assert_eq!((cursor.next, cursor.pos), (2, 6));
    resumed.position = 5;
    let cursor = Cursor::start(&resumed);
    assert_eq!((cursor.next, cursor.pos), (1, 3));
    // Planned before the counts were kept: from the first object, or done.
    resumed.counts.clear();
    assert_eq!(Cursor::start(&resumed).next, 0);
    resumed.position = 7;
    assert_eq!(Cursor::start(&resumed).next, 3);
}

#[test]
fn a_restored_message_keeps_its_fields_and_names_its_origin() {
    let record = proto::types::Record {
        message_id: MessageId {
            ledger: 3,
            entry: 4,
            partition: 1,
            batch_index: -1,
        },
        topic: "t".into(),
        publish_time_ms: 1_795_488_259_913,
        event_time_ms: Some(5),
        key: Some("AAE=".into()),
        key_base64: true,
        ordering_key: Some(vec![9]),
        properties: vec![
            ("a".into(), "b".into()),
            (MESSAGE_ID_PROPERTY.into(), "old".into()),
        ],
        producer_name: "p".into(),
        sequence_id: 1,
        payload: vec![0xff],
    };
    let m = to_message(record, 42, 1);
    assert_eq!(m.sequence_id, 42);
    assert_eq!(m.payload, [0xff]);
    assert!(m.key_base64);
    let props: Vec<(&str, &str)> = m
        .properties
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(
        props,
        [
            ("a", "b"),
            (MESSAGE_ID_PROPERTY, "3:4:1:-1"),
            (PUBLISH_TIME_PROPERTY, "2026-11-24T02:44:19.913Z")
        ]
    );
}
