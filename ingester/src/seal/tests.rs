use std::sync::Arc;
use std::time::Duration;

use proto::types::MessageId;

use tokio::sync::Notify;

use super::sealing::SEAL_FLUSH;
use super::*;
use crate::error::{IngesterError, Result};
use crate::spool::test_support::*;
use crate::spool::Incoming;

#[test]
fn failed_seals_are_retried_ever_more_slowly_but_within_half_a_minute() {
    let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(delays, vec![2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(retry_delay(u32::MAX), Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_every_segment_once_even_when_asked_twice() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = Arc::new(crate::spool::db::tests::open_in(&dir.path().join("db")));
    let rule = crate::spool::test_support::rule(2);
    let (spool, _) = RuleSpool::open(&db, "test0001", dir.path(), &rule, Arc::new(Notify::new()))?;
    let messages: Vec<Incoming> = (0..40)
        .map(|entry| {
            Incoming {
                id: MessageId {
                    ledger: 1,
                    entry,
                    partition: -1,
                    batch_index: -1,
                },
                topic: "persistent://public/default/orders".into(),
                batch_size: 0,
                publish_time_ms: 1,
                producer_name: "p".into(),
                body: Vec::new(),
                json_len: 0,
            }
            .with_payload(format!("{{\"e\":{entry}}}"))
        })
        .collect();
    let closed = spool.append(&messages, 5).await?.closed;
    assert_eq!(closed.len(), 20);

    let sealer = spawn_with(Arc::new(History::open(&db, 100)?), 2);
    for &no in closed.iter().chain(&closed) {
        sealer.seal(spool.clone(), no);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spool.sealed().len() < closed.len() {
        assert!(tokio::time::Instant::now() < deadline, "not all sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for no in closed {
        let (_, path) = spool.sealed_file(no)?;
        assert_eq!(
            crate::spool::test_support::record_fields(&path, "payload"),
            vec![
                format!("{{\"e\":{}}}", 2 * no),
                format!("{{\"e\":{}}}", 2 * no + 1)
            ]
        );
    }
    Ok(())
}

#[tokio::test]
async fn recovers_after_reopen_and_reseals_a_damaged_file() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let notify = Arc::new(Notify::new());
    {
        let db = open_db(&dir.path().join("db"))?;
        let (spool, _) = RuleSpool::open(&db, "test0001", dir.path(), &rule(2), notify.clone())?;
        spool
            .append(&[msg(1, -1, 0), msg(2, -1, 0), msg(3, -1, 0)], 5)
            .await?;
        // Segment 0 closed but never sealed: a crash here.
    }
    let db = open_db(&dir.path().join("db"))?;
    let (spool, to_seal) = RuleSpool::open(&db, "test0001", dir.path(), &rule(2), notify)?;
    assert_eq!(to_seal, vec![0]);
    assert_eq!(spool.open_segment().map(|o| o.messages), Some(1));
    let out = spool.append(&[msg(3, -1, 0), msg(4, -1, 0)], 6).await?;
    assert_eq!(
        (out.accepted, out.duplicates),
        (1, 1),
        "watermark survived the restart"
    );
    spool.seal_blocking(0)?;
    let (_, path) = spool.sealed_file(0)?;
    std::fs::write(&path, b"garbage").map_err(|e| IngesterError::io("corrupting", e))?;
    let moved = spool.quarantine(0)?;
    assert!(moved.exists());
    spool.seal_blocking(0)?;
    let (meta, path) = spool.sealed_file(0)?;
    assert_eq!(read_payloads(&path).lines().count(), 2);
    assert_eq!(meta.times_quarantined, 1);
    Ok(())
}

#[tokio::test]
async fn a_damaged_log_is_refused_at_sealing() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
    let path = spool.logs.path(0);
    let mut bytes = std::fs::read(&path).map_err(|e| IngesterError::io("reading", e))?;
    bytes[3] ^= 0x20;
    std::fs::write(&path, &bytes).map_err(|e| IngesterError::io("writing", e))?;
    let err = spool.seal_blocking(0).expect_err("damaged log");
    assert!(err.to_string().contains("CRC32C"), "{err}");
    assert!(
        spool.sealed().is_empty(),
        "nothing damaged is offered for upload"
    );
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000000.log"],
        "a failed seal leaves no copy behind"
    );
    Ok(())
}

fn big_msg(entry: u64) -> Incoming {
    msg(entry, -1, 0).with_payload(format!(
        "{{\"e\":{entry},\"pad\":\"{}\"}}",
        "x".repeat(1000)
    ))
}

/// Appends `batches` batches of 500 ~1 KB records from entry `first`, feeding the presealer
/// after each; returns the records' lines.
async fn append_and_feed(spool: &Arc<RuleSpool>, first: u64, batches: u64) -> Result<String> {
    let mut lines = Vec::new();
    for batch in 0..batches {
        let start = first + batch * 500;
        let messages: Vec<Incoming> = (start..start + 500).map(big_msg).collect();
        lines.extend(messages.iter().flat_map(|m| {
            let mut payload = m.payload_for_tests().into_bytes();
            payload.push(b'\n');
            payload
        }));
        spool.append(&messages, 5).await?;
        spool.feed_blocking()?;
    }
    String::from_utf8(lines).map_err(|e| IngesterError::Corrupt(e.to_string()))
}

#[tokio::test]
async fn a_large_open_segment_is_compressed_while_it_grows() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 1_000_000)?;
    let expected = append_and_feed(&spool, 0, 12).await?;
    assert!(
        spool.presealing.segments().contains(&0),
        "a 6 MB open segment is presealing"
    );
    assert!(segment_files(dir.path()).contains(&"00000000000000000000.preseal.tmp".to_string()));
    spool.close_open(6, true).await?;
    spool.seal_blocking(0)?;
    let (meta, path) = spool.sealed_file(0)?;
    assert_eq!(read_payloads(&path), expected);
    assert_eq!(
        meta.crc32c,
        crc32c::crc32c(&std::fs::read(&path).map_err(|e| IngesterError::io("reading", e))?)
    );
    assert!(spool.presealing.segments().is_empty());
    assert_eq!(
        segment_files(dir.path()),
        vec!["00000000000000000000.jsonl.gz", "00000000000000000000.log"],
        "no temporary file left behind"
    );

    // A reload (after a failed write) makes a running preseal unusable: the seal starts over.
    let expected = append_and_feed(&spool, 10_000, 10).await?;
    assert!(spool.presealing.segments().contains(&1));
    spool.reload()?;
    spool.close_open(8, true).await?;
    spool.seal_blocking(1)?;
    let (_, path) = spool.sealed_file(1)?;
    assert_eq!(read_payloads(&path), expected);
    assert!(
        !segment_files(dir.path())
            .iter()
            .any(|name| name.ends_with(".tmp")),
        "the stale preseal's file is gone: {:?}",
        segment_files(dir.path())
    );
    Ok(())
}

