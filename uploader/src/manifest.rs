//! The backup manifest in the bucket (layout and format: [`proto::types::manifest`]): the entry
//! written for each stored object before its segment is committed, and the reader `verify` and
//! `restore` plan from.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use proto::types::manifest::{self, ManifestEntry, ManifestKey, ManifestRollup, PartitionSpan};
use proto::v1::SegmentInfo;

use crate::error::UploadError;
use crate::store::{ListedObject, PutRequest, Store};

/// Manifest documents above this are damage, not a manifest (an entry is ~1 KB plus ~250
/// bytes per partition; a rollup holds an hour's entries).
const MAX_DOCUMENT: usize = 256 << 20;
/// Manifest documents read at once.
const READ_CONCURRENCY: usize = 16;

/// The entry describing `seg`'s object, stored with `etag`.
pub fn entry_of(seg: &SegmentInfo, etag: &str) -> ManifestEntry {
    ManifestEntry {
        format: manifest::FORMAT,
        rule: seg.rule.clone(),
        key: seg.object_key.clone(),
        size: seg.file_bytes,
        crc32c: seg.content_crc32c.to_ascii_lowercase(),
        etag: etag.to_string(),
        content_encoding: seg.content_encoding.clone(),
        messages: seg.messages,
        record_bytes: seg.record_bytes,
        window_start: seg.window_start.clone(),
        min_publish_time: seg.min_publish_time.clone(),
        max_publish_time: seg.max_publish_time.clone(),
        source: seg.source_changes,
        segment_no: seg.segment_no,
        topic: seg.topic.clone(),
        partitions: seg
            .partitions
            .iter()
            .map(|p| PartitionSpan {
                partition: p.partition,
                first_message_id: p.first_message_id.clone(),
                last_message_id: p.last_message_id.clone(),
                messages: p.messages,
                last_completes_entry: p.last_completes_entry,
                min_publish_time: p.min_publish_time.clone(),
                max_publish_time: p.max_publish_time.clone(),
            })
            .collect(),
    }
}

/// Where `seg`'s entry goes.
pub fn entry_key_of(seg: &SegmentInfo) -> Result<String, UploadError> {
    let window_start = DateTime::parse_from_rfc3339(&seg.window_start)
        .map_err(|e| UploadError::Segment(format!("window start {:?}: {e}", seg.window_start)))?
        .with_timezone(&Utc);
    Ok(manifest::entry_key(
        &prefix_of(seg),
        &seg.rule,
        window_start,
        &seg.object_key,
    ))
}

/// The rule's prefix. An ingester older than the manifest sends neither prefix nor topic; its
/// keys are all `{prefix}{tenant}/{namespace}/{topic}/YYYY/MM/DD/HH/{name}`, so the prefix is
/// what precedes the last eight parts.
fn prefix_of(seg: &SegmentInfo) -> String {
    if !seg.topic.is_empty() {
        return seg.prefix.clone();
    }
    let parts: Vec<&str> = seg.object_key.split('/').collect();
    match parts.len().checked_sub(8) {
        Some(n) if n > 0 => format!("{}/", parts[..n].join("/")),
        _ => String::new(),
    }
}

/// Writes `seg`'s entry (its object is stored, with `etag`). Called before the segment is
/// committed: whatever Pulsar has acknowledged has its entry. The key and the content depend
/// only on the segment and its object, so a retry rewrites the very same entry.
pub async fn write_entry(store: &Store, seg: &SegmentInfo, etag: &str) -> Result<(), UploadError> {
    let key = entry_key_of(seg)?;
    let body = serde_json::to_vec(&entry_of(seg, etag)).map_err(|e| UploadError::Store {
        op: "writing the manifest entry",
        message: e.to_string(),
    })?;
    put_document(store, &seg.bucket, &key, body).await
}

async fn put_document(
    store: &Store,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<(), UploadError> {
    let request = PutRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        metadata: Vec::new(),
        content_type: "application/json".into(),
        total_len: body.len() as u64,
        if_absent: false,
    };
    let body = futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed();
    store.put_object(&request, body).await.map(|_| ())
}

