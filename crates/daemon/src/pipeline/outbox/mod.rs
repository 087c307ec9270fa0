//! The outbox: planned replies as rows of `outbound_messages`, the leases
//! that say which process may send one, and how an outcome is recorded.
//! Call planning and the send worker are in [`crate::pipeline::send`].
//!
//! # Who writes `outbound_messages`
//!
//! This room, and no other: deciding plans replies through [`plan`], a
//! handler call's answer is settled through [`settle_call`], an operator's
//! retry goes through [`requeue_failed`], a person's message from the
//! console through [`enqueue_staff`], claims and outcomes are
//! [`claim`], [`claim_next`], [`settle`] and the recovery here. One
//! statement is shared on purpose: ingest's batch statement
//! (`pipeline/ingest/statement.rs`) stores pushes decided at receipt
//! *and* their replies in one `INSERT ... WITH` (one round trip per batch,
//! the reason ingest keeps up at capacity); its outbound half follows
//! invariants 1, 2 and 5 below exactly as [`plan`] does, and a change to
//! either is a change to both. Retention deletes settled rows by age.
//!
//! # Invariants
//!
//! 1. **Planned once.** A reply is inserted in the transaction that decides
//!    its push (a decide worker's, through [`plan`], or the ingest
//!    statement that stores a push decided at receipt), unique on (push,
//!    reply index); a re-decided push plans nothing new.
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
//!    (every reply one transaction leases goes to one sender as one unit),
//!    or — the ingest statement — when every earlier open reply is leased
//!    to this process too, and then the reply follows them in process
//!    (below);
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
//! remembered ([`crate::pipeline::wakeups::Wakeups::behind`]); when this process
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
//!
//! # Following a reply held here
//!
//! A user who writes again before their last reply is out (under load, a
//! reply's way out takes longer than the gap between two messages) used
//! to have the new reply planned `pending`, claimed by user once the one
//! before was recorded: two statements and two commits between any two
//! replies of the user, and under load every later reply of theirs took
//! that path (measured at 6,000 msgs/s: 22,275-40,300 of 120,000 replies,
//! p50 353-378 ms, and PostgreSQL at 84-114% of a core). Now the
//! ingest statement leases such a reply when the latest open reply of its
//! user is leased to this process, and names it ([`Held::follows`]). The
//! sender ([`Leases::sort`]) sends it once that call went out, in process,
//! with no statement in between; if it did not go out, or nothing is known
//! of it (its outcome older than ten seconds, or its lease lost), the reply
//! goes back to `pending` untried and takes the claim path above. Following
//! only the latest is enough: it was itself leased behind the one before it,
//! so it went out only after all of them; and one probe of the index of
//! open replies finds it, where listing every earlier one read them all
//! (twice: to decide and to list), for every reply of a user who writes
//! faster than their replies go out. Two batches in flight at once never hold
//! pushes of one user (a batch waits for the commit of one that does), so
//! a statement sees every earlier reply of the user it plans for. A
//! process that dies leaves both rows leased; recovery sends the earlier
//! one first (the claims' order check), counted as invariant 7 says.
//!
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

mod claim;
mod leases;
mod limited;
pub(crate) mod moved;
mod plan;
mod record;

use std::sync::Arc;
use std::time::Duration;

use pubbot_api_client::{Article, MediaRef, Message};
use pubbot_protocol::{McId, UserId};
use pubbot_rules::{Media, PlannedReply};
use sqlx::types::Json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::wakeups::Wakeups;

pub(crate) use claim::*;
pub(crate) use leases::*;
pub(crate) use plan::*;
pub(crate) use record::*;

/// An outbound row this process holds the `sending` lease of.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// Row id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Sending account.
    pub mcid: McId,
    /// Recipient.
    pub user_id: UserId,
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
    pub(crate) fn conversation(&self) -> (&str, &str, &str) {
        (&self.app_key, self.mcid.as_str(), self.user_id.as_str())
    }

    /// Its place in the conversation.
    pub(crate) fn order(&self) -> (i64, i32, i32) {
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
pub(crate) struct Held {
    /// The row.
    pub row: Claimed,
    /// When the lease was taken, at the latest.
    pub since: std::time::Instant,
    /// How it reached its sender.
    pub path: Path,
    /// The earlier reply of its user it follows: the latest open one when
    /// this one was planned, leased to this process (see "Following a
    /// reply held here"). `None` for rows claimed from the table.
    pub follows: Option<i64>,
}

/// How a reply reached its sender (`pubbot_decided_to_sent_seconds{path}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Leased by the transaction that planned it, handed over in process.
    HandedOver,
    /// Claimed by user once the reply before it was recorded here.
    Successor,
    /// Claimed by a sender's sweep of the table.
    Claimed,
    /// Handed over behind a reply held here, sent once that one's call went
    /// out.
    Followed,
}

impl Path {
    /// Its label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Path::HandedOver => "handed_over",
            Path::Successor => "successor",
            Path::Claimed => "claimed",
            Path::Followed => "followed",
        }
    }
}

