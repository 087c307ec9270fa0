//! Send: workers call the platform for outbound rows this process holds:
//! rows its decide workers planned and leased to it in the same transaction
//! (handed over through a queue, the fast path), and due rows claimed from
//! the table (retries, rows of other processes, a full queue).
//!
//! A row is marked `sending` (with a lease) before the call. While the
//! process lives, a heartbeat renews the leases of the rows it holds, however
//! long they wait for the rate limit, and each outcome is recorded as soon as
//! its call returns. A crash after the call and before the row is marked
//! `sent` leaves it `sending`; when the lease expires the row goes back to
//! `pending` and is sent again. (A database that fails while the outcome is
//! recorded is retried for up to a lease, so a blip does not resend
//! anything; a lease is always longer than a call, `workers.lease_secs` >
//! `sender.request_timeout_ms` + 1 s, and a sender renews an old lease just
//! before calling and drops a row recovered and claimed again meanwhile.) That
//! window — one call's duration per crashed worker — is the only way a reply
//! can go out twice; each such recovery is counted in
//! `pubbot_outbound_recovered_total` and noted on the row.
//!
//! Replies with the same payload from the same account that one sender
//! holds at once go out together as `batchsend` calls of up to 100 users
//! (`sender.merge_batchsend`): under the platform's per-call rate limit
//! that is up to 100 replies per unit instead of one (BENCHMARKS.md). A
//! batch call succeeds or fails for all its rows alike.
//!
//! Retryable failures (R10: `1000`, `1008`, HTTP 5xx, timeouts, transport)
//! go back to `pending` with exponential backoff and jitter, up to
//! `sender.max_attempts`; permanent ones (`1002`, `1003`, `1004`, `1007`)
//! mark the row `failed` with the platform's message.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pubbot_api_client::{Article, Client, McId, MediaRef, Message, UserId};
use pubbot_rules::{Media, PlannedReply};
use rand::Rng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::notify::{work_loop, Wakeups};

/// The client and rate limit of one app.
pub struct AppClient {
    /// The signed client.
    pub client: Client,
    /// This daemon's calls per second for the app.
    pub limiter: DefaultDirectRateLimiter,
}

impl AppClient {
    /// A limiter of `per_sec` calls a second, evenly spaced (no burst): the
    /// platform counts calls per calendar second, and a burst allowance
    /// let up to twice the limit into one of its seconds (answered `1008`).
    /// Spaced calls never exceed `per_sec` in any second.
    pub fn new(client: Client, per_sec: u32) -> Self {
        let n = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            client,
            limiter: RateLimiter::direct(Quota::per_second(n).allow_burst(NonZeroU32::MIN)),
        }
    }
}

/// What a send worker needs.
#[derive(Clone)]
pub struct SendWorker {
    /// The pool.
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
    /// Tries before failing.
    pub max_attempts: i32,
    /// First backoff.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// When this process last looked for expired `sending` leases (Unix
    /// ms), shared by its send workers.
    pub last_recovery: Arc<AtomicI64>,
    /// Merge same-payload replies into `batchsend` calls.
    pub merge_batchsend: bool,
    /// The longest a call may take: a lease with less left is renewed
    /// before the call.
    pub call_budget: Duration,
    /// The leases this process holds (kept alive by [`heartbeat`]).
    pub leases: Arc<Leases>,
}

/// Maps a planned reply to the client's message.
pub fn to_message(reply: &PlannedReply) -> Message {
    let media = |m: &Media| match m {
        Media::Url(u) => MediaRef::Url(u.clone()),
        Media::MediaId(id) => MediaRef::Uploaded(id.as_str().into()),
    };
    match reply {
        PlannedReply::Text { content } => Message::Text(content.clone()),
        PlannedReply::Image { media: m } => Message::Image(media(m)),
        PlannedReply::Voice { media: m } => Message::Voice(media(m)),
        PlannedReply::News { articles } => Message::News(
            articles
                .iter()
                .map(|a| Article {
                    title: a.title.clone(),
                    description: a.description.clone(),
                    url: a.url.clone(),
                    picurl: a.picurl.clone(),
                })
                .collect(),
        ),
    }
}