/// Writes the rollup of an hour: every entry of `entries` (which must all be of that hour), in
/// one document. Per-object entries it holds may be deleted once it is stored.
pub async fn write_rollup(
    store: &Store,
    bucket: &str,
    prefix: &str,
    rule: &str,
    hour: DateTime<Utc>,
    entries: Vec<ManifestEntry>,
) -> Result<(), UploadError> {
    let hour = manifest::hour_of(hour);
    let rollup = ManifestRollup {
        format: manifest::FORMAT,
        rule: rule.to_string(),
        hour: proto::types::time::rfc3339_ms(hour),
        entries: manifest::merge_entries(entries),
    };
    let body = serde_json::to_vec(&rollup).map_err(|e| UploadError::Store {
        op: "writing the manifest rollup",
        message: e.to_string(),
    })?;
    put_document(
        store,
        bucket,
        &manifest::rollup_key(prefix, rule, hour),
        body,
    )
    .await
}

/// The hours of a rule that can no longer change: those before the hour of the oldest window
/// among its segments not yet stored (open, sealing or sealed: their entries are still to come),
/// and before the previous hour (a margin for the clocks of the two hosts).
pub fn final_before(unfinished_windows: &[DateTime<Utc>], now: DateTime<Utc>) -> DateTime<Utc> {
    let margin = manifest::hour_of(now - chrono::Duration::hours(1));
    unfinished_windows
        .iter()
        .map(|t| manifest::hour_of(*t))
        .min()
        .map_or(margin, |oldest| oldest.min(margin))
}

/// Writes the rollup of every hour before `before` whose per-object entries a rollup does not
/// hold yet (one LIST, then a GET per entry of those hours). The per-object entries stay: readers
/// skip the ones a rollup holds, so planning costs a GET per hour, and the uploader needs no
/// permission to delete. An hour with a document that cannot be read is left as it is. Returns
/// how many rollups were written.
pub async fn roll_up(
    store: &Store,
    bucket: &str,
    prefix: &str,
    rule: &str,
    before: DateTime<Utc>,
) -> Result<usize, UploadError> {
    let rule_prefix = manifest::rule_prefix(prefix, rule);
    let files = store.list_objects(bucket, &rule_prefix).await?;
    let mut hours: std::collections::BTreeMap<DateTime<Utc>, (Option<String>, Vec<String>)> =
        std::collections::BTreeMap::new();
    for file in files {
        match manifest::parse_key(&rule_prefix, &file.key) {
            Some(ManifestKey::Rollup { hour }) if hour < before => {
                hours.entry(hour).or_default().0 = Some(file.key);
            }
            Some(ManifestKey::Entry { hour }) if hour < before => {
                hours.entry(hour).or_default().1.push(file.key);
            }
            _ => {}
        }
    }
    let mut written = 0;
    for (hour, (rollup_key, entry_keys)) in hours {
        let mut entries = Vec::new();
        if let Some(key) = rollup_key {
            let doc = read_documents(store, bucket, vec![key.clone()]).await?;
            match doc.into_iter().next().map(|(_, d)| {
                d.and_then(|b| {
                    serde_json::from_slice::<ManifestRollup>(&b).map_err(|e| e.to_string())
                })
            }) {
                Some(Ok(rollup)) => entries = rollup.entries,
                _ => {
                    tracing::warn!(%key, "manifest rollup cannot be read; leaving its hour as it is");
                    continue;
                }
            }
        }
        let folder = manifest::hour_prefix(prefix, rule, hour);
        let held: std::collections::HashSet<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{folder}{}.json",
                    e.key.rsplit('/').next().unwrap_or(&e.key)
                )
            })
            .collect();
        let missing: Vec<String> = entry_keys
            .into_iter()
            .filter(|k| !held.contains(k))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let mut readable = true;
        for (key, doc) in read_documents(store, bucket, missing).await? {
            match doc.and_then(|b| {
                serde_json::from_slice::<ManifestEntry>(&b).map_err(|e| e.to_string())
            }) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    tracing::warn!(%key, %error, "manifest entry cannot be read; not rolling its hour up");
                    readable = false;
                }
            }
        }
        if !readable {
            continue;
        }
        write_rollup(store, bucket, prefix, rule, hour, entries).await?;
        written += 1;
    }
    Ok(written)
}

