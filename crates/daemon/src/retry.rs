//! The daemon's one retry policy: exponential pauses from a first to a
//! longest, each with jitter, built by `backon` (the crate `api-client`
//! retries its calls with). Every retrying loop takes its pauses here:
//! replies (the outbox's recorder), campaign chunks (the scheduler) and
//! handler calls.
//!
//! The pause after the n-th failed try is drawn between half and all of
//! `min(first * 2^(n-1), longest)`: never longer than the cap, and spread
//! so that replies that failed together are not tried again together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff with jitter and a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failed try (before jitter).
    pub first: Duration,
    /// No pause is longer.
    pub longest: Duration,
}

impl Backoff {
    /// From the first pause and the cap (a cap below the first pause is
    /// raised to it).
    pub fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest: longest.max(first),
        }
    }

    /// The pauses of an in-process retry loop, one per failed try.
    pub fn pauses(&self) -> impl Iterator<Item = Duration> {
        // backon adds jitter of up to the delay itself ([d, 2d)); halving
        // both ends gives [d/2, d) with d capped at `longest`.
        ExponentialBuilder::default()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.longest / 2)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The pause after `failed` failed tries (1: the first), for retries
    /// kept in rows (`next_attempt_at`), where no loop lives between
    /// tries.
    pub fn after(&self, failed: u32) -> Duration {
        let n = usize::try_from(failed.clamp(1, 32) - 1).unwrap_or(0);
        self.pauses().nth(n).unwrap_or(self.longest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter_below_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for failed in 1..=12 {
            let d = b.after(failed);
            let full = (Duration::from_millis(100) * 2u32.pow(failed - 1)).min(b.longest);
            assert!(
                d >= full / 2 && d <= full,
                "try {failed}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.after(3), Duration::ZERO);
        // Jitter: pauses of replies that failed together spread out.
        let draws: std::collections::HashSet<Duration> = (0..20).map(|_| b.after(2)).collect();
        assert!(draws.len() > 1);
    }
}
