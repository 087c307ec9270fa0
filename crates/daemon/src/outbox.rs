//! The outbox: planned replies as rows of `outbound_messages`, the leases
//! that say which process may send one, and how an outcome is recorded.
//! Call planning and the send worker are in [`crate::send`]; this module
//! owns every statement that changes a reply's status.
//!
//! # Invariants
//!
//! 1. **Planned once.** A reply is inserted in the transaction that decides
//!    its push (a decide worker's, or the ingest statement that stores a
//!    push decided at receipt), unique on (push, reply index); a
//!    re-decided push plans nothing new.
//! 2. **Leased before the call.** A row is `sending`, with this process as
//!    `lease_owner` and a `lease_until` in the future, before any call is
//!    made for it; the claim (`FOR UPDATE SKIP LOCKED`) or the deciding
//!    transaction that sets it commits first.
//! 3. **A live process keeps its leases.** Every row this process holds
//!    (from its lease until its outcome is recorded) is in [`Leases`]; the
//!    [`heartbeat`] renews them every third of a lease, and a sender renews
//!    an old lease, matching the attempt, just before calling. Recovery in
//!    this process never takes a row it holds.
//! 4. **Outcomes are recorded as calls return,** by a recorder with its own
//!    connections ([`crate::db::Pools::settle`]), retried until the
//!    database answers; the calls themselves run as their own tasks and are
//!    never parked behind a database wait (a parked call times out, and a
//!    timed-out reply that was delivered would be sent again).
//! 5. **Per-user order.** A reply is sent only when every earlier push of
//!    its user (same app and account) is decided and every earlier reply
//!    of that user is settled (`sent`, `failed`, `expired`). Pushes are
//!    decided one at a time per user, in order (the decide claim; a push
//!    is stored decided at receipt only when no earlier push of its user
//!    is undecided, in the table or earlier in its batch), so a
//!    reply exists only once every earlier push of its user is decided; the
//!    send claims ([`claim`], and [`claim_next`] by user) take a reply only
//!    when no earlier reply of its user is open; the deciding transaction
//!    leases a reply to its own senders only when nothing earlier is open
//!    (every reply one transaction leases goes to one sender as one unit);
//!    a sender sends one user's rows one after the other, and a reply that
//!    did not go out holds back the user's later ones (they go back to
//!    `pending` untried) — never other users'.
//!
//! # How a held-back reply finds a sender
//!
//! A reply planned `pending` behind an open reply of its user is not
//! claimable until that one is settled, so scanning the queue for it is
//! wasted work (under a backlog most pending rows are such; the scans were
//! what tipped an overloaded daemon into a collapse). Its user is
//! remembered ([`crate::notify::Wakeups::behind`]); when this process
//! records an outcome that closes a reply of theirs, a sender claims their
//! next reply by user ([`claim_next`], through the index of open rows).
//! What that misses — the earlier reply was recorded by another replica,
//! or the process restarted — the general [`claim`] takes when the
//! senders poll (`workers.poll_ms`) or are notified. It never scans
//! waiting rows either: it sweeps the conversations with open replies
//! (one index probe each, at most [`SWEEP_WINDOW`] a statement, going on
//! where the last sweep stopped) and takes each one's first open reply if
//! it is due; the users it took are remembered like the ones above, so
//! their later replies follow by user. A sweep that looked at every
//! conversation and took fewer rows than asked stops recorded outcomes
//! from waking more sweeps until new claimable rows are counted.
//! 6. **Rows are locked in id order** by every statement that may wait for
//!    a lock (renewal, settling), so two of them never deadlock; claims and
//!    recovery skip locked rows instead of waiting.
//! 7. **The windows for a double reply** are named and counted:
//!    a call in flight when its process died is sent again after its lease
//!    expires (`pubbot_outbound_recovered_total`, an upper bound: a row
//!    leased by a process that died before calling is counted too; "in
//!    flight" includes outcomes the recorder held, up to
//!    `sender.settle_micros`, and had not written yet); a call
//!    whose answer was lost is retried only when `sender.retry_ambiguous`
//!    is on (`pubbot_outbound_ambiguous_retries_total`). Nothing else sends
//!    a reply twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pubbot_rules::PlannedReply;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::{Progress, Stage};
use crate::notify::Wakeups;