/// A manifest document that could not be read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    pub key: String,
    pub error: String,
}

/// What the manifest holds for a rule.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// One per object key, ordered by key.
    pub entries: Vec<ManifestEntry>,
    /// Documents under the rule's manifest folder that are not valid manifest documents.
    pub damaged: Vec<Damaged>,
    /// Every key under the rule's manifest folder (what the listing found).
    pub files: Vec<ListedObject>,
    /// LIST and GET requests made.
    pub requests: u64,
}

/// The entries of `rule` (objects stored under `prefix` in `bucket`) holding messages published
/// in `[from, to]` (either end open): one LIST of the rule's manifest folder, one GET per
/// rollup, one GET per entry no rollup holds.
pub async fn read_entries(
    store: &Store,
    bucket: &str,
    prefix: &str,
    rule: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Listing, UploadError> {
    let rule_prefix = manifest::rule_prefix(prefix, rule);
    let files = store.list_objects(bucket, &rule_prefix).await?;
    let mut listing = Listing {
        requests: 1 + files.len() as u64 / 1000,
        ..Listing::default()
    };
    let mut rollups = Vec::new();
    let mut singles = Vec::new();
    for file in &files {
        match manifest::parse_key(&rule_prefix, &file.key) {
            Some(ManifestKey::Rollup { .. }) => rollups.push(file.key.clone()),
            Some(ManifestKey::Entry { .. }) => singles.push(file.key.clone()),
            None => listing.damaged.push(Damaged {
                key: file.key.clone(),
                error: "not a manifest document name".into(),
            }),
        }
    }

    let mut entries = Vec::new();
    // Names (`{hour folder}{object name}.json`) of the entries the rollups already hold.
    let mut covered = std::collections::HashSet::new();
    let read = read_documents(store, bucket, rollups).await?;
    listing.requests += read.len() as u64;
    for (key, doc) in read {
        match doc.and_then(|bytes| {
            serde_json::from_slice::<ManifestRollup>(&bytes).map_err(|e| e.to_string())
        }) {
            Ok(rollup) => {
                let folder = key.trim_end_matches(manifest::ROLLUP_NAME).to_string();
                for entry in rollup.entries {
                    let name = entry.key.rsplit('/').next().unwrap_or(&entry.key);
                    covered.insert(format!("{folder}{name}.json"));
                    entries.push(entry);
                }
            }
            Err(error) => listing.damaged.push(Damaged { key, error }),
        }
    }
    singles.retain(|key| !covered.contains(key));
    let read = read_documents(store, bucket, singles).await?;
    listing.requests += read.len() as u64;
    for (key, doc) in read {
        match doc.and_then(|bytes| {
            serde_json::from_slice::<ManifestEntry>(&bytes).map_err(|e| e.to_string())
        }) {
            Ok(entry) => entries.push(entry),
            Err(error) => listing.damaged.push(Damaged { key, error }),
        }
    }
    listing.entries = manifest::merge_entries(entries)
        .into_iter()
        .filter(|e| e.published_within(from, to))
        .collect();
    listing.files = files;
    Ok(listing)
}

/// The rules with a manifest under `prefix` in `bucket` (for reading a backup whose rule is
/// gone: then [`read_entries`] for each, or those of one topic). One LIST of the manifest folder.
pub async fn rules_in(
    store: &Store,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, UploadError> {
    let root = format!("{prefix}{}manifest/", manifest::RESERVED_DIR);
    let mut rules: Vec<String> = store
        .list_objects(bucket, &root)
        .await?
        .iter()
        .filter_map(|o| {
            o.key
                .strip_prefix(&root)?
                .split_once('/')
                .map(|(rule, _)| rule.to_string())
        })
        .collect();
    rules.dedup();
    Ok(rules)
}

/// GETs `keys`, a few at once; a document that vanished or cannot be read is an `Err` text
/// next to its key, a store that cannot be reached fails the whole read.
async fn read_documents(
    store: &Store,
    bucket: &str,
    keys: Vec<String>,
) -> Result<Vec<(String, Result<Bytes, String>)>, UploadError> {
    futures::stream::iter(keys)
        .map(|key| async move {
            match store.get_small_object(bucket, &key, MAX_DOCUMENT).await {
                Ok(Some(bytes)) => Ok((key, Ok(bytes))),
                // Listed a moment ago: deleted meanwhile (a rollup replaced it).
                Ok(None) => Ok((key, Err("deleted while being read".to_string()))),
                Err(err @ UploadError::StoreUnreachable { .. }) => Err(err),
                Err(err) => Ok((key, Err(err.to_string()))),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileStore;

    fn segment(no: u64, window_start: &str) -> SegmentInfo {
        SegmentInfo {
            rule: "r".into(),
            segment_no: no,
            window_start: window_start.into(),
            messages: 2,
            record_bytes: 100,
            file_bytes: 50,
            first_message_id: format!("1:{}:-1:-1", no * 2),
            last_message_id: format!("1:{}:-1:-1", no * 2 + 1),
            content_crc32c: "0A0B0C0D".into(),
            object_key: format!(
                "p/public/default/t/2026/11/24/02/r-x-1_{}_-1_-1-ab.jsonl.gz",
                no * 2
            ),
            bucket: "b".into(),
            content_encoding: "gzip".into(),
            min_publish_time: "2026-11-24T02:40:00.000Z".into(),
            max_publish_time: "2026-11-24T02:41:00.000Z".into(),
            prefix: "p/".into(),
            topic: "persistent://public/default/t".into(),
            partitions: vec![proto::v1::PartitionSpan {
                partition: -1,
                first_message_id: format!("1:{}:-1:-1", no * 2),
                last_message_id: format!("1:{}:-1:-1", no * 2 + 1),
                messages: 2,
                last_completes_entry: true,
                min_publish_time: "2026-11-24T02:40:00.000Z".into(),
                max_publish_time: "2026-11-24T02:41:00.000Z".into(),
            }],
            ..SegmentInfo::default()
        }
    }

    #[tokio::test]
    async fn entries_and_rollups_read_back_merged_once_per_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::File(FileStore::new(dir.path()));
        let segs = [
            segment(0, "2026-11-24T02:40:00.000Z"),
            segment(1, "2026-11-24T02:45:00.000Z"),
            segment(2, "2026-11-24T03:00:00.000Z"),
        ];
        for seg in &segs {
            write_entry(&store, seg, "\"e\"").await.expect("entry");
            // A retry rewrites the same entry.
            write_entry(&store, seg, "\"e\"")
                .await
                .expect("entry again");
        }
        let listing = read_entries(&store, "b", "p/", "r", None, None)
            .await
            .expect("read");
        assert_eq!(listing.entries.len(), 3);
        assert!(listing.damaged.is_empty());
        assert_eq!(listing.entries[0].crc32c, "0a0b0c0d");
        assert_eq!(listing.entries[0].partitions[0].messages, 2);

        // The 02:00 hour rolled up; one of its entries is still there (a crash before the
        // delete), the other gone: still one entry per object, and that entry is not read.
        let hour = DateTime::parse_from_rfc3339("2026-11-24T02:00:00Z")
            .expect("hour")
            .with_timezone(&Utc);
        let rolled: Vec<_> = segs[..2].iter().map(|s| entry_of(s, "\"e\"")).collect();
        write_rollup(&store, "b", "p/", "r", hour, rolled)
            .await
            .expect("rollup");
        store
            .delete_object("b", &entry_key_of(&segs[1]).expect("key"))
            .await
            .expect("delete");
        let listing = read_entries(&store, "b", "p/", "r", None, None)
            .await
            .expect("read");
        assert_eq!(listing.entries.len(), 3);
        // LIST, the rollup, the 03:00 entry: the 02:40 entry the rollup covers is not read.
        assert_eq!(listing.requests, 3);

        // Selection by publish time; another rule sees nothing.
        let at = |s: &str| {
            Some(
                DateTime::parse_from_rfc3339(s)
                    .expect("t")
                    .with_timezone(&Utc),
            )
        };
        let none = read_entries(&store, "b", "p/", "r", at("2026-11-24T02:42:00Z"), None)
            .await
            .expect("read");
        assert!(none.entries.is_empty());
        assert_eq!(
            rules_in(&store, "b", "p/").await.expect("rules"),
            vec!["r".to_string()]
        );
        let other = read_entries(&store, "b", "p/", "r2", None, None)
            .await
            .expect("read");
        assert!(other.entries.is_empty() && other.files.is_empty());
    }

    #[test]
    fn an_hour_is_final_once_nothing_of_it_can_still_be_stored() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("t")
                .with_timezone(&Utc)
        };
        let now = t("2026-11-24T05:20:00Z");
        assert_eq!(final_before(&[], now), t("2026-11-24T04:00:00Z"));
        assert_eq!(
            final_before(&[t("2026-11-24T02:40:00Z"), t("2026-11-24T05:00:00Z")], now),
            t("2026-11-24T02:00:00Z")
        );
        assert_eq!(
            final_before(&[t("2026-11-24T05:10:00Z")], now),
            t("2026-11-24T04:00:00Z")
        );
    }

    #[tokio::test]
    async fn final_hours_are_rolled_up_once_and_read_back_with_one_get_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::File(FileStore::new(dir.path()));
        let segs = [
            segment(0, "2026-11-24T02:40:00.000Z"),
            segment(1, "2026-11-24T02:45:00.000Z"),
            segment(2, "2026-11-24T03:00:00.000Z"),
        ];
        for seg in &segs {
            write_entry(&store, seg, "\"e\"").await.expect("entry");
        }
        let before = DateTime::parse_from_rfc3339("2026-11-24T03:00:00Z")
            .expect("t")
            .with_timezone(&Utc);
        assert_eq!(
            roll_up(&store, "b", "p/", "r", before)
                .await
                .expect("roll up"),
            1
        );
        // Nothing new in the hour: not written again.
        assert_eq!(
            roll_up(&store, "b", "p/", "r", before)
                .await
                .expect("roll up"),
            0
        );
        let listing = read_entries(&store, "b", "p/", "r", None, None)
            .await
            .expect("read");
        assert_eq!(listing.entries.len(), 3);
        // LIST, the 02:00 rollup, the 03:00 entry.
        assert_eq!(listing.requests, 3);
        // A late entry in a rolled-up hour (a retry) joins the rollup next time.
        write_entry(&store, &segment(3, "2026-11-24T02:50:00.000Z"), "\"e\"")
            .await
            .expect("entry");
        assert_eq!(
            roll_up(&store, "b", "p/", "r", before)
                .await
                .expect("roll up"),
            1
        );
        let listing = read_entries(&store, "b", "p/", "r", None, None)
            .await
            .expect("read");
        assert_eq!((listing.entries.len(), listing.requests), (4, 3));
    }

    #[test]
    fn an_older_ingesters_segment_gets_its_prefix_from_the_key() {
        let mut seg = segment(0, "2026-11-24T02:40:00.000Z");
        seg.topic.clear();
        seg.prefix.clear();
        assert!(entry_key_of(&seg)
            .expect("key")
            .starts_with("p/.tdmq-backup/manifest/r/2026/11/24/02/"));
        seg.object_key = "public/default/t/2026/11/24/02/r-x.jsonl.gz".into();
        assert!(entry_key_of(&seg)
            .expect("key")
            .starts_with(".tdmq-backup/manifest/r/"));
        seg.object_key = "a/b/public/default/t/2026/11/24/02/r-x.jsonl.gz".into();
        assert!(entry_key_of(&seg)
            .expect("key")
            .starts_with("a/b/.tdmq-backup/"));
    }

    #[tokio::test]
    async fn a_damaged_document_is_named_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::File(FileStore::new(dir.path()));
        let seg = segment(0, "2026-11-24T02:40:00.000Z");
        write_entry(&store, &seg, "\"e\"").await.expect("entry");
        let key = entry_key_of(&segment(1, "2026-11-24T02:40:00.000Z")).expect("key");
        put_document(&store, "b", &key, b"{not json".to_vec())
            .await
            .expect("put");
        let listing = read_entries(&store, "b", "p/", "r", None, None)
            .await
            .expect("read");
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(listing.damaged.len(), 1);
        assert_eq!(listing.damaged[0].key, key);
    }
}
