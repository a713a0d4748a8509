//! How a rule's objects are written: their compression (and level) and the layout of the date
//! in their keys.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::Gzip, Compression::Zstd, Compression::None];

    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".jsonl.gz",
            Compression::Zstd => ".jsonl.zst",
            Compression::None => ".jsonl",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// `SegmentInfo.content_encoding`: `gzip`, `zstd` or `identity`.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "identity",
        }
    }

    /// The inverse of [`Compression::content_encoding`]; anything but `gzip` and `zstd` is
    /// uncompressed.
    pub fn from_content_encoding(encoding: &str) -> Compression {
        match encoding {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The compression an object key's (or file name's) extension says its bytes are in.
    pub fn from_key(key: &str) -> Compression {
        if key.ends_with(Compression::Gzip.extension()) {
            Compression::Gzip
        } else if key.ends_with(Compression::Zstd.extension()) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The levels `compression_level` may take, `None` when the compression has no level.
    /// gzip's 0 would store the data uncompressed (that is `none`); zstd's 20-22 ("ultra") need
    /// windows of up to 128 MiB per decoder, more than a backup should ask of its readers.
    pub fn level_range(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            Compression::Gzip => Some(1..=9),
            Compression::Zstd => Some(1..=19),
            Compression::None => None,
        }
    }

    /// The level used when the rule gives none: gzip 1 (what the ingester has always written;
    /// gzip was its largest CPU cost), zstd 3 (zstd's own default: smaller than gzip 6 at a
    /// fraction of gzip 1's CPU).
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => 1,
            Compression::Zstd => 3,
            Compression::None => 0,
        }
    }

    /// A sealed segment's file name (see [`super::segment_files`]).
    pub fn segment_file_name(self, segment_no: u64) -> String {
        crate::types::segment_files::sealed_name(segment_no, self)
    }
}

/// Where an object key puts its date (the segment's window start, UTC): `plain` as
/// `YYYY/MM/DD/HH/`, `hive` as `dt=YYYY-MM-DD/hour=HH/`, the partition folders Hive, Spark,
/// DuckDB, Athena and Trino read as columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyLayout {
    #[default]
    Plain,
    Hive,
}

impl KeyLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLayout::Plain => "plain",
            KeyLayout::Hive => "hive",
        }
    }

    pub fn parse(text: &str) -> Option<KeyLayout> {
        [KeyLayout::Plain, KeyLayout::Hive]
            .into_iter()
            .find(|l| l.as_str() == text)
    }

    /// The date folders of a key, without a trailing `/`.
    pub fn date_path(self, at: DateTime<Utc>) -> String {
        match self {
            KeyLayout::Plain => at.format("%Y/%m/%d/%H").to_string(),
            KeyLayout::Hive => at.format("dt=%Y-%m-%d/hour=%H").to_string(),
        }
    }
}
