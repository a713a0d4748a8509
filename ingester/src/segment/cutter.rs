//! The cut policy, pure: when does the open segment end?
//!
//! Windows are aligned to UTC multiples of the rule's window, by ingestion (wall-clock) time: a
//! segment holds what was consumed during one window, so it can be sealed and uploaded as soon as
//! the window ends even when the topic goes quiet. Within a window a segment also ends at
//! `max_messages` records or `max_bytes` record bytes, whichever comes first.

/// The limits of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    pub window_ms: u64,
    pub max_messages: u64,
    pub max_bytes: u64,
}

/// What the open segment holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenStats {
    pub window_start_ms: u64,
    pub messages: u64,
    pub record_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Goes into the open segment (or opens one if there is none).
    Append,
    /// The open segment must be closed first; the record opens the next one.
    CloseThenAppend,
}

impl CutPolicy {
    /// Start of the window holding `at_ms`.
    pub fn window_start(&self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.window_ms.max(1)
    }

    /// Where a record of `record_len` bytes consumed at `now_ms` goes.
    pub fn place(&self, open: Option<&OpenStats>, now_ms: u64, record_len: u64) -> Placement {
        let Some(open) = open else {
            return Placement::Append;
        };
        if open.messages == 0 {
            return Placement::Append;
        }
        let other_window = self.window_start(now_ms) != open.window_start_ms;
        let too_many = open.messages + 1 > self.max_messages;
        let too_big = open.record_bytes + record_len > self.max_bytes;
        if other_window || too_many || too_big {
            Placement::CloseThenAppend
        } else {
            Placement::Append
        }
    }

    /// Whether the open segment is full and should be closed without waiting for the next record.
    pub fn is_full(&self, open: &OpenStats) -> bool {
        open.messages >= self.max_messages || open.record_bytes >= self.max_bytes
    }

    /// Whether the open segment's window has ended.
    pub fn is_due(&self, open: &OpenStats, now_ms: u64) -> bool {
        now_ms >= open.window_start_ms + self.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CutPolicy = CutPolicy {
        window_ms: 60_000,
        max_messages: 3,
        max_bytes: 100,
    };

    fn open(window_start_ms: u64, messages: u64, record_bytes: u64) -> OpenStats {
        OpenStats {
            window_start_ms,
            messages,
            record_bytes,
        }
    }

    #[test]
    fn windows_align_to_utc_multiples() {
        assert_eq!(POLICY.window_start(0), 0);
        assert_eq!(POLICY.window_start(59_999), 0);
        assert_eq!(POLICY.window_start(60_000), 60_000);
        let five_min = CutPolicy {
            window_ms: 300_000,
            ..POLICY
        };
        // 2026-11-24T02:44:19.913Z → 02:40:00
        assert_eq!(five_min.window_start(1_795_488_259_913), 1_795_488_000_000);
    }

    #[test]
    fn first_record_opens_a_segment() {
        assert_eq!(POLICY.place(None, 5, 10), Placement::Append);
    }

    #[test]
    fn cuts_at_max_messages() {
        assert_eq!(
            POLICY.place(Some(&open(0, 2, 20)), 5, 10),
            Placement::Append
        );
        assert_eq!(
            POLICY.place(Some(&open(0, 3, 30)), 5, 10),
            Placement::CloseThenAppend
        );
        assert!(POLICY.is_full(&open(0, 3, 30)));
        assert!(!POLICY.is_full(&open(0, 2, 30)));
    }

    #[test]
    fn cuts_before_exceeding_max_bytes() {
        assert_eq!(
            POLICY.place(Some(&open(0, 1, 90)), 5, 10),
            Placement::Append
        );
        assert_eq!(
            POLICY.place(Some(&open(0, 1, 91)), 5, 10),
            Placement::CloseThenAppend
        );
        assert!(POLICY.is_full(&open(0, 1, 100)));
    }

    #[test]
    fn an_oversized_record_goes_alone_into_a_segment() {
        // Nothing else can hold it: it opens its own segment, which is then full.
        assert_eq!(
            POLICY.place(Some(&open(0, 1, 10)), 5, 500),
            Placement::CloseThenAppend
        );
        assert_eq!(
            POLICY.place(Some(&open(0, 0, 0)), 5, 500),
            Placement::Append
        );
        assert!(POLICY.is_full(&open(0, 1, 500)));
    }

    #[test]
    fn cuts_at_window_end() {
        assert_eq!(
            POLICY.place(Some(&open(0, 1, 10)), 60_000, 10),
            Placement::CloseThenAppend
        );
        assert!(!POLICY.is_due(&open(0, 1, 10), 59_999));
        assert!(POLICY.is_due(&open(0, 1, 10), 60_000));
    }
}
