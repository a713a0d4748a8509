//! The pure half of `verify`: comparing the manifest with a listing of the bucket, and the
//! message ids of each partition across the objects.
//!
//! What a manifest entry's ranges prove (docs/design.md, "Verify"): within a ledger, entries
//! are numbered densely and a batch's indexes run 0, 1, 2, ... so the message after
//! `L:e:p:b` is `L:e:p:b+1` (same entry, batch not complete) or `L:e+1:p:0|-1`. A new ledger
//! starts at entry 0; whether the previous ledger had entries after the last one stored is only
//! known to the broker, so it cannot be proven here.

use std::collections::{BTreeMap, HashMap};

use proto::types::manifest::ManifestEntry;
use proto::types::MessageId;

use crate::store::ListedObject;

/// What `verify` reports, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An object the rule stored is not there.
    Missing,
    /// Size, checksum, count or content does not match.
    Corrupt,
    /// Message ids of a partition are not continuous.
    Gap,
    /// Two objects hold parts of the same id range.
    Overlap,
    /// The same messages are stored twice.
    Duplicate,
    /// An object under the rule's prefix that it did not write.
    Unexpected,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Corrupt => "corrupt",
            Kind::Gap => "gap",
            Kind::Overlap => "overlap",
            Kind::Duplicate => "duplicate",
            Kind::Unexpected => "unexpected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    /// The object (or manifest document) at fault; for id problems the object after the gap,
    /// or the second of two that hold the same ids.
    pub key: String,
    pub detail: String,
    /// For id problems: the partition and the range of ids at fault.
    pub partition: Option<i32>,
    pub first_id: String,
    pub last_id: String,
}

impl Problem {
    pub fn object(kind: Kind, key: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            key: key.to_string(),
            detail: detail.into(),
            partition: None,
            first_id: String::new(),
            last_id: String::new(),
        }
    }

    fn ids(
        kind: Kind,
        key: &str,
        partition: i32,
        first: &MessageId,
        last: &MessageId,
        detail: String,
    ) -> Problem {
        Problem {
            kind,
            key: key.to_string(),
            detail,
            partition: Some(partition),
            first_id: first.to_string(),
            last_id: last.to_string(),
        }
    }
}

/// ETags as listed and as returned by PUT/HEAD may differ in their quotes only.
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// How an entry's object compares with the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Listed with the recorded size and ETag.
    Intact,
    /// Listed with the recorded size, but the ETag differs or either side has none: HEAD must
    /// tell (the checksum kept in the object's metadata).
    Unsure,
    /// A problem already (missing, or another size).
    Bad(Problem),
}

pub fn presence(entry: &ManifestEntry, listed: Option<&ListedObject>) -> Presence {
    let Some(listed) = listed else {
        return Presence::Bad(Problem::object(
            Kind::Missing,
            &entry.key,
            format!(
                "not in the bucket ({} messages, {} bytes per the manifest)",
                entry.messages, entry.size
            ),
        ));
    };
    if listed.size != entry.size {
        return Presence::Bad(Problem::object(
            Kind::Corrupt,
            &entry.key,
            format!(
                "size {} bytes, the manifest says {} bytes",
                listed.size, entry.size
            ),
        ));
    }
    if !entry.etag.is_empty() && !listed.etag.is_empty() && same_etag(&entry.etag, &listed.etag) {
        Presence::Intact
    } else {
        Presence::Unsure
    }
}

/// The object's metadata CRC32C (`x-amz-meta-content-crc32c`) against the manifest's.
pub fn metadata_checksum(entry: &ManifestEntry, meta_crc32c: Option<&str>) -> Option<Problem> {
    match meta_crc32c {
        Some(crc) if crc.eq_ignore_ascii_case(&entry.crc32c) => None,
        Some(crc) => Some(Problem::object(
            Kind::Corrupt,
            &entry.key,
            format!(
                "rewritten: its CRC32C metadata is {crc}, the manifest says {}",
                entry.crc32c
            ),
        )),
        None => Some(Problem::object(
            Kind::Corrupt,
            &entry.key,
            format!(
                "rewritten: its ETag is not the one stored and it carries no CRC32C metadata (the manifest says {})",
                entry.crc32c
            ),
        )),
    }
}

