//! Outcomes: how a call's result changes a reply's row (invariants 6
//! and 7), and the recorder that writes them in batches.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::*;
use crate::pipeline::wakeups::Wakeups;
use crate::progress::{Progress, Stage};
use crate::retry::Backoff;

/// How a call went for one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Delivered.
    Sent,
    /// Try again after a backoff.
    Retry {
        /// Why.
        error: String,
        /// The platform may have delivered it (invariant 7).
        ambiguous: bool,
        /// The platform refused it for its rate (R10: `1008`, HTTP 429):
        /// due again once the limit has passed ([`super::limited`]).
        rate_limited: bool,
    },
    /// Given up: a permanent error, or the last try.
    Failed(String),
    /// Not tried: an earlier reply to the same user did not go out
    /// (invariant 5). Back to `pending`, the attempt not counted.
    Deferred,
    /// Not sent: older than `sender.max_reply_age_secs`.
    Expired,
}

/// One row's outcome, for the recorder.
#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    /// Row id.
    pub id: i64,
    /// The attempt the outcome is for.
    pub attempts: i32,
    /// What happened.
    pub outcome: Outcome,
    /// When the outcome was known (the recorder waits for company at most
    /// `sender.settle_micros` from here).
    pub at: std::time::Instant,
    /// The row's conversation (a reply held back behind this one may be
    /// next).
    pub conversation: crate::pipeline::wakeups::Conversation,
    /// The push's trace id, for the log line of a reply that gives up.
    pub trace_id: String,
}

impl Settlement {
    /// A retryable failure at the last try is a failure: counted, logged
    /// and woken for as one (the row is `failed` either way).
    fn finalize(&mut self, policy: &RetryPolicy) {
        if let Outcome::Retry { error, .. } = &self.outcome {
            if self.attempts >= policy.max_attempts {
                tracing::warn!(
                    trace_id = %self.trace_id,
                    reply = self.id,
                    attempts = self.attempts,
                    error = %error,
                    "reply gave up: its last try failed (sender.max_attempts); `pubbot outbound failed` lists it"
                );
                self.outcome = Outcome::Failed(error.clone());
            }
        }
    }
}

/// Backoff and attempt limits the recorder applies to retries.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Tries before a reply fails.
    pub max_attempts: i32,
    /// Pauses between tries (the daemon's one policy, [`crate::retry`]).
    pub backoff: Backoff,
}

impl RetryPolicy {
    fn backoff(&self, attempts: i32) -> Duration {
        self.backoff.after(u32::try_from(attempts).unwrap_or(1))
    }
}

/// Records outcomes in one statement, locking rows in id order (invariant
/// 6). Idempotent: a row is changed only while this process holds it at
/// that attempt — except that a delivered reply is marked `sent` even if
/// recovery had put it back to `pending` meanwhile, which keeps it from
/// being sent again.
///
/// # Errors
/// Database errors.
pub(crate) async fn settle(
    pool: &PgPool,
    worker_id: &str,
    policy: &RetryPolicy,
    settlements: &[Settlement],
) -> Result<(), sqlx::Error> {
    let mut rows: Vec<&Settlement> = settlements.iter().collect();
    rows.sort_unstable_by_key(|s| s.id);
    let n = rows.len();
    let (mut ids, mut attempts, mut status, mut delay, mut error, mut undo) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for s in rows {
        let (st, d, e, u): (&str, f64, Option<String>, i32) = match &s.outcome {
            Outcome::Sent => ("sent", 0.0, None, 0),
            Outcome::Retry { error, .. } if s.attempts < policy.max_attempts => (
                "pending",
                policy.backoff(s.attempts).as_secs_f64(),
                Some(error.clone()),
                0,
            ),
            Outcome::Retry { error, .. } | Outcome::Failed(error) => {
                ("failed", 0.0, Some(error.clone()), 0)
            }
            Outcome::Deferred => ("pending", 0.0, None, 1),
            Outcome::Expired => (
                "expired",
                0.0,
                Some("older than sender.max_reply_age_secs; not sent".to_owned()),
                0,
            ),
        };
        ids.push(s.id);
        attempts.push(s.attempts);
        status.push(st.to_owned());
        delay.push(d);
        error.push(e);
        undo.push(u);
    }
    let (lo, hi) = crate::pipeline::days::span(&ids);
    sqlx::query!(
        "WITH s AS (SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::text[], $6::int4[])
                      AS s(id, attempts, status, delay, error, undo)),
              l AS (SELECT o.id FROM outbound_messages o JOIN s ON s.id = o.id
                     WHERE ((o.lease_owner = $7 AND o.status = 'sending' AND o.attempts = s.attempts)
                            OR (s.status = 'sent' AND o.status = 'pending'))
                       AND o.day BETWEEN $8 AND $9
                     ORDER BY o.id FOR UPDATE OF o)
         UPDATE outbound_messages o
            SET status = s.status,
                sent_at = CASE WHEN s.status = 'sent' THEN now() ELSE o.sent_at END,
                next_attempt_at = CASE WHEN s.status = 'pending'
                                       THEN now() + make_interval(secs => s.delay)
                                       ELSE o.next_attempt_at END,
                attempts = o.attempts - s.undo,
                last_error = coalesce(s.error, o.last_error),
                lease_owner = NULL, lease_until = NULL
           FROM s, l
          WHERE o.id = s.id AND l.id = s.id AND o.day BETWEEN $8 AND $9",
        &ids,
        &attempts,
        &status as &[String],
        &delay,
        &error as &[Option<String>],
        &undo,
        worker_id,
        lo,
        hi,
    )
    // Planned once per connection: the settle pool's generic plans
    // (see "Plans" in `crate::db`).
    .execute(&mut *crate::db::acquire(pool, "settle").await?)
    .await?;
    Ok(())
}