/// An outbound row this process holds the `sending` lease of, ready to call.
#[derive(Debug)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Sending account.
    pub mcid: String,
    /// Recipient.
    pub user_id: String,
    /// The planned reply (JSON).
    pub payload: serde_json::Value,
    /// Tries so far, this one included.
    pub attempts: i32,
    /// Trace id of the push.
    pub trace_id: String,
}

/// A row this process holds the lease of, and since when by this process's
/// clock (taken before the lease was, so never later than it). A row can
/// wait for the rate limit for longer than its lease; the sender renews
/// the lease before calling (and drops a row another process took over),
/// or that process would send it a second time.
#[derive(Debug)]
pub struct Held {
    /// The row.
    pub row: Claimed,
    /// When the lease was taken, at the latest.
    pub since: std::time::Instant,
}

/// The outbound rows this process holds leases on (id and attempt), from
/// the moment they are leased until their outcome is recorded. A heartbeat
/// ([`heartbeat`]) keeps exactly these leases alive, so a row waiting for
/// the rate limit, however long, is never taken for abandoned, while a row
/// this process has given up on (its outcome could not be recorded) is
/// left to expire and be recovered.
#[derive(Debug, Default)]
pub struct Leases {
    held: std::sync::Mutex<HashMap<i64, i32>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i32>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rows (id, attempts) just leased.
    pub fn hold(&self, rows: impl IntoIterator<Item = (i64, i32)>) {
        self.lock().extend(rows);
    }

    /// Rows no longer held (recorded, or given up).
    pub fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(&id);
        }
    }
}

/// Renews the leases of rows `ids` held at `attempts` by `worker_id`;
/// returns the ids still held. Matching on the attempt too: a row recovered
/// and claimed again (by any sender, this process's too) has one more
/// attempt than the one held here, and is not this holder's any more.
async fn renew(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    ids: &[i64],
    attempts: &[i32],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE outbound_messages o SET lease_until = now() + make_interval(secs => $4)
           FROM UNNEST($1::int8[], $2::int4[]) AS h(id, attempts)
          WHERE o.id = h.id AND o.attempts = h.attempts
            AND o.lease_owner = $3 AND o.status = 'sending'
      RETURNING o.id",
        ids,
        attempts,
        worker_id,
        lease.as_secs_f64()
    )
    // Planned afresh each time (see "Plans" in `crate::db`).
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// Renews the leases in `leases` every third of a lease until `token` is
/// cancelled (see [`renew`]).
pub async fn heartbeat(
    pool: PgPool,
    leases: Arc<Leases>,
    worker_id: String,
    lease: Duration,
    token: CancellationToken,
) {
    let every = lease / 3;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let (ids, attempts): (Vec<i64>, Vec<i32>) =
            leases.lock().iter().map(|(id, a)| (*id, *a)).unzip();
        if ids.is_empty() {
            continue;
        }
        let renewed = renew(&pool, &worker_id, lease, &ids, &attempts).await;
        match renewed {
            Ok(kept) => {
                metrics::counter!("pubbot_lease_renewals_total").increment(kept.len() as u64)
            }
            Err(e) => tracing::warn!(error = %e, rows = ids.len(), "renewing leases failed"),
        }
    }
}

/// Rows the decide workers of this process planned and leased to it in
/// their own transaction: the fast path that skips a NOTIFY and a claim.
pub type Handoff = tokio::sync::mpsc::Receiver<Held>;

#[derive(Clone)]
enum Outcome {
    Sent,
    Retry(String),
    Failed(String),
}

/// Most users in one `batchsend` call (R9).
const BATCH_MAX_USERS: usize = 100;

/// One platform call: a reply to one user, or the same reply to several
/// (distinct) users of one account through `batchsend`.
struct Call {
    app_key: String,
    mcid: String,
    payload: serde_json::Value,
    rows: Vec<CallRow>,
}

struct CallRow {
    id: i64,
    attempts: i32,
    user_id: String,
    trace_id: String,
    since: std::time::Instant,
}