/// Whether `next` may directly follow `prev` in one partition (see the module docs). `Err`
/// says what is missing.
pub fn follows(
    prev: &MessageId,
    prev_completes_entry: bool,
    next: &MessageId,
) -> Result<(), String> {
    if !prev_completes_entry {
        if next.ledger == prev.ledger
            && next.entry == prev.entry
            && next.batch_index == prev.batch_index + 1
        {
            return Ok(());
        }
        return Err(format!(
            "the rest of the batch of entry {}:{} after batch index {}",
            prev.ledger, prev.entry, prev.batch_index
        ));
    }
    let starts_entry = next.batch_index <= 0;
    if next.ledger == prev.ledger {
        if next.entry == prev.entry + 1 && starts_entry {
            return Ok(());
        }
        if next.entry == prev.entry
            && next.batch_index == prev.batch_index + 1
            && prev.batch_index >= 0
        {
            // A batched record the ingester counted as its entry's last (no batch size known).
            return Ok(());
        }
        if next.entry > prev.entry + 1 {
            return Err(format!(
                "entries {}:{}..{}:{}",
                prev.ledger,
                prev.entry + 1,
                next.ledger,
                next.entry - 1
            ));
        }
        return Err(format!("the messages between {prev} and {next}"));
    }
    if next.ledger > prev.ledger {
        if next.entry == 0 && starts_entry {
            return Ok(());
        }
        return Err(format!(
            "entries {}:0..{}:{} at the start of ledger {}",
            next.ledger,
            next.ledger,
            next.entry.saturating_sub(1),
            next.ledger
        ));
    }
    Err(format!("ids go back from {prev} to {next}"))
}

/// Gaps, overlaps and duplicates across `entries`, per source and partition; plus entries whose
/// partition counts do not add up.
pub fn continuity(entries: &[ManifestEntry]) -> Vec<Problem> {
    struct Span<'a> {
        key: &'a str,
        first: MessageId,
        last: MessageId,
        completes: bool,
        messages: u64,
    }
    let mut problems = Vec::new();
    let mut by_partition: BTreeMap<(u32, i32), Vec<Span<'_>>> = BTreeMap::new();
    for entry in entries {
        let counted: u64 = entry.partitions.iter().map(|p| p.messages).sum();
        if !entry.partitions.is_empty() && counted != entry.messages {
            problems.push(Problem::object(
                Kind::Corrupt,
                &entry.key,
                format!(
                    "the manifest entry counts {} messages but its partitions {counted}",
                    entry.messages
                ),
            ));
        }
        for span in &entry.partitions {
            match (span.first(), span.last()) {
                (Ok(first), Ok(last)) if !first.is_after(&last) => {
                    by_partition
                        .entry((entry.source, span.partition))
                        .or_default()
                        .push(Span {
                            key: &entry.key,
                            first,
                            last,
                            completes: span.last_completes_entry,
                            messages: span.messages,
                        });
                }
                _ => problems.push(Problem::object(
                    Kind::Corrupt,
                    &entry.key,
                    format!(
                        "the manifest entry's range {}..{} of partition {} is not a range of ids",
                        span.first_message_id, span.last_message_id, span.partition
                    ),
                )),
            }
        }
    }
    for ((_, partition), mut spans) in by_partition {
        spans.sort_by(|a, b| {
            (a.first.position(), a.last.position()).cmp(&(b.first.position(), b.last.position()))
        });
        // Within an object: a ledger's entries are dense, so an object spanning entries a..b of
        // one ledger holds at least b-a+1 messages, exactly that many when none is batched.
        for s in &spans {
            if s.first.ledger == s.last.ledger {
                let entries = s.last.entry - s.first.entry + 1;
                let unbatched = s.first.batch_index < 0 && s.last.batch_index < 0;
                if s.messages < entries || (unbatched && s.messages > entries) {
                    let kind = if s.messages < entries {
                        Kind::Gap
                    } else {
                        Kind::Duplicate
                    };
                    problems.push(Problem::ids(
                        kind,
                        s.key,
                        partition,
                        &s.first,
                        &s.last,
                        format!(
                            "partition {partition}: the object holds {} messages for the {entries} entries {}..{}",
                            s.messages, s.first, s.last
                        ),
                    ));
                }
            }
        }
        // The furthest id stored so far, and where.
        let mut reach: Option<(MessageId, bool, &str)> = None;
        let mut seen: HashMap<(MessageId, MessageId), &str> = HashMap::new();
        for s in &spans {
            if let Some(other) = seen.get(&(s.first, s.last)) {
                problems.push(Problem::ids(
                    Kind::Duplicate,
                    s.key,
                    partition,
                    &s.first,
                    &s.last,
                    format!(
                        "partition {partition}: ids {}..{} are stored in {other} too",
                        s.first, s.last
                    ),
                ));
                continue;
            }
            seen.insert((s.first, s.last), s.key);
            match reach {
                None => reach = Some((s.last, s.completes, s.key)),
                Some((last, completes, key)) => {
                    if !s.first.is_after(&last) {
                        let end = if s.last.is_after(&last) { last } else { s.last };
                        problems.push(Problem::ids(
                            Kind::Overlap,
                            s.key,
                            partition,
                            &s.first,
                            &end,
                            format!(
                                "partition {partition}: ids {}..{end} are also in {key}",
                                s.first
                            ),
                        ));
                        if s.last.is_after(&last) {
                            reach = Some((s.last, s.completes, s.key));
                        }
                        continue;
                    }
                    if let Err(missing) = follows(&last, completes, &s.first) {
                        problems.push(Problem::ids(
                            Kind::Gap,
                            s.key,
                            partition,
                            &last,
                            &s.first,
                            format!(
                                "partition {partition}: nothing stored between {last} (end of {key}) and {} (start of this object): {missing}",
                                s.first
                            ),
                        ));
                    }
                    reach = Some((s.last, s.completes, s.key));
                }
            }
        }
    }
    problems
}

