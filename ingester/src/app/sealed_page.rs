//! Which sealed segments one ListSealed page offers the uploader: shared fairly between rules.
//!
//! The uploader asks for a page of at most 1,000 segments and skips the ones it is backing off
//! from. Oldest first across all rules, a rule whose uploads keep failing (a wrong bucket, a
//! store refusing it) piles up sealed segments that fill every page, and the other rules'
//! segments are never offered at all. So a page is dealt round by round: every rule's oldest
//! segment, then every rule's second oldest, and so on. Within a round, rules go by the age of
//! their oldest segment, so with one rule, or with rules that keep up, the page is still oldest
//! first.

use std::collections::{BTreeMap, VecDeque};

/// One sealed segment offered for upload: its rule, when it was sealed, and what is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<T> {
    pub rule: String,
    pub sealed_at_ms: u64,
    pub item: T,
}

/// At most `max` (at least 1) of `candidates`, dealt round-robin across rules (see the module
/// doc).
pub fn select<T>(candidates: Vec<Candidate<T>>, max: usize) -> Vec<T> {
    let max = max.max(1);
    let mut by_rule: BTreeMap<String, Vec<(u64, T)>> = BTreeMap::new();
    for c in candidates {
        by_rule
            .entry(c.rule)
            .or_default()
            .push((c.sealed_at_ms, c.item));
    }
    let mut queues: Vec<VecDeque<(u64, T)>> = by_rule
        .into_values()
        .map(|mut segments| {
            segments.sort_by_key(|(at, _)| *at);
            VecDeque::from(segments)
        })
        .collect();
    // Stable: rules whose oldest segments were sealed in the same millisecond keep name order.
    queues.sort_by_key(|q| q.front().map_or(u64::MAX, |(at, _)| *at));

    let mut page = Vec::new();
    while page.len() < max && queues.iter().any(|q| !q.is_empty()) {
        for queue in &mut queues {
            if page.len() == max {
                break;
            }
            if let Some((_, item)) = queue.pop_front() {
                page.push(item);
            }
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(rule: &str, sealed_at_ms: u64) -> Candidate<(String, u64)> {
        Candidate {
            rule: rule.to_string(),
            sealed_at_ms,
            item: (rule.to_string(), sealed_at_ms),
        }
    }

    fn page(candidates: Vec<Candidate<(String, u64)>>, max: usize) -> Vec<(String, u64)> {
        select(candidates, max)
    }

    fn item(rule: &str, at: u64) -> (String, u64) {
        (rule.to_string(), at)
    }

    /// A rule whose uploads keep failing piles up old segments; they must not fill every page.
    #[test]
    fn a_rule_with_many_old_segments_does_not_fill_the_page() {
        let mut candidates: Vec<_> = (0..5000).map(|at| candidate("broken", at)).collect();
        candidates.extend((0..3).map(|i| candidate("good", 10_000 + i)));
        let got = page(candidates, 6);
        assert_eq!(got.len(), 6);
        assert_eq!(
            got.iter().filter(|(rule, _)| rule == "good").count(),
            3,
            "{got:?}"
        );
    }

    #[test]
    fn rounds_go_oldest_first_within_a_rule_and_across_rules() {
        let candidates = vec![
            candidate("b", 5),
            candidate("a", 3),
            candidate("c", 1),
            candidate("a", 2),
            candidate("a", 9),
            candidate("b", 4),
        ];
        // Round 1: each rule's oldest, rules by that age (c@1, a@2, b@4); round 2: a@3, b@5;
        // round 3: a@9.
        assert_eq!(
            page(candidates.clone(), 10),
            vec![
                item("c", 1),
                item("a", 2),
                item("b", 4),
                item("a", 3),
                item("b", 5),
                item("a", 9)
            ]
        );
        assert_eq!(
            page(candidates.clone(), 4),
            vec![item("c", 1), item("a", 2), item("b", 4), item("a", 3)]
        );
        assert_eq!(page(candidates, 0), vec![item("c", 1)], "at least one");
        assert_eq!(page(Vec::new(), 5), Vec::<(String, u64)>::new());
    }

    #[test]
    fn a_single_rule_pages_oldest_first() {
        let candidates = vec![candidate("a", 3), candidate("a", 1), candidate("a", 2)];
        assert_eq!(page(candidates, 2), vec![item("a", 1), item("a", 2)]);
    }
}
