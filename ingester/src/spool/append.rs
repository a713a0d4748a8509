//! open: spooling a batch of received messages (plan in memory, write the logs durably, then
//! one sled batch: invariant 1), and open → closed when the cut policy says so.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use proto::types::{object_key, MessageId, SegmentName, TopicName};

use super::keys::{key, partition_suffix, segment_key, to_json, COUNTERS, WATERMARK};
use super::record_log::LogWrite;
use super::redelivery::{classify, Redelivery};
use super::{lane_of, Position, RuleSpool, SegmentMeta, SegmentState, Span, State, Target};
use crate::error::{IngesterError, Result};
use crate::segment::cutter::Placement;

/// One consumed message, already encoded.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub id: MessageId,
    /// The topic the consumer received it on (a partition's name for partitioned topics).
    pub topic: String,
    /// `num_messages_in_batch` of its entry; 0 when not batched.
    pub batch_size: i32,
    pub publish_time_ms: u64,
    pub producer_name: String,
    /// The record in the log's compact form, without topic and producer name
    /// (`crate::spool::log_record::encode_body`).
    pub body: Vec<u8>,
    /// The length of the record's JSON line: what it adds to the object (and to `max_bytes`).
    pub json_len: u64,
}

impl Incoming {
    /// Whether this message is the last one of its Pulsar entry.
    fn completes_entry(&self) -> bool {
        self.batch_size <= 0
            || self.id.batch_index < 0
            || self.id.batch_index + 1 >= self.batch_size
    }
}

#[cfg(test)]
impl Incoming {
    /// The message with `payload` (text), its body and JSON length made as the consumer does.
    pub(crate) fn with_payload(mut self, payload: String) -> Incoming {
        let fields = proto::types::RecordFields {
            message_id: self.id,
            topic: &self.topic,
            publish_time_ms: self.publish_time_ms,
            event_time_ms: None,
            key: None,
            properties: &[],
            producer_name: &self.producer_name,
            sequence_id: self.id.entry,
            payload: payload.as_bytes(),
            chunk: None,
            key_base64: false,
            ordering_key: None,
            encryption: None,
        };
        let mut body = Vec::new();
        crate::spool::log_record::encode_body(&fields, &mut body);
        self.json_len = proto::types::record::record_json_len(&fields);
        self.body = body;
        self
    }

    /// The payload (text) back from the body.
    pub(crate) fn payload_for_tests(&self) -> String {
        let line =
            crate::spool::log_record::json_line(&self.topic, &self.producer_name, &self.body)
                .expect("a valid body");
        let record: serde_json::Value = serde_json::from_slice(&line).expect("a JSON record");
        record["payload"]
            .as_str()
            .expect("a text payload")
            .to_string()
    }
}

#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    /// Segments closed by this batch, to be sealed.
    pub closed: Vec<u64>,
    /// Duplicates of messages already acknowledged: acknowledge these positions again so the
    /// broker stops redelivering them.
    pub reack: Vec<Position>,
}

