//! Log lines that cannot flood: events (a refused push, a closed
//! connection) counted by key and written as one WARN summary per
//! interval. The first event of an interval is logged in full by the
//! caller ([`LogSummary::note`] says when); the rest are counted and summed
//! up when the interval has passed ([`LogSummary::note`] or
//! [`LogSummary::flush`], which a service calls on a timer so the last
//! burst is summed up too). `/metrics` counts every event; the log only
//! says that they happen and what they are.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts by key, summed up in the log once per interval.
#[derive(Debug)]
pub struct LogSummary {
    what: &'static str,
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current interval started (`None`: no event yet).
    since: Option<Instant>,
    /// Events of the current interval not logged in full.
    counts: BTreeMap<String, u64>,
}

impl LogSummary {
    /// A summary of `what` ("pushes refused") every `every`.
    pub fn new(what: &'static str, every: Duration) -> Self {
        Self {
            what,
            every,
            state: Mutex::new(State {
                since: None,
                counts: BTreeMap::new(),
            }),
        }
    }

    /// Counts one event under `key` ("bad_signature app=shop-app"). Returns
    /// whether the caller should log this one in full: the first of an
    /// interval. Sums up the previous interval first when it has passed.
    pub fn note(&self, key: impl FnOnce() -> String) -> bool {
        let now = Instant::now();
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.close_interval(&mut s, now);
        if s.since.is_none() {
            s.since = Some(now);
            return true;
        }
        *s.counts.entry(key()).or_default() += 1;
        false
    }

    /// Sums up the interval if it has passed (call on a timer).
    pub fn flush(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.close_interval(&mut s, Instant::now());
    }

    fn close_interval(&self, s: &mut State, now: Instant) {
        let Some(since) = s.since else {
            return;
        };
        if now.duration_since(since) < self.every {
            return;
        }
        if !s.counts.is_empty() {
            let total: u64 = s.counts.values().sum();
            let by: Vec<String> = s.counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            tracing::warn!(
                count = total,
                seconds = since.elapsed().as_secs(),
                by = %by.join(", "),
                "{} more {} (not logged one by one; counted in /metrics)",
                total,
                self.what
            );
            s.counts.clear();
        }
        s.since = None;
    }

    /// Events counted and not yet summed up (for tests).
    pub fn pending(&self) -> u64 {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_full_line_then_counts_then_a_summary() {
        let log = LogSummary::new("pushes refused", Duration::from_millis(50));
        assert!(log.note(|| "bad_signature app=a".into()));
        for _ in 0..1000 {
            assert!(!log.note(|| "bad_signature app=a".into()));
        }
        assert!(!log.note(|| "malformed app=b".into()));
        assert_eq!(log.pending(), 1001);
        std::thread::sleep(Duration::from_millis(60));
        // The next interval: the last one summed up, this one in full.
        assert!(log.note(|| "bad_signature app=a".into()));
        assert_eq!(log.pending(), 0);
        assert!(!log.note(|| "bad_signature app=a".into()));
        std::thread::sleep(Duration::from_millis(60));
        log.flush();
        assert_eq!(log.pending(), 0);
    }
}
