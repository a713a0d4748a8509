//! The data dir's spool id, part of every object name.
//!
//! Two ingesters of one subscription (a Failover standby, a rebuilt host) can cut the same
//! messages into segments that start at the same message in the same window; the spool id is
//! what keeps one's object from overwriting the other's with different contents. It was a CRC32C
//! of start time and pid (32 bits, and two hosts started in the same instant with the same pid
//! — containers — collide): new ids are 64 random bits, 16 hex digits. An id already in the
//! database is kept whatever its length, so existing objects keep their names.

use rand::RngCore as _;

use crate::error::Result;

/// The id kept in the database's `meta` tree; made and flushed on first use.
pub fn load_or_create(db: &sled::Db) -> Result<String> {
    let meta = db.open_tree("meta")?;
    if let Some(id) = meta.get("spool_id")? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let id = format!("{:016x}", rand::rngs::OsRng.next_u64());
    meta.insert("spool_id", id.as_bytes())?;
    db.flush()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::load_or_create;

    fn db(dir: &std::path::Path) -> sled::Db {
        sled::open(dir).expect("sled")
    }

    #[test]
    fn a_new_id_is_64_random_bits_and_is_kept() {
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let id_a = load_or_create(&db(a.path())).expect("id");
        let id_b = load_or_create(&db(b.path())).expect("id");
        for id in [&id_a, &id_b] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
        assert_ne!(id_a, id_b, "two data dirs, two ids");
        // Reopened: the same id (it names every object this ingester writes).
        assert_eq!(load_or_create(&db(a.path())).expect("id"), id_a);
    }

    #[test]
    fn an_existing_short_id_is_kept() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let db = db(dir.path());
            db.open_tree("meta")
                .expect("meta")
                .insert("spool_id", &b"5f3a9c01"[..])
                .expect("insert");
            db.flush().expect("flush");
        }
        assert_eq!(load_or_create(&db(dir.path())).expect("id"), "5f3a9c01");
    }
}
