//! Claims: which due replies a sender takes, one conversation's head at a
//! time (invariants 3 and 5).

use std::time::Duration;

use pubbot_rules::PlannedReply;
use sqlx::types::Json;
use sqlx::PgPool;

use super::*;
use pubbot_protocol::{McId, UserId};

/// Users a general claim looks at, at most, per statement: the sweep's
/// window (see [`claim`]).
pub(crate) const SWEEP_WINDOW: i64 = 1024;

/// Replies of one user a claim takes at most, as one run
/// ([`claim_users`]).
pub(crate) const RUN: i64 = 16;

/// Where the general claim's sweep over conversations goes on from, shared
/// by a process's senders: the apps it sweeps (the configured ones, in key
/// order; one app per statement, so that each claim names its tenant key
/// and a distributed engine routes it to one shard, docs/scaling.md) and
/// the last (app, account, user) it looked at.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    apps: Vec<String>,
    at: std::sync::Mutex<crate::pipeline::wakeups::Conversation>,
}

impl Sweep {
    /// A sweep over `apps`' conversations.
    pub(crate) fn new(mut apps: Vec<String>) -> Self {
        apps.sort();
        apps.dedup();
        Self {
            apps,
            at: std::sync::Mutex::default(),
        }
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

/// Claims the runs of due replies ([`claim_users`]) of up to `batch`
/// conversations whose next reply is due (invariant 5), leasing them to
/// `worker_id` (invariant 2).
///
/// Only a conversation's first open reply can be claimable, so the claim
/// looks at those and nothing else: a skip scan over the index of open
/// rows (one probe per conversation with open replies, from where the
/// last sweep stopped, wrapping at the end, at most [`SWEEP_WINDOW`]
/// conversations), then the runs of the conversations it found due are
/// locked and leased.
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
    let users: Vec<(&str, &str)> = heads
        .iter()
        .filter(|h| h.ok)
        .map(|h| (h.mcid.as_str(), h.user_id.as_str()))
        .collect();
    let rows = if users.is_empty() {
        Vec::new()
    } else {
        claim_users(&mut conn, worker_id, lease, &app, &users, since).await?
    };
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
               (SELECT h.app_key, h.mcid, h.user_id, h.id,
                       (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok, 1 AS n,
                       (h.status = 'pending' AND h.next_attempt_at <= now())::int AS found
                  FROM outbound_messages h
                 WHERE h.app_key = $1 AND h.status IN ('pending', 'sending') AND h.day >= $6
                   AND (h.mcid, h.user_id) > ($2, $3)
                 ORDER BY h.mcid, h.user_id, h.inbound_id, h.reply_index, h.sub_index LIMIT 1)
               UNION ALL
               SELECT x.app_key, x.mcid, x.user_id, x.id, x.ok, p.n + 1, p.found + x.ok::int
                 FROM heads p CROSS JOIN LATERAL (
                      SELECT h.app_key, h.mcid, h.user_id, h.id,
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

/// Leases to `worker_id` the run of replies each of `users` (of `app`) may
/// send now (invariants 2 and 5): the user's first open replies, in
/// conversation order, up to [`RUN`] of them and up to the first that is
/// not pending and due. The first has no earlier open reply, and each
/// later one only earlier replies of the same run: one sender takes the
/// run as one unit and sends it in order, round after round, and a reply
/// that does not go out puts the rest back untried, as with the units a
/// deciding transaction hands over. A row another statement holds locked
/// ends its user's run before it (`SKIP LOCKED`, then the run is cut at
/// the first row not locked here), so a run never has a gap.
///
/// One statement, one probe of the index of open rows per user. Taking a
/// run instead of a user's next reply alone is what lets a backlog drain:
/// one reply per user per claim cost a recorded outcome, a wake-up and a
/// claim between any two replies of a user (BENCHMARKS.md).
async fn claim_users(
    conn: &mut sqlx::PgConnection,
    worker_id: &str,
    lease: Duration,
    app: &str,
    users: &[(&str, &str)],
    since: chrono::NaiveDate,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (mcids, ids): (Vec<&str>, Vec<&str>) = users.iter().copied().unzip();
    sqlx::query_as!(
        Claimed,
        r#"WITH f AS (
                SELECT h.id, h.day, u.m, u.s, h.n, h.ok
                  FROM UNNEST($4::text[], $5::text[]) AS u(m, s)
                 CROSS JOIN LATERAL (
                       SELECT h.id, h.day,
                              row_number() OVER (ORDER BY h.inbound_id, h.reply_index, h.sub_index) AS n,
                              (h.status = 'pending' AND h.next_attempt_at <= now()) AS ok
                         FROM (SELECT h.id, h.day, h.status, h.next_attempt_at, h.inbound_id, h.reply_index, h.sub_index
                                 FROM outbound_messages h
                                WHERE h.app_key = $3 AND h.mcid = u.m AND h.user_id = u.s
                                  AND h.status IN ('pending', 'sending') AND h.day >= $6
                                ORDER BY h.inbound_id, h.reply_index, h.sub_index LIMIT $7) h) h),
              -- Each user's run: the rows before the first not pending and due.
              r AS (
                SELECT f.* FROM f
                 WHERE f.n < coalesce((SELECT min(g.n) FROM f g WHERE g.m = f.m AND g.s = f.s AND NOT g.ok), $7 + 1)),
              -- Locked and checked again under the lock.
              l AS (
                SELECT c.id, c.day, r.m, r.s, r.n
                  FROM outbound_messages c JOIN r ON c.id = r.id AND c.day = r.day
                 WHERE c.app_key = $3 AND c.day >= $6 AND c.status = 'pending' AND c.next_attempt_at <= now()
                 ORDER BY c.id FOR UPDATE OF c SKIP LOCKED),
              -- Cut at the first row of the run not locked here: no gaps.
              k AS (
                SELECT l.id, l.day FROM l
                 WHERE l.n < coalesce((SELECT min(r.n) FROM r
                                        WHERE r.m = l.m AND r.s = l.s
                                          AND NOT EXISTS (SELECT 1 FROM l x WHERE x.id = r.id)), $7 + 1))
           UPDATE outbound_messages o
              SET status = 'sending', lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                  attempts = attempts + 1
             FROM k
            WHERE o.app_key = $3 AND o.id = k.id AND o.day = k.day AND o.day >= $6
        RETURNING o.id, o.app_key, o.mcid AS "mcid: McId", o.user_id AS "user_id: UserId", o.payload AS "payload: Json<PlannedReply>",
                  o.attempts, o.trace_id, o.inbound_id, o.reply_index, o.sub_index, o.created_at"#,
        worker_id,
        lease.as_secs_f64(),
        app,
        &mcids as &[&str],
        &ids as &[&str],
        since,
        RUN,
    )
    .fetch_all(&mut *conn)
    .await
}

/// Claims the run of replies of each of `users` whose turn it is
/// ([`claim_users`]): what a sender does when an outcome was recorded for
/// a user with a reply held back behind it.
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
    let mut users = users.to_vec();
    users.sort();
    users.dedup();
    // One statement per app (users sorted: each app's users together), so
    // that each names its tenant key (docs/scaling.md, "Citus").
    let mut conn = crate::db::acquire(pool, "send").await?;
    let mut out = Vec::new();
    let mut rest = users.as_slice();
    while let Some(first) = rest.first() {
        let app = first.0.clone();
        let n = rest.iter().take_while(|u| u.0 == app).count();
        let (group, after) = rest.split_at(n);
        rest = after;
        let group: Vec<(&str, &str)> = group.iter().map(|u| (u.1.as_str(), u.2.as_str())).collect();
        out.extend(claim_users(&mut conn, worker_id, lease, &app, &group, since).await?);
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
    async fn the_sweep_takes_each_conversations_run_past_a_window_of_blocked_ones(pool: PgPool) {
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
        // Every conversation free to go, and only those: 1,200..1,499
        // less the one waiting for its retry, each with its run of two
        // replies (first and second), each once.
        let mut by_user: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
        for r in &taken {
            by_user
                .entry(r.user_id.as_str())
                .or_default()
                .push(r.inbound_id.unwrap());
        }
        assert_eq!(by_user.len(), 299);
        assert!(by_user.keys().all(|u| *u >= "u01200"));
        assert!(!by_user.contains_key("u01300"));
        for (u, mut pushes) in by_user {
            pushes.sort_unstable();
            assert!(
                pushes.len() == 2 && pushes[0] % 2 == 1 && pushes[1] == pushes[0] + 1,
                "{u}: its run, once: {pushes:?}"
            );
        }
        // Nothing more until something is recorded.
        assert!(claim(&pool, "me", lease, 64, &sweep, ALL_DAYS)
            .await
            .unwrap()
            .rows
            .is_empty());
        assert!(!any_due(&pool, &["a".into()], ALL_DAYS).await.unwrap());

        // The other process records its replies (but u00000's): each of
        // those conversations' second reply is next, found by user
        // without a sweep.
        sqlx::query(
            "UPDATE outbound_messages SET status = 'sent', lease_owner = NULL
              WHERE lease_owner = 'elsewhere' AND user_id <> 'u00000'",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert!(any_due(&pool, &["a".into()], ALL_DAYS).await.unwrap());
        let users: Vec<crate::pipeline::wakeups::Conversation> = (0..1200)
            .map(|i| ("a".into(), "m".into(), format!("u{i:05}").into()))
            .collect();
        let next = claim_next(&pool, "me", lease, &users, ALL_DAYS)
            .await
            .unwrap();
        assert_eq!(next.len(), 1199, "u00000 is still behind its leased reply");
        assert!(next.iter().all(|r| r.inbound_id.unwrap() % 2 == 0));
    }

    /// A run stops before a reply not due, and before a row another
    /// statement holds locked: never a gap in a user's order.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_run_stops_at_the_first_reply_not_due_or_locked_elsewhere(pool: PgPool) {
        // User x: five replies, the third due only in an hour. User y:
        // four, all due.
        for (n, user, later) in [
            (1, "x", false),
            (2, "x", false),
            (3, "x", true),
            (4, "x", false),
            (5, "x", false),
            (6, "y", false),
            (7, "y", false),
            (8, "y", false),
            (9, "y", false),
        ] {
            sqlx::query(
                r#"INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name,
                                                  payload, trace_id, next_attempt_at)
                   VALUES (pubbot_id(current_date, $1), current_date, pubbot_id(current_date, $1), 0, 'a', 'm', $2, 'r',
                           '{"type": "text", "content": "hi"}', 't',
                           CASE WHEN $3 THEN now() + interval '1 hour' ELSE now() END)"#,
            )
            .bind(n)
            .bind(user)
            .bind(later)
            .execute(&pool)
            .await
            .unwrap();
        }
        // y's third reply is locked by another transaction.
        let mut other = pool.begin().await.unwrap();
        sqlx::query(
            "SELECT id FROM outbound_messages WHERE id = pubbot_id(current_date, 8) FOR UPDATE",
        )
        .execute(&mut *other)
        .await
        .unwrap();
        let users = vec![
            ("a".into(), "m".into(), "x".into()),
            ("a".into(), "m".into(), "y".into()),
        ];
        let lease = Duration::from_secs(60);
        let taken = claim_next(&pool, "me", lease, &users, ALL_DAYS)
            .await
            .unwrap();
        let mut got: Vec<(String, i64)> = taken
            .iter()
            .map(|r| (r.user_id.to_string(), r.inbound_id.unwrap() & 0xffff))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("x".into(), 1),
                ("x".into(), 2),
                ("y".into(), 6),
                ("y".into(), 7)
            ]
        );
        other.rollback().await.unwrap();
        // Taken rows are open: nothing more for either user meanwhile.
        assert!(claim_next(&pool, "me", lease, &users, ALL_DAYS)
            .await
            .unwrap()
            .is_empty());
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
