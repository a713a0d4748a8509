//! Hitting the crash points named in `proto::failpoint` (sled's and quickwit's failpoints,
//! reduced to what the kill -9 tests need): an armed point aborts the process — no destructors,
//! no flushes, like SIGKILL — at the hit it is armed for.
//!
//! Unset (production), [`hit`] costs one relaxed atomic load after the first call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use proto::failpoint::ENV;

struct Points {
    /// name → (hit at which to abort, hits so far)
    armed: HashMap<String, (u64, AtomicU64)>,
}

fn points() -> &'static Points {
    static POINTS: OnceLock<Points> = OnceLock::new();
    POINTS.get_or_init(|| Points {
        armed: proto::failpoint::parse(&std::env::var(ENV).unwrap_or_default())
            .into_iter()
            .map(|(name, at)| (name, (at, AtomicU64::new(0))))
            .collect(),
    })
}

/// Aborts the process if `name` is armed and this is the hit it is armed for.
pub fn hit(name: &str) {
    let points = points();
    if points.armed.is_empty() {
        return;
    }
    if let Some((at, count)) = points.armed.get(name) {
        if count.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            // The tests read this line to tell the armed abort from any other death.
            eprintln!("failpoint {name} reached (hit {at}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unarmed_point_is_passed() {
        // The test runner does not set the variable; a name nobody arms never aborts.
        for _ in 0..3 {
            hit("edge:test_point_never_armed");
        }
    }
}