/// Hands rows a transaction leased to this process's senders (the fast
/// path of deciding, at receipt or by a decide worker): the rows it
/// inserted leased (`attempts > 0`; those planned `pending` wait for a
/// claim), held in `leases` (invariant 3) and sent as one unit, so that one
/// sender sends a user's rows in order (invariant 5). `since` was taken
/// before the transaction began.
pub(crate) fn hand_over(
    permit: mpsc::Permit<'_, Vec<Held>>,
    leases: Option<&Leases>,
    rows: impl IntoIterator<Item = (Claimed, Option<i64>)>,
    since: std::time::Instant,
) {
    let unit: Vec<Held> = rows
        .into_iter()
        .filter(|(r, _)| r.attempts > 0)
        .map(|(row, follows)| Held {
            row,
            since,
            path: Path::HandedOver,
            follows,
        })
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
pub(crate) async fn renew(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    ids: &[i64],
    attempts: &[i32],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut pairs: Vec<(i64, i32)> = ids.iter().copied().zip(attempts.iter().copied()).collect();
    pairs.sort_unstable();
    let (ids, attempts): (Vec<i64>, Vec<i32>) = pairs.into_iter().unzip();
    let (lo, hi) = crate::pipeline::days::span(&ids);
    sqlx::query_scalar!(
        "WITH h AS (SELECT * FROM UNNEST($1::int8[], $2::int4[]) AS h(id, attempts)),
              l AS (SELECT o.id FROM outbound_messages o JOIN h ON h.id = o.id
                     WHERE o.attempts = h.attempts AND o.lease_owner = $3 AND o.status = 'sending'
                       AND o.day BETWEEN $5 AND $6
                     ORDER BY o.id FOR UPDATE OF o)
         UPDATE outbound_messages o SET lease_until = now() + make_interval(secs => $4)
           FROM l WHERE o.id = l.id AND o.day BETWEEN $5 AND $6
         RETURNING o.id",
        &ids,
        &attempts,
        worker_id,
        lease.as_secs_f64(),
        lo,
        hi,
    )
    // Planned afresh each time (see "Plans" in `crate::db`).
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// Renews the leases in `leases` every third of a lease (every second
/// after a failure, so leases are renewed as soon as the database is back)
/// until `token` is cancelled.
pub(crate) async fn heartbeat(
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
pub(crate) async fn recover(
    pool: &PgPool,
    worker_id: &str,
    leases: &Leases,
    apps: &[String],
    since: chrono::NaiveDate,
) -> Result<u64, sqlx::Error> {
    let (held, _) = leases.snapshot();
    let mut n = 0;
    // One statement per app: each claim names its tenant key.
    for app in apps {
        n += sqlx::query_scalar!(
            "WITH r AS (SELECT id, day FROM outbound_messages
                         WHERE app_key = $4 AND status = 'sending' AND lease_until < now() AND day >= $3
                           AND NOT (lease_owner = $1 AND id = ANY($2))
                         ORDER BY id FOR UPDATE SKIP LOCKED)
             UPDATE outbound_messages o
                SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                    last_error = 'interrupted mid-call by ' || coalesce(o.lease_owner, '?') || '; may have been delivered'
               FROM r WHERE o.app_key = $4 AND o.id = r.id AND o.day = r.day AND o.day >= $3
             RETURNING o.id",
            worker_id,
            &held,
            since,
            app
        )
        .persistent(false)
        .fetch_all(pool)
        .await?
        .len() as u64;
    }
    if n > 0 {
        tracing::warn!(
            rows = n,
            "recovered replies interrupted mid-call; they may be delivered twice"
        );
        metrics::counter!("pubbot_outbound_recovered_total").increment(n);
    }
    Ok(n)
}

/// Settles the open replies of apps this process is not configured for
/// (an app removed from `[[apps]]`): `failed`, with the reason, as a send
/// would have found them before claims named their app. Without it they
/// would stay open, and keep their day from settling and from retention.
/// Returns how many.
///
/// # Errors
/// Database errors.
pub(crate) async fn fail_unconfigured(
    pool: &PgPool,
    apps: &[String],
    since: chrono::NaiveDate,
) -> Result<u64, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE outbound_messages
            SET status = 'failed', lease_owner = NULL, lease_until = NULL,
                last_error = 'app ' || app_key || ' is not configured (pubbot [[apps]])'
          WHERE status = 'pending' AND day >= $2 AND NOT (app_key = ANY($1))",
        apps,
        since
    )
    .execute(pool)
    .await?
    .rows_affected();
    if n > 0 {
        tracing::warn!(
            rows = n,
            "replies of apps not configured here marked failed"
        );
    }
    Ok(n)
}

/// Lease recovery, with what it needs: [`Recovery::run`].
pub(crate) struct Recovery {
    /// The housekeeping pool.
    pub pool: PgPool,
    /// Lease identity.
    pub worker_id: String,
    /// Rows this process holds (never recovered by it).
    pub leases: Arc<Leases>,
    /// The lease; recovery runs every half of it.
    pub lease: Duration,
    /// Told how many rows went back to `pending`.
    pub wake: Arc<Wakeups>,
    /// The open window (`pipeline::days`).
    pub progress: Arc<crate::progress::Progress>,
    /// The configured apps: one statement each.
    pub apps: Vec<String>,
}

