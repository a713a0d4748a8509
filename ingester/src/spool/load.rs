//! Reading a rule's spool from sled and its record logs: at open, after a failed write
//! (`reload`) and after the database was reopened (`reread`), all through [`load`], so the three
//! cannot disagree about what a spool on disk means. A key or value it cannot read is an error
//! in all three: skipping it would drop a partition's watermark (its redeliveries would be
//! spooled twice) or a segment (its records would never be stored).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proto::types::{segment_files, RuleConfig};
use tokio::sync::Notify;

use super::db::Database;
use super::keys::{
    from_json, key, partition_from_suffix, ACKED, COUNTERS, SEGMENT, SPOOL_TREE, WATERMARK,
};
use super::record_log::RecordLogs;
use super::state::{policy_of, segment_path, Counters};
use super::{Position, RuleSpool, SegmentMeta, SegmentState, State, Target};
use crate::error::{IngesterError, Result};
use crate::seal::Presealing;

/// A rule's spool as sled and the record logs hold it.
struct Loaded {
    counters: Counters,
    watermarks: BTreeMap<i32, Position>,
    acked: BTreeMap<i32, Position>,
    /// By lane (see [`super::lane_of`]).
    open: BTreeMap<i32, SegmentMeta>,
    /// Every segment that is not open, by number.
    segments: BTreeMap<u64, SegmentMeta>,
    /// The closed segments, to be sealed.
    to_seal: Vec<u64>,
}

/// Reads `rule`'s keys. The open segment's log is cut back to the length sled knows
/// (invariant 1), and a sealed segment whose file vanished is closed again, to be sealed anew.
fn load(tree: &sled::Tree, rule: &str, logs: &RecordLogs, segments_dir: &Path) -> Result<Loaded> {
    let counters = match tree.get(key(COUNTERS, rule, &[]))? {
        Some(v) => from_json("counters", &v)?,
        None => Counters::default(),
    };
    let watermarks = load_positions(tree, WATERMARK, rule)?;
    let acked = load_positions(tree, ACKED, rule)?;
    let mut open = BTreeMap::new();
    let mut segments = BTreeMap::new();
    let mut to_seal = Vec::new();
    for item in tree.scan_prefix(key(SEGMENT, rule, &[])) {
        let (_, v) = item?;
        let mut meta: SegmentMeta = from_json("segment meta", &v)?;
        match meta.state {
            SegmentState::Open => {
                logs.truncate(meta.segment_no, meta.log_bytes)?;
                open.insert(meta.lane(), meta);
            }
            SegmentState::Closed => {
                to_seal.push(meta.segment_no);
                segments.insert(meta.segment_no, meta);
            }
            SegmentState::Sealed => {
                // The file is the uploader's input: if it vanished, write it again.
                if !segment_path(segments_dir, &meta).exists() {
                    meta.state = SegmentState::Closed;
                    to_seal.push(meta.segment_no);
                }
                segments.insert(meta.segment_no, meta);
            }
            SegmentState::Stored => {
                segments.insert(meta.segment_no, meta);
            }
        }
    }
    Ok(Loaded {
        counters,
        watermarks,
        acked,
        open,
        segments,
        to_seal,
    })
}

/// The positions under `tag` (watermarks or acks), by partition.
fn load_positions(tree: &sled::Tree, tag: u8, rule: &str) -> Result<BTreeMap<i32, Position>> {
    let mut positions = BTreeMap::new();
    let prefix = key(tag, rule, &[]);
    for item in tree.scan_prefix(&prefix) {
        let (k, v) = item?;
        let partition = partition_from_suffix(&k[prefix.len()..]).ok_or_else(|| {
            IngesterError::Corrupt(format!(
                "rule {rule:?}: position key {:?} names no partition",
                String::from_utf8_lossy(&k)
            ))
        })?;
        positions.insert(partition, from_json::<Position>("position", &v)?);
    }
    Ok(positions)
}

impl RuleSpool {
    /// Opens (or recovers) a rule's spool. Returns the spool and the closed segments that still
    /// need sealing.
    pub fn open(
        db: &Arc<Database>,
        spool_id: &str,
        data_dir: &Path,
        rule: &RuleConfig,
        sealed_notify: Arc<Notify>,
    ) -> Result<(Arc<RuleSpool>, Vec<u64>)> {
        let generation = db.generation();
        let tree = db.open_tree(SPOOL_TREE)?;
        let name = rule.name.clone();
        let segments_dir = segment_files::segments_dir(data_dir, &name);
        let quarantine_dir = segment_files::quarantine_dir(data_dir, &name);
        std::fs::create_dir_all(&segments_dir)
            .map_err(|e| IngesterError::io(format!("creating {}", segments_dir.display()), e))?;
        let logs = RecordLogs::new(segments_dir.clone());
        let loaded = load(&tree, &name, &logs, &segments_dir)?;
        // Only here, never at a reload: a reload may run while a seal writes its temporary file.
        logs.sweep(|no| {
            loaded.segments.contains_key(&no) || loaded.open.values().any(|o| o.segment_no == no)
        })?;
        let spool = RuleSpool {
            rule: name,
            spool_id: spool_id.to_string(),
            db: db.clone(),
            read_generation: AtomicU64::new(generation),
            segments_dir,
            quarantine_dir,
            logs,
            presealing: Presealing::default(),
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                counters: loaded.counters,
                policy: policy_of(rule),
                target: Target::of(rule),
                fence: rule.fence,
                watermarks: loaded.watermarks,
                acked: loaded.acked,
                open: loaded.open,
                segments: loaded.segments,
                encoders: BTreeMap::new(),
            }),
            sealed_notify,
            appending: Arc::default(),
        };
        Ok((Arc::new(spool), loaded.to_seal))
    }

    /// Re-reads the whole state from disk (after a failed write).
    pub(crate) fn reload(&self) -> Result<()> {
        self.reload_from(&self.tree()?).map(|_| ())
    }

    /// Replaces the in-memory state by what `tree` holds; returns the closed segments.
    fn reload_from(&self, tree: &sled::Tree) -> Result<Vec<u64>> {
        // Before the state changes: a preseal started from the old state is stale from here on.
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        let loaded = load(tree, &self.rule, &self.logs, &self.segments_dir)?;
        state.encoders.clear();
        state.counters = loaded.counters;
        state.watermarks = loaded.watermarks;
        state.acked = loaded.acked;
        state.open = loaded.open;
        state.segments = loaded.segments;
        Ok(loaded.to_seal)
    }

    /// After the database was reopened (see `db.rs`): it may hold less than this spool had in
    /// memory, as writes sled accepted but never made durable are gone. Goes back to what it
    /// holds, as after a failed write. Returns the closed segments, to be sealed (again, if the
    /// database lost a seal).
    pub fn reread(&self) -> Result<Vec<u64>> {
        let generation = self.db.generation();
        let to_seal = self.reload_from(&self.db.open_tree(SPOOL_TREE)?)?;
        self.read_generation.store(generation, Ordering::SeqCst);
        Ok(to_seal)
    }
}
