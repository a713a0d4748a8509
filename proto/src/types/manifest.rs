//! The backup manifest: what the uploader stored for a rule, kept in the bucket next to the
//! objects, so that `verify`, `restore` and analysts plan from a few listings instead of reading
//! every object.
//!
//! Layout (all under the rule's own prefix, in a folder no topic path can take: tenants named
//! [`RESERVED_TENANT`] are refused by [`super::TopicName::parse`]):
//!
//! ```text
//! {prefix}.tdmq-backup/manifest/{rule}/{YYYY}/{MM}/{DD}/{HH}/{object name}.json   one per object
//! {prefix}.tdmq-backup/manifest/{rule}/{YYYY}/{MM}/{DD}/{HH}/_hour.json            rollup of the hour
//! ```
//!
//! The hour is the object's window start (the hour in its own key today; a later key layout may
//! differ, which is why readers take keys from here, not from the keys' shape). An entry's name
//! is the object's name plus `.json`, so a retry or a restart of the uploader rewrites the same
//! entry with the same content: exactly once, as the objects themselves. A rollup gathers every
//! entry of an hour into one document; per-object entries it holds may then be deleted. Readers
//! merge both and keep one entry per object key ([`merge_entries`]), so a crash between writing
//! a rollup and deleting the entries it replaced changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::message_id::MessageId;

/// The folder under a rule's prefix that holds tdmq-backup's own files.
pub const RESERVED_DIR: &str = ".tdmq-backup/";
/// A tenant of this name would put topic objects in [`RESERVED_DIR`]; it is refused.
pub const RESERVED_TENANT: &str = ".tdmq-backup";
/// The file name of an hour's rollup.
pub const ROLLUP_NAME: &str = "_hour.json";
/// The version of the entry format; readers accept entries of this version or older.
pub const FORMAT: u32 = 1;

/// One partition's messages in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpan {
    /// -1 for a non-partitioned topic.
    pub partition: i32,
    /// `ledger:entry:partition:batch_index`, as in the records.
    pub first_message_id: String,
    pub last_message_id: String,
    pub messages: u64,
    /// Whether the last message is the last of its Pulsar entry (batch complete); when not, the
    /// next object of the partition must start inside the same entry.
    pub last_completes_entry: bool,
    /// RFC 3339 UTC with milliseconds.
    pub min_publish_time: String,
    pub max_publish_time: String,
}

impl PartitionSpan {
    pub fn first(&self) -> Result<MessageId, super::message_id::ParseMessageIdError> {
        self.first_message_id.parse()
    }

    pub fn last(&self) -> Result<MessageId, super::message_id::ParseMessageIdError> {
        self.last_message_id.parse()
    }
}

/// What the uploader recorded about one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub format: u32,
    pub rule: String,
    /// The object's key in the bucket.
    pub key: String,
    /// Bytes of the object.
    pub size: u64,
    /// CRC32C of the object's bytes (8 hex digits), as the ingester sealed it and the uploader
    /// checked it while storing.
    pub crc32c: String,
    /// The ETag the store gave the object when it took it (quotes kept as the store sent them):
    /// a LIST showing another ETag means other bytes.
    pub etag: String,
    /// `gzip` (`.jsonl.gz`) or `identity` (`.jsonl`).
    pub content_encoding: String,
    pub messages: u64,
    /// Bytes of the uncompressed JSON Lines.
    pub record_bytes: u64,
    /// RFC 3339: the window the segment was cut in.
    pub window_start: String,
    /// Empty when the object holds no message with a publish time (never, in practice).
    pub min_publish_time: String,
    pub max_publish_time: String,
    /// How many times the rule's source changed before these messages were read: ids of
    /// different sources are not comparable (a new cluster numbers its messages afresh).
    pub source: u32,
    /// The ingester's segment number (for support; not unique across ingesters).
    pub segment_no: u64,
    /// Per partition, ordered by partition. Empty for segments sealed by an ingester older than
    /// the manifest: their continuity cannot be checked without `--deep`.
    #[serde(default)]
    pub partitions: Vec<PartitionSpan>,
    /// The backed-up topic's full name (`persistent://tenant/namespace/topic`), so a backup can
    /// be replayed by topic without its rule. Empty in entries written before it was recorded:
    /// [`ManifestEntry::is_of_topic`] then reads the topic from the object key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
}

