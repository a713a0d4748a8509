//! An entry that a partition's consumer could not decode, and what may be done about it.
//!
//! pulsar-rs reports an entry it cannot decompress or parse (a corrupt entry, a compression it
//! does not read, an encrypted batch) as an `Err` item of the consumer's stream, without the
//! entry's id. Nothing received after that error may be spooled: the spool would move the
//! partition's watermark past the entry, and the next cumulative acknowledgement would cover it.
//! So the consumer stops spooling the partition at the error and asks for the entry again by
//! recreating that partition's consumer (the broker redelivers from the acknowledged position).
//!
//! The entry is named from what surrounds it: the last message of the partition that decoded
//! before the error (`after`) and, when the same delivery went on, the first one that decoded after
//! it (`before`). Entries are dense within a ledger, so the entry after `after` is the one that
//! failed whenever `before` is in the same ledger (or not known). Across a ledger change the name
//! is the first entry of `before`'s ledger that could hold it, and `rule skip` accepts any entry
//! strictly between the two.
//!
//! This module is pure state: the consumer feeds it what it sees and asks what to do.

use std::fmt;
use std::str::FromStr;

use proto::types::MessageId;

/// Deliveries of the same entry that must fail before the rule is shown as stopped on it.
pub const BLOCK_AFTER_FAILURES: u32 = 3;

/// An entry of a partition: `ledger:entry` (non-partitioned topic) or `ledger:entry:partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef {
    pub ledger: u64,
    pub entry: u64,
    /// -1 for a non-partitioned topic.
    pub partition: i32,
}

impl EntryRef {
    pub fn of(id: &MessageId) -> EntryRef {
        EntryRef {
            ledger: id.ledger,
            entry: id.entry,
            partition: id.partition,
        }
    }

    fn position(&self) -> (u64, u64) {
        (self.ledger, self.entry)
    }

    /// The message id that acknowledges the whole entry (no batch index).
    pub fn to_message_id(self) -> MessageId {
        MessageId {
            ledger: self.ledger,
            entry: self.entry,
            partition: self.partition,
            batch_index: -1,
        }
    }
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition >= 0 {
            write!(f, "{}:{}:{}", self.ledger, self.entry, self.partition)
        } else {
            write!(f, "{}:{}", self.ledger, self.entry)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "entry {0:?} is not LEDGER:ENTRY or LEDGER:ENTRY:PARTITION (numbers, e.g. 12:34 or 12:34:2)"
)]
pub struct ParseEntryError(String);

impl FromStr for EntryRef {
    type Err = ParseEntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseEntryError(s.to_string());
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (ledger, entry, partition) = match parts.as_slice() {
            [l, e] => (l, e, None),
            [l, e, p] => (l, e, Some(p)),
            _ => return Err(bad()),
        };
        let partition = match partition {
            None => -1,
            Some(p) => p.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(bad)?,
        };
        Ok(EntryRef {
            ledger: ledger.parse().map_err(|_| bad())?,
            entry: entry.parse().map_err(|_| bad())?,
            partition,
        })
    }
}

/// One partition's undecodable entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFault {
    pub partition: i32,
    /// The last message of the partition that decoded before the failing entry, if any is known.
    pub after: Option<MessageId>,
    /// The first message that decoded after it in a failed delivery, once one was seen.
    pub before: Option<MessageId>,
    /// Deliveries of the entry that failed.
    pub failures: u32,
    /// The client's error of the latest failure.
    pub error: String,
    /// An entry the operator chose to pass without storing it (`rule skip`).
    pub skip: Option<EntryRef>,
}

/// What to do with a message that decoded on a partition that has a fault.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterFault {
    /// A redelivery of something before the failing entry: handle it as usual.
    Before,
    /// The failing entry decoded on redelivery: the fault is over.
    Healed,
    /// The partition went past the entry the operator skipped: the fault is over.
    Skipped(EntryRef),
}

impl DecodeFault {
    pub fn new(partition: i32, after: Option<MessageId>, error: String) -> DecodeFault {
        DecodeFault {
            partition,
            after,
            before: None,
            failures: 1,
            error,
            skip: None,
        }
    }

