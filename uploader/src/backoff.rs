//! Capped exponential backoff with jitter, for the ingester connection and for failed segments.
//!
//! "Equal jitter": half the capped delay is fixed, the other half random. The fixed half keeps a
//! failing store from being hammered; the random half keeps many retries from moving in lockstep.

use std::time::Duration;

use rand::Rng;

/// The first retry waits about this long.
pub const BASE_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            base: BASE_DELAY.min(max),
            max,
        }
    }

    /// The un-jittered delay before retry number `attempt` (1 = first retry): base · 2^(attempt-1),
    /// at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exponent).min(self.max)
    }

    /// The delay to wait before retry number `attempt`: in [ceiling/2, ceiling].
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rng.gen_range(0..=spread))
    }

    /// [`Backoff::delay`] with the thread's RNG.
    pub fn delay_now(&self, attempt: u32) -> Duration {
        self.delay(attempt, &mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_secs(30));
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(2));
        assert_eq!(b.ceiling(7), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delay_is_jittered_within_half_and_full_ceiling() {
        let b = Backoff::new(Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            let ceiling = b.ceiling(attempt);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
                assert!(d <= b.max);
                seen.insert(d);
            }
            assert!(seen.len() > 1, "attempt {attempt}: no jitter");
        }
    }

    #[test]
    fn small_max_caps_the_base_too() {
        let b = Backoff::new(Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        let mut rng = StdRng::seed_from_u64(1);
        assert!(b.delay(5, &mut rng) <= Duration::from_millis(100));
    }
}