/// Objects under the rule's topic folder that no entry names. `others` are the name prefixes
/// (`{rule}-`) of the other rules writing to the same folder: their objects are theirs.
pub fn unexpected<'a>(
    listed: &'a [ListedObject],
    known: &std::collections::HashSet<&str>,
    others: &[String],
) -> Vec<&'a ListedObject> {
    listed
        .iter()
        .filter(|o| !known.contains(o.key.as_str()))
        .filter(|o| {
            let name = o.key.rsplit('/').next().unwrap_or(&o.key);
            !others.iter().any(|p| name.starts_with(p.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::types::manifest::{PartitionSpan, FORMAT};

    fn id(text: &str) -> MessageId {
        text.parse().expect("id")
    }

    fn entry(key: &str, spans: &[(i32, &str, &str, u64, bool)]) -> ManifestEntry {
        ManifestEntry {
            format: FORMAT,
            rule: "r".into(),
            key: key.into(),
            size: 10,
            crc32c: "0a0b0c0d".into(),
            etag: "\"e1\"".into(),
            content_encoding: "gzip".into(),
            messages: spans.iter().map(|s| s.3).sum(),
            record_bytes: 100,
            window_start: String::new(),
            min_publish_time: String::new(),
            max_publish_time: String::new(),
            source: 0,
            segment_no: 0,
            topic: String::new(),
            partitions: spans
                .iter()
                .map(
                    |&(partition, first, last, messages, complete)| PartitionSpan {
                        partition,
                        first_message_id: first.into(),
                        last_message_id: last.into(),
                        messages,
                        last_completes_entry: complete,
                        min_publish_time: String::new(),
                        max_publish_time: String::new(),
                    },
                )
                .collect(),
        }
    }

    fn kinds(problems: &[Problem]) -> Vec<(Kind, &str)> {
        problems.iter().map(|p| (p.kind, p.key.as_str())).collect()
    }

    #[test]
    fn successors_within_and_across_entries_and_ledgers() {
        assert!(follows(&id("1:4:-1:-1"), true, &id("1:5:-1:-1")).is_ok());
        assert!(follows(&id("1:4:0:2"), true, &id("1:5:0:0")).is_ok());
        assert!(follows(&id("1:4:0:2"), false, &id("1:4:0:3")).is_ok());
        assert!(follows(&id("1:4:0:2"), false, &id("1:5:0:0")).is_err());
        assert!(follows(&id("1:4:-1:-1"), true, &id("1:6:-1:-1")).is_err());
        assert!(follows(&id("1:4:-1:-1"), true, &id("7:0:-1:-1")).is_ok());
        assert!(follows(&id("1:4:-1:-1"), true, &id("7:3:-1:-1")).is_err());
        assert!(follows(&id("7:4:-1:-1"), true, &id("1:0:-1:-1")).is_err());
        let gap = follows(&id("1:4:-1:-1"), true, &id("1:9:-1:-1")).expect_err("gap");
        assert_eq!(gap, "entries 1:5..1:8");
    }

    #[test]
    fn continuous_objects_pass_in_any_order() {
        let entries = [
            entry(
                "b",
                &[
                    (0, "3:10:0:-1", "3:19:0:-1", 10, true),
                    (1, "3:5:1:0", "3:6:1:1", 3, false),
                ],
            ),
            entry(
                "a",
                &[
                    (0, "3:0:0:-1", "3:9:0:-1", 10, true),
                    (1, "3:0:1:-1", "3:4:1:-1", 5, true),
                ],
            ),
            entry("c", &[(1, "3:6:1:2", "3:6:1:4", 3, true)]),
            entry("d", &[(1, "9:0:1:-1", "9:0:1:-1", 1, true)]),
        ];
        assert_eq!(continuity(&entries), vec![]);
    }

    #[test]
    fn gaps_overlaps_and_duplicates_name_the_keys_and_ranges() {
        let entries = [
            entry("a", &[(0, "3:0:0:-1", "3:9:0:-1", 10, true)]),
            // entries 10..11 missing
            entry("b", &[(0, "3:12:0:-1", "3:19:0:-1", 8, true)]),
            // 18..19 stored again
            entry("c", &[(0, "3:18:0:-1", "3:25:0:-1", 8, true)]),
            // all of b again
            entry("d", &[(0, "3:12:0:-1", "3:19:0:-1", 8, true)]),
        ];
        let problems = continuity(&entries);
        assert_eq!(
            kinds(&problems),
            vec![
                (Kind::Gap, "b"),
                (Kind::Duplicate, "d"),
                (Kind::Overlap, "c")
            ]
        );
        assert_eq!(
            (problems[0].first_id.as_str(), problems[0].last_id.as_str()),
            ("3:9:0:-1", "3:12:0:-1")
        );
        assert!(
            problems[0].detail.contains("entries 3:10..3:11"),
            "{}",
            problems[0].detail
        );
        assert_eq!(problems[2].last_id, "3:19:0:-1");
    }

    #[test]
    fn an_object_with_fewer_messages_than_its_entries_has_a_gap_inside() {
        let problems = continuity(&[entry("a", &[(0, "3:0:0:-1", "3:9:0:-1", 8, true)])]);
        assert_eq!(kinds(&problems), vec![(Kind::Gap, "a")]);
        // Batched entries hold more than one message each: more messages is fine.
        assert_eq!(
            continuity(&[entry("a", &[(0, "3:0:0:0", "3:9:0:4", 50, true)])]),
            vec![]
        );
    }

    #[test]
    fn sources_are_checked_apart_and_counts_must_add_up() {
        let mut moved = entry("b", &[(0, "1:0:0:-1", "1:9:0:-1", 10, true)]);
        moved.source = 1;
        let mut bad = entry("c", &[(0, "5:0:0:-1", "5:0:0:-1", 1, true)]);
        bad.source = 2;
        bad.messages = 3;
        let problems = continuity(&[
            entry("a", &[(0, "3:0:0:-1", "3:9:0:-1", 10, true)]),
            moved,
            bad,
        ]);
        assert_eq!(kinds(&problems), vec![(Kind::Corrupt, "c")]);
    }

    #[test]
    fn listing_against_the_manifest() {
        let e = entry("k", &[]);
        let listed = |size, etag: &str| ListedObject {
            key: "k".into(),
            size,
            etag: etag.into(),
        };
        assert_eq!(presence(&e, Some(&listed(10, "e1"))), Presence::Intact);
        assert_eq!(presence(&e, Some(&listed(10, "\"e2\""))), Presence::Unsure);
        assert_eq!(presence(&e, Some(&listed(10, ""))), Presence::Unsure);
        assert!(
            matches!(presence(&e, Some(&listed(9, "\"e1\""))), Presence::Bad(p) if p.kind == Kind::Corrupt)
        );
        assert!(matches!(presence(&e, None), Presence::Bad(p) if p.kind == Kind::Missing));
        assert_eq!(metadata_checksum(&e, Some("0A0B0C0D")), None);
        assert!(metadata_checksum(&e, Some("ffffffff")).is_some());
        assert!(metadata_checksum(&e, None).is_some());
    }

    #[test]
    fn unexpected_skips_known_keys_and_other_rules_objects() {
        let o = |key: &str| ListedObject {
            key: key.into(),
            size: 1,
            etag: String::new(),
        };
        let listed = [
            o("p/t/2026/r-1.jsonl.gz"),
            o("p/t/2026/r-2.jsonl.gz"),
            o("p/t/2026/other-1.jsonl.gz"),
            o("p/t/stray.txt"),
        ];
        let known: std::collections::HashSet<&str> =
            ["p/t/2026/r-1.jsonl.gz"].into_iter().collect();
        let found = unexpected(&listed, &known, &["other-".to_string()]);
        let keys: Vec<&str> = found.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["p/t/2026/r-2.jsonl.gz", "p/t/stray.txt"]);
    }
}
