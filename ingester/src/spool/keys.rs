//! The spool's sled keys: `[tag][rule]\0[suffix]` in one tree (the table in the module doc),
//! and the JSON its values are.

use serde::{Deserialize, Serialize};

use crate::error::{IngesterError, Result};

pub(crate) const SPOOL_TREE: &str = "spool";

/// A segment's meta; suffix: segment number (u64 BE).
pub(crate) const SEGMENT: u8 = b's';
/// A partition's highest spooled message id; suffix: [`partition_suffix`].
pub(crate) const WATERMARK: u8 = b'w';
/// A partition's highest acknowledged message id; suffix: [`partition_suffix`].
pub(crate) const ACKED: u8 = b'a';
/// The rule's counters; no suffix.
pub(crate) const COUNTERS: u8 = b'n';

pub(crate) fn key(tag: u8, rule: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + rule.len() + suffix.len());
    k.push(tag);
    k.extend_from_slice(rule.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

pub(crate) fn partition_suffix(partition: i32) -> [u8; 4] {
    ((partition as u32) ^ 0x8000_0000).to_be_bytes()
}

pub(crate) fn partition_from_suffix(bytes: &[u8]) -> Option<i32> {
    let arr: [u8; 4] = bytes.try_into().ok()?;
    Some((u32::from_be_bytes(arr) ^ 0x8000_0000) as i32)
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| IngesterError::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| IngesterError::Corrupt(format!("{what}: {e}")))
}

/// A segment's meta key.
pub(crate) fn segment_key(rule: &str, segment_no: u64) -> Vec<u8> {
    key(SEGMENT, rule, &segment_no.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_suffixes_sort_as_the_partitions_and_read_back() {
        let partitions = [i32::MIN, -1, 0, 1, 7, i32::MAX];
        let suffixes: Vec<[u8; 4]> = partitions.iter().map(|p| partition_suffix(*p)).collect();
        assert!(suffixes.windows(2).all(|pair| pair[0] < pair[1]));
        for (partition, suffix) in partitions.iter().zip(&suffixes) {
            assert_eq!(partition_from_suffix(suffix), Some(*partition));
        }
        assert_eq!(partition_from_suffix(&[1, 2, 3]), None);
    }
}
