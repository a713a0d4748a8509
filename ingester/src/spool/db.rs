//! The spool database (sled), reopened in place after it failed a write.
//!
//! sled 0.34 keeps the first IO error of a write (ENOSPC when the disk filled up, say) and
//! returns it from every write after, until the database is opened again: history entries,
//! commits (`mark_stored`) and the spool's own batches all kept failing long after the disk had
//! room again, so nothing was stored and freed any more. So nothing in the ingester holds a
//! handle beyond one operation: every caller asks [`Database`] for the current tree, and
//! [`Database::reopen`] can drop the broken instance and open the files again (sled locks them,
//! so the new instance opens only once the last handle of the old one is gone).
//!
//! What a reopened database holds may be behind what the ingester had in memory: writes sled
//! accepted but never made durable are gone. The caller re-reads its state from it (see
//! `IngesterApp`'s database watch).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::error::{IngesterError, Result};

/// sled errors turned into [`IngesterError`] in this process: when it moves, the database may
/// have failed, and [`Database::needs_reopen`] tries a write to find out.
static SLED_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Counted where sled errors become ours (`From<sled::Error> for IngesterError`).
pub(crate) fn count_error() {
    SLED_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// sled's own threads may hold the old instance's files for a moment after its last handle is
/// dropped (writes in flight): a reopen waits this long for them.
const LOCK_WAIT: Duration = Duration::from_secs(1);

const PROBE_TREE: &str = "meta";
const PROBE_KEY: &str = "write_probe";

pub struct Database {
    path: PathBuf,
    cache_capacity: u64,
    /// `None` between dropping a failed instance and opening the next one.
    current: RwLock<Option<sled::Db>>,
    /// A write or flush failed and a probe confirmed it: every write fails until the reopen.
    failed: AtomicBool,
    /// [`SLED_ERRORS`] when last probed.
    probed_at: AtomicU64,
    reopens: AtomicU64,
}

impl Database {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Database> {
        let db = open_sled(path, cache_capacity)?;
        Ok(Database {
            path: path.to_path_buf(),
            cache_capacity,
            current: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
            probed_at: AtomicU64::new(SLED_ERRORS.load(Ordering::Relaxed)),
            reopens: AtomicU64::new(0),
        })
    }

    /// The current instance. Keep it for one operation only: a handle kept longer stops the
    /// next reopen.
    pub fn handle(&self) -> Result<sled::Db> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(IngesterError::DatabaseReopening)
    }

    /// A tree of the current instance (for one operation, like [`Database::handle`]).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.handle()?.open_tree(name)?)
    }

    pub fn flush(&self) -> Result<()> {
        let flushed = self.handle()?.flush();
        self.note(flushed.map(|_| ()))
    }

    pub async fn flush_async(&self) -> Result<()> {
        let db = self.handle()?;
        let flushed = db.flush_async().await;
        drop(db);
        self.note(flushed.map(|_| ()))
    }

    pub fn generate_id(&self) -> Result<u64> {
        Ok(self.handle()?.generate_id()?)
    }

    /// How often the database was reopened since the start: state read from it before the
    /// last reopen may be ahead of what it holds now.
    pub fn generation(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }

    /// A failed flush means sled failed writing (it flushes what it already accepted): no need
    /// to probe.
    fn note(&self, result: sled::Result<()>) -> Result<()> {
        if let Err(err) = &result {
            if matches!(err, sled::Error::Io(_)) {
                self.failed.store(true, Ordering::SeqCst);
            }
        }
        Ok(result?)
    }

    /// Whether the instance is broken (or gone) and must be reopened. Cheap while no sled
    /// error was seen since the last call; otherwise a small write tells.
    pub fn needs_reopen(&self) -> bool {
        if self.failed.load(Ordering::SeqCst) {
            return true;
        }
        let Ok(db) = self.handle() else {
            return true; // a reopen that failed: try again
        };
        let errors = SLED_ERRORS.load(Ordering::Relaxed);
        if self.probed_at.swap(errors, Ordering::Relaxed) == errors {
            return false;
        }
        // sled refuses every write once it has failed one; an error it reports for a read or
        // a single operation leaves writes working.
        let broken = db
            .open_tree(PROBE_TREE)
            .and_then(|tree| tree.insert(PROBE_KEY, &[][..]))
            .is_err();
        if broken {
            self.failed.store(true, Ordering::SeqCst);
        }
        broken
    }

    /// Drops the current instance and opens the database again (blocking: sled joins its
    /// flusher thread). Fails while some operation still holds a handle of the old instance
    /// (sled's file lock): every caller gets [`IngesterError::DatabaseReopening`] meanwhile,
    /// so they finish quickly, and the next call succeeds.
    pub fn reopen(&self) -> Result<()> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Ours goes first: the file lock is released only with the last handle.
        drop(current.take());
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match open_sled(&self.path, self.cache_capacity) {
                // `open_sled` names a held lock DataDirInUse; here the holder is most likely the
                // old instance's own threads, about to let go.
                Err(IngesterError::DataDirInUse { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        *current = Some(db);
        self.failed.store(false, Ordering::SeqCst);
        self.probed_at
            .store(SLED_ERRORS.load(Ordering::Relaxed), Ordering::Relaxed);
        self.reopens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn open_sled(path: &Path, cache_capacity: u64) -> Result<sled::Db> {
    // A new Config each time: sled keeps the failed instance's error in its Config.
    let opened = sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .open();
    match opened {
        Ok(db) => Ok(db),
        // sled takes an exclusive lock on its file; another process holding it is the usual
        // reason, and its raw `Os { code: 11 }` says nothing to an operator. sled 0.34 (frozen)
        // wraps the WouldBlock in an `Other` error whose text is all that is left of it.
        Err(sled::Error::Io(err))
            if err.kind() == std::io::ErrorKind::WouldBlock
                || err.to_string().contains("could not acquire lock") =>
        {
            Err(IngesterError::DataDirInUse {
                path: path.to_path_buf(),
            })
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A database in `dir` with a small cache, for tests.
    pub(crate) fn open_in(dir: &Path) -> Database {
        Database::open(dir, 8 << 20).expect("sled opens")
    }

    #[test]
    fn a_locked_database_says_another_ingester_uses_the_data_dir() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let path = dir.path().join("spool.sled");
        let _first = open_in(&path);
        let Err(err) = Database::open(&path, 8 << 20) else {
            panic!("a second open of a locked database succeeded");
        };
        assert!(matches!(err, IngesterError::DataDirInUse { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("another ingester is using this data_dir"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn reopens_once_no_handle_of_the_old_instance_is_left() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_in(&dir.path().join("db"));
        db.open_tree("t")?.insert("k", "v")?;
        db.flush()?;
        assert!(!db.needs_reopen(), "healthy");

        let kept = db.open_tree("t")?;
        let err = db
            .reopen()
            .expect_err("a handle of the old instance holds the lock");
        assert!(err.to_string().contains("lock"), "{err}");
        assert!(
            matches!(db.open_tree("t"), Err(IngesterError::DatabaseReopening)),
            "callers are told to come back while it is closed"
        );
        assert_eq!(
            IngesterError::DatabaseReopening.code(),
            tonic::Code::Unavailable
        );
        assert!(db.needs_reopen(), "closed is broken");
        drop(kept);

        db.reopen()?;
        assert_eq!(db.open_tree("t")?.get("k")?.as_deref(), Some(&b"v"[..]));
        db.open_tree("t")?.insert("k2", "v2")?;
        db.flush()?;
        assert!(!db.needs_reopen());
        assert_eq!(db.generation(), 1);
        Ok(())
    }

    #[test]
    fn a_reopen_waits_for_the_old_instance_to_let_go_of_its_lock() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| IngesterError::io("tempdir", e))?;
        let db = open_in(&dir.path().join("db"));
        // What sled's own threads do after the last handle is dropped: hold the files a moment.
        let held = db.open_tree("t")?;
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        db.reopen()?;
        release
            .join()
            .map_err(|_| IngesterError::Corrupt("release thread panicked".into()))?;
        assert!(!db.needs_reopen());
        Ok(())
    }

    #[test]
    fn a_failed_flush_asks_for_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_in(&dir.path().join("db"));
        let io = sled::Error::Io(std::io::Error::from_raw_os_error(28));
        assert!(db.note(Err(io)).is_err());
        assert!(db.needs_reopen());
        db.reopen().expect("reopens");
        assert!(!db.needs_reopen());
    }
}
