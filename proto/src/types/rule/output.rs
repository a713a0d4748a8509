//! How a rule's objects are written: their format, their compression (and level) and the
//! layout of the date in their keys.

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
    /// gzip was its largest CPU cost), zstd 1 (compression is the ingester's largest CPU cost,
    /// and zstd 1 took 0.5–0.7 times zstd 3's CPU for about the same bytes on JSON payloads:
    /// docs/benchmarks.md, "Compression: gzip or zstd").
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => 1,
            Compression::Zstd => 1,
            Compression::None => 0,
        }
    }
}

/// What an object is: JSON Lines (compressed whole by [`Compression`]) or Parquet (whose pages
/// are compressed inside the file by the rule's compression, zstd unless the rule says
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

/// A Parquet object's name ends so, whatever compresses its pages.
pub const PARQUET_EXTENSION: &str = ".parquet";

impl Format {
    pub const ALL: [Format; 2] = [Format::Jsonl, Format::Parquet];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The compression a rule of this format gets when it names none: gzip for JSON Lines (what
    /// the ingester has always written), zstd for Parquet (what engines read fastest, and
    /// smaller than gzip).
    pub fn default_compression(self) -> Compression {
        match self {
            Format::Jsonl => Compression::Gzip,
            Format::Parquet => Compression::Zstd,
        }
    }

    /// How an object's name ends: `.parquet`, or the JSON Lines extension of `compression`.
    pub fn extension(self, compression: Compression) -> &'static str {
        match self {
            Format::Jsonl => compression.extension(),
            Format::Parquet => PARQUET_EXTENSION,
        }
    }

    /// The format an object key's (or file name's) extension says it is in.
    pub fn from_key(key: &str) -> Format {
        if key.ends_with(PARQUET_EXTENSION) {
            Format::Parquet
        } else {
            Format::Jsonl
        }
    }

    /// `SegmentInfo.content_encoding` of an object of this format: a Parquet file compresses
    /// its pages itself, so as a whole it is `identity`.
    pub fn content_encoding(self, compression: Compression) -> &'static str {
        match self {
            Format::Jsonl => compression.content_encoding(),
            Format::Parquet => Compression::None.content_encoding(),
        }
    }

    /// A sealed segment's file name (see [`super::segment_files`]).
    pub fn segment_file_name(self, compression: Compression, segment_no: u64) -> String {
        crate::types::segment_files::sealed_name(segment_no, self.extension(compression))
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
