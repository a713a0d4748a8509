//! Conventions of the gRPC API that its message types do not spell out, defined once for the
//! processes on both ends.

/// The status code with which `ReadSegment` (and `CommitSegment`) say that the ingester found the
/// sealed segment damaged and quarantined it: the uploader drops that attempt for good, since the
/// ingester rewrites the segment from its records and offers it again under the same number.
pub const QUARANTINED: tonic::Code = tonic::Code::DataLoss;

/// What `CommitSegment` did, as `CommitSegmentReply.outcome` carries it (a string on the wire so
/// that daemons of different versions can add outcomes without breaking each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The segment is stored now.
    Committed,
    /// It already was: a retried commit, or another uploader's.
    AlreadyCommitted,
    /// A fenced segment another ingester's object holds in full: stored by that one.
    Covered,
    /// A fenced segment another ingester's object holds the start of: the rest is sealed again.
    Trimmed,
}

impl CommitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::AlreadyCommitted => "already_committed",
            CommitOutcome::Covered => "covered",
            CommitOutcome::Trimmed => "trimmed",
        }
    }

    /// `None` for an outcome this version does not know (from a newer ingester).
    pub fn parse(text: &str) -> Option<CommitOutcome> {
        [
            CommitOutcome::Committed,
            CommitOutcome::AlreadyCommitted,
            CommitOutcome::Covered,
            CommitOutcome::Trimmed,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
    }
}

impl std::fmt::Display for CommitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a history entry (`LogEntry.kind`, `tdmq-backup logs`) records. On the wire and in the
/// ingester's database it is the [`HistoryKind::as_str`] text, so a newer ingester may add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// A segment's object is stored (committed by the uploader).
    Stored,
    /// The uploader reported a failed upload of a segment.
    UploadFailed,
    /// Writing a segment's file failed (recorded once per segment; it is retried).
    SealFailed,
    /// A sealed file failed its checksum: moved aside and rewritten from the spool.
    Quarantined,
    /// The rule's consumer could not connect to Pulsar.
    ConsumerError,
    /// The rule lost its connection to Pulsar (an outage begins).
    Disconnected,
    /// The rule is connected again (the outage ended).
    Reconnected,
    /// An entry could not be decoded; the broker is asked for it again.
    DecodeFailed,
    /// An entry failed every delivery: its partition is stopped before it.
    Blocked,
    /// An operator passed an undecodable entry (`rule skip`).
    Skipped,
    /// The broker's topic ends before what the rule spooled: recreated or moved.
    IdsWentBack,
    /// Writing to the spool failed.
    SpoolError,
    /// The spool is full (quota or disk): consumption paused.
    SpoolFull,
    /// `rule flush` closed the open segment.
    Flushed,
    /// The rule was created.
    RuleCreated,
    /// The rule was changed.
    RuleEdited,
    /// The rule was paused.
    Paused,
    /// The rule was resumed.
    Resumed,
    /// Anything else worth knowing (partitions added, consumption resumed, …).
    Info,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 19] = [
        HistoryKind::Stored,
        HistoryKind::UploadFailed,
        HistoryKind::SealFailed,
        HistoryKind::Quarantined,
        HistoryKind::ConsumerError,
        HistoryKind::Disconnected,
        HistoryKind::Reconnected,
        HistoryKind::DecodeFailed,
        HistoryKind::Blocked,
        HistoryKind::Skipped,
        HistoryKind::IdsWentBack,
        HistoryKind::SpoolError,
        HistoryKind::SpoolFull,
        HistoryKind::Flushed,
        HistoryKind::RuleCreated,
        HistoryKind::RuleEdited,
        HistoryKind::Paused,
        HistoryKind::Resumed,
        HistoryKind::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Stored => "stored",
            HistoryKind::UploadFailed => "upload_failed",
            HistoryKind::SealFailed => "seal_failed",
            HistoryKind::Quarantined => "quarantined",
            HistoryKind::ConsumerError => "consumer_error",
            HistoryKind::Disconnected => "disconnected",
            HistoryKind::Reconnected => "reconnected",
            HistoryKind::DecodeFailed => "decode_failed",
            HistoryKind::Blocked => "blocked",
            HistoryKind::Skipped => "skipped",
            HistoryKind::IdsWentBack => "ids_went_back",
            HistoryKind::SpoolError => "spool_error",
            HistoryKind::SpoolFull => "spool_full",
            HistoryKind::Flushed => "flushed",
            HistoryKind::RuleCreated => "rule_created",
            HistoryKind::RuleEdited => "rule_edited",
            HistoryKind::Paused => "paused",
            HistoryKind::Resumed => "resumed",
            HistoryKind::Info => "info",
        }
    }

    /// Whether the entry reports a failure (`LogEntry.failed`, `logs --failed`).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            HistoryKind::UploadFailed
                | HistoryKind::SealFailed
                | HistoryKind::Quarantined
                | HistoryKind::ConsumerError
                | HistoryKind::Disconnected
                | HistoryKind::DecodeFailed
                | HistoryKind::Blocked
                | HistoryKind::IdsWentBack
                | HistoryKind::SpoolError
                | HistoryKind::SpoolFull
        )
    }

    /// `None` for a kind this version does not know.
    pub fn parse(text: &str) -> Option<HistoryKind> {
        HistoryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_unknown_ones_are_none() {
        for outcome in [CommitOutcome::Committed, CommitOutcome::AlreadyCommitted] {
            assert_eq!(CommitOutcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(CommitOutcome::parse("stored"), None);
    }

    #[test]
    fn history_kinds_round_trip_and_name_their_failures() {
        for kind in HistoryKind::ALL {
            assert_eq!(HistoryKind::parse(kind.as_str()), Some(kind));
        }
        assert!(HistoryKind::Blocked.is_failure());
        assert!(!HistoryKind::Stored.is_failure());
        assert_eq!(HistoryKind::parse("exploded"), None);
    }
}