    /// Whether the rule is to be shown as stopped on this entry (it failed repeatedly).
    pub fn blocked(&self) -> bool {
        self.failures >= BLOCK_AFTER_FAILURES
    }

    /// A failure on the partition: the same entry again when nothing after `after` decoded since
    /// the partition's consumer was recreated (`decoded_since` is the last message that did).
    pub fn is_same_entry(&self, decoded_since: Option<&MessageId>) -> bool {
        match (decoded_since, &self.after) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(seen), Some(after)) => !entry_after(seen, after),
        }
    }

    /// The entry that failed, as far as the surrounding messages tell.
    pub fn suspect(&self) -> Option<EntryRef> {
        let partition = self.partition;
        match (&self.after, &self.before) {
            (Some(a), Some(b)) if b.ledger != a.ledger => Some(EntryRef {
                ledger: b.ledger,
                entry: 0,
                partition,
            })
            .filter(|_| b.entry > 0)
            .or(Some(EntryRef {
                ledger: a.ledger,
                entry: a.entry + 1,
                partition,
            })),
            (Some(a), _) => Some(EntryRef {
                ledger: a.ledger,
                entry: a.entry + 1,
                partition,
            }),
            (None, Some(b)) if b.entry > 0 => Some(EntryRef {
                ledger: b.ledger,
                entry: b.entry - 1,
                partition,
            }),
            _ => None,
        }
    }

    /// Whether `entry` may be the failing one: strictly after `after` and strictly before
    /// `before` (where known), on this partition.
    pub fn may_be(&self, entry: &EntryRef) -> bool {
        if entry.partition != self.partition {
            return false;
        }
        let after_ok = self
            .after
            .as_ref()
            .is_none_or(|a| entry.position() > (a.ledger, a.entry));
        let before_ok = self
            .before
            .as_ref()
            .is_none_or(|b| entry.position() < (b.ledger, b.entry));
        after_ok && before_ok
    }

    /// A message that decoded on the partition while this fault stands.
    pub fn on_decoded(&self, id: &MessageId) -> AfterFault {
        let past_failure = match &self.after {
            Some(after) => entry_after(id, after),
            None => true,
        };
        if !past_failure {
            return AfterFault::Before;
        }
        match self.skip {
            Some(skip) if (id.ledger, id.entry) > skip.position() => AfterFault::Skipped(skip),
            _ => AfterFault::Healed,
        }
    }

    /// How the fault reads in `status` and `logs`.
    pub fn describe(&self) -> String {
        let name = match self.suspect() {
            Some(entry) => format!("entry {entry}"),
            None => "the first entry after the subscription's position".to_string(),
        };
        let after = match &self.after {
            Some(a) => format!(" (the entry after message {a})"),
            None => String::new(),
        };
        format!("{name}{after} cannot be decoded: {}", self.error)
    }
}