impl RuleSpool {
    /// Spools a batch of consumed messages durably: one write and one sync per segment's log,
    /// then one sled batch.
    ///
    /// Once planned, a batch is written to the end even if this future is dropped (a rule task
    /// stopped or aborted mid-write): the in-memory state already counts it as spooled, so it
    /// must become durable, or be undone by a reload, before anyone appends again; `appending`
    /// orders the next append after it.
    pub async fn append(
        self: &Arc<Self>,
        messages: &[Incoming],
        now_ms: u64,
    ) -> Result<AppendOutcome> {
        let appending = self.appending.clone().lock_owned().await;
        let (outcome, writes, batch) = match self.plan_append(messages, now_ms) {
            Ok(planned) => planned,
            Err(err) => {
                self.reload()?;
                return Err(err);
            }
        };
        if writes.is_empty() {
            return Ok(outcome);
        }
        let spool = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            let _appending = appending;
            spool.write_planned(&writes, batch)
        })
        .await;
        match written {
            Ok(result) => result.map(|()| outcome),
            Err(join) => {
                // The write panicked: what is durable is unknown, go back to what sled says.
                self.reload()?;
                Err(IngesterError::io(
                    "writing a record log",
                    std::io::Error::other(join.to_string()),
                ))
            }
        }
    }

    /// The durable half of an append (blocking IO): the logs, synced, then sled; on failure the
    /// in-memory state goes back to what sled says, and the caller retries.
    fn write_planned(&self, writes: &[LogWrite], batch: sled::Batch) -> Result<()> {
        // Only once the log is synced may sled hear of its bytes (invariant 1).
        let applied = self
            .logs
            .append_durably(writes)
            .and_then(|()| Ok(self.tree()?.apply_batch(batch)?));
        if let Err(err) = applied {
            self.reload()?;
            return Err(err);
        }
        Ok(())
    }

    /// Applies a batch to the in-memory state; returns what to write to the logs, then to sled.
    fn plan_append(
        &self,
        messages: &[Incoming],
        now_ms: u64,
    ) -> Result<(AppendOutcome, Vec<LogWrite>, sled::Batch)> {
        let mut state = self.lock();
        let mut batch = sled::Batch::default();
        let mut writes: Vec<LogWrite> = Vec::new();
        let mut outcome = AppendOutcome::default();
        let mut dirty_partitions = Vec::new();
        for msg in messages {
            let partition = msg.id.partition;
            match classify(&msg.id, &state.watermarks, &state.acked) {
                Redelivery::New => {}
                Redelivery::Spooled => {
                    outcome.duplicates += 1;
                    continue;
                }
                Redelivery::Acknowledged(acked) => {
                    outcome.duplicates += 1;
                    if !outcome.reack.contains(acked) {
                        outcome.reack.push(acked.clone());
                    }
                    continue;
                }
            }
            let len = msg.json_len;
            let lane = lane_of(state.fence, partition);
            let open_stats = state
                .open
                .get(&lane)
                .filter(|open| may_close(open))
                .map(|open| open.stats());
            let placement = state.policy.place(open_stats.as_ref(), now_ms, len);
            if placement == Placement::CloseThenAppend {
                if let Some(closed) = self.close_open_locked(&mut state, &mut batch, lane)? {
                    outcome.closed.push(closed);
                }
            }
            let seq = state.counters.next_seq;
            state.counters.next_seq += 1;
            if !state.open.contains_key(&lane) {
                let segment_no = state.counters.next_segment;
                state.counters.next_segment += 1;
                let window_start_ms = state.policy.window_start(now_ms);
                let fenced = state.fence;
                state.open.insert(
                    lane,
                    SegmentMeta {
                        segment_no,
                        state: SegmentState::Open,
                        window_start_ms,
                        opened_at_ms: now_ms,
                        first_seq: seq,
                        last_seq: seq,
                        messages: 0,
                        record_bytes: 0,
                        first_id: Some(msg.id),
                        last_id: None,
                        oldest_publish_ms: msg.publish_time_ms,
                        ack_positions: BTreeMap::new(),
                        target: Target::default(),
                        object_key: String::new(),
                        file_bytes: 0,
                        crc32c: 0,
                        sealed_at_ms: 0,
                        stored_at_ms: 0,
                        etag: String::new(),
                        upload_ms: 0,
                        attempts: 0,
                        times_quarantined: 0,
                        log_crc32c: 0,
                        log_bytes: 0,
                        partitions: BTreeMap::new(),
                        newest_publish_ms: msg.publish_time_ms,
                        source_changes: 0,
                        fenced,
                        first_publish_ms: msg.publish_time_ms,
                        skip_through: None,
                        covered_messages: 0,
                    },
                );
            }
            let policy = state.policy;
            let full = {
                let State { open, encoders, .. } = &mut *state;
                let open = open.get_mut(&lane).ok_or_else(|| {
                    IngesterError::Corrupt("open segment vanished while appending".into())
                })?;
                let write = match writes.iter().position(|w| w.segment_no == open.segment_no) {
                    Some(at) => &mut writes[at],
                    None => {
                        writes.push(LogWrite {
                            segment_no: open.segment_no,
                            fresh: open.messages == 0,
                            bytes: Vec::with_capacity(msg.body.len() + 64),
                        });
                        writes.last_mut().ok_or_else(|| {
                            IngesterError::Corrupt("log write vanished while appending".into())
                        })?
                    }
                };
                let start = write.bytes.len();
                let encoder = encoders.entry(open.segment_no).or_default();
                open.log_bytes +=
                    encoder.append(&msg.topic, &msg.producer_name, &msg.body, &mut write.bytes);
                open.log_crc32c = crc32c::crc32c_append(open.log_crc32c, &write.bytes[start..]);
                open.last_seq = seq;
                open.messages += 1;
                open.record_bytes += len;
                open.last_id = Some(msg.id);
                open.oldest_publish_ms = open.oldest_publish_ms.min(msg.publish_time_ms);
                open.newest_publish_ms = open.newest_publish_ms.max(msg.publish_time_ms);
                let completes = msg.completes_entry();
                match open.partitions.get_mut(&partition) {
                    Some(span) => span.extend(msg.id, msg.publish_time_ms, completes),
                    None => {
                        open.partitions.insert(
                            partition,
                            Span::start(msg.id, msg.publish_time_ms, completes),
                        );
                    }
                }
                if completes {
                    advance(&mut open.ack_positions, partition, msg);
                }
                policy.is_full(&open.stats()) && may_close(open)
            };
            advance(&mut state.watermarks, partition, msg);
            if !dirty_partitions.contains(&partition) {
                dirty_partitions.push(partition);
            }
            outcome.accepted += 1;
            if full {
                if let Some(closed) = self.close_open_locked(&mut state, &mut batch, lane)? {
                    outcome.closed.push(closed);
                }
            }
        }
        if outcome.accepted == 0 {
            return Ok((outcome, writes, batch));
        }
        for partition in dirty_partitions {
            if let Some(mark) = state.watermarks.get(&partition) {
                batch.insert(
                    key(WATERMARK, &self.rule, &partition_suffix(partition)),
                    to_json(mark)?,
                );
            }
        }
        for open in state.open.values() {
            if writes.iter().any(|w| w.segment_no == open.segment_no) {
                batch.insert(segment_key(&self.rule, open.segment_no), to_json(open)?);
            }
        }
        batch.insert(key(COUNTERS, &self.rule, &[]), to_json(&state.counters)?);
        Ok((outcome, writes, batch))
    }

    /// open → closed, inside an append or a close: fixes the record range and the object key.
    pub(super) fn close_open_locked(
        &self,
        state: &mut State,
        batch: &mut sled::Batch,
        lane: i32,
    ) -> Result<Option<u64>> {
        let Some(mut meta) = state.open.remove(&lane) else {
            return Ok(None);
        };
        state.encoders.remove(&meta.segment_no);
        if meta.messages == 0 {
            batch.remove(segment_key(&self.rule, meta.segment_no));
            return Ok(None);
        }
        meta.state = SegmentState::Closed;
        meta.target = state.target.clone();
        meta.source_changes = state.counters.source_changes;
        meta.object_key = self.key_of(&meta)?;
        batch.insert(segment_key(&self.rule, meta.segment_no), to_json(&meta)?);
        let segment_no = meta.segment_no;
        state.segments.insert(segment_no, meta);
        Ok(Some(segment_no))
    }

    /// The object key of a closed segment: from its window start and this data dir's id, or for
    /// a fenced one from its messages alone.
    pub(super) fn key_of(&self, meta: &SegmentMeta) -> Result<String> {
        let first_id = meta
            .first_id
            .ok_or_else(|| IngesterError::Corrupt("segment without first id".into()))?;
        let key_ms = if meta.fenced {
            meta.first_publish_ms
        } else {
            meta.window_start_ms
        };
        let key_time = Utc
            .timestamp_millis_opt(i64::try_from(key_ms).unwrap_or(i64::MAX))
            .single()
            .ok_or_else(|| IngesterError::Corrupt("segment time out of range".into()))?;
        let topic = TopicName::parse(&meta.target.topic).map_err(IngesterError::Corrupt)?;
        Ok(object_key(
            &meta.target.prefix,
            &topic,
            &SegmentName {
                rule: &self.rule,
                key_time,
                first_message_id: &first_id,
                spool_id: (!meta.fenced).then_some(self.spool_id.as_str()),
                source_changes: meta.source_changes,
                compression: meta.target.compression(),
                format: meta.target.format,
                layout: meta.target.layout,
            },
        ))
    }

    /// Closes the open segments whose window has ended, or all of them if `force` (a fenced
    /// one only where a Pulsar entry ends). Returns their numbers.
    pub async fn close_open(&self, now_ms: u64, force: bool) -> Result<Vec<u64>> {
        let closed = {
            let mut state = self.lock();
            let due: Vec<i32> = state
                .open
                .iter()
                .filter(|(_, open)| {
                    (force || state.policy.is_due(&open.stats(), now_ms)) && may_close(open)
                })
                .map(|(&lane, _)| lane)
                .collect();
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let mut batch = sled::Batch::default();
            let mut closed = Vec::new();
            for lane in due {
                closed.extend(self.close_open_locked(&mut state, &mut batch, lane)?);
            }
            self.tree()?.apply_batch(batch)?;
            closed
        };
        self.db.flush_async().await?;
        Ok(closed)
    }
}

/// Whether the open segment may end after its last record: a fenced segment only where a Pulsar
/// entry ends, so the next one (this ingester's, or the next owner's after the broker redelivers
/// from the last acknowledged entry) starts at an entry's first message, the same id on either.
fn may_close(open: &SegmentMeta) -> bool {
    !open.fenced
        || open
            .partitions
            .values()
            .all(|span| span.last_completes_entry)
}

/// Moves a partition's position to `msg`. Per message on the append path: the topic string is
/// copied only when the partition is new or its topic differs, not for every message.
fn advance(positions: &mut BTreeMap<i32, Position>, partition: i32, msg: &Incoming) {
    match positions.get_mut(&partition) {
        Some(pos) => {
            pos.id = msg.id;
            if pos.topic != msg.topic {
                pos.topic.clone_from(&msg.topic);
            }
        }
        None => {
            positions.insert(
                partition,
                Position {
                    topic: msg.topic.clone(),
                    id: msg.id,
                },
            );
        }
    }
}