/// The recorder: takes outcomes from the senders and records them, all
/// that arrived together in one statement (invariant 4). A database that
/// fails is retried (every 100 ms, backing off to 2 s) until it answers:
/// the rows stay held and their leases renewed meanwhile, so nothing is
/// recovered and sent again. It ends when every sender has dropped its
/// handle and everything received is recorded.
pub(crate) struct Recorder {
    /// The settle pool.
    pub pool: PgPool,
    /// Lease identity.
    pub worker_id: String,
    /// Backoff and attempt limits.
    pub policy: RetryPolicy,
    /// Rows held by this process.
    pub leases: Arc<Leases>,
    /// Wakes senders when a settled row may unblock a later one.
    pub wake: Arc<Wakeups>,
    /// Progress of the send stage.
    pub progress: Arc<Progress>,
    /// How long to wait, after the first outcome, for more to record with
    /// it (`sender.settle_micros`).
    pub linger: Duration,
}

impl Recorder {
    /// Records until the channel closes.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Settlement>) {
        let mut batch = Vec::with_capacity(512);
        let mut limited = super::limited::Limited::default();
        // The lift in flight, if any: one at a time, off this loop's path
        // (under a backlog it waited seconds on row locks, and outcomes
        // waited behind it).
        let mut lifting: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            // Replies put back for a rate limit go when it has passed
            // (`outbox::limited`), outcomes or not; the next lift once the
            // one in flight has ended.
            let due = if lifting.is_some() {
                None
            } else {
                limited.next_due()
            };
            let first = tokio::select! {
                s = rx.recv() => s,
                () = ended(&mut lifting) => {
                    lifting = None;
                    continue;
                }
                () = sleep_until(due) => {
                    self.lift(&mut limited, &mut lifting);
                    continue;
                }
            };
            let Some(first) = first else { break };
            // At most `linger` after the first outcome was known: one that
            // waited while the previous batch was recorded goes at once.
            let deadline = tokio::time::Instant::from_std(first.at + self.linger);
            // A user's next reply waits for this outcome to be recorded
            // (invariant 5): then what has arrived goes at once. (Under
            // load, lingering here was the largest wait of a reply whose
            // user wrote again within a few tens of milliseconds.)
            let mut urgent = self.wake.waits_on(&first.conversation);
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(s) => {
                        urgent |= self.wake.waits_on(&s.conversation);
                        batch.push(s);
                    }
                    Err(_) if self.linger.is_zero() || urgent => break,
                    Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => {
                            urgent |= self.wake.waits_on(&s.conversation);
                            batch.push(s);
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            for s in &mut batch {
                s.finalize(&self.policy);
            }
            crate::db::until_recorded("replies", || {
                settle(&self.pool, &self.worker_id, &self.policy, &batch)
            })
            .await;
            // Counted once a batch by outcome (each count is a registry
            // lookup).
            let mut by_kind = [0u64; 5];
            for s in &batch {
                by_kind[match &s.outcome {
                    Outcome::Sent => 0,
                    Outcome::Retry { .. } => 1,
                    Outcome::Failed(_) => 2,
                    Outcome::Deferred => 3,
                    Outcome::Expired => 4,
                }] += 1;
            }
            for (kind, n) in ["sent", "retry", "failed", "deferred", "expired"]
                .into_iter()
                .zip(by_kind)
                .filter(|(_, n)| *n > 0)
            {
                metrics::counter!("pubbot_outbound_settled_total", "outcome" => kind).increment(n);
            }
            self.leases.release(batch.iter().map(|s| s.id));
            self.progress.advance(Stage::Send);
            // Deferred and retried replies wait in the table again; a settled
            // reply may be what held back the next one of its user.
            let back = batch
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Deferred | Outcome::Retry { .. }))
                .count();
            self.wake.add_pending(back);
            // A reply that is no longer open lets the next one of its user
            // go: claimed by user, not by scanning the queue.
            self.wake.recorded(
                batch
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.outcome,
                            Outcome::Sent | Outcome::Failed(_) | Outcome::Expired
                        )
                    })
                    .map(|s| {
                        let (a, m, u) = &s.conversation;
                        (a.as_str(), m.as_str(), u.as_str())
                    }),
            );
            limited.note(&batch);
            if lifting.is_none() {
                self.lift(&mut limited, &mut lifting);
            }
            self.wake.outbound_if_pending();
            batch.clear();
        }
        if let Some(lift) = lifting {
            let _ = lift.await;
        }
    }

    /// Makes the replies of every app whose rate limit has passed due now
    /// (`outbox::limited`) in a task of its own, and tells the senders.
    /// Called only while no lift is in flight (`lifting` is `None`).
    fn lift(
        &self,
        limited: &mut super::limited::Limited,
        lifting: &mut Option<tokio::task::JoinHandle<()>>,
    ) {
        let lifts = limited.take_due(std::time::Instant::now());
        if lifts.is_empty() {
            return;
        }
        let (pool, wake) = (self.pool.clone(), Arc::clone(&self.wake));
        *lifting = Some(tokio::spawn(async move {
            for lift in lifts {
                // Tried once: a failure leaves the rows to their backoff.
                let n = match super::limited::due_now(&pool, &lift).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(app_key = %lift.app_key, error = %e, "could not make replies put back for a rate limit due; they wait for their backoff");
                        0
                    }
                };
                if n > 0 {
                    tracing::info!(
                        app_key = %lift.app_key,
                        replies = n,
                        "the platform takes calls again after its rate limit: replies put back for it go now"
                    );
                    metrics::counter!("pubbot_outbound_rate_limit_lifted_total").increment(n);
                    wake.add_pending(usize::try_from(n).unwrap_or(usize::MAX));
                    wake.outbound_if_pending();
                }
            }
        }));
    }
}

