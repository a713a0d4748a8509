//! The format stamp of a daemon's own directory: the ingester's `data_dir` and the uploader's
//! `state_dir` each hold a `format.json` saying which layout they were written in, so a build
//! that changes a layout (segments, manifests, resume records) can tell an old directory from
//! its own and either migrate it or refuse with a message that says what to do, instead of
//! misreading it. Deciding is pure and lives here; reading and writing the file is done by the
//! daemons at start-up, before anything else opens the directory.
//!
//! Format 1 is the layout of every directory written before the stamp existed, so a directory
//! without a stamp (fresh or older) is format 1 and gets stamped. When a later build raises a
//! [`DirKind::current`], it adds the step from the previous format to [`decide`]'s caller (a
//! migration run before stamping) and keeps a fixture of the previous format under
//! `tests/fixtures/` that a test opens.

use serde::{Deserialize, Serialize};

/// The stamp's file name, directly under the directory.
pub const FILE_NAME: &str = "format.json";

/// Whose directory it is: the two layouts evolve separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// The ingester's `data_dir`: the sled spool and the segment files.
    IngesterData,
    /// The uploader's `state_dir`: resumable multipart uploads.
    UploaderState,
}

impl DirKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DirKind::IngesterData => "ingester-data",
            DirKind::UploaderState => "uploader-state",
        }
    }

    /// The format this build writes and reads.
    pub fn current(self) -> u32 {
        match self {
            DirKind::IngesterData => 1,
            DirKind::UploaderState => 1,
        }
    }

    /// The setting that names the directory, for messages.
    pub fn setting(self) -> &'static str {
        match self {
            DirKind::IngesterData => "data_dir",
            DirKind::UploaderState => "state_dir",
        }
    }
}

/// The content of `format.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirStamp {
    pub kind: String,
    pub version: u32,
    /// The tdmq-backup version that wrote the stamp: what to run on a directory this build
    /// cannot read.
    pub written_by: String,
}

impl DirStamp {
    /// The stamp this build writes for `kind`.
    pub fn current(kind: DirKind) -> DirStamp {
        DirStamp {
            kind: kind.as_str().to_owned(),
            version: kind.current(),
            written_by: crate::VERSION.to_owned(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: two strings and a number.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// What the daemon does with the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Stamped with this build's format: open it.
    UpToDate,
    /// No stamp yet (a fresh directory, or one written before stamps existed, which is format
    /// 1): write [`DirStamp::current`], then open it.
    Stamp,
}

/// Why a directory cannot be opened; each message says what to do. The directory's path is
/// added by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirFormatError {
    #[error("{FILE_NAME} is not a tdmq-backup format stamp ({reason}); restore it from a backup of the directory, or point {setting} at the right directory")]
    Unreadable {
        setting: &'static str,
        reason: String,
    },
    #[error("its stamp says `{found}`, not `{expected}`: {setting} points at another daemon's directory")]
    WrongKind {
        setting: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("written in format {found} by tdmq-backup {written_by}, and this build ({build}) reads format {current} and older: run tdmq-backup {written_by} or newer on it")]
    Newer {
        found: u32,
        current: u32,
        written_by: String,
        build: &'static str,
    },
    #[error("written in format {found} by tdmq-backup {written_by}, which this build ({build}) cannot migrate to format {current}: run a tdmq-backup release between the two first, or drain the directory with tdmq-backup {written_by} (`rule delete --drain`) and start this build on an empty one")]
    TooOld {
        found: u32,
        current: u32,
        written_by: String,
        build: &'static str,
    },
}

/// Decides from the stamp's bytes (`None` when there is no stamp).
pub fn decide(kind: DirKind, stamp: Option<&[u8]>) -> Result<Opening, DirFormatError> {
    let Some(bytes) = stamp else {
        return Ok(Opening::Stamp);
    };
    let stamp: DirStamp =
        serde_json::from_slice(bytes).map_err(|err| DirFormatError::Unreadable {
            setting: kind.setting(),
            reason: err.to_string(),
        })?;
    if stamp.kind != kind.as_str() {
        return Err(DirFormatError::WrongKind {
            setting: kind.setting(),
            found: stamp.kind,
            expected: kind.as_str(),
        });
    }
    let current = kind.current();
    match stamp.version.cmp(&current) {
        std::cmp::Ordering::Equal => Ok(Opening::UpToDate),
        std::cmp::Ordering::Greater => Err(DirFormatError::Newer {
            found: stamp.version,
            current,
            written_by: stamp.written_by,
            build: crate::VERSION,
        }),
        // No format before 1 exists; the first layout change adds its migration here.
        std::cmp::Ordering::Less => Err(DirFormatError::TooOld {
            found: stamp.version,
            current,
            written_by: stamp.written_by,
            build: crate::VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(kind: &str, version: u32) -> Vec<u8> {
        format!(r#"{{"kind":"{kind}","version":{version},"written_by":"9.9.9"}}"#).into_bytes()
    }

    #[test]
    fn a_directory_without_a_stamp_is_stamped() {
        assert_eq!(decide(DirKind::IngesterData, None), Ok(Opening::Stamp));
        assert_eq!(decide(DirKind::UploaderState, None), Ok(Opening::Stamp));
    }

    #[test]
    fn this_builds_stamp_opens_as_is() {
        for kind in [DirKind::IngesterData, DirKind::UploaderState] {
            let written = DirStamp::current(kind).to_json();
            assert_eq!(decide(kind, Some(&written)), Ok(Opening::UpToDate));
        }
    }

    #[test]
    fn a_newer_format_is_refused_naming_the_version_that_wrote_it() {
        let err = decide(DirKind::IngesterData, Some(&stamp("ingester-data", 2)))
            .expect_err("format 2 is newer than this build's");
        assert!(matches!(
            err,
            DirFormatError::Newer {
                found: 2,
                current: 1,
                ..
            }
        ));
        let text = err.to_string();
        assert!(text.contains("run tdmq-backup 9.9.9 or newer"), "{text}");
    }

    #[test]
    fn an_older_format_without_a_migration_is_refused_with_what_to_do() {
        let err = decide(DirKind::UploaderState, Some(&stamp("uploader-state", 0)))
            .expect_err("format 0 has no migration");
        assert!(err.to_string().contains("rule delete --drain"), "{err}");
    }

    #[test]
    fn the_other_daemons_directory_is_refused() {
        let err = decide(DirKind::UploaderState, Some(&stamp("ingester-data", 1)))
            .expect_err("an ingester data_dir given as state_dir");
        assert_eq!(
            err.to_string(),
            "its stamp says `ingester-data`, not `uploader-state`: state_dir points at another daemon's directory"
        );
    }

    #[test]
    fn a_damaged_stamp_is_refused_not_overwritten() {
        let err = decide(DirKind::IngesterData, Some(b"{\"kind\":")).expect_err("truncated JSON");
        assert!(matches!(
            err,
            DirFormatError::Unreadable {
                setting: "data_dir",
                ..
            }
        ));
    }
}
