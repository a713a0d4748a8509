//! Object key layout: `{prefix}{tenant}/{namespace}/{topic}/{YYYY}/{MM}/{DD}/{HH}/{name}`, or
//! with the rule's `layout = "hive"` `{prefix}{tenant}/{namespace}/{topic}/dt={YYYY}-{MM}-{DD}/hour={HH}/{name}`.
//!
//! `{name}` is `{rule}-{window start}-{first message id}-{spool id}{.jsonl.gz|.jsonl.zst|.jsonl}`: derived
//! only from what a closed segment already fixes, so a retry or a restart writes the very same
//! key and a replay overwrites its object instead of adding a second one. The spool id (fixed
//! for an ingester's data dir) keeps two ingesters of one Failover subscription from ever
//! writing the same key with different contents. After the rule's `n`-th change of source
//! (service URL, topic or subscription) the name ends `-s{n}` before the extension: the new
//! source numbers its messages afresh (a fresh cluster starts again at ledger 0), so its first
//! segment could otherwise get the very key of an object the old source filled.
//!
//! A fenced rule's segment (several ingesters share the subscription) is named by its messages
//! alone, `{rule}-{first publish time}-{first message id}[-s{n}]{ext}`, dated by its first
//! message's publish time: every ingester that stores those messages derives the same key, and
//! the store's conditional create lets only the first one write it.

use chrono::{DateTime, Utc};

use super::message_id::MessageId;
use super::rule::{Compression, Format, KeyLayout};

/// `persistent://tenant/namespace/topic`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName {
    pub persistent: bool,
    pub tenant: String,
    pub namespace: String,
    pub topic: String,
}

impl TopicName {
    /// Parses a full name, or completes a short one (`orders` → `persistent://public/default/orders`).
    pub fn parse(input: &str) -> Result<TopicName, String> {
        let (persistent, rest) = if let Some(rest) = input.strip_prefix("persistent://") {
            (true, rest)
        } else if let Some(rest) = input.strip_prefix("non-persistent://") {
            (false, rest)
        } else if input.contains("://") {
            return Err(format!(
                "topic {input:?} must start with persistent:// or non-persistent://"
            ));
        } else {
            (true, input)
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, topic) = match parts.as_slice() {
            [topic] => ("public", "default", *topic),
            [tenant, namespace, topic] => (*tenant, *namespace, *topic),
            _ => {
                return Err(format!(
                    "topic {input:?} must be persistent://tenant/namespace/topic or a short name"
                ))
            }
        };
        for (what, part) in [
            ("tenant", tenant),
            ("namespace", namespace),
            ("topic", topic),
        ] {
            let ok = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.=:".contains(c));
            if !ok {
                return Err(format!("topic {input:?} has an invalid {what} {part:?}"));
            }
        }
        // The manifest lives in `{prefix}.tdmq-backup/`; a tenant of that name would share it.
        if tenant == super::manifest::RESERVED_TENANT {
            return Err(format!(
                "topic {input:?}: the tenant name {tenant:?} is reserved for tdmq-backup's manifest"
            ));
        }
        if topic.contains("-partition-") {
            return Err(format!(
                "topic {input:?} names one partition; give the partitioned topic's name"
            ));
        }
        Ok(TopicName {
            persistent,
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
        })
    }

    pub fn full_name(&self) -> String {
        let scheme = if self.persistent {
            "persistent"
        } else {
            "non-persistent"
        };
        format!(
            "{scheme}://{}/{}/{}",
            self.tenant, self.namespace, self.topic
        )
    }
}

/// Which of a segment's facts its object key is made of (besides the topic and the prefix).
#[derive(Debug, Clone, Copy)]
pub struct SegmentName<'a> {
    pub rule: &'a str,
    /// The date path's and the name's time: the window start, or for a fenced segment its first
    /// message's publish time.
    pub key_time: DateTime<Utc>,
    pub first_message_id: &'a MessageId,
    /// This data dir's id; `None` for a fenced segment, whose key must not depend on which
    /// ingester wrote it.
    pub spool_id: Option<&'a str>,
    /// How many times the rule's source changed before the segment's messages were read.
    pub source_changes: u32,
    pub compression: Compression,
    pub format: Format,
    pub layout: KeyLayout,
}

