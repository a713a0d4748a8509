//! A fenced rule's segment whose key another ingester's object already holds (several ingesters
//! share the subscription, and a partition moved): what that object holds leaves this spool.
//!
//! Both ingesters start a partition where its last acknowledged entry ends and cut only where an
//! entry ends, so the two meet at segment starts: the loser of the store's conditional create
//! learns the winner's last message id `W` from the object's metadata. Every segment of the
//! partition not yet stored (the open one too) then loses its records at or before `W`: a
//! segment holding nothing after `W` is covered (stored, by the winner; acknowledged as usual),
//! one holding more is cut to the rest (its log stays, [`SegmentMeta::skip_through`] says what
//! sealing leaves out) and sealed again under the key of its new first message, which the
//! winner's next object may hold in turn. The partition's watermark moves up to `W`, so a
//! redelivery of what the winner stored is dropped as already spooled.

use std::collections::BTreeMap;

use proto::types::record::record_json_len;
use proto::types::{MessageId, RecordFields};

use super::keys::{key, partition_suffix, segment_key, to_json, WATERMARK};
use super::log_record::{LogDecoder, RecordSink};
use super::{lane_of, Position, RuleSpool, SegmentMeta, SegmentState, State};
use crate::error::{IngesterError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverOutcome {
    /// The other object holds every message of the segment: it is stored.
    Covered,
    /// It holds the segment's first messages: the rest is sealed again under its own key.
    Trimmed,
    /// The segment was stored or freed already (a repeated commit).
    AlreadyCommitted,
}

/// What [`RuleSpool::cover`] did: its outcome for the committed segment, and every segment
/// (that one or later ones of the partition) to seal again.
#[derive(Debug)]
pub struct Cover {
    pub outcome: CoverOutcome,
    pub to_seal: Vec<u64>,
}

/// The records a log decoder hands on (those after the cut: [`LogDecoder::decode_after`]),
/// counted as a segment counts them.
struct Rest {
    first: Option<(MessageId, u64)>,
    messages: u64,
    json_bytes: u64,
    oldest_publish_ms: u64,
    newest_publish_ms: u64,
}

impl RecordSink for Rest {
    fn record(&mut self, fields: &RecordFields<'_>) {
        let id = fields.message_id;
        self.first.get_or_insert((id, fields.publish_time_ms));
        self.messages += 1;
        self.json_bytes += record_json_len(fields);
        self.oldest_publish_ms = self.oldest_publish_ms.min(fields.publish_time_ms);
        self.newest_publish_ms = self.newest_publish_ms.max(fields.publish_time_ms);
    }
}

impl RuleSpool {
    /// Drops what another ingester's object (its last message `through`) holds from the fenced
    /// segment `segment_no`, sealed here under the same key, and from every later segment of
    /// its partition. After any append in progress (its records must be in the logs read here).
    pub async fn cover(
        self: &std::sync::Arc<Self>,
        segment_no: u64,
        through: MessageId,
    ) -> Result<Cover> {
        let appending = self.appending.clone().lock_owned().await;
        let spool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _appending = appending;
            spool.cover_blocking(segment_no, through)
        })
        .await
        .map_err(|e| {
            IngesterError::io("covering a segment", std::io::Error::other(e.to_string()))
        })?
    }

    /// [`RuleSpool::cover`]'s blocking part: every change is worked out (reading the logs)
    /// before any is made, so a failure leaves the spool as it was.
    fn cover_blocking(&self, segment_no: u64, through: MessageId) -> Result<Cover> {
        let mut state = self.lock();
        let partition = match state.segments.get(&segment_no) {
            None => return Ok(already()),
            Some(meta) if meta.state == SegmentState::Stored => return Ok(already()),
            Some(meta) if meta.state != SegmentState::Sealed => {
                return Err(IngesterError::FailedPrecondition(format!(
                    "segment {segment_no} of rule {:?} is {}, not sealed",
                    self.rule,
                    meta.state.as_str()
                )))
            }
            Some(meta) => meta.fenced_partition().ok_or_else(|| {
                IngesterError::InvalidRequest(format!(
                    "segment {segment_no} of rule {:?} is not fenced: its key is its own, no \
                     other object can hold its messages",
                    self.rule
                ))
            })?,
        };
        if through.partition != partition {
            return Err(IngesterError::InvalidRequest(format!(
                "covered_through {through} is a message of partition {}, but segment {segment_no} \
                 holds partition {partition}'s: the object it names cannot hold this segment's \
                 messages",
                through.partition
            )));
        }
        let mut batch = sled::Batch::default();
        let now = proto::types::time::now_millis();
        let mut to_seal = Vec::new();
        let mut outcome = CoverOutcome::Trimmed;
        let mut changes = Vec::new();
        for meta in state.segments.values() {
            if meta.fenced_partition() != Some(partition) || meta.state == SegmentState::Stored {
                continue;
            }
            if let Some(changed) = self.without_through(meta, through, now)? {
                changes.push(changed);
            }
        }
        let lane = lane_of(true, partition);
        let open_change = match state.open.get(&lane) {
            Some(open) if open.fenced => self.without_through(open, through, now)?,
            _ => None,
        };
        for changed in changes {
            let no = changed.segment_no;
            if no == segment_no && changed.state == SegmentState::Stored {
                outcome = CoverOutcome::Covered;
            }
            if changed.state == SegmentState::Closed {
                to_seal.push(no);
            }
            batch.insert(segment_key(&self.rule, no), to_json(&changed)?);
            state.segments.insert(no, changed);
        }
        if let Some(changed) = open_change {
            self.cover_open(&mut state, &mut batch, lane, changed)?;
        }
        raise_watermark(&mut state, &mut batch, &self.rule, partition, through)?;
        self.tree()?.apply_batch(batch)?;
        drop(state);
        self.db.flush()?;
        // A new preseal must not reuse one written before the cut.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Cover { outcome, to_seal })
    }

    /// The open segment of the partition: cut like the others, or closed and stored when the
    /// other object holds all of it.
    fn cover_open(
        &self,
        state: &mut State,
        batch: &mut sled::Batch,
        lane: i32,
        changed: SegmentMeta,
    ) -> Result<()> {
        if changed.state == SegmentState::Stored {
            // Nothing of it is left to store: close it (its key as any closed one's) as stored.
            let Some(no) = self.close_open_locked(state, batch, lane)? else {
                return Ok(());
            };
            if let Some(closed) = state.segments.get_mut(&no) {
                closed.state = SegmentState::Stored;
                closed.stored_at_ms = changed.stored_at_ms;
                closed.skip_through = changed.skip_through;
                closed.ack_positions = changed.ack_positions;
                batch.insert(segment_key(&self.rule, no), to_json(closed)?);
            }
            return Ok(());
        }
        batch.insert(
            segment_key(&self.rule, changed.segment_no),
            to_json(&changed)?,
        );
        state.open.insert(lane, changed);
        Ok(())
    }

    /// `meta` without its records at or before `through`: stored when none is left, else cut to
    /// the rest (closed again, to be sealed, unless it is open). `None` when it holds none of
    /// them.
    fn without_through(
        &self,
        meta: &SegmentMeta,
        through: MessageId,
        now: u64,
    ) -> Result<Option<SegmentMeta>> {
        let (Some(first), Some(last)) = (meta.first_id, meta.last_id) else {
            return Ok(None);
        };
        if first.is_after(&through) {
            return Ok(None);
        }
        let mut changed = meta.clone();
        changed.skip_through = Some(through);
        if !last.is_after(&through) {
            // An open one is closed as stored by `cover_open`.
            changed.state = SegmentState::Stored;
            changed.stored_at_ms = now;
            // Acknowledged where the other object ends, not where this segment did: the next
            // owner of the partition starts after the acknowledged message, and must start where
            // an object ends, or its first segment would overlap the other object under a key
            // of its own (the fence meets only at segment starts).
            if let Some(position) = changed.ack_positions.get_mut(&through.partition) {
                position.id = through;
            }
            return Ok(Some(changed));
        }
        let rest = self.rest_of_log(meta, through)?;
        let Some((first_id, first_publish_ms)) = rest.first else {
            return Err(IngesterError::Corrupt(format!(
                "segment {} of rule {:?} ends at {last} but its log holds nothing after {through}",
                meta.segment_no, self.rule
            )));
        };
        changed.first_id = Some(first_id);
        changed.first_publish_ms = first_publish_ms;
        changed.covered_messages += meta.messages.saturating_sub(rest.messages);
        changed.messages = rest.messages;
        changed.record_bytes = rest.json_bytes;
        changed.oldest_publish_ms = rest.oldest_publish_ms;
        changed.newest_publish_ms = rest.newest_publish_ms;
        if let Some(span) = changed.partitions.get_mut(&through.partition) {
            span.first = first_id;
            span.messages = rest.messages;
            span.oldest_publish_ms = rest.oldest_publish_ms;
            span.newest_publish_ms = rest.newest_publish_ms;
        }
        if changed.state != SegmentState::Open {
            changed.state = SegmentState::Closed;
            changed.object_key = self.key_of(&changed)?;
            changed.file_bytes = 0;
            changed.crc32c = 0;
            changed.sealed_at_ms = 0;
        }
        Ok(Some(changed))
    }

    /// Reads the segment's log (as far as it is durable) for what follows `through`.
    fn rest_of_log(&self, meta: &SegmentMeta, through: MessageId) -> Result<Rest> {
        use std::io::Read;
        let path = self.logs.path(meta.segment_no);
        let io = |what: &str, e| IngesterError::io(format!("{what} {}", path.display()), e);
        let file = std::fs::File::open(&path).map_err(|e| io("opening", e))?;
        let mut reader = std::io::BufReader::new(file).take(meta.log_bytes);
        let mut rest = Rest {
            first: None,
            messages: 0,
            json_bytes: 0,
            oldest_publish_ms: u64::MAX,
            newest_publish_ms: 0,
        };
        let mut decoder = LogDecoder::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // As the seal's own reading of a log (`SegmentWriter::feed`) does.
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("reading", e)),
            };
            decoder
                .decode_after(&buf[..n], &mut rest, Some(through))
                .map_err(|e| {
                    IngesterError::Corrupt(format!("record log {}: {e}", path.display()))
                })?;
        }
        if rest.oldest_publish_ms == u64::MAX {
            rest.oldest_publish_ms = 0;
        }
        Ok(rest)
    }
}

