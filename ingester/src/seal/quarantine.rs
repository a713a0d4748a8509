//! sealed → closed: a segment file that failed its checksum is moved aside and written again
//! from its record log (invariant 3).

use std::path::PathBuf;

use crate::error::{IngesterError, Result};
use crate::spool::keys::{segment_key, to_json};
use crate::spool::{RuleSpool, SegmentState};

impl RuleSpool {
    /// sealed → closed: the file failed its checksum. It is moved aside for inspection and will
    /// be written again from the records, which are still in the spool.
    pub fn quarantine(&self, segment_no: u64) -> Result<PathBuf> {
        let mut state = self.lock();
        let Some(meta) = state.segments.get_mut(&segment_no) else {
            return Err(IngesterError::SegmentNotFound {
                rule: self.rule.clone(),
                segment_no,
            });
        };
        let path = self.segment_file(meta);
        std::fs::create_dir_all(&self.quarantine_dir)
            .map_err(|e| IngesterError::io("creating the quarantine folder", e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let dest = self.quarantine_dir.join(format!(
            "{name}.{}.damaged",
            proto::types::time::now_millis()
        ));
        if path.exists() {
            std::fs::rename(&path, &dest)
                .map_err(|e| IngesterError::io("quarantining a segment", e))?;
        }
        meta.state = SegmentState::Closed;
        meta.times_quarantined += 1;
        let value = to_json(&*meta)?;
        self.tree()?
            .insert(segment_key(&self.rule, segment_no), value)?;
        Ok(dest)
    }
}
