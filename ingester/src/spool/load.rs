//! Reading a rule's spool from sled and its record logs: at open, after a failed write
//! (`reload`) and after the database was reopened (`reread`).

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

        let counters = match tree.get(key(COUNTERS, &name, &[]))? {
            Some(v) => from_json("counters", &v)?,
            None => Counters::default(),
        };
        let load_positions = |tag: u8| -> Result<BTreeMap<i32, Position>> {
            let mut map = BTreeMap::new();
            let prefix = key(tag, &name, &[]);
            for item in tree.scan_prefix(&prefix) {
                let (k, v) = item?;
                let partition = partition_from_suffix(&k[prefix.len()..])
                    .ok_or_else(|| IngesterError::Corrupt("position key".into()))?;
                map.insert(partition, from_json::<Position>("position", &v)?);
            }
            Ok(map)
        };
        let watermarks = load_positions(WATERMARK)?;
        let acked = load_positions(ACKED)?;

        let logs = RecordLogs::new(segments_dir.clone());
        let mut metas = Vec::new();
        for item in tree.scan_prefix(key(SEGMENT, &name, &[])) {
            let (_, v) = item?;
            metas.push(from_json::<SegmentMeta>("segment meta", &v)?);
        }
        logs.sweep(|no| metas.iter().any(|m| m.segment_no == no))?;

        let mut open = None;
        let mut segments = BTreeMap::new();
        let mut to_seal = Vec::new();
        for mut meta in metas {
            match meta.state {
                SegmentState::Open => {
                    logs.truncate(meta.segment_no, meta.log_bytes)?;
                    open = Some(meta);
                }
                SegmentState::Closed => {
                    to_seal.push(meta.segment_no);
                    segments.insert(meta.segment_no, meta);
                }
                SegmentState::Sealed => {
                    // The file is the uploader's input: if it vanished, write it again.
                    if !segment_path(&segments_dir, &meta).exists() {
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
                counters,
                policy: policy_of(rule),
                target: Target::of(rule),
                watermarks,
                acked,
                open,
                segments,
                encoder: None,
            }),
            sealed_notify,
            appending: Arc::default(),
        };
        Ok((Arc::new(spool), to_seal))
    }

    /// Re-reads the whole state from disk (after a failed write).
    pub(crate) fn reload(&self) -> Result<()> {
        self.reload_from(self.tree()?)
    }

    fn reload_from(&self, tree: sled::Tree) -> Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut state = self.lock();
        let counters = match tree.get(key(COUNTERS, &self.rule, &[]))? {
            Some(v) => from_json("counters", &v)?,
            None => Counters::default(),
        };
        let mut watermarks = BTreeMap::new();
        let prefix = key(WATERMARK, &self.rule, &[]);
        for item in tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            if let Some(p) = partition_from_suffix(&k[prefix.len()..]) {
                watermarks.insert(p, from_json::<Position>("watermark", &v)?);
            }
        }
        let mut open = None;
        let mut segments = BTreeMap::new();
        for item in tree.scan_prefix(key(SEGMENT, &self.rule, &[])) {
            let (_, v) = item?;
            let meta: SegmentMeta = from_json("segment meta", &v)?;
            if meta.state == SegmentState::Open {
                open = Some(meta);
            } else {
                segments.insert(meta.segment_no, meta);
            }
        }
        if let Some(open) = &open {
            self.logs.truncate(open.segment_no, open.log_bytes)?;
        }
        state.encoder = None;
        state.counters = counters;
        state.watermarks = watermarks;
        state.open = open;
        state.segments = segments;
        Ok(())
    }

    /// After the database was reopened (see `db.rs`): it may hold less than this spool had in
    /// memory, as writes sled accepted but never made durable are gone. Goes back to what it
    /// holds, as after a failed write. Returns the closed segments, to be sealed (again, if the
    /// database lost a seal).
    pub fn reread(&self) -> Result<Vec<u64>> {
        let generation = self.db.generation();
        self.reload_from(self.db.open_tree(SPOOL_TREE)?)?;
        self.read_generation.store(generation, Ordering::SeqCst);
        let state = self.lock();
        Ok(state
            .segments
            .values()
            .filter(|m| m.state == SegmentState::Closed)
            .map(|m| m.segment_no)
            .collect())
    }
}
