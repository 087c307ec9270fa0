//! Send: workers call the platform for outbound rows this process holds —
//! rows its decide workers planned and leased to it in the same
//! transaction (handed over whole, the fast path), and due rows claimed
//! from the table (retries, rows of other processes, a full hand-off).
//! The rules a row's status follows are the outbox's
//! ([`crate::pipeline::outbox`], with its numbered invariants); this module plans
//! the calls and makes them.
//!
//! - **Order.** A worker sends one user's rows one after the other, in
//!   conversation order: rows go out in *rounds*, the k-th round holding
//!   the k-th row of every user, and a round starts when the previous one
//!   has returned. A user whose row did not go out (a retry, a failure)
//!   has their later rows put back untried (outbox invariant 5).
//! - **Merging.** Within a round, replies with the same payload from the
//!   same account go out together as `batchsend` calls of up to 100 users
//!   (`sender.merge_batchsend`): under the platform's per-call rate limit
//!   that is up to 100 replies per unit instead of one (BENCHMARKS.md). A
//!   batch call succeeds or fails for all its rows alike.
//! - **A round's calls run together** in the sending task and hand their
//!   outcome to the recorder ([`crate::pipeline::outbox::Recorder`]); nothing a call waits for
//!   depends on the database answering (invariant 4).
//! - **Failures.** Retryable ones (R10: `1000`, `1008`, HTTP 5xx, timeouts,
//!   transport) go back to `pending` with exponential backoff and jitter,
//!   up to `sender.max_attempts` (a reply refused for the platform's rate
//!   goes as soon as the platform takes the app's calls again,
//!   [`crate::pipeline::outbox`]'s `limited`); a call whose answer was lost (timeout,
//!   connection broken after the request) is retried only when
//!   `sender.retry_ambiguous` is on, and counted; permanent ones (`1002`,
//!   `1003`, `1004`, `1007`) mark the row `failed` with the platform's
//!   message.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use pubbot_api_client::UserId;
use pubbot_rules::PlannedReply;
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::pipeline::outbox::{self, Claimed, Held, Leases, Outcome, Settlement};
use crate::pipeline::wakeups::{work_loop, Wakeups};

mod app;
mod calls;
pub(crate) use app::AppClient;
use calls::{plan_calls, rounds, Call};

/// Hand-off units one sending task delivers side by side.
const HANDOFF_UNITS_AT_ONCE: usize = 16;

/// What a send worker needs.
#[derive(Clone)]
pub(crate) struct SendWorker {
    /// The send pool (claims, pre-call renewals).
    pub pool: PgPool,
    /// Clients by app key.
    pub apps: Arc<HashMap<String, AppClient>>,
    /// Wake-ups.
    pub wake: Arc<Wakeups>,
    /// Lease identity.
    pub worker_id: String,
    /// Rows per claim.
    pub batch: i64,
    /// Lease length.
    pub lease: Duration,
    /// Poll interval.
    pub poll: Duration,
    /// Merge same-payload replies into `batchsend` calls.
    pub merge_batchsend: bool,
    /// Retry calls whose answer was lost.
    pub retry_ambiguous: bool,
    /// Tries of a reply (`sender.max_attempts`): a retryable failure at the
    /// last one is logged by the recorder as a reply that gave up, not as
    /// one that will be retried.
    pub max_attempts: i32,
    /// Replies older than this are expired, not sent.
    pub max_reply_age: Option<Duration>,
    /// The longest a call may take: a lease with less left is renewed
    /// before the call.
    pub call_budget: Duration,
    /// The leases this process holds.
    pub leases: Arc<Leases>,
    /// Calls in flight in this process.
    pub in_flight: Arc<Semaphore>,
    /// Where outcomes go (the recorder).
    pub outcomes: mpsc::Sender<Settlement>,
    /// Calls handler bots for handler rows.
    pub handlers: Arc<crate::pipeline::handlers::HandlerRunner>,
    /// Where the general claim's sweep goes on from (shared by the
    /// process's senders).
    pub sweep: Arc<outbox::Sweep>,
    /// Stage progress; senders yield while ingest is behind.
    pub progress: Arc<crate::progress::Progress>,
}

