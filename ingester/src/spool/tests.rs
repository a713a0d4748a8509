use std::sync::Arc;

use proto::types::MessageId;
use tokio::sync::Notify;

use super::db::Database;
use super::keys::{key, ACKED, COUNTERS, SEGMENT, SPOOL_TREE, WATERMARK};
use super::record_log::LogWrite;
use super::test_support::*;
use super::{CommitOutcome, Redelivery, RuleSpool};
use crate::error::{IngesterError, Result};

/// After a move to another cluster the same ids come again, for other messages: they are
/// spooled, and their segments get keys the old source's objects do not have.
#[tokio::test]
async fn a_source_change_takes_ids_afresh_under_new_object_names() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    let out = spool
        .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
        .await?;
    assert_eq!(out.closed, vec![0]);
    let old_key = spool.segments()[0].object_key.clone();

    spool.reset_positions()?;
    let out = spool
        .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
        .await?;
    assert_eq!((out.accepted, out.duplicates), (2, 0), "{out:?}");
    assert_eq!(out.closed, vec![1]);
    let new_key = spool.segments()[1].object_key.clone();
    assert_ne!(new_key, old_key);
    assert!(new_key.ends_with("-test0001-s1.jsonl.gz"), "{new_key}");

    // The count survives a restart: the next source change is s2, not s1 again.
    drop(spool);
    let spool = open_spool(&db, dir.path(), 2)?;
    spool.reset_positions()?;
    let out = spool
        .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
        .await?;
    assert_eq!(out.closed, vec![2]);
    let key = spool.segments()[2].object_key.clone();
    assert!(key.ends_with("-test0001-s2.jsonl.gz"), "{key}");
    Ok(())
}

/// A rule task stopped while its spool write runs (a `rule edit` that restarts the
/// consumer) drops the append's future: the batch it planned still becomes durable, so the
/// in-memory state, which already counts it, never runs ahead of sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_caller_goes_away_still_becomes_durable() -> Result<()> {
    use futures::FutureExt;
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 100)?;
    // One poll plans the batch and starts its write, then the future is dropped.
    let _ = spool
        .append(&[msg(1, -1, 0), msg(2, -1, 0)], 10_000)
        .now_or_never();
    assert_eq!(spool.seen().last(-1).map(|id| id.entry), Some(2));

    // Sled comes to hold the batch with no further call.
    let tree = db.open_tree("spool")?;
    let watermarks = key(WATERMARK, spool.rule(), &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tree.scan_prefix(&watermarks).next().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped append never reached sled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    spool.append(&[msg(3, -1, 0)], 10_001).await?;
    drop(spool);
    let reopened = open_spool(&db, dir.path(), 100)?;
    assert_eq!(reopened.open_segment().map(|m| m.messages), Some(3));
    Ok(())
}

