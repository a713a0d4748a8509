//! A job's plan: which objects hold each source partition's messages, in order, and where each
//! partition goes in the target.

use super::*;

pub(super) fn parse_time(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, RestoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| RestoreError::Invalid(format!("--{name} {text:?}: {e}")))
}

pub(super) fn ms_of(t: Option<DateTime<Utc>>) -> Option<u64> {
    t.and_then(|t| u64::try_from(t.timestamp_millis()).ok())
}

/// How many partitions the backed-up topic has (0: not partitioned), as far as the manifest
/// shows.
pub(super) fn source_partitions(entries: &[ManifestEntry]) -> u32 {
    entries
        .iter()
        .flat_map(|e| e.partitions.iter().map(|p| p.partition))
        .max()
        .map_or(0, |max| u32::try_from(max + 1).unwrap_or(0))
}

/// An object of a partition's plan: its order (source, first id of the partition), key and
/// message count.
type PlannedObject = ((u32, (u64, u64, i32)), String, u64);

/// The plan of a job: per selected source partition, the objects holding it, ordered by the
/// partition's first message id (source changes first: ids of different sources are not
/// comparable), and where it goes in the target.
pub(super) fn plan(
    entries: &[&ManifestEntry],
    source_partitions: u32,
    selected: &[i32],
    target_partitions: u32,
) -> Result<Vec<PartPlan>, RestoreError> {
    let mut by_part: BTreeMap<i32, Vec<PlannedObject>> = BTreeMap::new();
    for e in entries {
        if e.partitions.is_empty() {
            return Err(RestoreError::Invalid(format!(
                "manifest entry of {} has no per-partition ranges (stored by an older ingester): \
                 it cannot be planned",
                e.key
            )));
        }
        for p in &e.partitions {
            if !selected.is_empty() && !selected.contains(&p.partition) {
                continue;
            }
            let first = p.first().map_err(|err| {
                RestoreError::Invalid(format!("manifest entry of {}: {err}", e.key))
            })?;
            by_part.entry(p.partition).or_default().push((
                (e.source, first.position()),
                e.key.clone(),
                p.messages,
            ));
        }
    }
    Ok(by_part
        .into_iter()
        .map(|(partition, mut objects)| {
            objects.sort();
            let target_partition = if target_partitions == 0 {
                PLAIN
            } else if partition >= 0 && target_partitions == source_partitions {
                partition
            } else {
                BY_KEY
            };
            PartPlan {
                source_partition: partition,
                target_partition,
                messages: objects.iter().map(|(_, _, n)| n).sum(),
                counts: objects.iter().map(|(_, _, n)| *n).collect(),
                objects: objects.into_iter().map(|(_, key, _)| key).collect(),
                ..PartPlan::default()
            }
        })
        .collect())
}

/// The bucket/prefix form: the manifest entries of `topic` under `prefix`, and the rule whose
/// manifest holds them. The rules are those with a manifest folder under the prefix (one LIST);
/// a backup older than the manifest has none, and is refused rather than planned from the
/// objects' keys, whose shape a later layout may change.
pub(super) async fn entries_of_topic(
    store: &crate::store::Store,
    bucket: &str,
    prefix: &str,
    topic: &str,
) -> Result<(String, Vec<ManifestEntry>), RestoreError> {
    let topic = proto::types::TopicName::parse(topic)
        .map_err(|e| RestoreError::Invalid(format!("--topic {topic:?}: {e}")))?;
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Err(RestoreError::Invalid(format!(
            "--prefix {prefix:?} must end with / (the rule's prefix as it was given)"
        )));
    }
    let manifests = format!("{prefix}{}manifest/", proto::types::manifest::RESERVED_DIR);
    let rules = crate::manifest::rules_in(store, bucket, prefix).await?;
    if rules.is_empty() {
        return Err(RestoreError::Invalid(format!(
            "no tdmq-backup manifest under {bucket}/{manifests}: check --bucket and --prefix; a \
             backup stored before the manifest existed can only be restored with --rule while \
             its rule exists"
        )));
    }
    let mut found = Vec::new();
    for rule in &rules {
        let listing =
            crate::manifest::read_entries(store, bucket, prefix, rule, None, None).await?;
        let of_topic: Vec<ManifestEntry> = listing
            .entries
            .into_iter()
            .filter(|e| e.is_of_topic(prefix, &topic))
            .collect();
        if !of_topic.is_empty() {
            found.push((rule.clone(), of_topic));
        }
    }
    match found.len() {
        0 => Err(RestoreError::Invalid(format!(
            "the manifests under {bucket}/{manifests} (rules {}) list no object of topic {}",
            rules.join(", "),
            topic.full_name()
        ))),
        1 => Ok(found.remove(0)),
        // Two rules of one topic may hold the same messages (and their ids need not be
        // comparable): replaying both would repeat them.
        _ => Err(RestoreError::Invalid(format!(
            "topic {} was backed up by more than one rule under {bucket}/{prefix} ({}); restore \
             one of them with --rule, or give each rule its own prefix",
            topic.full_name(),
            found
                .iter()
                .map(|(rule, _)| rule.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