/// Whether a reply can go through a batch endpoint: text and news by
/// `batchsend`, images and voices by URL by `operation/batchsend`; uploaded
/// media have none.
fn batchable(payload: &serde_json::Value) -> bool {
    match serde_json::from_value::<PlannedReply>(payload.clone()) {
        Ok(PlannedReply::Text { .. } | PlannedReply::News { .. }) => true,
        Ok(PlannedReply::Image { media } | PlannedReply::Voice { media }) => {
            matches!(media, Media::Url(_))
        }
        Err(_) => false,
    }
}

/// Groups rows into calls. With `merge`, rows of one app and account with
/// the same payload share `batchsend` calls of at most 100 distinct users
/// (a user who gets the same reply twice is in two calls); otherwise, and
/// for payloads no batch endpoint takes, one call per row.
fn plan_calls(rows: Vec<Held>, merge: bool) -> Vec<Call> {
    let single = |Held { row, since }: Held| Call {
        app_key: row.app_key,
        mcid: row.mcid,
        payload: row.payload,
        rows: vec![CallRow {
            id: row.id,
            attempts: row.attempts,
            user_id: row.user_id,
            trace_id: row.trace_id,
            since,
        }],
    };
    if !merge || rows.len() < 2 {
        return rows.into_iter().map(single).collect();
    }
    let mut calls: Vec<Call> = Vec::new();
    // (app, account, payload text) -> indexes of its calls in `calls`.
    let mut groups: HashMap<(String, String, String), Vec<usize>> = HashMap::new();
    for held in rows {
        let row = &held.row;
        if !batchable(&row.payload) {
            calls.push(single(held));
            continue;
        }
        let key = (
            row.app_key.clone(),
            row.mcid.clone(),
            row.payload.to_string(),
        );
        let slots = groups.entry(key).or_default();
        let open = slots.iter().copied().find(|&i| {
            calls[i].rows.len() < BATCH_MAX_USERS
                && calls[i].rows.iter().all(|r| r.user_id != row.user_id)
        });
        match open {
            Some(i) => calls[i].rows.push(CallRow {
                id: held.row.id,
                attempts: held.row.attempts,
                user_id: held.row.user_id,
                trace_id: held.row.trace_id,
                since: held.since,
            }),
            None => {
                slots.push(calls.len());
                calls.push(single(held));
            }
        }
    }
    calls
}

