//! Pulsar message ids as ordered values.
//!
//! Within one partition Pulsar orders messages by (ledger, entry, batch index); the spool relies on
//! that order to recognise redeliveries, so [`MessageId::to_ordered_bytes`] keeps it for byte-wise
//! comparison (sled keys). Non-batched messages carry batch index -1, non-partitioned topics
//! partition -1, as in Pulsar's own string form `ledger:entry:partition:batch_index`.

use std::fmt;
use std::str::FromStr;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MessageId {
    pub ledger: u64,
    pub entry: u64,
    pub partition: i32,
    pub batch_index: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid message id {0:?}: expected ledger:entry:partition:batch_index")]
pub struct ParseMessageIdError(String);

impl MessageId {
    /// Ordering within one partition: (ledger, entry, batch_index).
    pub fn position(&self) -> (u64, u64, i32) {
        (self.ledger, self.entry, self.batch_index)
    }

    /// Whether `self` comes strictly after `other` in the same partition.
    pub fn is_after(&self, other: &MessageId) -> bool {
        self.position() > other.position()
    }

    /// 24 bytes, big-endian, sign bit flipped on the signed fields so byte order = value order.
    pub fn to_ordered_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[0..8].copy_from_slice(&self.ledger.to_be_bytes());
        out[8..16].copy_from_slice(&self.entry.to_be_bytes());
        out[16..20].copy_from_slice(&flip(self.partition).to_be_bytes());
        out[20..24].copy_from_slice(&flip(self.batch_index).to_be_bytes());
        out
    }

    pub fn from_ordered_bytes(bytes: &[u8]) -> Option<MessageId> {
        if bytes.len() != 24 {
            return None;
        }
        let u64_at = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        let i32_at = |i: usize| {
            bytes[i..i + 4]
                .try_into()
                .ok()
                .map(u32::from_be_bytes)
                .map(unflip)
        };
        Some(MessageId {
            ledger: u64_at(0)?,
            entry: u64_at(8)?,
            partition: i32_at(16)?,
            batch_index: i32_at(20)?,
        })
    }

    /// A form safe inside an object name: `ledger_entry_partition_batch`.
    pub fn file_stem(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.ledger, self.entry, self.partition, self.batch_index
        )
    }
}

fn flip(v: i32) -> u32 {
    (v as u32) ^ 0x8000_0000
}

fn unflip(v: u32) -> i32 {
    (v ^ 0x8000_0000) as i32
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.ledger, self.entry, self.partition, self.batch_index
        )
    }
}

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMessageIdError(s.to_string());
        let mut parts = s.split(':');
        let mut next = || parts.next().ok_or_else(err);
        let id = MessageId {
            ledger: next()?.parse().map_err(|_| err())?,
            entry: next()?.parse().map_err(|_| err())?,
            partition: next()?.parse().map_err(|_| err())?,
            batch_index: next()?.parse().map_err(|_| err())?,
        };
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ledger: u64, entry: u64, partition: i32, batch_index: i32) -> MessageId {
        MessageId {
            ledger,
            entry,
            partition,
            batch_index,
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        let m = id(12, 34, -1, 0);
        assert_eq!(m.to_string(), "12:34:-1:0");
        assert_eq!("12:34:-1:0".parse::<MessageId>(), Ok(m));
        assert!("12:34:-1".parse::<MessageId>().is_err());
        assert!("12:34:-1:0:9".parse::<MessageId>().is_err());
        assert!("a:34:-1:0".parse::<MessageId>().is_err());
    }

    #[test]
    fn ordered_bytes_keep_value_order() {
        let ids = [
            id(1, 0, -1, -1),
            id(1, 0, -1, 0),
            id(1, 0, -1, 5),
            id(1, 1, -1, -1),
            id(2, 0, -1, -1),
            id(u64::MAX, u64::MAX, -1, i32::MAX),
        ];
        for w in ids.windows(2) {
            assert!(
                w[0].to_ordered_bytes() < w[1].to_ordered_bytes(),
                "{} < {}",
                w[0],
                w[1]
            );
            assert!(w[1].is_after(&w[0]));
        }
        for m in ids {
            assert_eq!(
                MessageId::from_ordered_bytes(&m.to_ordered_bytes()),
                Some(m)
            );
        }
        assert_eq!(MessageId::from_ordered_bytes(&[0u8; 3]), None);
    }

    #[test]
    fn file_stem_has_no_colons() {
        assert_eq!(id(7, 8, 3, -1).file_stem(), "7_8_3_-1");
    }
}
