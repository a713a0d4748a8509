//! Exit statuses: one per outcome a script can act on differently. docs/reference.md lists them;
//! scripts depend on the numbers, so they never change meaning.

use std::fmt;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command failed for another reason (bad input named in the message, a daemon error).
    Failure,
    /// The rule (or other named thing) does not exist.
    NotFound,
    /// A daemon could not be reached, or did not answer in time.
    Unreachable,
    /// A daemon refused the call: invalid or conflicting input, a missing or wrong token, a
    /// precondition (e.g. segments not yet stored).
    Refused,
    /// `verify` ran and found problems in the backup.
    Problems,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Failure => 1,
            // 2 is the argument parser's usage error; 3 is kept for `verify` finding problems.
            Exit::NotFound => 4,
            Exit::Unreachable => 5,
            Exit::Refused => 6,
            Exit::Problems => 3,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// An error that knows its exit status. It travels inside `anyhow::Error` (context may be
/// added around it) and is found again by [`of`].
#[derive(Debug)]
pub struct Classified {
    pub exit: Exit,
    message: String,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

pub fn error(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified {
        exit,
        message: message.into(),
    })
}

/// A command that printed what it could but must still fail (`status` with a daemon down): main
/// prints `report` on stdout as usual, then `error:` and exits with `exit`.
#[derive(Debug)]
pub struct Partial {
    pub report: crate::output::Report,
    pub exit: Exit,
    pub error: String,
}

impl fmt::Display for Partial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Partial {}

/// The exit status for `err`: the innermost classified cause's, else [`Exit::Failure`].
pub fn of(err: &anyhow::Error) -> Exit {
    if let Some(partial) = err.downcast_ref::<Partial>() {
        return partial.exit;
    }
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<Classified>())
        .map(|c| c.exit)
        .last()
        .unwrap_or(Exit::Failure)
}

/// The status a failed gRPC call maps to.
pub fn of_code(code: tonic::Code) -> Exit {
    use tonic::Code;
    match code {
        Code::NotFound => Exit::NotFound,
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unreachable,
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::OutOfRange => Exit::Refused,
        _ => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn the_status_survives_context() {
        let err = Err::<(), _>(error(Exit::NotFound, "rule \"x\" not found"))
            .context("showing the rule")
            .expect_err("an error");
        assert_eq!(of(&err), Exit::NotFound);
        assert_eq!(format!("{err:#}"), "showing the rule: rule \"x\" not found");
        assert_eq!(of(&anyhow::anyhow!("plain")), Exit::Failure);
    }

    #[test]
    fn codes_are_distinct_and_skip_the_parsers() {
        let all = [
            Exit::Failure,
            Exit::NotFound,
            Exit::Unreachable,
            Exit::Refused,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        // 0 is success, 2 the parser's usage error; 3 only for `verify`'s "found problems".
        assert!(!codes.contains(&0) && !codes.contains(&2) && !codes.contains(&3));
        assert_eq!(Exit::Problems.code(), 3);
    }

    #[test]
    fn grpc_codes() {
        assert_eq!(of_code(tonic::Code::NotFound), Exit::NotFound);
        assert_eq!(of_code(tonic::Code::Unavailable), Exit::Unreachable);
        assert_eq!(of_code(tonic::Code::FailedPrecondition), Exit::Refused);
        assert_eq!(of_code(tonic::Code::Unauthenticated), Exit::Refused);
        assert_eq!(of_code(tonic::Code::Internal), Exit::Failure);
    }
}