impl ManifestEntry {
    /// Whether the object holds messages published in `[from, to]` (either end open). An entry
    /// without publish times is always selected.
    pub fn published_within(&self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> bool {
        let parse = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        let (Some(min), Some(max)) = (parse(&self.min_publish_time), parse(&self.max_publish_time))
        else {
            return true;
        };
        from.is_none_or(|from| max >= from) && to.is_none_or(|to| min <= to)
    }

    /// Whether the object holds messages of `topic`, stored by a rule whose prefix is `prefix`.
    /// Entries that name no topic (written before the field existed) are matched by the
    /// contract's key layout, `{prefix}{tenant}/{namespace}/{topic}/...`; persistence is not in
    /// the key, so there only tenant, namespace and name count.
    pub fn is_of_topic(&self, prefix: &str, topic: &super::TopicName) -> bool {
        if !self.topic.is_empty() {
            return super::TopicName::parse(&self.topic)
                .is_ok_and(|t| t.full_name() == topic.full_name());
        }
        self.key.starts_with(&format!(
            "{prefix}{}/{}/{}/",
            topic.tenant, topic.namespace, topic.topic
        ))
    }
}

/// An hour's entries in one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRollup {
    pub format: u32,
    pub rule: String,
    /// RFC 3339: the hour's start.
    pub hour: String,
    pub entries: Vec<ManifestEntry>,
}

/// `{prefix}.tdmq-backup/manifest/{rule}/`: everything the manifest holds for the rule.
pub fn rule_prefix(prefix: &str, rule: &str) -> String {
    format!("{prefix}{RESERVED_DIR}manifest/{rule}/")
}

/// The folder of one hour's entries.
pub fn hour_prefix(prefix: &str, rule: &str, hour: DateTime<Utc>) -> String {
    format!(
        "{}{}/",
        rule_prefix(prefix, rule),
        hour.format("%Y/%m/%d/%H")
    )
}

/// The entry of the object `object_key` whose window started at `window_start`.
pub fn entry_key(
    prefix: &str,
    rule: &str,
    window_start: DateTime<Utc>,
    object_key: &str,
) -> String {
    let name = object_key.rsplit('/').next().unwrap_or(object_key);
    format!("{}{name}.json", hour_prefix(prefix, rule, window_start))
}

/// The rollup of the hour holding `hour`.
pub fn rollup_key(prefix: &str, rule: &str, hour: DateTime<Utc>) -> String {
    format!("{}{ROLLUP_NAME}", hour_prefix(prefix, rule, hour))
}

/// The start of the hour holding `t`.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
        .single()
        .unwrap_or(t)
}

/// What a key under [`rule_prefix`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKey {
    Entry { hour: DateTime<Utc> },
    Rollup { hour: DateTime<Utc> },
}

