//! What the spool keeps about each segment (its meta: state, window, record range, ack
//! positions, target, file) and about the rule (counters), as stored in sled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::types::{Compression, Format, KeyLayout, MessageId, RuleConfig};

use crate::segment::segment_writer::Codec;
use serde::{Deserialize, Serialize};

use crate::segment::cutter::{CutPolicy, OpenStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentState {
    Open,
    Closed,
    Sealed,
    Stored,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::Open => "open",
            // Closed means its file is being written (or waits to be): what an operator sees.
            SegmentState::Closed => "sealing",
            SegmentState::Sealed => "sealed",
            SegmentState::Stored => "stored",
        }
    }
}

impl PartialOrd for SegmentState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SegmentState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Where a partition's acknowledgement goes: the topic the consumer knows it by, and the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub id: MessageId,
}

/// Where a segment's object goes; copied from the rule when the segment is closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub cluster: String,
    pub prefix: String,
    pub topic: String,
    pub compression: Option<Compression>,
    /// `None`: the compression's default (and every segment closed before levels existed).
    #[serde(default)]
    pub compression_level: Option<u32>,
    #[serde(default)]
    pub layout: KeyLayout,
    /// JSON Lines in segments closed before formats existed.
    #[serde(default)]
    pub format: Format,
}

impl Target {
    pub fn of(rule: &RuleConfig) -> Target {
        Target {
            bucket: rule.bucket.clone(),
            region: rule.region.clone(),
            endpoint: rule.endpoint.clone(),
            cluster: rule.cluster.clone(),
            prefix: rule.prefix.clone(),
            topic: rule.topic.clone(),
            compression: Some(rule.compression),
            compression_level: rule.compression_level,
            layout: rule.layout,
            format: rule.format,
        }
    }

    pub fn compression(&self) -> Compression {
        self.compression.unwrap_or_default()
    }

    /// The level to compress at.
    pub fn level(&self) -> u32 {
        self.compression_level
            .unwrap_or_else(|| self.compression().default_level())
    }