impl Recovery {
    /// Runs [`recover`] every half lease until `token` is cancelled: once at
    /// start, which also takes back the rows a previous process with this
    /// `worker_id` left (it cannot be calling any more). Each round also
    /// settles the open rows of apps not configured here
    /// ([`fail_unconfigured`], `ingest::pending::set_aside_unconfigured`).
    pub(crate) async fn run(self, token: CancellationToken) {
        let Self {
            pool,
            worker_id,
            leases,
            lease,
            wake,
            progress,
            apps,
        } = self;
        loop {
            let since = progress.days.since();
            match recover(&pool, &worker_id, &leases, &apps, since).await {
                Ok(n) if n > 0 => wake.add_pending(usize::try_from(n).unwrap_or(usize::MAX)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease recovery failed; trying again later"),
            }
            if let Err(e) = fail_unconfigured(&pool, &apps, since).await {
                tracing::warn!(error = %e, "settling replies of unconfigured apps failed; trying again later");
            }
            if let Err(e) =
                crate::pipeline::ingest::pending::set_aside_unconfigured(&pool, &apps, since).await
            {
                tracing::warn!(error = %e, "setting aside pushes of unconfigured apps failed; trying again later");
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(lease / 2) => {}
            }
        }
    }
}

/// The first reply index of staff messages: they sort after every reply
/// the rules or a handler planned for the same push.
pub(crate) const STAFF_INDEX: i32 = 1_000_000;

/// Why a staff message was not queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StaffError {
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// Empty, or longer than a text message may be.
    #[error("{0}")]
    Invalid(String),
    /// The user never wrote to the account: there is no conversation to
    /// answer in.
    #[error("{user} has not written to {app_key}/{mcid}; there is no conversation to answer")]
    NoConversation {
        /// App.
        app_key: String,
        /// Account.
        mcid: String,
        /// User.
        user: String,
    },
}

/// Queues a person's text message to a user (the console's human
/// takeover) and takes or renews their hold, in one transaction. The row
/// answers the user's latest push at [`STAFF_INDEX`] or after, so it goes
/// out after every reply already planned for the user and before any
/// reply to a later push (invariant 5); the senders send it like any other
/// reply (rate limit, retries, the double-send window all counted).
/// Returns the row id.
///
/// # Errors
/// [`StaffError`].
pub(crate) async fn enqueue_staff(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    user: &str,
    staff: &str,
    text: &str,
) -> Result<i64, StaffError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(StaffError::Invalid("write something to send".into()));
    }
    if text.len() > pubbot_rules::TEXT_MAX_BYTES {
        return Err(StaffError::Invalid(format!(
            "a text message is at most {} bytes (this one is {})",
            pubbot_rules::TEXT_MAX_BYTES,
            text.len()
        )));
    }
    let payload = serde_json::to_string(&PlannedReply::Text {
        content: text.to_owned(),
    })
    .unwrap_or_default();
    let mut tx = pool.begin().await?;
    let last = sqlx::query!(
        "SELECT id, trace_id FROM inbound_messages
          WHERE app_key = $1 AND mcid = $2 AND user_id = $3 ORDER BY id DESC LIMIT 1",
        app_key,
        mcid,
        user
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(last) = last else {
        return Err(StaffError::NoConversation {
            app_key: app_key.to_owned(),
            mcid: mcid.to_owned(),
            user: user.to_owned(),
        });
    };
    crate::pipeline::takeover::hold(&mut tx, app_key, mcid, user, staff).await?;
    // The user's last push may be in a settled day: open it again first.
    crate::pipeline::days::reopen(&mut tx, crate::pipeline::days::day_of(last.id)).await?;
    // The hold row, locked by the upsert above, serialises two staff
    // messages to one user: the next index is read after it.
    let id = sqlx::query_scalar!(
        r#"INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id)
           SELECT pubbot_id(pubbot_day_of($1), nextval('outbound_messages_id_seq')), pubbot_day_of($1),
                  $1, coalesce(max(reply_index) + 1, $2), $3, $4, $5, $6, $7::text::json, $8
             FROM outbound_messages
            WHERE app_key = $3 AND mcid = $4 AND inbound_id = $1 AND day = pubbot_day_of($1) AND reply_index >= $2
           RETURNING id"#,
        last.id,
        STAFF_INDEX,
        app_key,
        mcid,
        user,
        format!("staff:{staff}"),
        payload,
        last.trace_id
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("pubbot_staff_messages_total").increment(1);
    Ok(id)
}

/// A planned reply as the platform is sent it (`None` for a handler call,
/// which is not sent but called).
pub(crate) fn to_message(reply: &PlannedReply) -> Option<Message> {
    let media = |m: &Media| match m {
        Media::Url(u) => MediaRef::Url(u.clone()),
        Media::MediaId(id) => MediaRef::Uploaded(id.as_str().into()),
    };
    Some(match reply {
        PlannedReply::Handler { .. } => return None,
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
    })
}
