//! Claims: which due replies a sender takes, one conversation's head at a
//! time (invariants 3 and 5).
//!
//! # Plans that hold without statistics
//!
//! A day's partitions start empty and have no statistics until
//! autovacuum analyzes them (a minute or more into the day; never, in a
//! short run on a fresh database). Planned without them, a claim written
//! as a join of the rows it wants with `outbound_messages` became a merge
//! or hash join over *every* open row of the app, with the per-user order
//! check run once for each: 0.4-0.5 s a claim over 55,000 open rows when
//! alone, 64 s under load, and end to end at 3,000 pushes/s on a fresh
//! database 55,000 of 60,000 replies were still unsent 30 s after the
//! last push (BENCHMARKS.md, "Where a message waits"). So each claim
//! reaches its rows by probes the planner cannot turn into a scan: a
//! `LATERAL` subquery per wanted row (its `FOR UPDATE` keeps it from
//! being flattened into a join) that finds the row by its tuple id
//! (`ctid = ...`, a TID scan of the one partition its day names: no
//! index to choose, so no estimate to get wrong; naming every key column
//! instead still let a young partition's other indexes look as cheap,
//! and each probe scanned the account's rows of the day), gathered with
//! `ARRAY(...)` into one `id = ANY` the `UPDATE` finds by primary key;
//! bounded below by day only (a `BETWEEN` on day looked selective enough,
//! unanalyzed, to scan the app's rows of the day instead of the key).
//! The tuple id is read in the same statement, from the same snapshot;
//! a row changed since is not claimed this time (its new version has
//! another tuple id), as with `SKIP LOCKED`. Statistics come soon after a day's rows do
//! ([`crate::pipeline::days::analyze_young`]). With or without them:
//! 5-9 ms for 64 rows.

use std::time::Duration;

use pubbot_rules::PlannedReply;
use sqlx::types::Json;
use sqlx::PgPool;

use super::*;
use pubbot_protocol::{McId, UserId};

/// Users a general claim looks at, at most, per statement: the sweep's
/// window (see [`claim`]).
pub(crate) const SWEEP_WINDOW: i64 = 1024;

/// Where the general claim's sweep over conversations goes on from, shared
/// by a process's senders: the apps it sweeps (the configured ones, in key
/// order; one app per statement, so that each claim names its tenant key
/// and a distributed engine routes it to one shard, docs/scaling.md) and
/// the last (app, account, user) it looked at.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    apps: Vec<String>,
    at: std::sync::Mutex<crate::pipeline::wakeups::Conversation>,
    /// A sender of this process is sweeping ([`Sweep::begin`]).
    busy: std::sync::atomic::AtomicBool,
}

/// The one general claim of a process under way; ends when dropped.
pub(crate) struct Sweeping<'a>(&'a Sweep);

impl Drop for Sweeping<'_> {
    fn drop(&mut self) {
        self.0
            .busy
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Sweep {
    /// A sweep over `apps`' conversations.
    pub(crate) fn new(mut apps: Vec<String>) -> Self {
        apps.sort();
        apps.dedup();
        Self {
            apps,
            ..Self::default()
        }
    }

    /// Begins a general claim, unless another sender of this process is
    /// sweeping: then `None`, and that sender takes what this one would
    /// have (they go on from one place and would look at the same
    /// conversations). One sweep at a time per process: under a backlog
    /// whose conversations' first replies are all in flight (after 15 s of
    /// `1008` in the soak, 20,000 open replies of 1,000 users), every
    /// sender of both replicas swept the same conversations side by side,
    /// eight skip scans of 1,000 probes each that found almost nothing, and
    /// PostgreSQL's cores went to them: a settle of 120 rows took 1.7-9 s,
    /// replies went out at about the rate pushes came, and p50 push ->
    /// reply stayed at 30-124 s for minutes.
    pub(crate) fn begin(&self) -> Option<Sweeping<'_>> {
        self.busy
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .ok()
            .map(|_| Sweeping(self))
    }

    /// The apps swept, in key order.
    pub(crate) fn apps(&self) -> &[String] {
        &self.apps
    }

    fn get(&self) -> crate::pipeline::wakeups::Conversation {
        self.at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, to: crate::pipeline::wakeups::Conversation) {
        *self
            .at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }
}

