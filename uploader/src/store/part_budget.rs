//! How many parts a multipart upload keeps in flight.
//!
//! The uploader holds at most `2 × concurrency` parts in memory at once (`2 × part_size ×
//! concurrency` bytes, what the docs promise). With every upload slot busy, that is one part
//! being sent and one being read per upload. When fewer uploads run — a single large segment is
//! the common case — the idle share goes to the uploads that run: each may have `budget ÷
//! uploads running − 1` parts in flight besides the one it is reading. One TCP stream to COS
//! carries far less than the link, and the store checksums each part on its own, so parts sent
//! side by side finish a large object sooner.
//!
//! The share is read again before each part, so an upload that starts while another has many
//! parts in flight gets its share as those parts complete; until then the total may pass the
//! budget by the parts already in flight (at most `budget − 2`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Parts in flight per upload, whatever the share: beyond this more streams stop helping.
pub const MAX_PARTS_IN_FLIGHT: usize = 8;

#[derive(Clone, Debug)]
pub struct PartBudget {
    /// Parts (buffers) all uploads together may hold.
    parts: usize,
    running: Arc<AtomicUsize>,
}

impl PartBudget {
    /// `parts`: how many parts may be held at once across all uploads.
    pub fn new(parts: usize) -> PartBudget {
        PartBudget {
            parts: parts.max(2),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts an upload as running until the returned guard is dropped.
    pub fn begin(&self) -> RunningUpload {
        self.running.fetch_add(1, Ordering::SeqCst);
        RunningUpload {
            budget: self.clone(),
        }
    }

    /// Uploads running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// One upload's hold on the budget.
#[derive(Debug)]
pub struct RunningUpload {
    budget: PartBudget,
}

impl RunningUpload {
    /// Parts this upload may have in flight now, besides the one it is reading: at least 1.
    pub fn parts_in_flight(&self) -> usize {
        let running = self.budget.running().max(1);
        (self.budget.parts / running)
            .saturating_sub(1)
            .clamp(1, MAX_PARTS_IN_FLIGHT)
    }
}

impl Drop for RunningUpload {
    fn drop(&mut self) {
        self.budget.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_by_the_uploads_running() {
        // concurrency 4: 8 parts in all.
        let budget = PartBudget::new(8);
        let first = budget.begin();
        assert_eq!(first.parts_in_flight(), 7, "alone: 7 sending + 1 reading");
        let second = budget.begin();
        assert_eq!(first.parts_in_flight(), 3);
        let third = budget.begin();
        let fourth = budget.begin();
        assert_eq!(
            fourth.parts_in_flight(),
            1,
            "all slots busy: one sending, one reading"
        );
        drop((second, third, fourth));
        assert_eq!(budget.running(), 1);
        assert_eq!(first.parts_in_flight(), 7);
        drop(first);
        assert_eq!(budget.running(), 0);
    }

    #[test]
    fn at_least_one_and_at_most_the_cap() {
        let budget = PartBudget::new(2);
        let uploads: Vec<RunningUpload> = (0..5).map(|_| budget.begin()).collect();
        assert!(uploads.iter().all(|u| u.parts_in_flight() == 1));
        let big = PartBudget::new(128);
        assert_eq!(big.begin().parts_in_flight(), MAX_PARTS_IN_FLIGHT);
    }
}
