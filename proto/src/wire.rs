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
}

impl CommitOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitOutcome::Committed => "committed",
            CommitOutcome::AlreadyCommitted => "already_committed",
        }
    }

    /// `None` for an outcome this version does not know (from a newer ingester).
    pub fn parse(text: &str) -> Option<CommitOutcome> {
        [CommitOutcome::Committed, CommitOutcome::AlreadyCommitted]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

impl std::fmt::Display for CommitOutcome {
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
}