/// ListSealed must never offer a segment whose seal is not yet durable: the flush comes
/// first, and a seal whose flush fails is not shown at all (it is sealed again later).
#[tokio::test]
async fn a_seal_is_shown_only_once_flushed() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    // (seal_blocking runs on this thread: a current-thread runtime.)
    let out = spool.append(&[msg(1, 0, 1), msg(2, 0, 1)], 10_000).await?;
    assert_eq!(out.closed, vec![0]);
    let shown_while_flushing = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = shown_while_flushing.clone();
    SEAL_FLUSH.with(|f| {
        *f.borrow_mut() = Some(Box::new(move |spool: &RuleSpool| {
            let sealed = spool.sealed().iter().any(|m| m.segment_no == 0);
            seen.lock().expect("test mutex").push(sealed);
            Err(IngesterError::Corrupt("the disk is full".into()))
        }));
    });
    assert!(spool.seal_blocking(0).is_err(), "the flush failed");
    SEAL_FLUSH.with(|f| *f.borrow_mut() = None);
    assert_eq!(
        *shown_while_flushing.lock().expect("test mutex"),
        vec![false],
        "shown as sealed before the flush"
    );
    assert!(
        spool.sealed().is_empty(),
        "shown as sealed after a failed flush"
    );

    spool.seal_blocking(0)?;
    assert_eq!(
        spool
            .sealed()
            .iter()
            .map(|m| m.segment_no)
            .collect::<Vec<_>>(),
        vec![0]
    );
    Ok(())
}