/// An outbound row this process holds the `sending` lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Sending account.
    pub mcid: String,
    /// Recipient.
    pub user_id: String,
    /// The planned reply.
    pub payload: Json<PlannedReply>,
    /// Tries so far, this one included.
    pub attempts: i32,
    /// Trace id of the push.
    pub trace_id: String,
    /// The push it answers (its place in the user's conversation).
    pub inbound_id: Option<i64>,
    /// Its place among the push's replies.
    pub reply_index: i32,
    /// Its place among a handler's replies (0: the rule's own reply, or
    /// the handler call).
    pub sub_index: i32,
    /// When it was planned.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Claimed {
    /// The conversation the row belongs to.
    pub fn conversation(&self) -> (&str, &str, &str) {
        (&self.app_key, &self.mcid, &self.user_id)
    }

    /// Its place in the conversation.
    pub fn order(&self) -> (i64, i32, i32) {
        (
            self.inbound_id.unwrap_or(i64::MAX),
            self.reply_index,
            self.sub_index,
        )
    }
}

/// A row this process holds the lease of, and since when by this process's
/// clock (taken before the lease was, so never later than it).
#[derive(Debug, Clone)]
pub struct Held {
    /// The row.
    pub row: Claimed,
    /// When the lease was taken, at the latest.
    pub since: std::time::Instant,
}

/// The rows this process holds leases on (id -> attempt), from the moment
/// they are leased until their outcome is recorded (invariant 3).
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

    /// Rows no longer held (recorded).
    pub fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(&id);
        }
    }

    /// The rows held, sorted by id (invariant 6).
    pub fn snapshot(&self) -> (Vec<i64>, Vec<i32>) {
        let mut rows: Vec<(i64, i32)> = self.lock().iter().map(|(i, a)| (*i, *a)).collect();
        rows.sort_unstable();
        rows.into_iter().unzip()
    }

    /// How many rows are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hands rows a transaction leased to this process's senders (the fast
/// path of deciding, at receipt or by a decide worker): the rows it
/// inserted leased (`attempts > 0`; those planned `pending` wait for a
/// claim), held in `leases` (invariant 3) and sent as one unit, so that one
/// sender sends a user's rows in order (invariant 5). `since` was taken
/// before the transaction began.
pub fn hand_over(
    permit: mpsc::Permit<'_, Vec<Held>>,
    leases: Option<&Leases>,
    rows: impl IntoIterator<Item = Claimed>,
    since: std::time::Instant,
) {
    let unit: Vec<Held> = rows
        .into_iter()
        .filter(|r| r.attempts > 0)
        .map(|row| Held { row, since })
        .collect();
    if let Some(leases) = leases {
        leases.hold(unit.iter().map(|h| (h.row.id, h.row.attempts)));
    }
    if !unit.is_empty() {
        permit.send(unit);
    }
}

/// Renews the leases of rows `ids` held at `attempts` by `worker_id`,
/// locking them in id order (invariant 6); returns the ids still held.
/// Matching the attempt too: a row recovered and claimed again has one
/// more attempt than the one held here, and is not this holder's any more.
///
/// # Errors
/// Database errors.
pub async fn renew(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    ids: &[i64],
    attempts: &[i32],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut pairs: Vec<(i64, i32)> = ids.iter().copied().zip(attempts.iter().copied()).collect();
    pairs.sort_unstable();
    let (ids, attempts): (Vec<i64>, Vec<i32>) = pairs.into_iter().unzip();
    sqlx::query_scalar!(
        "WITH h AS (SELECT * FROM UNNEST($1::int8[], $2::int4[]) AS h(id, attempts)),
              l AS (SELECT o.id FROM outbound_messages o JOIN h ON h.id = o.id
                     WHERE o.attempts = h.attempts AND o.lease_owner = $3 AND o.status = 'sending'
                     ORDER BY o.id FOR UPDATE OF o)
         UPDATE outbound_messages o SET lease_until = now() + make_interval(secs => $4)
           FROM l WHERE o.id = l.id
         RETURNING o.id",
        &ids,
        &attempts,
        worker_id,
        lease.as_secs_f64()
    )
    // Planned afresh each time (see "Plans" in `crate::db`).
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// Renews the leases in `leases` every third of a lease (every second
/// after a failure, so leases are renewed as soon as the database is back)
/// until `token` is cancelled.
pub async fn heartbeat(
    pool: PgPool,
    leases: Arc<Leases>,
    worker_id: String,
    lease: Duration,
    token: CancellationToken,
) {
    let every = lease / 3;
    let mut pause = every;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let (ids, attempts) = leases.snapshot();
        if ids.is_empty() {
            pause = every;
            continue;
        }
        match renew(&pool, &worker_id, lease, &ids, &attempts).await {
            Ok(kept) => {
                metrics::counter!("pubbot_lease_renewals_total").increment(kept.len() as u64);
                pause = every;
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = ids.len(), "renewing leases failed; trying again in a second");
                pause = Duration::from_secs(1).min(every);
            }
        }
    }
}

