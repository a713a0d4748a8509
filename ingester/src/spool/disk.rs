//! Free space on the spool's filesystem: consumption pauses well before the disk is full.
//!
//! Why a quota (`max_spool_bytes`) is not enough: the disk may be smaller than the quota, or
//! shared, and a spool that fills it to the last byte cannot get out again. Sealing writes a
//! second copy of each segment (its log stays until the segment is acknowledged) and every commit
//! and history entry is a database write: with no room for those, nothing is uploaded, so
//! nothing is acknowledged and freed. So each rule stops taking messages while the free space is
//! below `disk_reserve_bytes` plus what sealing the segments not yet sealed will write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a check found: free bytes on the filesystem and the bytes that must stay free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub free: u64,
    pub needed: u64,
}

impl Room {
    pub fn is_enough(&self) -> bool {
        self.free >= self.needed
    }
}

/// The data dir's filesystem, shared by every rule (they fill the same disk).
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    /// Per rule, the bytes its unsealed segments will take when they are sealed.
    sealing: Mutex<HashMap<String, u64>>,
}

impl DiskSpace {
    pub fn new(dir: PathBuf, reserve: u64) -> DiskSpace {
        DiskSpace {
            dir,
            reserve,
            sealing: Mutex::new(HashMap::new()),
        }
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes an unprivileged writer may still use there; `None` if the filesystem cannot say.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.dir)
    }

    /// Notes that sealing `rule`'s unsealed segments will write `sealing` bytes, and says how
    /// much room there is for more. `None` when the free space is unknown: then only a failed
    /// write stops consumption.
    pub fn check(&self, rule: &str, sealing: u64) -> Option<Room> {
        let needed = {
            let mut all = self.sealing.lock().unwrap_or_else(|e| e.into_inner());
            all.insert(rule.to_string(), sealing);
            needed_bytes(self.reserve, all.values().copied())
        };
        Some(Room {
            free: self.free_bytes()?,
            needed,
        })
    }

    /// A rule that stopped (or was deleted) writes nothing more.
    pub fn forget(&self, rule: &str) {
        self.sealing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(rule);
    }
}

/// The reserve plus what sealing every rule's unsealed segments will write.
fn needed_bytes(reserve: u64, sealing: impl Iterator<Item = u64>) -> u64 {
    sealing.fold(reserve, u64::saturating_add)
}

#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => Some(stat.f_bavail.saturating_mul(stat.f_frsize)),
        Err(err) => {
            tracing::debug!(dir = %dir.display(), error = %err, "statvfs failed; free space unknown");
            None
        }
    }
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_the_reserve_plus_every_rules_sealing() {
        assert_eq!(needed_bytes(100, [].into_iter()), 100);
        assert_eq!(needed_bytes(100, [5, 7].into_iter()), 112);
        assert_eq!(needed_bytes(u64::MAX, [1].into_iter()), u64::MAX);

        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskSpace::new(dir.path().to_path_buf(), 1_000);
        let a = disk.check("a", 10).expect("statvfs on a tempdir");
        assert_eq!(a.needed, 1_010);
        assert!(a.free > 0, "{a:?}");
        // Both rules share the disk: each check counts the other's sealing too.
        assert_eq!(disk.check("b", 20).map(|r| r.needed), Some(1_030));
        assert_eq!(disk.check("a", 0).map(|r| r.needed), Some(1_020));
        disk.forget("b");
        assert_eq!(disk.check("a", 0).map(|r| r.needed), Some(1_000));
    }

    #[test]
    fn a_reserve_larger_than_the_disk_is_never_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskSpace::new(dir.path().to_path_buf(), u64::MAX);
        let room = disk.check("a", 0).expect("statvfs on a tempdir");
        assert!(!room.is_enough(), "{room:?}");
    }
}
