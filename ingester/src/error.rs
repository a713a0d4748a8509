//! The ingester's error type; `code()` is the one place errors become gRPC status codes.

use proto::types::RuleError;

#[derive(Debug, thiserror::Error)]
pub enum IngesterError {
    #[error(transparent)]
    InvalidRule(#[from] RuleError),
    #[error("rule {0:?} not found")]
    RuleNotFound(String),
    #[error("rule {0:?} already exists")]
    RuleExists(String),
    #[error("segment {segment_no} of rule {rule:?} not found")]
    SegmentNotFound { rule: String, segment_no: u64 },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("segment {segment_no} of rule {rule:?} is damaged: {reason}; quarantined")]
    Damaged {
        rule: String,
        segment_no: u64,
        reason: String,
    },
    #[error("spool database error: {0}")]
    Db(sled::Error),
    #[error("the spool database is being reopened after a failed write; try again shortly")]
    DatabaseReopening,
    #[error("another ingester is using this data_dir ({} is locked): stop it, or give this one a data_dir of its own", path.display())]
    DataDirInUse { path: std::path::PathBuf },
    #[error("spool io error: {context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("corrupt spool entry: {0}")]
    Corrupt(String),
    #[error("the ingester is shutting down")]
    ShuttingDown,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

pub type Result<T, E = IngesterError> = std::result::Result<T, E>;

impl From<sled::Error> for IngesterError {
    fn from(err: sled::Error) -> IngesterError {
        // The cue for the database watch to check whether sled still takes writes.
        crate::spool::db::count_error();
        IngesterError::Db(err)
    }
}

impl IngesterError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> IngesterError {
        IngesterError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the spool's disk is full (so consumption should pause, not fail).
    pub fn is_disk_full(&self) -> bool {
        let io_full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
        };
        match self {
            IngesterError::Io { source, .. } => io_full(source),
            IngesterError::Db(sled::Error::Io(e)) => io_full(e),
            _ => false,
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            IngesterError::InvalidRule(_) | IngesterError::InvalidRequest(_) => {
                tonic::Code::InvalidArgument
            }
            IngesterError::RuleNotFound(_) | IngesterError::SegmentNotFound { .. } => {
                tonic::Code::NotFound
            }
            IngesterError::RuleExists(_) => tonic::Code::AlreadyExists,
            IngesterError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            IngesterError::Damaged { .. } => proto::wire::QUARANTINED,
            IngesterError::ShuttingDown | IngesterError::DatabaseReopening => {
                tonic::Code::Unavailable
            }
            // Space comes back as uploads free segments (or the operator frees some), and the
            // database is reopened then: a caller such as the uploader's commit should try
            // again, not take it as a refusal. (Not Unavailable: ctl reads that as unreachable.)
            err if err.is_disk_full() => tonic::Code::ResourceExhausted,
            IngesterError::Db(_)
            | IngesterError::Io { .. }
            | IngesterError::Corrupt(_)
            | IngesterError::DataDirInUse { .. } => tonic::Code::Internal,
        }
    }
}

impl From<IngesterError> for tonic::Status {
    fn from(err: IngesterError) -> tonic::Status {
        tonic::Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_not_internal() {
        let full = || std::io::Error::from_raw_os_error(28);
        assert_eq!(
            IngesterError::io("writing", full()).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            IngesterError::from(sled::Error::Io(full())).code(),
            tonic::Code::ResourceExhausted
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            IngesterError::io("writing", denied).code(),
            tonic::Code::Internal
        );
    }
}
