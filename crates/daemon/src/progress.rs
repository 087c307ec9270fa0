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
    /// Whether ingest is behind, and decide and send yield to it.
    pub ingest_first: IngestFirst,
    /// The oldest day that may hold an open row ([`crate::pipeline::days`]),
    /// read by every stage that looks for a user's open rows or claims.
    pub days: crate::pipeline::days::Window,
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
            ingest_first: IngestFirst::default(),
            days: crate::pipeline::days::Window::default(),
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
                // Decide and send pause on purpose while ingest is behind.
                let due = due && (*s == Stage::Ingest || !self.ingest_first.behind());
                (due && since > limit).then_some((s.name(), since / 1000))
            })
            .collect()
    }

    /// Updates the `pubbot_stage_stalled{stage}` gauges and logs each
    /// change once.
    pub(crate) fn report(&self, database: &'static str, stall: Duration) {
        let stalled = self.stalled(stall);
        for s in Stage::ALL {
            let now = stalled.iter().find(|(n, _)| *n == s.name());
            let was = self.stalled[s.index()].swap(now.is_some(), Ordering::Relaxed);
            metrics::gauge!("pubbot_stage_stalled", "database" => database, "stage" => s.name())
                .set(if now.is_some() { 1.0 } else { 0.0 });
            match (was, now) {
                (false, Some((_, secs))) => tracing::error!(
                    database,
                    stage = s.name(),
                    seconds = secs,
                    "stage stuck: work is due and nothing progressed"
                ),
                (true, None) => {
                    tracing::info!(database, stage = s.name(), "stage progressing again");
                }
                _ => {}
            }
        }
    }
}

/// Ingest first: while storing pushes falls behind, decide and send yield.
///
/// A push must be durable before the platform's 5 s run out (R15), and
/// every stage takes its CPU and its database time from the same machine:
/// decide and send doing their work while pushes wait is how an overloaded
/// daemon used to leave pushes unanswered. So each group commit reports
/// how long its oldest push waited from arrival to commit
/// ([`IngestFirst::batch`]); one that waited `ingest.yield_after_ms` or
/// more puts ingest *behind* for [`IngestFirst::HOLD`] after it, and
/// meanwhile the decide and send workers start no new round
/// ([`IngestFirst::wait`]): what they took goes on, nothing new is
/// claimed. Pushes are stored undecided meanwhile (one insert each, no
/// decision at receipt: "Ingest first" in [`crate::pipeline::ingest`]),
/// and the decide workers decide them, in each user's order, once ingest
/// keeps up again; replies already planned wait in the outbox for the
/// senders; a reply older than `sender.max_reply_age_secs` by then expires
/// instead of going out late. While behind, decide and send do not count
/// as stalled.
#[derive(Debug)]
pub(crate) struct IngestFirst {
    /// Waits at or over this put ingest behind (ms; 0: never).
    after_ms: AtomicI64,
    /// Ingest is behind until then (ms since the epoch).
    until: AtomicI64,
}

impl Default for IngestFirst {
    fn default() -> Self {
        Self {
            after_ms: AtomicI64::new(0),
            until: AtomicI64::new(0),
        }
    }
}

impl IngestFirst {
    /// How long ingest stays behind after a slow commit.
    pub(crate) const HOLD: Duration = Duration::from_secs(1);

    /// Sets the wait that puts ingest behind (`ingest.yield_after_ms`;
    /// zero: decide and send never yield).
    pub(crate) fn set_threshold(&self, after: Duration) {
        self.after_ms.store(
            i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A group commit is done; its oldest push waited `waited` from its
    /// arrival.
    pub(crate) fn batch(&self, waited: Duration) {
        let after = self.after_ms.load(Ordering::Relaxed);
        let waited = i64::try_from(waited.as_millis()).unwrap_or(i64::MAX);
        if after > 0 && waited >= after {
            let until = now_ms() + i64::try_from(Self::HOLD.as_millis()).unwrap_or(0);
            if self.until.swap(until, Ordering::Relaxed) < now_ms() {
                tracing::warn!(
                    waited_ms = waited,
                    "ingest is behind; decide and send yield to it"
                );
                metrics::counter!("pubbot_ingest_behind_total").increment(1);
            }
        }
    }

    /// Whether ingest is behind now.
    pub(crate) fn behind(&self) -> bool {
        self.until.load(Ordering::Relaxed) > now_ms()
    }

    /// Waits while ingest is behind (`stage` names who yields, in
    /// `pubbot_ingest_yield_seconds{stage}`), or until `token` is
    /// cancelled.
    pub(crate) async fn wait(
        &self,
        stage: &'static str,
        token: &tokio_util::sync::CancellationToken,
    ) {
        if !self.behind() {
            return;
        }
        let started = std::time::Instant::now();
        loop {
            let left = self.until.load(Ordering::Relaxed) - now_ms();
            if left <= 0 || token.is_cancelled() {
                break;
            }
            let pause = Duration::from_millis(u64::try_from(left).unwrap_or(0).clamp(1, 50));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = token.cancelled() => break,
            }
        }
        metrics::histogram!("pubbot_ingest_yield_seconds", "stage" => stage)
            .record(started.elapsed().as_secs_f64());
    }
}

/// Which stages are stuck, for a watchdog.
#[derive(Clone, Debug)]
pub(crate) struct Liveness {
    /// Stage progress, one per database's pipeline.
    pub progress: Vec<Arc<Progress>>,
    /// How long a stage may stall.
    pub stall: Duration,
}

impl Liveness {
    /// The stuck stages, with seconds since their last progress.
    pub(crate) fn stuck(&self) -> Vec<(&'static str, i64)> {
        self.progress
            .iter()
            .flat_map(|p| p.stalled(self.stall))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_commit_puts_ingest_behind_for_a_while_and_workers_wait_it_out() {
        let p = Progress::default();
        // Off by default: no commit is slow enough.
        p.ingest_first.batch(Duration::from_secs(60));
        assert!(!p.ingest_first.behind());
        p.ingest_first.set_threshold(Duration::from_millis(100));
        p.ingest_first.batch(Duration::from_millis(99));
        assert!(!p.ingest_first.behind(), "under the threshold");
        p.ingest_first.batch(Duration::from_millis(100));
        assert!(p.ingest_first.behind());
        // While behind, decide and send are not stalled, ingest can be.
        p.set_due(Stage::Send, true);
        p.set_due(Stage::Decide, true);
        p.ingest_waiting.store(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let names: Vec<&str> = p.stalled(Duration::ZERO).iter().map(|s| s.0).collect();
        assert_eq!(names, ["ingest"]);
        let started = std::time::Instant::now();
        p.ingest_first
            .wait("send", &tokio_util::sync::CancellationToken::new())
            .await;
        assert!(started.elapsed() >= IngestFirst::HOLD - Duration::from_millis(20));
        assert!(!p.ingest_first.behind());
        // A cancelled token ends the wait at once.
        p.ingest_first.batch(Duration::from_secs(1));
        let token = tokio_util::sync::CancellationToken::new();
        token.cancel();
        let started = std::time::Instant::now();
        p.ingest_first.wait("decide", &token).await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