impl SendWorker {
    /// Runs until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        work_loop(
            &self.wake.outbound,
            self.poll,
            self.batch,
            &token,
            "send",
            || self.once(),
        )
        .await;
    }

    /// Rows left `sending` by a process that died mid-call go back to
    /// `pending` once their lease has expired.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recover(&self) -> Result<u64, sqlx::Error> {
        let n = sqlx::query!(
            "UPDATE outbound_messages
                SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                    last_error = 'interrupted mid-call by ' || coalesce(lease_owner, '?') || '; may have been delivered'
              WHERE status = 'sending' AND lease_until < now()"
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n > 0 {
            tracing::warn!(
                rows = n,
                "recovered replies interrupted mid-call; they may be delivered twice"
            );
            metrics::counter!("pubbot_outbound_recovered_total").increment(n);
        }
        Ok(n)
    }

    /// Claims due rows and sends them. Returns how many it took.
    ///
    /// # Errors
    /// Database errors.
    pub async fn once(&self) -> Result<usize, sqlx::Error> {
        // Expired `sending` leases are rare (a crashed process): look for them
        // once per half lease across this process's workers, not on every
        // round's hot path.
        let now = std::time::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_millis() as i64;
        let every = (self.lease.as_millis() / 2) as i64;
        let last = self.last_recovery.load(Ordering::Relaxed);
        if now - last >= every
            && self
                .last_recovery
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.recover().await?;
        }
        let since = std::time::Instant::now();
        let claimed = sqlx::query_as!(
            Claimed,
            r#"UPDATE outbound_messages o
                  SET status = 'sending', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                      attempts = attempts + 1
                 FROM (SELECT id FROM outbound_messages
                        WHERE status = 'pending' AND next_attempt_at <= now()
                        ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) c
                WHERE o.id = c.id
            RETURNING o.id, o.app_key, o.mcid, o.user_id, o.payload, o.attempts, o.trace_id"#,
            self.worker_id,
            self.lease.as_secs_f64(),
            self.batch
        )
        .fetch_all(&self.pool)
        .await?;
        let n = claimed.len();
        self.leases.hold(claimed.iter().map(|r| (r.id, r.attempts)));
        self.deliver(claimed.into_iter().map(|row| Held { row, since }).collect())
            .await?;
        Ok(n)
    }

    /// Takes rows handed over by this process's decide workers until they
    /// have all stopped and the hand-off is drained (so a graceful stop
    /// leaves no leased row behind).
    pub async fn run_handoff(self, handoff: Arc<tokio::sync::Mutex<Handoff>>) {
        loop {
            let batch = {
                let mut rx = handoff.lock().await;
                let Some(first) = rx.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < usize::try_from(self.batch).unwrap_or(64) {
                    match rx.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                batch
            };
            if let Err(e) = self.deliver(batch).await {
                // The rows keep their lease; recovery sends them again.
                tracing::warn!(error = %e, "settling handed-over replies failed");
                metrics::counter!("pubbot_worker_failures_total", "worker" => "handoff")
                    .increment(1);
            }
        }
    }

    /// Calls the platform for rows this process holds, then settles them.
    ///
    /// # Errors
    /// Database errors while settling.
    pub async fn deliver(&self, held: Vec<Held>) -> Result<(), sqlx::Error> {
        let calls = plan_calls(held, self.merge_batchsend);
        // Outcomes are recorded as calls finish, all that finished together
        // in one statement (`ready_chunks`): one commit for a burst of
        // replies, and no reply waits for the rest of its batch — under a
        // rate limit a batch can take longer than a lease, and a reply sent
        // but not yet recorded when its lease ends would be sent again.
        let mut done = futures_util::stream::iter(calls)
            .map(|call| async move {
                let ids: Vec<i64> = call.rows.iter().map(|r| r.id).collect();
                let Some(call) = self.keep_leases(call).await else {
                    self.leases.release(ids);
                    return Vec::new();
                };
                if call.rows.len() < ids.len() {
                    let kept: Vec<i64> = call.rows.iter().map(|r| r.id).collect();
                    self.leases
                        .release(ids.into_iter().filter(|id| !kept.contains(id)));
                }
                let outcome = self.call(&call).await;
                call.rows
                    .into_iter()
                    .map(|r| (r.id, r.attempts, outcome.clone()))
                    .collect::<Vec<_>>()
            })
            .buffer_unordered(16)
            .ready_chunks(64);
        let mut first_error = None;
        while let Some(chunk) = done.next().await {
            let outcomes: Vec<(i64, i32, Outcome)> = chunk.into_iter().flatten().collect();
            let recorded = self.record(&outcomes).await;
            // Recorded, or given up on: either way no longer held (a row
            // whose outcome could not be recorded expires and is recovered).
            self.leases.release(outcomes.iter().map(|(id, _, _)| *id));
            if let Err(e) = recorded {
                // Keep calling and recording the rest: dropping the stream
                // would abandon calls in flight.
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Records outcomes of calls that were made: they must reach the table,
    /// or the rows would stay `sending` and lease recovery would send them a
    /// second time. A database blip is retried for up to a lease.
    async fn record(&self, outcomes: &[(i64, i32, Outcome)]) -> Result<(), sqlx::Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + self.lease;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.settle_all(outcomes).await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() + pause < deadline => {
                    tracing::warn!(error = %e, rows = outcomes.len(), "recording sent replies failed; retrying");
                    metrics::counter!("pubbot_settle_retries_total").increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Records the outcomes. Idempotent: every statement matches only rows
    /// this process still holds the lease of, so a repeat after a partial
    /// failure changes nothing twice.
    async fn settle_all(&self, outcomes: &[(i64, i32, Outcome)]) -> Result<(), sqlx::Error> {
        // Sent rows are marked in one statement: one commit per batch, not
        // one per reply. A delivered reply is `sent` even if its lease ran
        // out meanwhile (a long database outage) and recovery put it back
        // to `pending`: that keeps it from being sent again.
        let sent: Vec<i64> = outcomes
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Sent))
            .map(|(id, _, _)| *id)
            .collect();
        if !sent.is_empty() {
            sqlx::query!(
                "UPDATE outbound_messages SET status = 'sent', sent_at = now(), lease_owner = NULL, lease_until = NULL
                  WHERE id = ANY($1) AND (lease_owner = $2 OR status = 'pending')",
                &sent,
                self.worker_id
            )
            // Planned afresh each time (see "Plans" in `crate::db`).
            .persistent(false)
            .execute(&self.pool)
            .await?;
        }
        for (id, attempts, outcome) in outcomes {
            if !matches!(outcome, Outcome::Sent) {
                self.settle(*id, *attempts, outcome.clone()).await?;
            }
        }
        Ok(())
    }

    /// Waits for the app's rate limit, then makes sure the call's rows are
    /// still this process's for longer than a call takes: a lease with less
    /// left is renewed, and rows whose lease another process has taken over
    /// meanwhile (and will send) are dropped from the call. `None`: no row
    /// left to send here.
    async fn keep_leases(&self, mut call: Call) -> Option<Call> {
        if let Some(app) = self.apps.get(call.app_key.as_str()) {
            app.limiter.until_ready().await;
        }
        let oldest = call.rows.iter().map(|r| r.since).min()?;
        if oldest.elapsed() + self.call_budget < self.lease {
            return Some(call);
        }
        let ids: Vec<i64> = call.rows.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = call.rows.iter().map(|r| r.attempts).collect();
        let kept = renew(&self.pool, &self.worker_id, self.lease, &ids, &attempts).await;
        let kept = match kept {
            Ok(kept) => kept,
            Err(e) => {
                // Not calling is safe: the leases expire and recovery sends
                // the rows.
                tracing::warn!(error = %e, rows = ids.len(), "renewing leases failed; the rows are left to recovery");
                return None;
            }
        };
        metrics::counter!("pubbot_lease_renewals_total").increment(kept.len() as u64);
        let now = std::time::Instant::now();
        call.rows.retain(|r| kept.contains(&r.id));
        for r in &mut call.rows {
            r.since = now;
        }
        let lost = ids.len() - call.rows.len();
        if lost > 0 {
            tracing::warn!(
                rows = lost,
                "leases expired while waiting for the rate limit; another process sends those rows"
            );
            metrics::counter!("pubbot_lease_lost_total").increment(lost as u64);
        }
        (!call.rows.is_empty()).then_some(call)
    }

    /// Makes one call (one unit of the app's rate limit) and says how it
    /// went for every row in it.
    async fn call(&self, call: &Call) -> Outcome {
        let app_key = call.app_key.as_str();
        let Some(app) = self.apps.get(app_key) else {
            return Outcome::Failed(format!("app {app_key:?} is not configured"));
        };
        let reply: PlannedReply = match serde_json::from_value(call.payload.clone()) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("stored reply does not parse: {e}")),
        };
        let message = to_message(&reply);
        let mcid = McId::from(call.mcid.as_str());
        let started = std::time::Instant::now();
        let (endpoint, result) = match call.rows.as_slice() {
            [one] => (
                "send",
                app.client
                    .send_to(&mcid, &UserId::from(one.user_id.as_str()), &message)
                    .await,
            ),
            rows => {
                let users: Vec<UserId> = rows
                    .iter()
                    .map(|r| UserId::from(r.user_id.as_str()))
                    .collect();
                // At most 100 distinct users (plan_calls): one chunk.
                let result = match app.client.send_to_many(&mcid, &users, &message).await {
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
        metrics::histogram!("pubbot_send_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        let replies = call.rows.len() as u64;
        let traces = || {
            call.rows
                .iter()
                .map(|r| r.trace_id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        match result {
            Ok(()) => {
                tracing::debug!(trace_id = %traces(), app_key, mcid = %call.mcid, endpoint, replies, "reply sent");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "sent")
                    .increment(1);
                metrics::counter!("pubbot_replies_sent_total").increment(replies);
                Outcome::Sent
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(trace_id = %traces(), app_key, endpoint, error = %e, "reply will be retried");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "retry")
                    .increment(1);
                Outcome::Retry(e.to_string())
            }
            Err(e) => {
                tracing::warn!(trace_id = %traces(), app_key, endpoint, error = %e, "reply failed permanently");
                metrics::counter!("pubbot_sends_total", "endpoint" => endpoint, "result" => "failed")
                    .increment(1);
                Outcome::Failed(e.to_string())
            }
        }
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let exp = self
            .backoff_min
            .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1));
        let capped = exp.min(self.backoff_max);
        // Full jitter on the upper half: between 50% and 100% of the delay.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn settle(&self, id: i64, attempts: i32, outcome: Outcome) -> Result<(), sqlx::Error> {
        match outcome {
            Outcome::Sent => {}
            Outcome::Retry(e) if attempts < self.max_attempts => {
                let delay = self.backoff(attempts);
                metrics::counter!("pubbot_send_retries_total").increment(1);
                sqlx::query!(
                    "UPDATE outbound_messages
                        SET status = 'pending', next_attempt_at = now() + make_interval(secs => $3),
                            last_error = $4, lease_owner = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_owner = $2",
                    id,
                    self.worker_id,
                    delay.as_secs_f64(),
                    e
                )
                .persistent(false)
                .execute(&self.pool)
                .await?;
            }
            Outcome::Retry(e) | Outcome::Failed(e) => {
                sqlx::query!(
                    "UPDATE outbound_messages SET status = 'failed', last_error = $3, lease_owner = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_owner = $2",
                    id,
                    self.worker_id,
                    e
                )
                .persistent(false)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, app: &str, mcid: &str, user: &str, payload: serde_json::Value) -> Held {
        Held {
            row: Claimed {
                id,
                app_key: app.into(),
                mcid: mcid.into(),
                user_id: user.into(),
                payload,
                attempts: 1,
                trace_id: format!("t{id}"),
            },
            since: std::time::Instant::now(),
        }
    }

    fn text(t: &str) -> serde_json::Value {
        serde_json::json!({"type": "text", "content": t})
    }

    fn shape(calls: &[Call]) -> Vec<Vec<i64>> {
        calls
            .iter()
            .map(|c| c.rows.iter().map(|r| r.id).collect())
            .collect()
    }

    #[test]
    fn same_payload_same_account_merges_distinct_users() {
        let rows = vec![
            row(1, "a", "shop", "u1", text("hi")),
            row(2, "a", "shop", "u2", text("hi")),
            row(3, "a", "shop", "u1", text("hi")), // u1 again: a second call
            row(4, "a", "shop", "u3", text("bye")), // other payload
            row(5, "a", "other", "u4", text("hi")), // other account
            row(6, "b", "shop", "u5", text("hi")), // other app
            row(7, "a", "shop", "u6", text("hi")),
        ];
        let calls = plan_calls(rows, true);
        assert_eq!(
            shape(&calls),
            vec![vec![1, 2, 7], vec![3], vec![4], vec![5], vec![6]]
        );
    }

    #[test]
    fn no_merge_means_one_call_per_row() {
        let rows = (0..3)
            .map(|i| row(i, "a", "shop", &format!("u{i}"), text("hi")))
            .collect();
        assert_eq!(
            shape(&plan_calls(rows, false)),
            vec![vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn a_batch_holds_at_most_100_users() {
        let rows = (0..250)
            .map(|i| row(i, "a", "shop", &format!("u{i}"), text("hi")))
            .collect();
        let sizes: Vec<usize> = plan_calls(rows, true)
            .iter()
            .map(|c| c.rows.len())
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn uploaded_media_are_sent_one_by_one_and_urls_merge() {
        let uploaded = serde_json::json!({"type": "image", "media": {"media_id": "m1"}});
        let by_url = serde_json::json!({"type": "image", "media": {"url": "http://x/p.png"}});
        assert!(!batchable(&uploaded), "{uploaded}");
        assert!(batchable(&by_url), "{by_url}");
        let rows = vec![
            row(1, "a", "shop", "u1", uploaded.clone()),
            row(2, "a", "shop", "u2", uploaded),
            row(3, "a", "shop", "u1", by_url.clone()),
            row(4, "a", "shop", "u2", by_url),
        ];
        assert_eq!(
            shape(&plan_calls(rows, true)),
            vec![vec![1], vec![2], vec![3, 4]]
        );
    }
}
