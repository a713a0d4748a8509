//! Named crash points for the kill -9 tests (sled's and quickwit's failpoints, reduced to what
//! the tests need): `TDMQ_BACKUP_FAILPOINTS=uploader:after_put@3,ingester:before_ack` makes the
//! process abort — no destructors, no flushes, like SIGKILL — the 3rd time it passes
//! `uploader:after_put`, and the 1st time it passes `ingester:before_ack`.
//!
//! Unset (production), [`hit`] costs one relaxed atomic load after the first call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "TDMQ_BACKUP_FAILPOINTS";

struct Points {
    /// name → (hit at which to abort, hits so far)
    armed: HashMap<String, (u64, AtomicU64)>,
}

fn points() -> &'static Points {
    static POINTS: OnceLock<Points> = OnceLock::new();
    POINTS.get_or_init(|| Points {
        armed: parse(&std::env::var(ENV).unwrap_or_default()),
    })
}

fn parse(spec: &str) -> HashMap<String, (u64, AtomicU64)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('@') {
            Some((name, n)) => (
                name.to_string(),
                (n.parse().unwrap_or(1).max(1), AtomicU64::new(0)),
            ),
            None => (item.to_string(), (1, AtomicU64::new(0))),
        })
        .collect()
}

/// Aborts the process if `name` is armed and this is the hit it is armed for.
pub fn hit(name: &str) {
    let points = points();
    if points.armed.is_empty() {
        return;
    }
    if let Some((at, count)) = points.armed.get(name) {
        if count.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!("failpoint {name} reached (hit {at}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_counts() {
        let armed = parse("a, b@3 ,,c@x");
        assert_eq!(armed.get("a").map(|p| p.0), Some(1));
        assert_eq!(armed.get("b").map(|p| p.0), Some(3));
        assert_eq!(armed.get("c").map(|p| p.0), Some(1));
        assert_eq!(armed.len(), 3);
    }
}
