//! Where a segment's files live in the ingester's data directory, and what they are called.
//! The ingester writes them; the uploader, on the same host, reads sealed files straight from
//! there and checks a path it is handed against this layout. Names only: no IO here.
//!
//! ```text
//! {data_dir}/segments/{rule}/{segment_no:020}.log              the record log (spool)
//! {data_dir}/segments/{rule}/{segment_no:020}.jsonl[.gz|.zst]  the sealed file (JSON Lines)
//! {data_dir}/segments/{rule}/{segment_no:020}.parquet          the sealed file (Parquet)
//! {data_dir}/segments/{rule}/{segment_no:020}.preseal.tmp      compressed ahead of the seal
//! {data_dir}/segments/{rule}/{segment_no:020}.seal.{n}.tmp     one seal attempt's file
//! {data_dir}/quarantine/{rule}/…                               damaged sealed files set aside
//! ```

use std::path::{Path, PathBuf};

/// The folder of every rule's segment files, under the data directory.
pub const SEGMENTS_DIR: &str = "segments";
/// The folder of damaged sealed files, under the data directory.
pub const QUARANTINE_DIR: &str = "quarantine";
const LOG_EXTENSION: &str = "log";
const TEMPORARY_EXTENSION: &str = "tmp";
/// Segment numbers are written with 20 digits, so file names sort in segment order.
const NUMBER_DIGITS: usize = 20;

/// `{data_dir}/segments/{rule}`.
pub fn segments_dir(data_dir: &Path, rule: &str) -> PathBuf {
    data_dir.join(SEGMENTS_DIR).join(rule)
}

/// `{data_dir}/quarantine/{rule}`.
pub fn quarantine_dir(data_dir: &Path, rule: &str) -> PathBuf {
    data_dir.join(QUARANTINE_DIR).join(rule)
}

/// The record log's name.
pub fn log_name(segment_no: u64) -> String {
    format!("{segment_no:020}.{LOG_EXTENSION}")
}

/// The sealed file's name (what the uploader reads and checks), ending in its object's
/// `extension` (`Format::extension`).
pub fn sealed_name(segment_no: u64, extension: &str) -> String {
    format!("{segment_no:020}{extension}")
}

/// The file a segment is compressed into ahead of its seal.
pub fn preseal_name(segment_no: u64) -> String {
    format!("{segment_no:020}.preseal.{TEMPORARY_EXTENSION}")
}

/// The file seal attempt `attempt` writes before renaming it to [`sealed_name`].
pub fn seal_attempt_name(segment_no: u64, attempt: u64) -> String {
    format!("{segment_no:020}.seal.{attempt}.{TEMPORARY_EXTENSION}")
}

/// The segment a file in a rule's folder belongs to, and whether it is temporary; `None` for a
/// name that is none of the above.
pub fn parse_name(file_name: &str) -> Option<(u64, bool)> {
    let digits = file_name.split('.').next()?;
    if digits.len() != NUMBER_DIGITS {
        return None;
    }
    let segment_no = digits.parse::<u64>().ok()?;
    let temporary =
        Path::new(file_name).extension().and_then(|e| e.to_str()) == Some(TEMPORARY_EXTENSION);
    Some((segment_no, temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_segment() {
        let n = 42;
        assert_eq!(parse_name(&log_name(n)), Some((n, false)));
        for extension in [".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet"] {
            assert_eq!(parse_name(&sealed_name(n, extension)), Some((n, false)));
        }
        assert_eq!(parse_name(&preseal_name(n)), Some((n, true)));
        assert_eq!(parse_name(&seal_attempt_name(n, 7)), Some((n, true)));
        assert_eq!(sealed_name(3, ".jsonl.gz"), "00000000000000000003.jsonl.gz");
        assert_eq!(parse_name("notes.txt"), None);
        assert_eq!(parse_name("42.log"), None, "too few digits");
    }

    #[test]
    fn folders_are_per_rule_under_the_data_dir() {
        let data = Path::new("/var/lib/tdmq-backup/ingester");
        assert_eq!(
            segments_dir(data, "orders"),
            Path::new("/var/lib/tdmq-backup/ingester/segments/orders")
        );
        assert_eq!(
            quarantine_dir(data, "orders"),
            Path::new("/var/lib/tdmq-backup/ingester/quarantine/orders")
        );
    }
}