fn already() -> Cover {
    Cover {
        outcome: CoverOutcome::AlreadyCommitted,
        to_seal: Vec::new(),
    }
}

/// What the other ingester stored counts as spooled here: its redeliveries are dropped.
fn raise_watermark(
    state: &mut State,
    batch: &mut sled::Batch,
    rule: &str,
    partition: i32,
    through: MessageId,
) -> Result<()> {
    let marks: &mut BTreeMap<i32, Position> = &mut state.watermarks;
    let Some(mark) = marks.get_mut(&partition) else {
        return Ok(());
    };
    if through.is_after(&mark.id) {
        mark.id = through;
        batch.insert(
            key(WATERMARK, rule, &partition_suffix(partition)),
            to_json(mark)?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::types::{MessageId, RuleSpecInput};

    use super::*;
    use crate::spool::test_support::{
        open_db, open_spool, open_spool_for, read_payloads, rule_spec,
    };
    use crate::spool::Incoming;

    fn fenced_rule(max_messages: u64) -> proto::types::RuleConfig {
        RuleSpecInput {
            fence: Some(true),
            ..rule_spec(max_messages)
        }
        .validate()
        .expect("valid rule")
    }

    fn id(partition: i32, entry: u64, batch_index: i32) -> MessageId {
        MessageId {
            ledger: 7,
            entry,
            partition,
            batch_index,
        }
    }

    /// A message of `partition`'s entry `entry`, one of `batch_size` (0: not batched).
    fn msg(partition: i32, entry: u64, batch_index: i32, batch_size: i32) -> Incoming {
        Incoming {
            id: id(partition, entry, batch_index),
            topic: format!("persistent://public/default/orders-partition-{partition}"),
            batch_size,
            publish_time_ms: 1_764_000_000_000 + entry * 1000,
            producer_name: "p".into(),
            body: Vec::new(),
            json_len: 0,
        }
        .with_payload(format!("{partition}/{entry}/{batch_index}"))
    }

    fn open(dir: &std::path::Path, max_messages: u64) -> Result<Arc<RuleSpool>> {
        open_spool_for(&open_db(&dir.join("db"))?, dir, &fenced_rule(max_messages))
    }

    fn segment(spool: &RuleSpool, no: u64) -> SegmentMeta {
        spool
            .segments()
            .into_iter()
            .find(|m| m.segment_no == no)
            .expect("the segment")
    }

    #[tokio::test]
    async fn a_fenced_rule_cuts_one_partition_per_segment_and_only_where_an_entry_ends(
    ) -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let spool = open(dir.path(), 2)?;
        // Two partitions interleaved, entries of three messages, at most two per segment.
        let mut batch = Vec::new();
        for entry in 0..2 {
            for index in 0..3 {
                batch.push(msg(0, entry, index, 3));
                batch.push(msg(1, entry, index, 3));
            }
        }
        let closed = spool.append(&batch, 5).await?.closed;
        assert_eq!(
            closed.len(),
            4,
            "an entry of three is one segment, whatever the cap"
        );
        for no in closed {
            let meta = segment(&spool, no);
            assert!(meta.fenced);
            assert_eq!(meta.partitions.len(), 1, "one partition per segment");
            assert_eq!(meta.messages, 3);
            assert!(meta.partitions.values().all(|s| s.last_completes_entry));
            // Named by its messages alone: no window start, no spool id.
            let first = meta.first_id.expect("first id");
            assert!(
                meta.object_key.ends_with(&format!(
                    "/r1-{}-{}.jsonl.gz",
                    chrono::DateTime::from_timestamp_millis(
                        i64::try_from(meta.first_publish_ms).expect("ms")
                    )
                    .expect("time")
                    .format("%Y%m%dT%H%M%SZ"),
                    first.file_stem()
                )),
                "{}",
                meta.object_key
            );
            assert!(!meta.object_key.contains("test0001"));
        }
        // A segment that ends inside an entry stays open even when forced.
        spool.append(&[msg(0, 2, 0, 3)], 6).await?;
        assert!(spool.close_open(7, true).await?.is_empty());
        let rest = spool.append(&[msg(0, 2, 1, 3)], 8).await?;
        assert!(rest.closed.is_empty(), "full, but inside an entry");
        let rest = spool.append(&[msg(0, 2, 2, 3)], 8).await?;
        assert_eq!(rest.closed.len(), 1, "full, and the entry is complete");
        Ok(())
    }

    #[tokio::test]
    async fn another_ingesters_object_covers_or_cuts_every_later_segment_of_the_partition(
    ) -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let spool = open(dir.path(), 3)?;
        let batch: Vec<Incoming> = (0..10).map(|e| msg(0, e, -1, 0)).collect();
        let closed = spool.append(&batch, 5).await?.closed;
        assert_eq!(closed, vec![0, 1, 2]);
        for &no in &closed {
            spool.seal_blocking(no)?;
        }
        // Only the partition's oldest segment is offered: a conflict on it may cut the others.
        let offered: Vec<u64> = spool.sealed().iter().map(|m| m.segment_no).collect();
        assert_eq!(offered, vec![0]);
        let first_key = segment(&spool, 0).object_key;

        // The other object holds entries 0..=4: segment 0 is covered, 1 keeps entry 5 only.
        let cover = spool.cover(0, id(0, 4, -1)).await?;
        assert_eq!(cover.outcome, CoverOutcome::Covered);
        assert_eq!(cover.to_seal, vec![1]);
        assert_eq!(segment(&spool, 0).state, SegmentState::Stored);
        let cut = segment(&spool, 1);
        assert_eq!(cut.state, SegmentState::Closed);
        assert_eq!((cut.first_id, cut.messages), (Some(id(0, 5, -1)), 1));
        assert_eq!(
            cut.covered_messages, 2,
            "entries 3 and 4 are the other object's"
        );
        assert!(cut.object_key.contains("-7_5_0_-1"), "{}", cut.object_key);
        assert_ne!(cut.object_key, first_key);
        spool.seal_blocking(1)?;
        let (meta, path) = spool.sealed_file(1)?;
        assert_eq!(read_payloads(&path), "0/5/-1\n");
        assert_eq!(meta.messages, 1);
        assert_eq!(
            spool
                .sealed()
                .iter()
                .map(|m| m.segment_no)
                .collect::<Vec<_>>(),
            vec![1]
        );
        // A repeated commit changes nothing.
        assert_eq!(
            spool.cover(0, id(0, 4, -1)).await?.outcome,
            CoverOutcome::AlreadyCommitted
        );

        // Another object holds everything through entry 12: the rest, the open segment too, is
        // stored by it, and its redeliveries are dropped here.
        let cover = spool.cover(1, id(0, 12, -1)).await?;
        assert_eq!(cover.outcome, CoverOutcome::Covered);
        assert!(cover.to_seal.is_empty());
        assert!(spool.open_segment().is_none());
        assert!(spool
            .segments()
            .iter()
            .all(|m| m.state == SegmentState::Stored));
        let plan = spool.ack_plan().expect("all acknowledgeable");
        assert_eq!(plan.positions.len(), 1);
        // Acknowledged where the other object ends (12), though this spool got only to 9: the
        // partition's next owner starts where an object ends.
        assert_eq!(plan.positions[0].id, id(0, 12, -1));
        let again = spool.append(&[msg(0, 12, -1, 0)], 9).await?;
        assert_eq!((again.accepted, again.duplicates), (0, 1));
        let next = spool.append(&[msg(0, 13, -1, 0)], 9).await?;
        assert_eq!(next.accepted, 1);
        Ok(())
    }

    /// A cut that overtakes a seal (here between the seal's durable write and its showing the
    /// segment sealed) neither leaves the file written before the cut to be offered nor the
    /// segment closed for good (which stalled the partition: its later segments wait behind
    /// it): the rest is sealed.
    #[tokio::test]
    async fn a_cut_while_sealing_seals_the_rest() -> Result<()> {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::seal::SEAL_FLUSH;

        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let spool = open(dir.path(), 3)?;
        let batch: Vec<Incoming> = (0..10).map(|e| msg(0, e, -1, 0)).collect();
        assert_eq!(spool.append(&batch, 5).await?.closed, vec![0, 1, 2]);
        spool.seal_blocking(0)?;
        let cut = Arc::new(AtomicBool::new(false));
        let cutting = cut.clone();
        SEAL_FLUSH.with(|f| {
            *f.borrow_mut() = Some(Box::new(move |spool: &RuleSpool| {
                if !cutting.swap(true, Ordering::SeqCst) {
                    // Another ingester's object holds entries 0..=4: segment 1 (3..=5) keeps 5.
                    spool.cover_blocking(0, id(0, 4, -1))?;
                }
                Ok(())
            }));
        });
        let sealed = spool.seal_blocking(1);
        SEAL_FLUSH.with(|f| *f.borrow_mut() = None);
        sealed?;
        assert!(cut.load(Ordering::SeqCst), "the cut happened mid-seal");
        assert_eq!(segment(&spool, 1).state, SegmentState::Sealed);
        let (meta, path) = spool.sealed_file(1)?;
        assert_eq!(
            read_payloads(&path),
            "0/5/-1\n",
            "the rest, not the file written before the cut"
        );
        assert_eq!((meta.messages, meta.first_id), (1, Some(id(0, 5, -1))));
        let offered: Vec<u64> = spool.sealed().iter().map(|m| m.segment_no).collect();
        assert_eq!(offered, vec![1], "the partition goes on");
        Ok(())
    }

    #[tokio::test]
    async fn an_unfenced_segment_is_never_covered() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let spool = open_spool(&open_db(&dir.path().join("db"))?, dir.path(), 2)?;
        let closed = spool
            .append(&[msg(0, 0, -1, 0), msg(0, 1, -1, 0)], 5)
            .await?
            .closed;
        spool.seal_blocking(closed[0])?;
        let err = spool
            .cover(closed[0], id(0, 1, -1))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("not fenced"), "{err}");
        Ok(())
    }
}
