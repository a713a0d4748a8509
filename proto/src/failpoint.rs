//! Named crash points for the kill -9 tests: the names and the spec that arms them. Hitting one
//! (reading the environment, aborting) is the processes' business, in `edge::failpoint`.
//!
//! `TDMQ_BACKUP_FAILPOINTS=uploader:after_put@3,ingester:before_ack` arms `uploader:after_put`
//! for its 3rd hit and `ingester:before_ack` for its 1st.

use std::collections::HashMap;

/// The environment variable that arms failpoints; the tests set it on the daemons they start.
pub const ENV: &str = "TDMQ_BACKUP_FAILPOINTS";

/// `name[@N],...` → name → the hit (1-based) at which it fires. A count that is not a positive
/// number counts as 1: a test that arms a point wants it to fire.
pub fn parse(spec: &str) -> HashMap<String, u64> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1)),
            None => (item.to_string(), 1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_counts() {
        let armed = parse("a, b@3 ,,c@x,d@0");
        assert_eq!(armed.get("a"), Some(&1));
        assert_eq!(armed.get("b"), Some(&3));
        assert_eq!(armed.get("c"), Some(&1));
        assert_eq!(armed.get("d"), Some(&1));
        assert_eq!(armed.len(), 4);
    }
}