    /// How the segment's file is written: a file written otherwise is not the segment's file
    /// once the rule changed any of them.
    pub fn codec(&self) -> Codec {
        Codec {
            format: self.format,
            compression: self.compression(),
            level: self.level(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub segment_no: u64,
    pub state: SegmentState,
    pub window_start_ms: u64,
    pub opened_at_ms: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub record_bytes: u64,
    pub first_id: Option<MessageId>,
    pub last_id: Option<MessageId>,
    pub oldest_publish_ms: u64,
    /// Per partition, the last record of this segment that completes its Pulsar entry.
    pub ack_positions: BTreeMap<i32, Position>,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub object_key: String,
    #[serde(default)]
    pub file_bytes: u64,
    #[serde(default)]
    pub crc32c: u32,
    #[serde(default)]
    pub sealed_at_ms: u64,
    #[serde(default)]
    pub stored_at_ms: u64,
    #[serde(default)]
    pub etag: String,
    #[serde(default)]
    pub upload_ms: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub times_quarantined: u32,
    /// CRC32C of the record log's first `log_bytes` bytes.
    #[serde(default)]
    pub log_crc32c: u32,
    /// The length of the segment's record log that the spool knows to be durable.
    #[serde(default)]
    pub log_bytes: u64,
    /// Per partition, the range of messages the segment holds (for the bucket's manifest).
    /// Empty in segments opened before the field existed.
    #[serde(default)]
    pub partitions: BTreeMap<i32, Span>,
    /// The newest publish time among the segment's messages (0 in segments opened before it).
    #[serde(default)]
    pub newest_publish_ms: u64,
    /// The rule's source changes when the segment was closed (part of its object key).
    #[serde(default)]
    pub source_changes: u32,
    /// Opened while the rule was fenced: one partition's messages, cut where an entry ends, its
    /// key derived from them alone (see `proto::types::object_key`).
    #[serde(default)]
    pub fenced: bool,
    /// The publish time of the segment's first message (a fenced segment's key is dated by it);
    /// 0 in segments opened before the field existed.
    #[serde(default)]
    pub first_publish_ms: u64,
    /// Records of the log at or below this id are not the segment's: another ingester's object
    /// holds them (a fenced segment cut to the rest, see `RuleSpool::cover`). The log stays as
    /// it was written; sealing skips them.
    #[serde(default)]
    pub skip_through: Option<MessageId>,
    /// Records of the log left out by `skip_through`: acknowledged with the segment all the
    /// same (another ingester's object holds them), so `messages_acked` counts them.
    #[serde(default)]
    pub covered_messages: u64,
}

/// One partition's messages in one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub first: MessageId,
    pub last: MessageId,
    pub messages: u64,
    /// Whether `last` is the last message of its Pulsar entry.
    pub last_completes_entry: bool,
    pub oldest_publish_ms: u64,
    pub newest_publish_ms: u64,
}

impl Span {
    pub fn start(id: MessageId, publish_ms: u64, completes_entry: bool) -> Span {
        Span {
            first: id,
            last: id,
            messages: 1,
            last_completes_entry: completes_entry,
            oldest_publish_ms: publish_ms,
            newest_publish_ms: publish_ms,
        }
    }

    pub fn extend(&mut self, id: MessageId, publish_ms: u64, completes_entry: bool) {
        self.last = id;
        self.messages += 1;
        self.last_completes_entry = completes_entry;
        self.oldest_publish_ms = self.oldest_publish_ms.min(publish_ms);
        self.newest_publish_ms = self.newest_publish_ms.max(publish_ms);
    }
}

impl SegmentMeta {
    /// Which open segment this is while it is open (see [`super::lane_of`]).
    pub(crate) fn lane(&self) -> i32 {
        super::lane_of(
            self.fenced,
            self.first_id
                .map_or(super::ALL_PARTITIONS, |id| id.partition),
        )
    }

    /// A fenced segment's one partition.
    pub fn fenced_partition(&self) -> Option<i32> {
        self.first_id.filter(|_| self.fenced).map(|id| id.partition)
    }

    pub(super) fn stats(&self) -> OpenStats {
        OpenStats {
            window_start_ms: self.window_start_ms,
            messages: self.messages,
            record_bytes: self.record_bytes,
        }
    }

    pub fn to_proto(&self, rule: &str) -> proto::v1::SegmentInfo {
        use proto::types::time::rfc3339_from_millis;
        let compression = self.target.compression();
        proto::v1::SegmentInfo {
            rule: rule.to_string(),
            segment_no: self.segment_no,
            state: self.state.as_str().to_string(),
            window_start: rfc3339_from_millis(self.window_start_ms),
            messages: self.messages,
            record_bytes: self.record_bytes,
            file_bytes: self.file_bytes,
            first_message_id: self.first_id.map(|id| id.to_string()).unwrap_or_default(),
            last_message_id: self.last_id.map(|id| id.to_string()).unwrap_or_default(),
            content_crc32c: if self.state >= SegmentState::Sealed {
                format!("{:08x}", self.crc32c)
            } else {
                String::new()
            },
            object_key: self.object_key.clone(),
            bucket: self.target.bucket.clone(),
            region: self.target.region.clone(),
            endpoint: self.target.endpoint.clone(),
            cluster: self.target.cluster.clone(),
            content_encoding: self.target.format.content_encoding(compression).into(),
            sealed_at: if self.sealed_at_ms > 0 {
                rfc3339_from_millis(self.sealed_at_ms)
            } else {
                String::new()
            },
            // Only ListSealed names it (for an uploader on this host).
            file_path: String::new(),
            partitions: self
                .partitions
                .iter()
                .map(|(&partition, span)| proto::v1::PartitionSpan {
                    partition,
                    first_message_id: span.first.to_string(),
                    last_message_id: span.last.to_string(),
                    messages: span.messages,
                    last_completes_entry: span.last_completes_entry,
                    min_publish_time: rfc3339_from_millis(span.oldest_publish_ms),
                    max_publish_time: rfc3339_from_millis(span.newest_publish_ms),
                })
                .collect(),
            min_publish_time: if self.messages > 0 {
                rfc3339_from_millis(self.oldest_publish_ms)
            } else {
                String::new()
            },
            // Unknown for a segment opened before the field existed.
            max_publish_time: if self.newest_publish_ms > 0 {
                rfc3339_from_millis(self.newest_publish_ms)
            } else {
                String::new()
            },
            source_changes: self.source_changes,
            prefix: self.target.prefix.clone(),
            topic: self.target.topic.clone(),
            fenced: self.fenced,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Counters {
    pub(super) next_seq: u64,
    pub(super) next_segment: u64,
    /// How many times the rule's source changed (see [`RuleSpool::reset_positions`]); part of
    /// the object names from then on.
    #[serde(default)]
    pub(super) source_changes: u32,
}

pub(super) fn policy_of(rule: &RuleConfig) -> CutPolicy {
    CutPolicy {
        window_ms: rule.window_secs.saturating_mul(1000),
        max_messages: rule.max_messages,
        max_bytes: rule.max_bytes,
    }
}

/// Where a segment's file is (sealed or not) in the rule's segment folder.
pub(super) fn segment_path(dir: &Path, meta: &SegmentMeta) -> PathBuf {
    dir.join(
        meta.target
            .format
            .segment_file_name(meta.target.compression(), meta.segment_no),
    )
}