#[tokio::test]
async fn dedups_cuts_seals_and_acks_in_order() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let notify = Arc::new(Notify::new());
    let (spool, to_seal) = RuleSpool::open(&db, "test0001", dir.path(), &rule(3), notify.clone())?;
    assert!(to_seal.is_empty());

    // A batch of 2 entries: entry 1 batched ×3, entry 2 batched ×2; plus a redelivery.
    let batch = [
        msg(1, 0, 3),
        msg(1, 1, 3),
        msg(1, 2, 3),
        msg(2, 0, 2),
        msg(1, 1, 3),
    ];
    let out = spool.append(&batch, 10_000).await?;
    assert_eq!((out.accepted, out.duplicates), (4, 1));
    assert_eq!(
        out.closed,
        vec![0],
        "max_messages = 3 closes the first segment when full"
    );
    let out = spool.append(&[msg(2, 1, 2), msg(3, -1, 0)], 10_001).await?;
    assert_eq!(out.accepted, 2);
    assert_eq!(out.closed, vec![1]);

    for no in [0, 1] {
        spool.seal_blocking(no)?;
    }
    let sealed = spool.sealed();
    assert_eq!(sealed.len(), 2);
    let (meta0, path0) = spool.sealed_file(0)?;
    assert_eq!(
        read_payloads(&path0),
        "{\"e\":1,\"b\":0}\n{\"e\":1,\"b\":1}\n{\"e\":1,\"b\":2}\n"
    );
    assert_eq!(
        meta0.crc32c,
        crc32c::crc32c(&std::fs::read(&path0).expect("file"))
    );
    assert!(meta0.object_key.starts_with(
        "public/default/orders/1970/01/01/00/r1-19700101T000000Z-1_1_-1_0-test0001.jsonl.gz"
    ));

    // Segment 1 stored first: nothing may be acknowledged while segment 0 waits.
    assert_eq!(
        spool.mark_stored(1, "e1", 5, 1).await?,
        CommitOutcome::Committed
    );
    assert!(spool.ack_plan().is_none());
    assert_eq!(
        spool.mark_stored(0, "e0", 5, 1).await?,
        CommitOutcome::Committed
    );
    assert_eq!(
        spool.mark_stored(0, "e0", 5, 1).await?,
        CommitOutcome::AlreadyCommitted
    );
    let plan = spool.ack_plan().expect("both stored");
    assert_eq!(plan.segments, vec![0, 1]);
    assert_eq!(plan.positions.len(), 1);
    assert_eq!(
        plan.positions[0].id,
        MessageId {
            ledger: 1,
            entry: 3,
            partition: -1,
            batch_index: -1
        }
    );
    let freed = spool.free(&plan).await?;
    assert_eq!(freed.len(), 2);
    assert!(spool.is_empty());
    assert!(!path0.exists());
    assert!(
        !spool.logs.path(0).exists() && !spool.logs.path(1).exists(),
        "acknowledged records are deleted"
    );
    assert_eq!(
        spool.mark_stored(0, "e0", 5, 1).await?,
        CommitOutcome::AlreadyCommitted
    );

    // A redelivery of an acknowledged message asks for a re-ack, and is not spooled.
    let out = spool.append(&[msg(2, 0, 2)], 10_002).await?;
    assert_eq!((out.accepted, out.duplicates, out.reack.len()), (0, 1, 1));

    // The consumer's snapshot says the same before anything is encoded.
    spool.append(&[msg(4, -1, 0)], 10_003).await?;
    let seen = spool.seen();
    assert!(matches!(
        seen.check(&msg(2, 0, 2).id),
        Redelivery::Acknowledged(p) if p.id == plan.positions[0].id
    ));
    assert_eq!(seen.check(&msg(4, -1, 0).id), Redelivery::Spooled);
    assert_eq!(seen.check(&msg(5, -1, 0).id), Redelivery::New);
    let other_partition = MessageId {
        partition: 3,
        ..msg(1, -1, 0).id
    };
    assert_eq!(seen.check(&other_partition), Redelivery::New);
    Ok(())
}

#[tokio::test]
async fn a_batch_split_across_segments_is_acked_only_when_complete() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    let out = spool
        .append(&[msg(1, 0, 3), msg(1, 1, 3), msg(1, 2, 3)], 5)
        .await?;
    assert_eq!(out.closed, vec![0]);
    spool.seal_blocking(0)?;
    spool.mark_stored(0, "", 1, 1).await?;
    let plan = spool.ack_plan().expect("segment 0 stored");
    assert!(
        plan.positions.is_empty(),
        "entry 1 is not complete within segment 0"
    );
    Ok(())
}

#[tokio::test]
async fn segments_know_each_partitions_range_for_the_manifest() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    spool
        .append(
            &[msg(1, 0, 3), msg(1, 1, 3), msg(1, 2, 3), msg(2, -1, 0)],
            5,
        )
        .await?;
    let segments = spool.segments();
    let info: Vec<_> = segments.iter().map(|m| m.to_proto("r1")).collect();
    assert_eq!(info.len(), 2);
    let (a, b) = (&info[0].partitions[0], &info[1].partitions[0]);
    assert_eq!(
        (a.first_message_id.as_str(), a.last_message_id.as_str()),
        ("1:1:-1:0", "1:1:-1:1")
    );
    assert_eq!(a.messages, 2);
    // The batch of entry 1 goes on in the next segment.
    assert!(!a.last_completes_entry);
    assert_eq!(
        (b.first_message_id.as_str(), b.last_message_id.as_str()),
        ("1:1:-1:2", "1:2:-1:-1")
    );
    assert!(b.last_completes_entry);
    assert_eq!(b.min_publish_time, "1970-01-01T00:00:01.001Z");
    assert_eq!(info[1].max_publish_time, "1970-01-01T00:00:01.002Z");
    assert_eq!(info[0].prefix, segments[0].target.prefix);
    Ok(())
}

