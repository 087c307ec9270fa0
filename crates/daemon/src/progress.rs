//! Stage progress: when each stage of the pipeline last did work and
//! whether it has work due. The stages advance it; the admin listener's
//! `/readyz`, the stall watcher and systemd's watchdog read it
//! ([`crate::admin::health`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stage of the pipeline whose progress is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Pushes committed (database or spool).
    Ingest,
    /// Pushes decided.
    Decide,
    /// Replies settled.
    Send,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::Ingest, Stage::Decide, Stage::Send];

    fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Decide => "decide",
            Stage::Send => "send",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn now_ms() -> i64 {
    std::time::UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When each stage last made progress, and whether it has work due.
#[derive(Debug)]
pub(crate) struct Progress {
    last: [AtomicI64; 3],
    due: [AtomicBool; 3],
    stalled: [AtomicBool; 3],
    /// Pushes waiting to be committed (in the webhook, not yet answered).
    pub ingest_waiting: AtomicI64,
}

impl Default for Progress {
    fn default() -> Self {
        let now = now_ms();
        Self {
            last: [
                AtomicI64::new(now),
                AtomicI64::new(now),
                AtomicI64::new(now),
            ],
            due: Default::default(),
            stalled: Default::default(),
            ingest_waiting: AtomicI64::new(0),
        }
    }
}

impl Progress {
    /// The stage did some work just now.
    pub(crate) fn advance(&self, stage: Stage) {
        self.last[stage.index()].store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the stage has work due (read by the checker).
    pub(crate) fn set_due(&self, stage: Stage, due: bool) {
        self.due[stage.index()].store(due, Ordering::Relaxed);
    }

    /// The stages that have work due and made no progress for `stall`,
    /// with the seconds since their last progress.
    pub(crate) fn stalled(&self, stall: Duration) -> Vec<(&'static str, i64)> {
        let now = now_ms();
        let limit = i64::try_from(stall.as_millis()).unwrap_or(i64::MAX);
        Stage::ALL
            .iter()
            .filter_map(|s| {
                let since = now - self.last[s.index()].load(Ordering::Relaxed);
                let due = self.due[s.index()].load(Ordering::Relaxed)
                    || (*s == Stage::Ingest && self.ingest_waiting.load(Ordering::Relaxed) > 0);
                (due && since > limit).then_some((s.name(), since / 1000))
            })
            .collect()
    }

    /// Updates the `pubbot_stage_stalled{stage}` gauges and logs each
    /// change once.
    pub(crate) fn report(&self, stall: Duration) {
        let stalled = self.stalled(stall);
        for s in Stage::ALL {
            let now = stalled.iter().find(|(n, _)| *n == s.name());
            let was = self.stalled[s.index()].swap(now.is_some(), Ordering::Relaxed);
            metrics::gauge!("pubbot_stage_stalled", "stage" => s.name()).set(if now.is_some() {
                1.0
            } else {
                0.0
            });
            match (was, now) {
                (false, Some((_, secs))) => tracing::error!(
                    stage = s.name(),
                    seconds = secs,
                    "stage stuck: work is due and nothing progressed"
                ),
                (true, None) => tracing::info!(stage = s.name(), "stage progressing again"),
                _ => {}
            }
        }
    }
}

/// Which stages are stuck, for a watchdog.
#[derive(Clone, Debug)]
pub(crate) struct Liveness {
    /// Stage progress.
    pub progress: Arc<Progress>,
    /// How long a stage may stall.
    pub stall: Duration,
}

impl Liveness {
    /// The stuck stages, with seconds since their last progress.
    pub(crate) fn stuck(&self) -> Vec<(&'static str, i64)> {
        self.progress.stalled(self.stall)
    }
}
