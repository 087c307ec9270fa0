//! Replies put back by a rate limit go again once the limit has passed.
//!
//! R10 says of `1008` "retry with backoff, slow down", and a reply the
//! platform refused for its rate goes back to `pending` with the backoff
//! of any retryable failure. But the refusal says nothing of the reply
//! itself: once the platform takes the app's calls again, the backoff
//! only delays it — up to `sender.backoff_max_ms` — and with it every
//! later reply of its user (invariant 5). After 15 s of `1008` in the
//! soak, half the users waited 20-120 s for their replies although the
//! platform had long answered again.
//!
//! So the recorder remembers, per app, the replies it put back for a rate
//! limit and when the platform last refused a call of the app for its
//! rate. Once a call of the app has been delivered since, and [`QUIET`]
//! has passed without another such refusal, those replies are due at once
//! ([`due_now`]). The backoff still slows the calls down while the limit
//! holds; lifting it early never makes a row due that a later refusal
//! put back, and only rows still waiting at the attempt they were put
//! back at are touched. Remembered in memory, per process: a restarted
//! process leaves its rows to their backoff.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{Outcome, Settlement};

/// How long an app's calls must go without a rate-limit refusal, one of
/// them delivered, before the replies put back for it are due again: the
/// platform counts calls per second (R10, the simulator's
/// `rate_limit_per_sec`).
pub(crate) const QUIET: Duration = Duration::from_secs(1);

/// Rows remembered per app, at most; past them, the backoff decides.
const MAX_ROWS: usize = 100_000;

/// What the recorder remembers of one app's rate limit.
#[derive(Debug)]
struct App {
    /// When the platform last refused a call of the app for its rate.
    refused: Instant,
    /// When it last delivered one.
    delivered: Option<Instant>,
    /// Rows put back for the rate, with the attempt each was put back at.
    rows: Vec<(i64, i32)>,
}

impl App {
    /// When its rows are due, if a delivery came after the last refusal.
    fn due(&self) -> Option<Instant> {
        self.delivered
            .filter(|d| *d > self.refused)
            .map(|_| self.refused + QUIET)
    }
}

/// Replies put back for a rate limit, per app (the recorder's, one per
/// process).
#[derive(Debug, Default)]
pub(crate) struct Limited {
    apps: HashMap<String, App>,
}

/// Rows of one app to make due now.
#[derive(Debug, PartialEq)]
pub(crate) struct Lift {
    /// The app.
    pub app_key: String,
    /// Row ids.
    pub ids: Vec<i64>,
    /// The attempt each was put back at.
    pub attempts: Vec<i32>,
}

impl Limited {
    /// Notes what a recorded batch says of each app's rate limit: rows put
    /// back for it (after [`Settlement::finalize`]: a last try is failed,
    /// not put back), and deliveries.
    pub(crate) fn note(&mut self, batch: &[Settlement]) {
        // The common case, on every recorded batch: no limit in play.
        let limited = |s: &Settlement| {
            matches!(
                s.outcome,
                Outcome::Retry {
                    rate_limited: true,
                    ..
                }
            )
        };
        if self.apps.is_empty() && !batch.iter().any(limited) {
            return;
        }
        for s in batch {
            let app = &s.conversation.0;
            match s.outcome {
                Outcome::Retry {
                    rate_limited: true, ..
                } => {
                    let a = self.apps.entry(app.clone()).or_insert_with(|| App {
                        refused: s.at,
                        delivered: None,
                        rows: Vec::new(),
                    });
                    a.refused = a.refused.max(s.at);
                    if a.rows.len() < MAX_ROWS {
                        a.rows.push((s.id, s.attempts));
                    }
                }
                Outcome::Sent => {
                    if let Some(a) = self.apps.get_mut(app) {
                        a.delivered = Some(a.delivered.map_or(s.at, |d| d.max(s.at)));
                    }
                }
                _ => {}
            }
        }
    }

    /// When the next app's rows are due, if any app's are waiting for a
    /// quiet second.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.apps.values().filter_map(App::due).min()
    }

    /// Takes the rows of every app whose limit has passed by `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Lift> {
        let due: Vec<String> = self
            .apps
            .iter()
            .filter(|(_, a)| a.due().is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| self.apps.remove_entry(&k))
            .map(|(app_key, a)| {
                let (ids, attempts) = a.rows.into_iter().unzip();
                Lift {
                    app_key,
                    ids,
                    attempts,
                }
            })
            .collect()
    }
}