/// Puts rows whose lease expired back to `pending` (their process died, or
/// lost the database for longer than a lease), except rows this process
/// holds (invariant 3). Locks in id order and skips locked rows.
/// Returns how many it recovered; each is counted in
/// `pubbot_outbound_recovered_total` (invariant 7).
///
/// # Errors
/// Database errors.
pub async fn recover(pool: &PgPool, worker_id: &str, leases: &Leases) -> Result<u64, sqlx::Error> {
    let (held, _) = leases.snapshot();
    let n = sqlx::query_scalar!(
        "WITH r AS (SELECT id FROM outbound_messages
                     WHERE status = 'sending' AND lease_until < now()
                       AND NOT (lease_owner = $1 AND id = ANY($2))
                     ORDER BY id FOR UPDATE SKIP LOCKED)
         UPDATE outbound_messages o
            SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                last_error = 'interrupted mid-call by ' || coalesce(o.lease_owner, '?') || '; may have been delivered'
           FROM r WHERE o.id = r.id
         RETURNING o.id",
        worker_id,
        &held
    )
    .persistent(false)
    .fetch_all(pool)
    .await?
    .len() as u64;
    if n > 0 {
        tracing::warn!(
            rows = n,
            "recovered replies interrupted mid-call; they may be delivered twice"
        );
        metrics::counter!("pubbot_outbound_recovered_total").increment(n);
    }
    Ok(n)
}

/// Runs [`recover`] every half lease until `token` is cancelled: once at
/// start, which also takes back the rows a previous process with this
/// `worker_id` left (it cannot be calling any more).
pub async fn recovery(
    pool: PgPool,
    worker_id: String,
    leases: Arc<Leases>,
    lease: Duration,
    wake: Arc<Wakeups>,
    token: CancellationToken,
) {
    loop {
        match recover(&pool, &worker_id, &leases).await {
            Ok(n) if n > 0 => wake.add_pending(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "lease recovery failed; trying again later"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(lease / 2) => {}
        }
    }
}

/// Users a general claim looks at, at most, per statement: the sweep's
/// window (see [`claim`]).
pub const SWEEP_WINDOW: i64 = 1024;

/// Where the general claim's sweep over conversations goes on from: the
/// last (app, account, user) it looked at, shared by a process's senders.
#[derive(Debug, Default)]
pub struct Sweep(std::sync::Mutex<crate::notify::Conversation>);

impl Sweep {
    fn get(&self) -> crate::notify::Conversation {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, to: crate::notify::Conversation) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }
}

/// What a general claim took.
#[derive(Debug)]
pub struct Claim {
    /// The rows now leased to this process.
    pub rows: Vec<Claimed>,
    /// The sweep stopped at its window, not at the end of the
    /// conversations: more may be claimable now.
    pub more: bool,
}

/// One conversation's first open reply, as the sweep saw it.
struct Head {
    app_key: String,
    mcid: String,
    user_id: String,
    id: i64,
    ok: bool,
    n: i64,
}

/// Claims up to `batch` due rows that are next in their conversation
/// (invariant 5), leasing them to `worker_id` (invariant 2).
///
/// Only a conversation's first open reply can be claimable, so the claim
/// looks at those and nothing else: a skip scan over the index of open
/// rows (one probe per conversation with open replies, from where the
/// last sweep stopped, wrapping at the end, at most [`SWEEP_WINDOW`]
/// conversations), then the rows it found due are locked and leased.
/// Scanning the due rows instead, as this did before, costs a probe per
/// *row* that waits behind an earlier reply of its user: under a backlog
/// of 100,000 replies for 1,000 users that was 1.6 s a claim, for none.
/// The sweep serves conversations in turn, not the oldest row first;
/// order within a conversation is what invariant 5 asks for.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    batch: i64,
    sweep: &Sweep,
) -> Result<Claim, sqlx::Error> {
    let from = sweep.get();
    let heads = heads(pool, &from, SWEEP_WINDOW, batch).await?;
    let found = heads.iter().filter(|h| h.ok).count();
    let more = match heads.last() {
        // Stopped at the window or with enough found: go on after it.
        Some(last)
            if last.n >= SWEEP_WINDOW || i64::try_from(found).unwrap_or(i64::MAX) >= batch =>
        {
            sweep.set((
                last.app_key.clone(),
                last.mcid.clone(),
                last.user_id.clone(),
            ));
            true
        }
        // Reached the end: the next sweep starts at the beginning, and
        // what lies before where this one began is still to look at.
        _ => {
            sweep.set(Default::default());
            !from.0.is_empty()
        }
    };
    let ids: Vec<i64> = heads.iter().filter(|h| h.ok).map(|h| h.id).collect();
    let rows = if ids.is_empty() {
        Vec::new()
    } else {
        claim_ids(pool, worker_id, lease, &ids).await?
    };
    Ok(Claim { rows, more })
}