/// Empty windows a sender sweeps past in one round before it waits.
const SWEEPS_PER_ROUND: usize = 8;

/// Rows of one hand-off: what one deciding transaction leased to this
/// process, kept together so one worker sends them in order.
pub(crate) type Handoff = mpsc::Receiver<Vec<Held>>;

impl SendWorker {
    /// Runs until `token` is cancelled: claims due rows and sends them.
    pub(crate) async fn run(self, token: CancellationToken) {
        work_loop(
            &self.wake.outbound,
            self.poll,
            self.batch,
            &token,
            "send",
            &self.progress.ingest_first,
            || self.once(),
        )
        .await;
    }

    /// Claims due rows that are next in their conversation and sends them.
    /// Returns how many it took.
    ///
    /// # Errors
    /// Database errors of the claim.
    pub(crate) async fn once(&self) -> Result<usize, sqlx::Error> {
        // Replies whose wait for a reply held here ended with no sender
        // left to look (normally the sender whose call ended it sends them).
        let ready = self.leases.ready();
        if !ready.is_empty() {
            self.deliver(ready).await;
        }
        let since = std::time::Instant::now();
        // First the replies whose earlier one was just recorded here: by
        // user, through the index (cheap whatever the queue holds).
        let next = self.wake.take_successors();
        if !next.is_empty() {
            let claimed = match outbox::claim_next(
                &self.pool,
                &self.worker_id,
                self.lease,
                &next,
                self.progress.days.since(),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    // Not lost: the users wait for the next outcome or poll.
                    self.wake.still_behind(next);
                    return Err(e);
                }
            };
            // Every user stays remembered: those claimed may have more held
            // back behind these, and those not claimed are still behind an
            // open reply (one sent in the same unit as the one recorded).
            self.wake.still_behind(next);
            if !claimed.is_empty() {
                let n = claimed.len();
                self.deliver_claimed(claimed, since, outbox::Path::Successor)
                    .await;
                return Ok(n);
            }
        }
        // One sweep at a time in this process (`Sweep::begin`): while
        // another sender sweeps, this one goes back to waiting.
        let Some(sweeping) = self.sweep.begin() else {
            return Ok(0);
        };
        let before = self.wake.waiting();
        // A window of conversations with nothing to take, and more to look
        // at: sweep on (a few windows at most; the poll takes the rest).
        let mut windows = 0;
        let claim = loop {
            let claim = outbox::claim(
                &self.pool,
                &self.worker_id,
                self.lease,
                self.batch,
                &self.sweep,
                self.progress.days.since(),
            )
            .await?;
            windows += 1;
            if !claim.rows.is_empty() || !claim.more || windows > SWEEPS_PER_ROUND {
                break claim;
            }
        };
        // Sending them is not sweeping: the next sweep may begin.
        drop(sweeping);
        let n = claim.rows.len();
        let asked = usize::try_from(self.batch).unwrap_or(usize::MAX);
        // Only a sweep that looked at everything says nothing more waits.
        self.wake
            .claimed(n, if claim.more { n } else { asked }, before);
        if n == 0 {
            return Ok(0);
        }
        // Their later replies, if any, are claimed by user once these are
        // recorded (`Wakeups::behind`), not by sweeping again.
        self.wake.still_behind(
            claim
                .rows
                .iter()
                .map(|r| (r.app_key.clone(), r.mcid.clone(), r.user_id.clone()))
                .collect(),
        );
        self.deliver_claimed(claim.rows, since, outbox::Path::Claimed)
            .await;
        Ok(n)
    }

    /// Keeps the leases of rows claimed from the table and sends them.
    async fn deliver_claimed(
        &self,
        rows: Vec<Claimed>,
        since: std::time::Instant,
        path: outbox::Path,
    ) {
        self.leases.hold(rows.iter().map(|r| (r.id, r.attempts)));
        self.deliver(
            rows.into_iter()
                .map(|row| Held {
                    row,
                    since,
                    path,
                    follows: None,
                })
                .collect(),
        )
        .await;
    }

    /// Takes what this process's decide workers hand over until they have
    /// all stopped and the hand-off is drained (so a graceful stop leaves
    /// no leased row behind).
    ///
    /// Takes every unit waiting (up to a claim's worth of rows) and sends
    /// them together, so that a backlog merges into fewer calls. Two units
    /// never hold rows of one user (a reply is leased in its deciding
    /// transaction only when nothing earlier of its user is open), and
    /// rounds keep order within a unit, so the units taken go out side by
    /// side: the next one does not wait for a slow call of the one before
    /// (measured: that wait was the p99 of decided -> sent at 5,000/s).
    /// [`HANDOFF_UNITS_AT_ONCE`] units at most per task; the calls share
    /// `sender.max_in_flight`.
    pub(crate) async fn run_handoff(self, handoff: Arc<tokio::sync::Mutex<Handoff>>) {
        let most = usize::try_from(self.batch).unwrap_or(64).max(1);
        let mut running = FuturesUnordered::new();
        let mut open = true;
        while open || !running.is_empty() {
            let take = async {
                let mut rx = handoff.lock().await;
                let mut rows = rx.recv().await?;
                while rows.len() < most {
                    match rx.try_recv() {
                        Ok(more) => rows.extend(more),
                        Err(_) => break,
                    }
                }
                Some(rows)
            };
            tokio::select! {
                biased;
                Some(()) = running.next(), if !running.is_empty() => {}
                got = take, if open && running.len() < HANDOFF_UNITS_AT_ONCE => match got {
                    None => open = false,
                    Some(rows) => {
                        if let Some(since) = rows.iter().map(|h| h.since).min() {
                            metrics::histogram!("pubbot_handoff_wait_seconds")
                                .record(since.elapsed().as_secs_f64());
                        }
                        // Rows handed over are leased (the heartbeat keeps
                        // them): they wait while ingest is behind, like the
                        // claims.
                        let this = &self;
                        running.push(async move {
                            this.progress
                                .ingest_first
                                .wait("send", &CancellationToken::new())
                                .await;
                            this.deliver(rows).await;
                        });
                    }
                },
            }
        }
    }

    /// Sends rows this process holds, round after round (per-user order),
    /// handing every outcome to the recorder; rows that follow a reply
    /// still out wait for its call, and go (or go back) with the rows of
    /// the sender whose call ended their wait (`Leases::sort`).
    pub(crate) async fn deliver(&self, held: Vec<Held>) {
        let mut next = held;
        loop {
            next.extend(self.leases.ready());
            if next.is_empty() {
                return;
            }
            let sorted = self.leases.sort(std::mem::take(&mut next));
            for h in sorted.back {
                self.record(&h.row, Outcome::Deferred).await;
            }
            self.send_rounds(sorted.go).await;
        }
    }

    /// Sends rows round after round: a user's rows one after the other,
    /// and none after one of theirs that did not go out.
    async fn send_rounds(&self, held: Vec<Held>) {
        let mut blocked: std::collections::HashSet<crate::pipeline::wakeups::Conversation> =
            std::collections::HashSet::new();
        for round in rounds(held) {
            let (go, wait): (Vec<Held>, Vec<Held>) = round.into_iter().partition(|h| {
                !blocked.contains(&(
                    h.row.app_key.clone(),
                    h.row.mcid.clone(),
                    h.row.user_id.clone(),
                ))
            });
            for h in wait {
                self.record(&h.row, Outcome::Deferred).await;
            }
            // The round's calls run together in this task (a task each
            // cost a spawn, a wake-up and a thread hand-over per reply; the
            // daemon's profile showed them).
            let mut calls: FuturesUnordered<_> = plan_calls(go, self.merge_batchsend)
                .into_iter()
                .map(|call| AssertUnwindSafe(self.run_call(call)).catch_unwind())
                .collect();
            while let Some(done) = calls.next().await {
                match done {
                    Ok(not_sent) => blocked.extend(not_sent),
                    Err(_) => {
                        // A panicked call: its rows stay leased until they
                        // expire, and recovery sends them.
                        tracing::error!(
                            "a send call panicked; its rows are left to lease recovery"
                        );
                    }
                }
            }
        }
    }

    async fn record(&self, row: &Claimed, outcome: Outcome) {
        let (id, attempts) = (row.id, row.attempts);
        // Replies following this one may go now, or must go back.
        self.leases.went(id, outcome == Outcome::Sent);
        let settled = Settlement {
            id,
            attempts,
            outcome,
            at: std::time::Instant::now(),
            conversation: (row.app_key.clone(), row.mcid.clone(), row.user_id.clone()),
            trace_id: row.trace_id.clone(),
        };
        if self.outcomes.send(settled).await.is_err() {
            tracing::error!(
                id,
                "the recorder has stopped; the row is left to lease recovery"
            );
        }
    }

    /// Makes one call (rate limit, lease check, the call) and hands its
    /// outcome to the recorder. Returns the conversations whose row did not
    /// go out.
    async fn run_call(&self, call: Call) -> Vec<crate::pipeline::wakeups::Conversation> {
        let waited = std::time::Instant::now();
        let Ok(_permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return Vec::new();
        };
        metrics::histogram!("pubbot_send_slot_wait_seconds").record(waited.elapsed().as_secs_f64());
        let conv = |h: &Held| {
            (
                h.row.app_key.clone(),
                h.row.mcid.clone(),
                h.row.user_id.clone(),
            )
        };
        let mut not_sent = Vec::new();
        // Expired replies are not sent (a late answer is worse than none).
        let (call, expired) = self.split_expired(call);
        for h in expired {
            metrics::counter!("pubbot_outbound_expired_total").increment(1);
            tracing::info!(trace_id = %h.row.trace_id, "reply expired before it could be sent");
            self.record(&h.row, Outcome::Expired).await;
        }
        let Some(mut call) = call else {
            return not_sent;
        };
        let all: Vec<crate::pipeline::wakeups::Conversation> = call.rows.iter().map(conv).collect();
        if matches!(call.reply, PlannedReply::Handler { .. }) {
            // Not a platform call: the handler answers, and its replies take
            // this row's place; the user's later rows wait for them.
            for held in call.rows.drain(..) {
                self.handlers.run(held).await;
            }
            return all;
        }
        let Some(call) = self.keep_leases(call).await else {
            // Rows lost to another process, or given back untried: later
            // rows of these users wait.
            return all;
        };
        let outcome = self.call(&call).await;
        let kept: Vec<crate::pipeline::wakeups::Conversation> =
            call.rows.iter().map(conv).collect();
        for h in &call.rows {
            self.record(&h.row, outcome.clone()).await;
        }
        if outcome == Outcome::Sent {
            // Rows keep_leases dropped did not go out here.
            not_sent.extend(all.into_iter().filter(|c| !kept.contains(c)));
        } else {
            not_sent.extend(all);
        }
        not_sent
    }

    fn split_expired(&self, mut call: Call) -> (Option<Call>, Vec<Held>) {
        let Some(max) = self.max_reply_age else {
            return (Some(call), Vec::new());
        };
        let now = chrono::Utc::now();
        let max = chrono::Duration::from_std(max).unwrap_or(chrono::Duration::MAX);
        let (expired, fresh): (Vec<Held>, Vec<Held>) = call
            .rows
            .drain(..)
            .partition(|h| now - h.row.created_at > max);
        call.rows = fresh;
        ((!call.rows.is_empty()).then_some(call), expired)
    }

    /// Waits for the app's rate limit, keeping the call's rows this
    /// process's for longer than a call takes: a lease with less left is
    /// renewed, and rows whose lease another process has taken over
    /// meanwhile (and will send) are dropped from the call (and from this
    /// process's held rows). `None`: no row left to send here.
    ///
    /// Renewals come before the limit's permit is taken, never between it
    /// and the call: a renewal's round trip there sent the call that much
    /// later, closer to the next one, and `per_sec + 1` calls reached one
    /// of the platform's calendar seconds (answered `1008`; R10).
    async fn keep_leases(&self, mut call: Call) -> Option<Call> {
        let waited = std::time::Instant::now();
        let Some(app) = self.apps.get(call.app_key.as_str()) else {
            return self.renewed(call).await;
        };
        let _turn = app.turn.lock().await;
        loop {
            call = self.renewed(call).await?;
            match app.limiter.check() {
                Ok(()) => {
                    metrics::histogram!("pubbot_rate_limit_wait_seconds")
                        .record(waited.elapsed().as_secs_f64());
                    return Some(call);
                }
                Err(later) => {
                    use governor::clock::Clock as _;
                    let wait = later.wait_time_from(app.limiter.clock().now());
                    // At most half a call's budget at a time, so that the
                    // leases are looked at again before they run short.
                    tokio::time::sleep(wait.clamp(Duration::from_millis(1), self.call_budget / 2))
                        .await;
                }
            }
        }
    }

    /// `call` with its leases renewed if any has less left than a call
    /// takes (see [`Self::keep_leases`]).
    async fn renewed(&self, mut call: Call) -> Option<Call> {
        let oldest = call.rows.iter().map(|r| r.since).min()?;
        if oldest.elapsed() + self.call_budget < self.lease {
            return Some(call);
        }
        let ids: Vec<i64> = call.rows.iter().map(|r| r.row.id).collect();
        let attempts: Vec<i32> = call.rows.iter().map(|r| r.row.attempts).collect();
        let kept = match outbox::renew(&self.pool, &self.worker_id, self.lease, &ids, &attempts)
            .await
        {
            Ok(kept) => kept,
            Err(e) => {
                // Not calling is safe: the heartbeat keeps the leases, and
                // the rows are claimed again once they expire... but they
                // are still held here; give them back untried.
                tracing::warn!(error = %e, rows = ids.len(), "renewing leases before a call failed; the rows go back untried");
                for h in &call.rows {
                    self.record(&h.row, Outcome::Deferred).await;
                }
                return None;
            }
        };
        metrics::counter!("pubbot_lease_renewals_total").increment(kept.len() as u64);
        let now = std::time::Instant::now();
        let lost: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !kept.contains(id))
            .collect();
        call.rows.retain(|r| kept.contains(&r.row.id));
        for r in &mut call.rows {
            r.since = now;
        }
        if !lost.is_empty() {
            tracing::warn!(
                rows = lost.len(),
                "leases expired while waiting for the rate limit; another process sends those rows"
            );
            metrics::counter!("pubbot_lease_lost_total").increment(lost.len() as u64);
            self.leases.release(lost);
        }
        (!call.rows.is_empty()).then_some(call)
    }

    /// Makes one call (one unit of the app's rate limit) and says how it
    /// went for every row in it. In the message's span (a `batchsend` is
    /// in the first row's; `rows` says how many it carries).
    #[tracing::instrument(
        name = "message",
        level = "debug",
        skip_all,
        fields(
            trace_id = %call.rows.first().map_or("", |h| h.row.trace_id.as_str()),
            reply = call.rows.first().map_or(0, |h| h.row.id),
            rows = call.rows.len(),
        )
    )]
    async fn call(&self, call: &Call) -> Outcome {
        let app_key = call.app_key.as_str();
        let Some(app) = self.apps.get(app_key) else {
            return Outcome::Failed(format!("app {app_key:?} is not configured"));
        };
        let Some(message) = outbox::to_message(&call.reply) else {
            return Outcome::Failed("a handler call is not a platform message".into());
        };
        let mcid = &call.mcid;
        let started = std::time::Instant::now();
        let (endpoint, result) = match call.rows.as_slice() {
            [one] => (
                "send",
                app.client.send_to(mcid, &one.row.user_id, &message).await,
            ),
            rows => {
                let users: Vec<UserId> = rows.iter().map(|r| r.row.user_id.clone()).collect();
                // At most 100 distinct users (plan_calls): one chunk.
                let result = match app.client.send_to_many(mcid, &users, &message).await {
                    Ok(chunks) => chunks
                        .into_iter()
                        .map(|c| c.result)
                        .find(Result::is_err)
                        .unwrap_or(Ok(())),
                    Err(e) => Err(e),
                };
                ("batchsend", result)
            }
        };
        let elapsed = started.elapsed();
        metrics::histogram!("pubbot_send_seconds", "endpoint" => endpoint)
            .record(elapsed.as_secs_f64());
        let replies = call.rows.len() as u64;
        let traces = || {
            call.rows
                .iter()
                .map(|r| r.row.trace_id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let users = || {
            call.rows
                .iter()
                .map(|r| r.row.user_id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let answered = chrono::Utc::now();
        for r in &call.rows {
            metrics::histogram!("pubbot_decided_to_sent_seconds", "path" => r.path.as_str())
                .record((answered - r.row.created_at).as_seconds_f64().max(0.0));
        }
        let latency_ms = call
            .rows
            .iter()
            .map(|r| (answered - r.row.created_at).num_milliseconds())
            .max()
            .unwrap_or(0);
        let code = |e: &pubbot_api_client::Error| {
            e.code()
                .map_or_else(|| "none".to_owned(), |c| c.code().to_string())
        };
        match result {
            Ok(()) => {
                tracing::info!(target: "pubbot::reply", trace_id = %traces(), app_key, mcid = %call.mcid, user = %users(), endpoint, replies, latency_ms, outcome = "sent", "reply sent");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "sent", "code" => "0")
                    .increment(1);
                metrics::counter!("pubbot_replies_sent_total").increment(replies);
                Outcome::Sent
            }
            Err(e) if e.is_retryable() && e.is_ambiguous() && !self.retry_ambiguous => {
                tracing::warn!(trace_id = %traces(), app_key, endpoint, error = %e, "reply's answer lost; not retried (sender.retry_ambiguous = false)");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "ambiguous", "code" => code(&e))
                    .increment(1);
                Outcome::Failed(format!(
                    "{e}; may have been delivered, not retried (sender.retry_ambiguous = false)"
                ))
            }
            Err(e) if e.is_retryable() => {
                let ambiguous = e.is_ambiguous();
                if ambiguous {
                    // A retry of a call that may have been delivered: a
                    // possible double reply, counted (outbox invariant 7).
                    metrics::counter!("pubbot_outbound_ambiguous_retries_total").increment(replies);
                }
                if call.rows.iter().any(|h| h.row.attempts < self.max_attempts) {
                    tracing::info!(trace_id = %traces(), app_key, endpoint, error = %e, ambiguous, "reply will be retried");
                }
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "retry", "code" => code(&e))
                    .increment(1);
                metrics::counter!("pubbot_send_retries_total").increment(replies);
                let error = if ambiguous {
                    format!("{e}; may have been delivered, retried (sender.retry_ambiguous)")
                } else {
                    e.to_string()
                };
                Outcome::Retry {
                    error,
                    ambiguous,
                    rate_limited: e.is_rate_limited(),
                }
            }
            Err(e) => {
                let code = code(&e);
                tracing::warn!(trace_id = %traces(), app_key, endpoint, error = %e, code, "reply failed permanently");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "failed", "code" => code)
                    .increment(1);
                Outcome::Failed(e.to_string())
            }
        }
    }
}