/// Ends when the lift in flight has ended; never while none is.
async fn ended(lifting: &mut Option<tokio::task::JoinHandle<()>>) {
    match lifting {
        Some(lift) => {
            if let Err(e) = lift.await {
                tracing::warn!(error = %e, "a rate-limit lift ended abnormally; its replies wait for their backoff");
            }
        }
        None => std::future::pending().await,
    }
}

/// Ends at `at`; never without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Puts a failed reply back to `pending` with `reply` as its payload (an
/// operator's retry after fixing a rule, [`crate::admin::inspect::retry`]):
/// only while it is still `failed`, so a second retry of the same reply
/// does nothing. Returns whether it was put back.
///
/// # Errors
/// Database errors.
pub(crate) async fn requeue_failed(
    pool: &PgPool,
    id: i64,
    reply: &PlannedReply,
) -> Result<bool, sqlx::Error> {
    let payload = serde_json::to_value(reply).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    // Its day may be settled: open it again first (`pipeline::days`).
    crate::pipeline::days::reopen(&mut tx, crate::pipeline::days::day_of(id)).await?;
    let done = sqlx::query!(
        "UPDATE outbound_messages
                SET status = 'pending', payload = $2::jsonb::json, attempts = 0, next_attempt_at = now(),
                    last_error = 'retried by the operator after: ' || coalesce(last_error, '?')
              WHERE id = $1 AND day = pubbot_day_of($1) AND status = 'failed'",
        id,
        payload
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done == 1)
}

/// A handler call's outcome (invariant 1 holds for it as for any reply),
/// in the caller's transaction: the call row, if this process still holds
/// it at this attempt, is locked; the answer's replies are planned after it
/// at the same place (`sub_index` 1, 2, ...: in the user's order, once);
/// the call row is settled with `status`. Returns `false`, changing
/// nothing, when the row was recovered and taken by another process
/// meanwhile (its call decides).
///
/// # Errors
/// Database errors.
pub(crate) async fn settle_call(
    tx: &mut sqlx::PgConnection,
    worker_id: &str,
    row: &Claimed,
    replies: &[PlannedReply],
    status: &str,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let mine = sqlx::query_scalar!(
        "SELECT id FROM outbound_messages
          WHERE id = $1 AND day = pubbot_day_of($1) AND lease_owner = $2 AND attempts = $3 AND status = 'sending'
            FOR UPDATE",
        row.id,
        worker_id,
        row.attempts
    )
    .fetch_optional(&mut *tx)
    .await?;
    if mine.is_none() {
        return Ok(false);
    }
    for (k, reply) in replies.iter().enumerate() {
        let payload = serde_json::to_value(reply).unwrap_or_default();
        sqlx::query!(
            "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, sub_index, app_key, mcid, user_id, rule_name,
                                                payload, trace_id)
                 SELECT pubbot_id(day, nextval('outbound_messages_id_seq')), day, inbound_id, reply_index, $2, app_key,
                        mcid, user_id, rule_name, $3::jsonb::json, trace_id
                   FROM outbound_messages WHERE id = $1 AND day = pubbot_day_of($1)
                 ON CONFLICT (app_key, mcid, inbound_id, reply_index, sub_index, day) DO NOTHING",
            row.id,
            i32::try_from(k + 1).unwrap_or(i32::MAX),
            payload
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE outbound_messages SET status = $2, last_error = $3, sent_at = now(), lease_owner = NULL, lease_until = NULL
          WHERE id = $1 AND day = pubbot_day_of($1)",
        row.id,
        status,
        error
    )
    .execute(&mut *tx)
    .await?;
    Ok(true)
}