/// The first open reply of each conversation after `from`, in key order,
/// up to `window` conversations or until `batch` of them are claimable
/// (pending and due): those claimable, and the last one looked at (`n`
/// says how many were).
async fn heads(
    pool: &PgPool,
    from: &crate::notify::Conversation,
    window: i64,
    batch: i64,
) -> Result<Vec<Head>, sqlx::Error> {
    sqlx::query_as!(
        Head,
        r#"WITH RECURSIVE heads AS (
               (SELECT h.app_key, h.mcid, h.user_id, h.id,
                       (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok, 1 AS n,
                       (h.status = 'pending' AND h.next_attempt_at <= now())::int AS found
                  FROM outbound_messages h
                 WHERE h.status IN ('pending', 'sending') AND (h.app_key, h.mcid, h.user_id) > ($1, $2, $3)
                 ORDER BY h.app_key, h.mcid, h.user_id, h.inbound_id, h.reply_index, h.sub_index LIMIT 1)
               UNION ALL
               SELECT x.app_key, x.mcid, x.user_id, x.id, x.ok, p.n + 1, p.found + x.ok::int
                 FROM heads p CROSS JOIN LATERAL (
                      SELECT h.app_key, h.mcid, h.user_id, h.id,
                             (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok
                        FROM outbound_messages h
                       WHERE h.status IN ('pending', 'sending')
                         AND (h.app_key, h.mcid, h.user_id) > (p.app_key, p.mcid, p.user_id)
                       ORDER BY h.app_key, h.mcid, h.user_id, h.inbound_id, h.reply_index, h.sub_index LIMIT 1) x
                WHERE p.n < $4 AND p.found < $5)
           SELECT app_key AS "app_key!", mcid AS "mcid!", user_id AS "user_id!", id AS "id!", ok AS "ok!",
                  n::int8 AS "n!"
             FROM heads WHERE ok OR n = (SELECT max(n) FROM heads) ORDER BY n"#,
        from.0,
        from.1,
        from.2,
        i32::try_from(window).unwrap_or(i32::MAX),
        i32::try_from(batch).unwrap_or(i32::MAX),
    )
    .fetch_all(pool)
    .await
}

/// Leases these rows to `worker_id` if each is still pending, due and next
/// in its conversation (checked again under the row lock: the sweep read
/// them without one).
async fn claim_ids(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    ids: &[i64],
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"UPDATE outbound_messages o
              SET status = 'sending', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                  attempts = attempts + 1
             FROM (SELECT c.id FROM outbound_messages c
                    WHERE c.id = ANY($3) AND c.status = 'pending' AND c.next_attempt_at <= now()
                      AND NOT EXISTS (
                          SELECT 1 FROM outbound_messages e
                           WHERE e.app_key = c.app_key AND e.mcid = c.mcid AND e.user_id = c.user_id
                             AND e.status IN ('pending', 'sending')
                             AND (e.inbound_id, e.reply_index, e.sub_index) < (c.inbound_id, c.reply_index, c.sub_index))
                    ORDER BY c.id FOR UPDATE SKIP LOCKED) c
            WHERE o.id = c.id
        RETURNING o.id, o.app_key, o.mcid, o.user_id, o.payload AS "payload: Json<PlannedReply>",
                  o.attempts, o.trace_id, o.inbound_id, o.reply_index, o.sub_index, o.created_at"#,
        worker_id,
        lease.as_secs_f64(),
        ids,
    )
    .fetch_all(pool)
    .await
}

