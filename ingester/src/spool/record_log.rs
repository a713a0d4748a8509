//! Record logs: each segment's records, in the spool's compact form
//! (`crate::spool::log_record`), appended in consumption order to one plain file per segment
//! (`segments/<rule>/<segment_no>.log`).
//!
//! Why files and not sled keys: records are written once, read once (when the segment is
//! sealed) and dropped together, which is exactly what an append-only file does well. In sled
//! every record was a key whose pages were rewritten as the tree grew, then deleted key by key:
//! nine bytes written per payload byte and hundreds of megabytes of page cache. A log costs one
//! `write` + one `fdatasync` per batch of received messages, and `unlink` to free.
//!
//! The spool's sled entries describe each log: its length (`SegmentMeta::log_bytes`) and its
//! CRC32C. A log is synced before sled hears of the bytes, so every length sled may hold is
//! durable in the log; after a crash the open segment's log is cut back to the length sled knows
//! (the messages past it were never acknowledged, so Pulsar redelivers them).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IngesterError, Result};

/// Bytes to append to one segment's log.
#[derive(Debug)]
pub struct LogWrite {
    pub segment_no: u64,
    /// The segment was opened by this batch: start its log empty (a log left by a batch that
    /// never became durable may hold the same number).
    pub fresh: bool,
    pub bytes: Vec<u8>,
}

/// The record logs of one rule.
#[derive(Debug, Clone)]
pub struct RecordLogs {
    dir: PathBuf,
}

impl RecordLogs {
    pub fn new(dir: PathBuf) -> RecordLogs {
        RecordLogs { dir }
    }

    pub fn path(&self, segment_no: u64) -> PathBuf {
        self.dir
            .join(proto::types::segment_files::log_name(segment_no))
    }

    /// Appends every write and syncs each file (blocking IO; run it on a blocking thread). A new
    /// log's directory entry is synced too, so a synced log cannot vanish in a power loss.
    pub fn append_durably(&self, writes: &[LogWrite]) -> Result<()> {
        let mut created = false;
        for write in writes {
            let path = self.path(write.segment_no);
            let context = |what: &str| format!("{what} {}", path.display());
            let mut options = OpenOptions::new();
            if write.fresh {
                options.write(true).create(true).truncate(true);
                created = true;
            } else {
                options.append(true);
            }
            let mut file = options
                .open(&path)
                .map_err(|e| IngesterError::io(context("opening"), e))?;
            file.write_all(&write.bytes)
                .map_err(|e| IngesterError::io(context("writing"), e))?;
            file.sync_data()
                .map_err(|e| IngesterError::io(context("syncing"), e))?;
        }
        if created {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Cuts a log back to `len` bytes: what the spool knows to be durable. A log shorter than
    /// that lost synced data, which no crash of ours can cause: the disk is at fault.
    pub fn truncate(&self, segment_no: u64, len: u64) -> Result<()> {
        let path = self.path(segment_no);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => return Ok(()),
            Err(e) => return Err(IngesterError::io(format!("opening {}", path.display()), e)),
        };
        let actual = file
            .metadata()
            .map_err(|e| IngesterError::io(format!("reading {}", path.display()), e))?
            .len();
        if actual < len {
            return Err(IngesterError::Corrupt(format!(
                "record log {} holds {actual} bytes but the spool wrote {len} there",
                path.display()
            )));
        }
        if actual > len {
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(|e| IngesterError::io(format!("truncating {}", path.display()), e))?;
        }
        Ok(())
    }

    pub fn remove(&self, segment_no: u64) {
        remove_if_present(&self.path(segment_no));
    }

    /// Removes the spool files (logs, segment files) of segments no meta owns, left by a batch
    /// that never became durable or by a crash between freeing a segment and unlinking its
    /// files, and every half-written `.tmp` file.
    pub fn sweep(&self, owned: impl Fn(u64) -> bool) -> Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(IngesterError::io(
                    format!("listing {}", self.dir.display()),
                    e,
                ))
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let parsed = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(proto::types::segment_files::parse_name);
            // A temporary file is never in use at start-up (sealing starts over from the log).
            if let Some((segment_no, temporary)) = parsed {
                if temporary || !owned(segment_no) {
                    tracing::debug!(file = %path.display(), "removing a spool file no segment owns");
                    remove_if_present(&path);
                }
            }
        }
        Ok(())
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IngesterError::io(format!("syncing {}", dir.display()), e))
}

fn remove_if_present(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %err, "could not remove a spool file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> (tempfile::TempDir, RecordLogs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = RecordLogs::new(dir.path().to_path_buf());
        (dir, logs)
    }

    fn write(segment_no: u64, fresh: bool, bytes: &[u8]) -> LogWrite {
        LogWrite {
            segment_no,
            fresh,
            bytes: bytes.to_vec(),
        }
    }

    fn content(logs: &RecordLogs, no: u64) -> Vec<u8> {
        std::fs::read(logs.path(no)).expect("log")
    }

    #[test]
    fn appends_and_truncates() -> Result<()> {
        let (_dir, logs) = logs();
        logs.append_durably(&[write(7, true, b"a\nb\n")])?;
        logs.append_durably(&[write(7, false, b"c\n"), write(8, true, b"d\n")])?;
        assert_eq!(content(&logs, 7), b"a\nb\nc\n");

        // A batch that never reached sled: cut back to what the spool knows.
        logs.append_durably(&[write(7, false, b"lost\n")])?;
        logs.truncate(7, 6)?;
        assert_eq!(content(&logs, 7), b"a\nb\nc\n");

        // A fresh segment reusing a number starts empty.
        logs.append_durably(&[write(8, true, b"e\n")])?;
        assert_eq!(content(&logs, 8), b"e\n");

        // Shorter than the spool says: the disk lost synced data, and that is named.
        let err = logs
            .truncate(8, 9)
            .expect_err("shorter than the spool says");
        assert!(err.to_string().contains("holds 2 bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn sweep_keeps_only_files_of_owned_segments() -> Result<()> {
        let (dir, logs) = logs();
        logs.append_durably(&[write(1, true, b"a\n"), write(2, true, b"b\n")])?;
        let touch = |name: &str| {
            std::fs::write(dir.path().join(name), b"x").map_err(|e| IngesterError::io("writing", e))
        };
        touch("00000000000000000001.jsonl.gz")?;
        touch("00000000000000000002.jsonl.gz")?;
        touch("00000000000000000002.jsonl.tmp")?;
        touch("00000000000000000001.preseal.tmp")?;
        touch("notes.txt")?;
        logs.sweep(|no| no == 1)?;
        assert!(logs.path(1).exists());
        assert!(dir.path().join("00000000000000000001.jsonl.gz").exists());
        assert!(!logs.path(2).exists());
        assert!(!dir.path().join("00000000000000000002.jsonl.gz").exists());
        assert!(!dir.path().join("00000000000000000002.jsonl.tmp").exists());
        assert!(!dir.path().join("00000000000000000001.preseal.tmp").exists());
        assert!(
            dir.path().join("notes.txt").exists(),
            "not ours: left alone"
        );
        Ok(())
    }
}