/// The spool's keys of rule r1, as they are now.
fn snapshot(db: &Database) -> Result<Vec<(sled::IVec, sled::IVec)>> {
    let tree = db.open_tree(SPOOL_TREE)?;
    let mut all = Vec::new();
    for tag in [SEGMENT, WATERMARK, ACKED, COUNTERS] {
        for item in tree.scan_prefix(key(tag, "r1", &[])) {
            all.push(item?);
        }
    }
    Ok(all)
}

/// A database that lost writes (sled's since its last durable flush, when it fails one) and
/// was reopened: the spool writes nothing from its newer memory, and once re-read takes the
/// lost messages again exactly once.
#[tokio::test]
async fn after_a_reopen_the_spool_rereads_before_it_writes() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 100)?;
    spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
    db.flush()?;
    let durable = snapshot(&db)?;
    spool.append(&[msg(3, -1, 0), msg(4, -1, 0)], 6).await?;
    // Lose the second batch's writes, as a failed sled instance does, and reopen.
    {
        let tree = db.open_tree(SPOOL_TREE)?;
        for (k, _) in snapshot(&db)? {
            tree.remove(k)?;
        }
        for (k, v) in durable {
            tree.insert(k, v)?;
        }
    }
    db.flush()?;
    db.reopen()?;

    let refused = spool.append(&[msg(5, -1, 0)], 7).await;
    assert!(
        matches!(refused, Err(IngesterError::DatabaseReopening)),
        "{refused:?}"
    );
    assert!(matches!(
        spool.close_open(8, true).await,
        Err(IngesterError::DatabaseReopening)
    ));
    assert_eq!(spool.reread()?, Vec::<u64>::new());
    assert_eq!(spool.seen().last(-1), Some(msg(2, -1, 0).id));
    // The new consumer gets 3 and 4 delivered again, then 5.
    let out = spool
        .append(&[msg(3, -1, 0), msg(4, -1, 0), msg(5, -1, 0)], 9)
        .await?;
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    assert_eq!(spool.close_open(10, true).await?, vec![0]);
    spool.seal_blocking(0)?;
    let (meta, path) = spool.sealed_file(0)?;
    assert_eq!(meta.messages, 5);
    assert_eq!(
        read_payloads(&path),
        (1..=5)
            .map(|e| format!("{{\"e\":{e},\"b\":-1}}\n"))
            .collect::<String>()
    );
    Ok(())
}

/// A commit the database did not keep is not taken as done: not acknowledged, and its retry
/// is not "already committed".
#[tokio::test]
async fn a_commit_counts_once_it_is_durable() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 2)?;
    spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
    spool.seal_blocking(0)?;
    db.reopen()?;
    assert!(spool.mark_stored(0, "e0", 5, 1).await.is_err());
    assert_eq!(spool.sealed().len(), 1, "still sealed");
    assert!(spool.ack_plan().is_none(), "nothing to acknowledge");
    spool.reread()?;
    assert_eq!(
        spool.mark_stored(0, "e0", 5, 2).await?,
        CommitOutcome::Committed
    );
    assert_eq!(
        spool.mark_stored(0, "e0", 5, 2).await?,
        CommitOutcome::AlreadyCommitted
    );
    assert_eq!(spool.ack_plan().map(|p| p.segments), Some(vec![0]));
    Ok(())
}