/// Makes the rows of `lift` due now: those still `pending` at the attempt
/// they were put back at, and not yet due. Rows are locked in id order
/// (invariant 6). Returns how many.
///
/// # Errors
/// Database errors.
pub(crate) async fn due_now(pool: &PgPool, lift: &Lift) -> Result<u64, sqlx::Error> {
    let mut rows: Vec<(i64, i32)> = lift
        .ids
        .iter()
        .copied()
        .zip(lift.attempts.iter().copied())
        .collect();
    rows.sort_unstable();
    let (ids, attempts): (Vec<i64>, Vec<i32>) = rows.into_iter().unzip();
    let (lo, hi) = crate::pipeline::days::span(&ids);
    let done = sqlx::query!(
        "WITH s AS (SELECT * FROM UNNEST($1::int8[], $2::int4[]) AS s(id, attempts)),
              l AS (SELECT o.id FROM outbound_messages o JOIN s ON s.id = o.id
                     WHERE o.status = 'pending' AND o.attempts = s.attempts AND o.next_attempt_at > now()
                       AND o.app_key = $3
                       AND o.day BETWEEN $4 AND $5
                     ORDER BY o.id FOR UPDATE OF o)
         UPDATE outbound_messages o SET next_attempt_at = now()
           FROM l
          WHERE o.id = l.id AND o.status = 'pending' AND o.next_attempt_at > now()
            AND o.day BETWEEN $4 AND $5",
        &ids,
        &attempts,
        lift.app_key,
        lo,
        hi,
    )
    .execute(&mut *crate::db::acquire(pool, "settle").await?)
    .await?
    .rows_affected();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(id: i64, app: &str, outcome: Outcome, at: Instant) -> Settlement {
        Settlement {
            id,
            attempts: 1,
            outcome,
            at,
            conversation: (app.into(), "shop".into(), format!("u{id}").into()),
            trace_id: String::new(),
        }
    }

    fn limited() -> Outcome {
        Outcome::Retry {
            error: "1008".into(),
            ambiguous: false,
            rate_limited: true,
        }
    }

    #[test]
    fn rows_put_back_for_the_rate_are_due_a_quiet_second_after_a_delivery() {
        let t = Instant::now();
        let mut l = Limited::default();
        l.note(&[settled(1, "a", limited(), t), settled(2, "a", limited(), t)]);
        // Refused, nothing delivered since: the backoff decides.
        assert_eq!(l.next_due(), None);
        assert!(l.take_due(t + Duration::from_secs(60)).is_empty());
        l.note(&[settled(
            3,
            "a",
            Outcome::Sent,
            t + Duration::from_millis(200),
        )]);
        assert_eq!(l.next_due(), Some(t + QUIET));
        assert!(l.take_due(t + Duration::from_millis(900)).is_empty());
        // Another refusal restarts the quiet second.
        let later = t + Duration::from_millis(950);
        l.note(&[settled(4, "a", limited(), later)]);
        assert_eq!(l.next_due(), None, "no delivery after the last refusal");
        l.note(&[settled(
            5,
            "a",
            Outcome::Sent,
            later + Duration::from_millis(10),
        )]);
        assert_eq!(l.next_due(), Some(later + QUIET));
        let lifts = l.take_due(later + QUIET);
        assert_eq!(
            lifts,
            vec![Lift {
                app_key: "a".into(),
                ids: vec![1, 2, 4],
                attempts: vec![1, 1, 1],
            }]
        );
        assert_eq!(l.next_due(), None, "taken once");
    }

    #[test]
    fn other_failures_and_other_apps_are_left_alone() {
        let t = Instant::now();
        let mut l = Limited::default();
        let failure = Outcome::Retry {
            error: "1000".into(),
            ambiguous: false,
            rate_limited: false,
        };
        l.note(&[
            settled(1, "a", failure, t),
            settled(2, "b", limited(), t),
            settled(3, "a", Outcome::Sent, t + Duration::from_millis(1)),
        ]);
        assert_eq!(l.next_due(), None, "a had no rate limit; b no delivery");
        l.note(&[settled(4, "b", Outcome::Sent, t + Duration::from_millis(2))]);
        let lifts = l.take_due(t + QUIET);
        assert_eq!(lifts.len(), 1);
        assert_eq!(lifts[0].app_key, "b");
        assert_eq!(lifts[0].ids, vec![2]);
    }
}