/// What a general claim took.
#[derive(Debug)]
pub(crate) struct Claim {
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
/// conversations), then the conversations it found due have their first
/// reply claimed as [`claim_next`] claims it (locked, checked again,
/// leased).
/// Scanning the due rows instead, as this did before, costs a probe per
/// *row* that waits behind an earlier reply of its user: under a backlog
/// of 100,000 replies for 1,000 users that was 1.6 s a claim, for none.
/// The sweep serves conversations in turn, not the oldest row first;
/// order within a conversation is what invariant 5 asks for.
///
/// # Errors
/// Database errors.
pub(crate) async fn claim(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    batch: i64,
    sweep: &Sweep,
    since: chrono::NaiveDate,
) -> Result<Claim, sqlx::Error> {
    let from = sweep.get();
    // The app this statement sweeps: the one the last stopped in, else the
    // next configured one after it, else (past the last) the first.
    let apps = sweep.apps();
    let (app, mcid, user) = match apps.iter().find(|a| a.as_str() >= from.0.as_str()) {
        Some(a) if *a == from.0 => (a.clone(), from.1.clone(), from.2.clone()),
        Some(a) => (a.clone(), McId::default(), UserId::default()),
        None => match apps.first() {
            Some(a) => (a.clone(), McId::default(), UserId::default()),
            None => {
                return Ok(Claim {
                    rows: Vec::new(),
                    more: false,
                })
            }
        },
    };
    let began = mcid.as_str().is_empty() && user.as_str().is_empty();
    // One connection for both statements.
    let mut conn = crate::db::acquire(pool, "send").await?;
    let heads = heads(&mut conn, &app, &mcid, &user, SWEEP_WINDOW, batch, since).await?;
    let found = heads.iter().filter(|h| h.ok).count();
    let more = match heads.last() {
        // Stopped at the window or with enough found: go on after it.
        Some(last)
            if last.n >= SWEEP_WINDOW || i64::try_from(found).unwrap_or(i64::MAX) >= batch =>
        {
            sweep.set((
                last.app_key.clone(),
                McId::new(last.mcid.clone()),
                UserId::new(last.user_id.clone()),
            ));
            true
        }
        // Reached the end of this app's conversations: the next app's come
        // next (past the last app, the first's). What lies before where
        // this sweep began is still to look at, and so are the other apps.
        _ => {
            let next = apps.iter().find(|a| a.as_str() > app.as_str());
            sweep.set(match next {
                Some(a) => (a.clone(), McId::default(), UserId::default()),
                None => Default::default(),
            });
            !began || apps.len() > 1
        }
    };
    // Each claimable head is its user's first open reply: claimed as
    // `claim_next` claims one, checked again under the row lock (the sweep
    // read without one).
    let users: Vec<crate::pipeline::wakeups::Conversation> = heads
        .into_iter()
        .filter(|h| h.ok)
        .map(|h| (h.app_key, McId::new(h.mcid), UserId::new(h.user_id)))
        .collect();
    let rows = claim_users(&mut conn, worker_id, lease, users, since).await?;
    Ok(Claim { rows, more })
}

/// The first open reply of each conversation after `from`, in key order,
/// up to `window` conversations or until `batch` of them are claimable
/// (pending and due): those claimable, and the last one looked at (`n`
/// says how many were).
#[allow(clippy::too_many_arguments)]
async fn heads(
    conn: &mut sqlx::PgConnection,
    app: &str,
    mcid: &McId,
    user: &UserId,
    window: i64,
    batch: i64,
    since: chrono::NaiveDate,
) -> Result<Vec<Head>, sqlx::Error> {
    sqlx::query_as!(
        Head,
        r#"WITH RECURSIVE heads AS (
               (SELECT h.app_key, h.mcid, h.user_id,
                       (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok, 1 AS n,
                       (h.status = 'pending' AND h.next_attempt_at <= now())::int AS found
                  FROM outbound_messages h
                 WHERE h.app_key = $1 AND h.status IN ('pending', 'sending') AND h.day >= $6
                   AND (h.mcid, h.user_id) > ($2, $3)
                 ORDER BY h.mcid, h.user_id, h.inbound_id, h.reply_index, h.sub_index LIMIT 1)
               UNION ALL
               SELECT x.app_key, x.mcid, x.user_id, x.ok, p.n + 1, p.found + x.ok::int
                 FROM heads p CROSS JOIN LATERAL (
                      SELECT h.app_key, h.mcid, h.user_id,
                             (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok
                        FROM outbound_messages h
                       WHERE h.app_key = $1 AND h.status IN ('pending', 'sending') AND h.day >= $6
                         AND (h.mcid, h.user_id) > (p.mcid, p.user_id)
                       ORDER BY h.mcid, h.user_id, h.inbound_id, h.reply_index, h.sub_index LIMIT 1) x
                WHERE p.n < $4 AND p.found < $5)
           SELECT app_key AS "app_key!", mcid AS "mcid!", user_id AS "user_id!", ok AS "ok!",
                  n::int8 AS "n!"
             FROM heads WHERE ok OR n = (SELECT max(n) FROM heads) ORDER BY n"#,
        app,
        mcid.as_str(),
        user.as_str(),
        i32::try_from(window).unwrap_or(i32::MAX),
        i32::try_from(batch).unwrap_or(i32::MAX),
        since,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Claims the next reply of each of `users` whose turn it is (invariant 5),
/// leasing it to `worker_id` (invariant 2): each user's first open reply,
/// one probe of the index of open rows per user, claimed if it is pending
/// and due — what a sender does when an outcome was recorded for a user
/// with a reply held back behind it. (Checking every pending row of those
/// users instead, as this did before, cost a second a claim under a
/// backlog of a hundred replies a user.) Each user's row by its own probe
/// (see "Plans that hold without statistics").
///
/// # Errors
/// Database errors.
pub(crate) async fn claim_next(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    users: &[crate::pipeline::wakeups::Conversation],
    since: chrono::NaiveDate,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut conn = crate::db::acquire(pool, "send").await?;
    claim_users(&mut conn, worker_id, lease, users.to_vec(), since).await
}

/// [`claim_next`] on a connection the caller holds.
async fn claim_users(
    conn: &mut sqlx::PgConnection,
    worker_id: &str,
    lease: Duration,
    mut users: Vec<crate::pipeline::wakeups::Conversation>,
    since: chrono::NaiveDate,
) -> Result<Vec<Claimed>, sqlx::Error> {
    users.sort();
    users.dedup();
    // One statement per app (users sorted: each app's users together), so
    // that each names its tenant key (docs/scaling.md, "Citus").
    let mut out = Vec::new();
    let mut rest = users.as_slice();
    while let Some(first) = rest.first() {
        let app = first.0.clone();
        let n = rest.iter().take_while(|u| u.0 == app).count();
        let (group, after) = rest.split_at(n);
        rest = after;
        let mcids: Vec<&str> = group.iter().map(|u| u.1.as_str()).collect();
        let ids: Vec<&str> = group.iter().map(|u| u.2.as_str()).collect();
        // Each user's first open reply (one probe each), locked and
        // checked again.
        out.extend(
            sqlx::query_as!(
                Claimed,
                r#"UPDATE outbound_messages o
                      SET status = 'sending', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                          attempts = attempts + 1
                    WHERE o.app_key = $3 AND o.day >= $6
                      AND o.id = ANY(ARRAY(
                          SELECT c.id
                            FROM UNNEST($4::text[], $5::text[]) AS u(m, s)
                            CROSS JOIN LATERAL (
                                 SELECT h.id, h.day, h.ctid FROM outbound_messages h
                                  WHERE h.app_key = $3 AND h.mcid = u.m AND h.user_id = u.s
                                    AND h.status IN ('pending', 'sending') AND h.day >= $6
                                  ORDER BY h.inbound_id, h.reply_index, h.sub_index LIMIT 1) f
                            CROSS JOIN LATERAL (
                                 SELECT c.id FROM outbound_messages c
                                  WHERE c.ctid = f.ctid AND c.id = f.id AND c.day = f.day AND c.app_key = $3
                                    AND c.status = 'pending' AND c.next_attempt_at <= now()
                                    AND NOT EXISTS (
                                        SELECT 1 FROM outbound_messages e
                                         WHERE e.app_key = c.app_key AND e.mcid = c.mcid AND e.user_id = c.user_id
                                           AND e.status IN ('pending', 'sending') AND e.day >= $6
                                           AND (e.inbound_id, e.reply_index, e.sub_index) < (c.inbound_id, c.reply_index, c.sub_index)
                                         OFFSET 0)
                                    FOR UPDATE SKIP LOCKED) c))
                RETURNING o.id, o.app_key, o.mcid AS "mcid: McId", o.user_id AS "user_id: UserId", o.payload AS "payload: Json<PlannedReply>",
                          o.attempts, o.trace_id, o.inbound_id, o.reply_index, o.sub_index, o.created_at"#,
                worker_id,
                lease.as_secs_f64(),
                app,
                &mcids as &[&str],
                &ids as &[&str],
                since,
            )
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    Ok(out)
}

/// Whether a reply is due and next in its conversation (for the liveness
/// check: rows held back by an earlier reply's retry are not "due"). The
/// same skip scan as [`claim`], over every conversation with open replies,
/// stopping at the first one due.
///
/// # Errors
/// Database errors.
pub(crate) async fn any_due(
    pool: &PgPool,
    apps: &[String],
    since: chrono::NaiveDate,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    for app in apps {
        let heads = heads(
            &mut conn,
            app,
            &McId::default(),
            &UserId::default(),
            i64::from(i32::MAX),
            1,
            since,
        )
        .await?;
        if heads.iter().any(|h| h.ok) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::days::ALL_DAYS;

    #[test]
    fn one_sender_of_a_process_sweeps_at_a_time() {
        let sweep = Sweep::new(vec!["a".into()]);
        let first = sweep.begin().expect("nobody sweeps yet");
        assert!(sweep.begin().is_none(), "a second sender waits");
        drop(first);
        assert!(sweep.begin().is_some(), "the sweep ended with its guard");
    }

    /// `users` conversations with two replies each (pushes 2i+1 and 2i+2);
    /// the first `blocked` have their first reply leased elsewhere, and
    /// conversation `late` has its first reply due only in an hour.
    async fn backlog(pool: &PgPool, users: i32, blocked: i32, late: i32) {
        sqlx::query(
            "INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status)
             SELECT pubbot_id(current_date, i), current_date, 'a', 'm', 'u' || lpad(((i - 1) / 2)::text, 5, '0'), 'text', 'k' || i, '{}', '', 't', 'done'
               FROM generate_series(1, 2 * $1) i",
        )
        .bind(users)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            r#"INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload,
                                              trace_id, status, lease_owner, lease_until, next_attempt_at)
               SELECT pubbot_id(current_date, i), current_date, pubbot_id(current_date, i), 0, 'a', 'm', 'u' || lpad(((i - 1) / 2)::text, 5, '0'), 'r', '{"type": "text", "content": "hi"}', 't',
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
        let sweep = Sweep::new(vec!["a".into()]);
        let lease = Duration::from_secs(60);
        let mut taken = Vec::new();
        for _ in 0..20 {
            let claim = claim(&pool, "me", lease, 64, &sweep, ALL_DAYS)
                .await
                .unwrap();
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
        assert!(claim(&pool, "me", lease, 64, &sweep, ALL_DAYS)
            .await
            .unwrap()
            .rows
            .is_empty());
        assert!(!any_due(&pool, &["a".into()], ALL_DAYS).await.unwrap());

        // Recorded: each of those conversations' second reply is next,
        // found by user without a sweep.
        let ids: Vec<i64> = taken.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbound_messages SET status = 'sent' WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&pool)
            .await
            .unwrap();
        assert!(any_due(&pool, &["a".into()], ALL_DAYS).await.unwrap());
        let users: Vec<crate::pipeline::wakeups::Conversation> = taken
            .iter()
            .map(|r| (r.app_key.clone(), r.mcid.clone(), r.user_id.clone()))
            .chain([("a".into(), "m".into(), "u00000".into())])
            .collect();
        let next = claim_next(&pool, "me", lease, &users, ALL_DAYS)
            .await
            .unwrap();
        assert_eq!(next.len(), 299, "u00000 is still behind its leased reply");
        assert!(next.iter().all(|r| r.inbound_id.unwrap() % 2 == 0));
    }

    /// Each claim names one app: the sweep goes from one configured app to
    /// the next, and a reply of an app not configured here is not claimed.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn the_sweep_claims_one_app_at_a_time_and_only_configured_ones(pool: PgPool) {
        for (n, app) in [(1, "a"), (2, "b"), (3, "z")] {
            sqlx::query(
                r#"INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id)
                   VALUES (pubbot_id(current_date, $1), current_date, pubbot_id(current_date, $1), 0, $2, 'm', 'u', 'r',
                           '{"type": "text", "content": "hi"}', 't')"#,
            )
            .bind(n)
            .bind(app)
            .execute(&pool)
            .await
            .unwrap();
        }
        let sweep = Sweep::new(vec!["b".into(), "a".into()]);
        let lease = Duration::from_secs(60);
        let mut apps = Vec::new();
        for _ in 0..4 {
            let c = claim(&pool, "me", lease, 10, &sweep, ALL_DAYS)
                .await
                .unwrap();
            apps.extend(c.rows.into_iter().map(|r| r.app_key));
        }
        assert_eq!(apps, ["a", "b"]);
        assert!(!any_due(&pool, sweep.apps(), ALL_DAYS).await.unwrap());
        assert!(any_due(&pool, &["z".into()], ALL_DAYS).await.unwrap());
    }
}