/// Claims the next reply of each of `users` whose turn it is (invariant 5),
/// leasing it to `worker_id` (invariant 2): each user's first open reply,
/// one probe of the index of open rows per user, claimed if it is pending
/// and due — what a sender does when an outcome was recorded for a user
/// with a reply held back behind it. (Checking every pending row of those
/// users instead, as this did before, cost a second a claim under a
/// backlog of a hundred replies a user.)
///
/// # Errors
/// Database errors.
pub async fn claim_next(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    users: &[crate::notify::Conversation],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut users = users.to_vec();
    users.sort();
    users.dedup();
    let mut apps = Vec::with_capacity(users.len());
    let mut mcids = Vec::with_capacity(users.len());
    let mut ids = Vec::with_capacity(users.len());
    for (a, m, u) in users {
        apps.push(a);
        mcids.push(m);
        ids.push(u);
    }
    // One statement: each user's first open reply (one probe each), then
    // the same lock and re-check as `claim_ids`.
    sqlx::query_as!(
        Claimed,
        r#"UPDATE outbound_messages o
              SET status = 'sending', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                  attempts = attempts + 1
             FROM (SELECT c.id
                     FROM UNNEST($3::text[], $4::text[], $5::text[]) AS u(a, m, s)
                     CROSS JOIN LATERAL (
                          SELECT h.id FROM outbound_messages h
                           WHERE h.app_key = u.a AND h.mcid = u.m AND h.user_id = u.s
                             AND h.status IN ('pending', 'sending')
                           ORDER BY h.inbound_id, h.reply_index, h.sub_index LIMIT 1) f
                     JOIN outbound_messages c ON c.id = f.id
                    WHERE c.status = 'pending' AND c.next_attempt_at <= now()
                      AND NOT EXISTS (
                          SELECT 1 FROM outbound_messages e
                           WHERE e.app_key = c.app_key AND e.mcid = c.mcid AND e.user_id = c.user_id
                             AND e.status IN ('pending', 'sending')
                             AND (e.inbound_id, e.reply_index, e.sub_index) < (c.inbound_id, c.reply_index, c.sub_index))
                    ORDER BY c.id FOR UPDATE OF c SKIP LOCKED) c
            WHERE o.id = c.id
        RETURNING o.id, o.app_key, o.mcid, o.user_id, o.payload AS "payload: Json<PlannedReply>",
                  o.attempts, o.trace_id, o.inbound_id, o.reply_index, o.sub_index, o.created_at"#,
        worker_id,
        lease.as_secs_f64(),
        &apps,
        &mcids,
        &ids,
    )
    .fetch_all(pool)
    .await
}

/// Whether a reply is due and next in its conversation (for the liveness
/// check: rows held back by an earlier reply's retry are not "due"). The
/// same skip scan as [`claim`], over every conversation with open replies,
/// stopping at the first one due.
///
/// # Errors
/// Database errors.
pub async fn any_due(pool: &PgPool) -> Result<bool, sqlx::Error> {
    Ok(heads(pool, &Default::default(), i64::from(i32::MAX), 1)
        .await?
        .iter()
        .any(|h| h.ok))
}

/// How a call went for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Delivered.
    Sent,
    /// Try again after a backoff.
    Retry {
        /// Why.
        error: String,
        /// The platform may have delivered it (invariant 7).
        ambiguous: bool,
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
pub struct Settlement {
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
    pub conversation: crate::notify::Conversation,
}

/// Backoff and attempt limits the recorder applies to retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries before a reply fails.
    pub max_attempts: i32,
    /// First backoff.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    fn backoff(&self, attempts: i32) -> Duration {
        use rand::Rng;
        let exp = self
            .backoff_min
            .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1));
        let capped = exp.min(self.backoff_max);
        // Full jitter on the upper half: between 50% and 100% of the delay.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
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
pub async fn settle(
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
    sqlx::query!(
        "WITH s AS (SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::text[], $6::int4[])
                      AS s(id, attempts, status, delay, error, undo)),
              l AS (SELECT o.id FROM outbound_messages o JOIN s ON s.id = o.id
                     WHERE (o.lease_owner = $7 AND o.status = 'sending' AND o.attempts = s.attempts)
                        OR (s.status = 'sent' AND o.status = 'pending')
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
          WHERE o.id = s.id AND l.id = s.id",
        &ids,
        &attempts,
        &status as &[String],
        &delay,
        &error as &[Option<String>],
        &undo,
        worker_id,
    )
    // Planned once per connection: the settle pool's generic plans
    // (see "Plans" in `crate::db`).
    .execute(pool)
    .await?;
    Ok(())
}