/// Reads a key listed under `rule_prefix`; `None` for anything the manifest does not write.
pub fn parse_key(rule_prefix: &str, key: &str) -> Option<ManifestKey> {
    let rest = key.strip_prefix(rule_prefix)?;
    let mut parts = rest.splitn(5, '/');
    let mut num = |digits: usize| {
        parts
            .next()
            .filter(|p| p.len() == digits && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let (y, m, d, h) = (num(4)?, num(2)?, num(2)?, num(2)?);
    let name = parts.next()?;
    let hour = Utc
        .with_ymd_and_hms(i32::try_from(y).ok()?, m, d, h, 0, 0)
        .single()?;
    if name == ROLLUP_NAME {
        Some(ManifestKey::Rollup { hour })
    } else if name.ends_with(".json") && !name.contains('/') && name.len() > ".json".len() {
        Some(ManifestKey::Entry { hour })
    } else {
        None
    }
}

/// One entry per object key, ordered by key. Two entries of one key (a rollup and the entry it
/// replaced, or an entry rewritten by a retry) describe the same object; the one read last wins.
pub fn merge_entries(entries: impl IntoIterator<Item = ManifestEntry>) -> Vec<ManifestEntry> {
    let mut by_key = BTreeMap::new();
    for entry in entries {
        by_key.insert(entry.key.clone(), entry);
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, h, m, 7)
            .single()
            .expect("time")
    }

    fn entry(key: &str, min: &str, max: &str) -> ManifestEntry {
        ManifestEntry {
            format: FORMAT,
            rule: "r".into(),
            key: key.into(),
            size: 1,
            crc32c: "00000000".into(),
            etag: String::new(),
            content_encoding: "gzip".into(),
            messages: 1,
            record_bytes: 1,
            window_start: "2026-11-24T02:40:00.000Z".into(),
            min_publish_time: min.into(),
            max_publish_time: max.into(),
            source: 0,
            segment_no: 1,
            topic: String::new(),
            partitions: vec![],
        }
    }

    #[test]
    fn keys_live_in_the_reserved_folder_per_rule_and_hour() {
        let key =
            "pulsar/public/default/orders/2026/11/24/02/r-20261124T024000Z-1_0_-1_-1-ab.jsonl.gz";
        let e = entry_key("pulsar/", "r", at(2, 40), key);
        assert_eq!(
            e,
            "pulsar/.tdmq-backup/manifest/r/2026/11/24/02/r-20261124T024000Z-1_0_-1_-1-ab.jsonl.gz.json"
        );
        let rp = rule_prefix("pulsar/", "r");
        assert_eq!(
            parse_key(&rp, &e),
            Some(ManifestKey::Entry {
                hour: hour_of(at(2, 40))
            })
        );
        let r = rollup_key("pulsar/", "r", at(2, 59));
        assert_eq!(r, "pulsar/.tdmq-backup/manifest/r/2026/11/24/02/_hour.json");
        assert_eq!(
            parse_key(&rp, &r),
            Some(ManifestKey::Rollup {
                hour: hour_of(at(2, 0))
            })
        );
        // Another rule's folder, stray files and malformed hours are not the rule's manifest.
        assert_eq!(
            parse_key(&rp, &entry_key("pulsar/", "r2", at(2, 0), key)),
            None
        );
        assert_eq!(
            parse_key(
                &rp,
                "pulsar/.tdmq-backup/manifest/r/2026/11/24/02/notes.txt"
            ),
            None
        );
        assert_eq!(
            parse_key(&rp, "pulsar/.tdmq-backup/manifest/r/2026/13/24/02/x.json"),
            None
        );
        assert_eq!(
            parse_key(&rp, "pulsar/.tdmq-backup/manifest/r/2026/11/24/x.json"),
            None
        );
    }

    #[test]
    fn merging_keeps_one_entry_per_key_the_last_read() {
        let mut newer = entry("b", "", "");
        newer.etag = "\"new\"".into();
        let merged = merge_entries([entry("b", "", ""), entry("a", "", ""), newer.clone()]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].key, "a");
        assert_eq!(merged[1], newer);
    }

    #[test]
    fn selection_by_publish_time_intersects_the_span() {
        let e = entry("k", "2026-11-24T02:10:00.000Z", "2026-11-24T02:20:00.000Z");
        assert!(e.published_within(None, None));
        assert!(e.published_within(Some(at(2, 15)), None));
        assert!(!e.published_within(Some(at(2, 21)), None));
        assert!(e.published_within(None, Some(at(2, 10))));
        assert!(!e.published_within(None, Some(at(2, 9))));
        assert!(entry("k", "", "").published_within(Some(at(3, 0)), Some(at(4, 0))));
    }

    #[test]
    fn an_entry_is_of_its_recorded_topic_or_else_of_the_topic_in_its_key() {
        let orders = crate::types::TopicName::parse("orders").expect("topic");
        let other = crate::types::TopicName::parse("t1/ns/orders").expect("topic");
        let mut e = entry(
            "bk/public/default/orders/2026/11/24/02/r-x.jsonl.gz",
            "",
            "",
        );
        assert!(e.is_of_topic("bk/", &orders));
        assert!(!e.is_of_topic("", &orders));
        assert!(!e.is_of_topic("bk/", &other));
        // A recorded topic wins over the key (whatever shape later keys take).
        e.topic = "persistent://t1/ns/orders".into();
        assert!(e.is_of_topic("bk/", &other));
        assert!(!e.is_of_topic("bk/", &orders));
        // Written only when known: older readers see the same document as before.
        let json = serde_json::to_string(&entry("k", "", "")).expect("json");
        assert!(!json.contains("\"topic\""), "{json}");
    }

    #[test]
    fn entries_round_trip_as_json() {
        let mut e = entry("k", "2026-11-24T02:10:00.000Z", "2026-11-24T02:20:00.000Z");
        e.partitions.push(PartitionSpan {
            partition: 0,
            first_message_id: "1:0:0:-1".into(),
            last_message_id: "1:9:0:-1".into(),
            messages: 10,
            last_completes_entry: true,
            min_publish_time: e.min_publish_time.clone(),
            max_publish_time: e.max_publish_time.clone(),
        });
        let text = serde_json::to_string(&e).expect("json");
        let back: ManifestEntry = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, e);
        assert_eq!(back.partitions[0].first().map(|id| id.entry), Ok(0));
    }
}
