//! Opening a daemon's own directory (the ingester's `data_dir`, the uploader's `state_dir`) by
//! its format stamp: the decision is `proto::types::dir_format`'s; this reads and writes the
//! stamp, before anything else touches the directory.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use proto::types::dir_format::{self, DirFormatError, DirKind, DirStamp, Opening};

#[derive(Debug, thiserror::Error)]
pub enum OpenDirError {
    #[error("{setting} {}: {source}", dir.display())]
    Format {
        setting: &'static str,
        dir: PathBuf,
        source: DirFormatError,
    },
    #[error("{setting} {}: {action}: {source}", dir.display())]
    Io {
        setting: &'static str,
        dir: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// Creates `dir` if needed and checks its stamp: stamps a fresh or pre-stamp (format 1)
/// directory, opens one of this build's format, refuses anything else with what to do.
pub fn open(dir: &Path, kind: DirKind) -> Result<Opening, OpenDirError> {
    let io = |action: &'static str| {
        let dir = dir.to_path_buf();
        move |source| OpenDirError::Io {
            setting: kind.setting(),
            dir,
            action,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating it"))?;
    let path = dir.join(dir_format::FILE_NAME);
    let stamp = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(io("reading its format stamp")(err)),
    };
    let opening =
        dir_format::decide(kind, stamp.as_deref()).map_err(|source| OpenDirError::Format {
            setting: kind.setting(),
            dir: dir.to_path_buf(),
            source,
        })?;
    if opening == Opening::Stamp {
        write_stamp(dir, &DirStamp::current(kind).to_json())
            .map_err(io("writing its format stamp"))?;
    }
    Ok(opening)
}

/// Temporary file, fsync, rename, fsync of the directory: a crash leaves the old state (no
/// stamp, which means format 1 and is stamped again) or the whole new stamp.
fn write_stamp(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{}.tmp", dir_format::FILE_NAME));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(dir_format::FILE_NAME))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_is_created_and_stamped_then_opens_as_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        assert_eq!(
            open(&dir, DirKind::IngesterData).expect("fresh"),
            Opening::Stamp
        );
        let written = std::fs::read(dir.join(dir_format::FILE_NAME)).expect("stamp");
        assert_eq!(written, DirStamp::current(DirKind::IngesterData).to_json());
        assert_eq!(
            open(&dir, DirKind::IngesterData).expect("again"),
            Opening::UpToDate
        );
        assert!(!dir.join("format.json.tmp").exists());
    }

    #[test]
    fn a_newer_directory_is_refused_and_left_as_it_was() {
        let root = tempfile::tempdir().expect("tempdir");
        let newer = br#"{"kind":"uploader-state","version":7,"written_by":"3.0.0"}"#;
        std::fs::write(root.path().join(dir_format::FILE_NAME), newer).expect("write");
        let err = open(root.path(), DirKind::UploaderState).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "state_dir {}: written in format 7",
                root.path().display()
            )),
            "{text}"
        );
        assert!(text.contains("run tdmq-backup 3.0.0 or newer"), "{text}");
        let kept = std::fs::read(root.path().join(dir_format::FILE_NAME)).expect("stamp");
        assert_eq!(kept, newer);
    }
}