/// The recorder: takes outcomes from the senders and records them, all
/// that arrived together in one statement (invariant 4). A database that
/// fails is retried (every 100 ms, backing off to 2 s) until it answers:
/// the rows stay held and their leases renewed meanwhile, so nothing is
/// recovered and sent again. It ends when every sender has dropped its
/// handle and everything received is recorded.
pub struct Recorder {
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
    pub async fn run(self, mut rx: mpsc::Receiver<Settlement>) {
        let mut batch = Vec::with_capacity(512);
        while let Some(first) = rx.recv().await {
            // At most `linger` after the first outcome was known: one that
            // waited while the previous batch was recorded goes at once.
            let deadline = tokio::time::Instant::from_std(first.at + self.linger);
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) if self.linger.is_zero() => break,
                    Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    },
                }
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
            self.wake.outbound_if_pending();
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `users` conversations with two replies each (pushes 2i+1 and 2i+2);
    /// the first `blocked` have their first reply leased elsewhere, and
    /// conversation `late` has its first reply due only in an hour.
    async fn backlog(pool: &PgPool, users: i32, blocked: i32, late: i32) {
        sqlx::query(
            "INSERT INTO inbound_messages (id, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status)
             SELECT i, 'a', 'm', 'u' || lpad(((i - 1) / 2)::text, 5, '0'), 'text', 'k' || i, '{}', '', 't', 'done'
               FROM generate_series(1, 2 * $1) i",
        )
        .bind(users)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            r#"INSERT INTO outbound_messages (inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id,
                                              status, lease_owner, lease_until, next_attempt_at)
               SELECT i, 0, 'a', 'm', 'u' || lpad(((i - 1) / 2)::text, 5, '0'), 'r', '{"type": "text", "content": "hi"}', 't',
                      CASE WHEN i % 2 = 1 AND (i - 1) / 2 < $2 THEN 'sending' ELSE 'pending' END,
                      CASE WHEN i % 2 = 1 AND (i - 1) / 2 < $2 THEN 'elsewhere' END,
                      CASE WHEN i % 2 = 1 AND (i - 1) / 2 < $2 THEN now() + interval '1 minute' END,
                      CASE WHEN i % 2 = 1 AND (i - 1) / 2 = $3 THEN now() + interval '1 hour' ELSE now() END
                 FROM generate_series(1, 2 * $1) i"#,
        )
        .bind(users)
        .bind(blocked)
        .bind(late)
        .execute(pool)
        .await
        .unwrap();
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn the_sweep_takes_each_conversations_next_reply_past_a_window_of_blocked_ones(
        pool: PgPool,
    ) {
        // 1,500 conversations; the first 1,200 (more than a window) wait
        // behind a reply leased elsewhere; one more waits for a retry.
        backlog(&pool, 1500, 1200, 1300).await;
        let sweep = Sweep::default();
        let lease = Duration::from_secs(60);
        let mut taken = Vec::new();
        for _ in 0..20 {
            let claim = claim(&pool, "me", lease, 64, &sweep).await.unwrap();
            taken.extend(claim.rows);
        }
        let mut users: Vec<&str> = taken.iter().map(|r| r.user_id.as_str()).collect();
        users.sort_unstable();
        let n = users.len();
        users.dedup();
        assert_eq!(users.len(), n, "two replies of one conversation at once");
        // Every conversation free to go, and only those: 1,200..1,499
        // less the one waiting for its retry, each its first reply.
        assert_eq!(n, 299);
        assert!(taken
            .iter()
            .all(|r| r.inbound_id.unwrap() % 2 == 1 && r.user_id.as_str() >= "u01200"));
        assert!(!users.contains(&"u01300"));
        // Nothing more until something is recorded.
        assert!(claim(&pool, "me", lease, 64, &sweep)
            .await
            .unwrap()
            .rows
            .is_empty());
        assert!(!any_due(&pool).await.unwrap());

        // Recorded: each of those conversations' second reply is next,
        // found by user without a sweep.
        let ids: Vec<i64> = taken.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbound_messages SET status = 'sent' WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&pool)
            .await
            .unwrap();
        assert!(any_due(&pool).await.unwrap());
        let users: Vec<crate::notify::Conversation> = taken
            .iter()
            .map(|r| (r.app_key.clone(), r.mcid.clone(), r.user_id.clone()))
            .chain([("a".into(), "m".into(), "u00000".into())])
            .collect();
        let next = claim_next(&pool, "me", lease, &users).await.unwrap();
        assert_eq!(next.len(), 299, "u00000 is still behind its leased reply");
        assert!(next.iter().all(|r| r.inbound_id.unwrap() % 2 == 0));
    }
}