/// The object key of a sealed segment.
pub fn object_key(prefix: &str, topic: &TopicName, name: &SegmentName<'_>) -> String {
    let source = if name.source_changes > 0 {
        format!("-s{}", name.source_changes)
    } else {
        String::new()
    };
    format!(
        "{prefix}{}/{}/{}/{}/{}-{}-{}{}{source}{}",
        topic.tenant,
        topic.namespace,
        topic.topic,
        name.layout.date_path(name.key_time),
        name.rule,
        name.key_time.format("%Y%m%dT%H%M%SZ"),
        name.first_message_id.file_stem(),
        name.spool_id.map(|id| format!("-{id}")).unwrap_or_default(),
        name.format.extension(name.compression),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn completes_short_names_and_splits_full_ones() {
        let t = TopicName::parse("orders").expect("short name");
        assert_eq!(t.full_name(), "persistent://public/default/orders");
        let t = TopicName::parse("persistent://acme/prod/orders").expect("full name");
        assert_eq!((t.tenant.as_str(), t.namespace.as_str()), ("acme", "prod"));
        assert!(TopicName::parse("http://a/b/c").is_err());
        assert!(TopicName::parse("a/b").is_err());
        assert!(TopicName::parse("persistent://a//c").is_err());
        assert!(TopicName::parse("orders-partition-3").is_err());
        assert!(TopicName::parse("persistent://.tdmq-backup/ns/t").is_err());
    }

    #[test]
    fn key_layout_follows_the_contract() {
        let topic = TopicName::parse("persistent://public/default/orders").expect("topic");
        let start = Utc
            .with_ymd_and_hms(2026, 11, 24, 2, 40, 0)
            .single()
            .expect("time");
        let id = MessageId {
            ledger: 12,
            entry: 34,
            partition: -1,
            batch_index: 0,
        };
        let name = SegmentName {
            rule: "orders-bk",
            key_time: start,
            first_message_id: &id,
            spool_id: Some("5f3a9c01"),
            source_changes: 0,
            compression: Compression::Gzip,
            format: Format::Jsonl,
            layout: KeyLayout::Plain,
        };
        assert_eq!(
            object_key("backup/", &topic, &name),
            "backup/public/default/orders/2026/11/24/02/orders-bk-20261124T024000Z-12_34_-1_0-5f3a9c01.jsonl.gz"
        );
        let name = SegmentName {
            rule: "r1",
            compression: Compression::None,
            ..name
        };
        assert_eq!(
            object_key("", &topic, &name),
            "public/default/orders/2026/11/24/02/r1-20261124T024000Z-12_34_-1_0-5f3a9c01.jsonl"
        );
        // A moved rule's first segment starts at the same id as its first one did: another key.
        let moved = SegmentName {
            source_changes: 2,
            ..name
        };
        assert_eq!(
            object_key("", &topic, &moved),
            "public/default/orders/2026/11/24/02/r1-20261124T024000Z-12_34_-1_0-5f3a9c01-s2.jsonl"
        );
        // Hive: the same name, the date as `dt=`/`hour=` folders; zstd ends `.jsonl.zst`.
        let hive = SegmentName {
            layout: KeyLayout::Hive,
            compression: Compression::Zstd,
            ..name
        };
        assert_eq!(
            object_key("backup/", &topic, &hive),
            "backup/public/default/orders/dt=2026-11-24/hour=02/r1-20261124T024000Z-12_34_-1_0-5f3a9c01.jsonl.zst"
        );
        let parquet = SegmentName {
            format: Format::Parquet,
            ..hive
        };
        assert_eq!(
            object_key("backup/", &topic, &parquet),
            "backup/public/default/orders/dt=2026-11-24/hour=02/r1-20261124T024000Z-12_34_-1_0-5f3a9c01.parquet"
        );
        // Fenced: no spool id, so two ingesters holding the same messages name them alike.
        let publish = Utc
            .with_ymd_and_hms(2026, 11, 24, 3, 5, 9)
            .single()
            .expect("time");
        let fenced = SegmentName {
            key_time: publish,
            spool_id: None,
            ..name
        };
        assert_eq!(
            object_key("", &topic, &fenced),
            "public/default/orders/2026/11/24/03/r1-20261124T030509Z-12_34_-1_0.jsonl"
        );
    }
}