/// Whether `id` is in a later entry than `other` (same partition).
fn entry_after(id: &MessageId, other: &MessageId) -> bool {
    (id.ledger, id.entry) > (other.ledger, other.entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ledger: u64, entry: u64, batch_index: i32) -> MessageId {
        MessageId {
            ledger,
            entry,
            partition: 2,
            batch_index,
        }
    }

    fn entry(ledger: u64, entry: u64) -> EntryRef {
        EntryRef {
            ledger,
            entry,
            partition: 2,
        }
    }

    #[test]
    fn entries_parse_and_print_with_and_without_partition() {
        let e: EntryRef = "12:34".parse().expect("parses");
        assert_eq!(
            e,
            EntryRef {
                ledger: 12,
                entry: 34,
                partition: -1
            }
        );
        assert_eq!(e.to_string(), "12:34");
        let e: EntryRef = " 12:34:2 ".parse().expect("parses");
        assert_eq!(e.to_string(), "12:34:2");
        for bad in ["", "12", "12:x", "1:2:3:4", "12:34:-1", "-1:2"] {
            let err = bad.parse::<EntryRef>().expect_err(bad);
            assert!(err.to_string().contains("LEDGER:ENTRY"), "{err}");
        }
    }

    #[test]
    fn the_entry_after_the_last_decoded_one_is_named() {
        let mut fault = DecodeFault::new(2, Some(id(7, 10, 4)), "zlib: invalid header".into());
        assert_eq!(fault.suspect(), Some(entry(7, 11)));
        fault.before = Some(id(7, 12, 0));
        assert_eq!(fault.suspect(), Some(entry(7, 11)));
        assert!(fault.may_be(&entry(7, 11)));
        assert!(!fault.may_be(&entry(7, 10)), "the last decoded entry");
        assert!(!fault.may_be(&entry(7, 12)), "the next decoded entry");
        assert!(
            !fault.may_be(&EntryRef {
                partition: 1,
                ..entry(7, 11)
            }),
            "another partition"
        );
        let text = fault.describe();
        assert!(text.contains("entry 7:11:2"), "{text}");
        assert!(text.contains("zlib: invalid header"), "{text}");
    }

    #[test]
    fn across_a_ledger_change_any_entry_between_may_be_skipped() {
        let mut fault = DecodeFault::new(2, Some(id(7, 10, -1)), "e".into());
        fault.before = Some(id(9, 3, -1));
        assert_eq!(fault.suspect(), Some(entry(9, 0)));
        assert!(fault.may_be(&entry(7, 11)));
        assert!(fault.may_be(&entry(9, 2)));
        assert!(!fault.may_be(&entry(9, 3)));
        // The new ledger starts with the next good message: the failure was in the old one.
        fault.before = Some(id(9, 0, -1));
        assert_eq!(fault.suspect(), Some(entry(7, 11)));
    }

    #[test]
    fn nothing_known_before_the_failure() {
        let mut fault = DecodeFault::new(2, None, "e".into());
        assert_eq!(fault.suspect(), None);
        assert!(fault
            .describe()
            .contains("first entry after the subscription"));
        fault.before = Some(id(5, 8, -1));
        assert_eq!(fault.suspect(), Some(entry(5, 7)));
    }

    #[test]
    fn redeliveries_before_the_entry_pass_and_the_entry_itself_heals() {
        let fault = DecodeFault::new(2, Some(id(7, 10, 4)), "e".into());
        assert_eq!(fault.on_decoded(&id(7, 9, 0)), AfterFault::Before);
        // Another message of the last decoded batch entry is still before the failure.
        assert_eq!(fault.on_decoded(&id(7, 10, 5)), AfterFault::Before);
        assert_eq!(fault.on_decoded(&id(7, 11, 0)), AfterFault::Healed);
    }

    #[test]
    fn a_skipped_entry_is_passed_once_the_partition_is_beyond_it() {
        let mut fault = DecodeFault::new(2, Some(id(7, 10, -1)), "e".into());
        fault.skip = Some(entry(7, 11));
        assert_eq!(fault.on_decoded(&id(7, 10, -1)), AfterFault::Before);
        // The broker may redeliver the skipped entry (and it may decode after all).
        assert_eq!(fault.on_decoded(&id(7, 11, 0)), AfterFault::Healed);
        assert_eq!(
            fault.on_decoded(&id(7, 12, 0)),
            AfterFault::Skipped(entry(7, 11))
        );
    }

    #[test]
    fn the_same_entry_fails_again_until_something_after_it_decodes() {
        let fault = DecodeFault::new(2, Some(id(7, 10, -1)), "e".into());
        assert!(fault.is_same_entry(None));
        assert!(fault.is_same_entry(Some(&id(7, 3, -1))));
        assert!(fault.is_same_entry(Some(&id(7, 10, -1))));
        assert!(!fault.is_same_entry(Some(&id(7, 11, -1))));
        let mut fault = fault;
        fault.failures = BLOCK_AFTER_FAILURES - 1;
        assert!(!fault.blocked());
        fault.failures += 1;
        assert!(fault.blocked());
    }
}