#[tokio::test]
async fn a_log_longer_than_the_spool_knows_is_cut_back_at_open() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let notify = Arc::new(Notify::new());
    let log_path;
    {
        let db = open_db(&dir.path().join("db"))?;
        let (spool, _) = RuleSpool::open(&db, "test0001", dir.path(), &rule(10), notify.clone())?;
        spool.append(&[msg(1, -1, 0), msg(2, -1, 0)], 5).await?;
        db.flush()?;
        log_path = spool.logs.path(0);
        // A batch whose log write was synced but whose sled batch never became durable,
        // and a log of a segment sled never heard of.
        spool.logs.append_durably(&[
            LogWrite {
                segment_no: 0,
                fresh: false,
                bytes: b"{\"torn\":1}\n".to_vec(),
            },
            LogWrite {
                segment_no: 1,
                fresh: true,
                bytes: b"{\"orphan\":1}\n".to_vec(),
            },
        ])?;
    }
    let db = open_db(&dir.path().join("db"))?;
    let (spool, _) = RuleSpool::open(&db, "test0001", dir.path(), &rule(10), notify)?;
    assert!(!spool.logs.path(1).exists(), "orphan log swept");
    let out = spool.append(&[msg(2, -1, 0), msg(3, -1, 0)], 6).await?;
    assert_eq!((out.accepted, out.duplicates), (1, 1));
    spool.close_open(7, true).await?;
    spool.seal_blocking(0)?;
    let (meta, path) = spool.sealed_file(0)?;
    assert_eq!(
        read_payloads(&path),
        "{\"e\":1,\"b\":-1}\n{\"e\":2,\"b\":-1}\n{\"e\":3,\"b\":-1}\n"
    );
    assert_eq!(meta.messages, 3);
    assert!(
        log_path.exists(),
        "the log stays until the segment is acknowledged"
    );
    Ok(())
}

#[tokio::test]
async fn after_a_failed_log_write_the_next_record_names_its_topic_again() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 100)?;
    let on_topic = |entry: u64, topic: &str| {
        let mut m = msg(entry, -1, 0);
        m.topic = topic.to_string();
        m.with_payload(format!("{{\"e\":{entry}}}"))
    };
    let (a, b) = (
        "persistent://public/default/orders-partition-0",
        "persistent://public/default/orders-partition-1",
    );
    spool.append(&[on_topic(1, a)], 5).await?;
    // The log cannot be written (a directory stands where it should be): the batch on
    // topic b fails after the encoder saw b, and nothing of it reaches the log.
    let log = spool.logs.path(0);
    let aside = dir.path().join("aside.log");
    let io = |e| IngesterError::io("moving the log", e);
    std::fs::rename(&log, &aside).map_err(io)?;
    std::fs::create_dir(&log).map_err(io)?;
    assert!(spool.append(&[on_topic(2, b)], 5).await.is_err());
    std::fs::remove_dir(&log).map_err(io)?;
    std::fs::rename(&aside, &log).map_err(io)?;
    spool.reload()?;
    // Retried: the log's last topic is still a, so b must be written out again.
    spool.append(&[on_topic(2, b), on_topic(3, b)], 6).await?;
    spool.close_open(7, true).await?;
    spool.seal_blocking(0)?;
    let (_, path) = spool.sealed_file(0)?;
    assert_eq!(record_fields(&path, "topic"), vec![a, b, b]);
    Ok(())
}

/// `open` and `reload` read a spool through one function: a watermark key that names no
/// partition fails both, loudly, rather than one of them skipping it (and with it the
/// partition's dedup).
#[tokio::test]
async fn a_bad_key_fails_open_and_reload_alike() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
    let db = open_db(&dir.path().join("db"))?;
    let spool = open_spool(&db, dir.path(), 100)?;
    spool.append(&[msg(1, -1, 0)], 5).await?;
    let bad = key(WATERMARK, spool.rule(), &[0x80, 0]);
    db.open_tree(SPOOL_TREE)?.insert(&bad, &b"{}"[..])?;

    let reloaded = spool.reload();
    assert!(
        matches!(&reloaded, Err(IngesterError::Corrupt(why)) if why.contains("names no partition")),
        "{reloaded:?}"
    );
    let opened = RuleSpool::open(
        &db,
        "test0001",
        dir.path(),
        &rule(100),
        Arc::new(Notify::new()),
    );
    assert!(
        matches!(&opened, Err(IngesterError::Corrupt(why)) if why.contains("names no partition")),
        "{:?}",
        opened.map(|_| ())
    );

    // Once the key is gone, both read the spool as it was.
    db.open_tree(SPOOL_TREE)?.remove(&bad)?;
    spool.reload()?;
    assert_eq!(spool.seen().last(-1), Some(msg(1, -1, 0).id));
    let reopened = open_spool(&db, dir.path(), 100)?;
    assert_eq!(reopened.open_segment().map(|o| o.messages), Some(1));
    Ok(())
}
