use super::*;

fn identity(file_bytes: u64, part_size: u64) -> Identity {
    Identity {
        rule: "orders".into(),
        segment_no: 7,
        bucket: "b-1".into(),
        key: "k.jsonl.gz".into(),
        file_bytes,
        content_crc32c: "0a0b0c0d".into(),
        part_size,
        target: S3Target {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            path_style: true,
            checksum: RequestChecksum::Md5,
        },
    }
}

fn record(parts: &[(i32, &str, u64)]) -> ResumeRecord {
    ResumeRecord {
        version: VERSION,
        identity: identity(25, 10),
        upload_id: "u-1".into(),
        parts: parts
            .iter()
            .map(|(n, e, s)| UploadedPart {
                part_number: *n,
                etag: (*e).into(),
                size: *s,
                checksum_crc32c: None,
            })
            .collect(),
        created_at_ms: 1,
        updated_at_ms: 2,
        resume_failures: 0,
    }
}

fn listed(n: i32, size: u64, etag: Option<&str>) -> ListedPart {
    ListedPart {
        part_number: n,
        size,
        etag: etag.map(str::to_string),
        checksum_crc32c: None,
    }
}

#[test]
fn part_sizes_follow_the_part_size() {
    let id = identity(25, 10);
    assert_eq!(id.part_count(), 3);
    assert_eq!(id.expected_part_size(1), 10);
    assert_eq!(id.expected_part_size(3), 5);
    assert_eq!(id.expected_part_size(4), 0);
    assert_eq!(id.expected_part_size(0), 0);
    assert_eq!(identity(20, 10).expected_part_size(2), 10);
}

#[test]
fn reconcile_trusts_the_store_and_checks_the_record() {
    let rec = record(&[(1, "\"aa\"", 10), (2, "\"bb\"", 10), (3, "\"cc\"", 5)]);
    let out = reconcile(
        &rec,
        &[
            listed(1, 10, Some("aa")),     // same ETag, quotes aside: reused
            listed(2, 10, Some("\"zz\"")), // ETag differs: sent again
            listed(4, 10, Some("\"dd\"")), // outside the object: ignored
        ],
    );
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![1]);
    // Part 3 recorded but not listed: the store is the truth, it is sent again.

    // No ETags listed (s3s-fs): recorded parts of the right size are reused, an unrecorded
    // one is not (it could not be named in Complete).
    let rec = record(&[(1, "\"aa\"", 10)]);
    let out = reconcile(&rec, &[listed(1, 10, None), listed(2, 10, None)]);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![1]);

    // Listed but not recorded, with an ETag: reused (its bytes are checked while streaming).
    let out = reconcile(
        &record(&[]),
        &[listed(1, 10, Some("\"ee\"")), listed(3, 4, Some("x"))],
    );
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "wrong size is not reused"
    );
    assert_eq!(out[&1].etag, "\"ee\"");
}

#[test]
fn reused_parts_are_checked_against_md5_etags() {
    let data = Bytes::from_static(b"0123456789");
    let good = UploadedPart {
        part_number: 1,
        etag: format!("\"{}\"", md5_hex(&data)),
        size: 10,
        checksum_crc32c: None,
    };
    assert!(reuse_ok(&good, &data));
    assert!(!reuse_ok(&good, &Bytes::from_static(b"0123456780")));
    let opaque = UploadedPart {
        etag: "\"kms-etag-not-md5\"".into(),
        ..good.clone()
    };
    assert!(reuse_ok(&opaque, &data));
    assert!(!reuse_ok(&opaque, &Bytes::from_static(b"012345678")));
    // A CRC32C upload's part is checked against its CRC32C too, even behind an opaque ETag.
    let crc = UploadedPart {
        checksum_crc32c: Some(checksum_crc32c(&data)),
        ..opaque.clone()
    };
    assert!(reuse_ok(&crc, &data));
    assert!(!reuse_ok(&crc, &Bytes::from_static(b"0123456780")));
}

#[test]
fn crc32c_uploads_reuse_only_parts_whose_crc32c_is_known() {
    let mut rec = record(&[(1, "\"aa\"", 10)]);
    rec.identity.file_bytes = 30; // three parts of 10
    rec.identity.target.checksum = RequestChecksum::Crc32c;
    rec.parts[0].checksum_crc32c = Some("AAAAAQ==".into());
    let with_crc = |n, crc: Option<&str>| ListedPart {
        checksum_crc32c: crc.map(str::to_string),
        ..listed(n, 10, Some(if n == 1 { "\"aa\"" } else { "\"bb\"" }))
    };
    let out = reconcile(
        &rec,
        &[
            with_crc(1, None),
            with_crc(2, Some("AAAAAg==")),
            with_crc(3, None),
        ],
    );
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "part 3: no CRC32C known"
    );
    // The store's CRC32C contradicts the record: sent again.
    assert!(reconcile(&rec, &[with_crc(1, Some("AAAAAw=="))]).is_empty());
    assert_eq!(
        out[&1].checksum_crc32c.as_deref(),
        Some("AAAAAQ=="),
        "from the record"
    );
    assert_eq!(
        out[&2].checksum_crc32c.as_deref(),
        Some("AAAAAg=="),
        "from the store"
    );
}

#[tokio::test]
async fn journal_round_trips_atomically_and_escapes_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::new(dir.path());
    assert!(journal.load("orders", 7).await.is_none());
    let rec = record(&[(1, "\"aa\"", 10)]);
    journal.save(&rec).await.expect("saved");
    assert_eq!(journal.load("orders", 7).await, Some(rec.clone()));
    assert_eq!(journal.list().await, vec![rec.clone()]);
    let names: Vec<_> = std::fs::read_dir(journal.dir())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["orders-7.json".to_string()], "no tmp file left");
    assert!(journal.path_for("../x/y", 1).starts_with(journal.dir()));
    assert_eq!(
        journal
            .path_for("../x", 1)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        Some("%2E%2E%2Fx-1.json".to_string())
    );

    // A torn or foreign file is dropped, not trusted.
    std::fs::write(journal.path_for("orders", 8), b"{not json").expect("write");
    assert!(journal.load("orders", 8).await.is_none());
    assert!(!journal.path_for("orders", 8).exists());

    journal.remove("orders", 7).await.expect("removed");
    journal
        .remove("orders", 7)
        .await
        .expect("removing twice is fine");
    assert!(journal.load("orders", 7).await.is_none());
}
