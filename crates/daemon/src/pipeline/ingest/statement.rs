//! The batch's one statement: the pushes, and the replies of those
//! decided at receipt, in one `INSERT` (see "Decided at receipt" in
//! [`super`]).

use std::collections::HashSet;

use pubbot_rules::PlannedReply;
use sqlx::types::Json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{DecideAtReceipt, Row};
use crate::pipeline::outbox::Claimed;

/// pushes decided at receipt, what became of them.
#[derive(Default)]
pub(super) struct Stored {
    /// (app, R6 key) of every push inserted.
    pub(super) new: Vec<(String, String)>,
    /// (app, R6 key) of the pushes stored `done` (decided at receipt).
    pub(super) decided: Vec<(String, String)>,
    /// Pushes stored `pending`, for a decide worker.
    pub(super) undecided: usize,
    /// Replies planned and leased to this process's senders, each with
    /// the earlier reply of its user it must follow: the latest open when
    /// it was planned, leased to this process too (see "Following a reply
    /// held here" in [`crate::pipeline::outbox`]).
    pub(super) leased: Vec<(Claimed, Option<i64>)>,
    /// Users of replies planned `pending`, for a claim (one entry per
    /// reply).
    pub(super) pending_replies: Vec<crate::pipeline::wakeups::Conversation>,
}

/// Which pushes of a batch may be stored decided: those decided at receipt,
/// unless their user has an undecided push earlier in the batch (its
/// replies must come first), and only the first of equal pushes.
pub(super) fn decidable(rows: &[&Row]) -> Vec<bool> {
    let mut held: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    rows.iter()
        .map(|r| {
            let user = (r.app_key.as_str(), r.mcid.as_str(), r.user_id.as_str());
            if !seen.insert((r.app_key.as_str(), r.dedup_key.as_str())) {
                return false;
            }
            let ok = r.decided.is_some() && !held.contains(&user);
            if !ok {
                held.insert(user);
            }
            ok
        })
        .collect()
}

/// Inserts rows in one statement, with the replies of those decided at
/// receipt when `at` is given (see "Decided at receipt"); a push whose
/// user has an undecided push or an open handler call in the table is
/// stored `pending` instead. Replies are leased to this process's senders
/// when `direct` and the latest open reply of their user is leased to this
/// process too, or there is none (mostly): they then follow it in process.
/// The probes of a user's open rows look at the days from `window` (the
/// oldest unsettled) to [`crate::pipeline::days::newest`].
pub(super) async fn insert(
    pool: &PgPool,
    rows: &[&Row],
    at: Option<(&DecideAtReceipt, bool)>,
    window: chrono::NaiveDate,
) -> Result<Stored, sqlx::Error> {
    let mut cols = Columns::with_capacity(rows.len());
    let now = chrono::Utc::now();
    for r in rows {
        cols.push(r, now);
    }
    let ok = if at.is_some() {
        decidable(rows)
    } else {
        vec![false; rows.len()]
    };
    // The replies of the decidable pushes: (push's place in the batch,
    // reply index, rule, payload).
    let (mut place, mut index, mut rule, mut payload) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, (r, ok)) in rows.iter().zip(&ok).enumerate() {
        let Some(d) = r.decided.as_ref().filter(|_| *ok) else {
            continue;
        };
        for (i, p) in d.replies.iter().enumerate() {
            place.push(i64::try_from(n + 1).unwrap_or(i64::MAX));
            index.push(i32::try_from(i).unwrap_or(i32::MAX));
            rule.push(d.rule.clone());
            payload.push(p.clone());
        }
    }
    let (worker_id, lease, direct) = match at {
        Some((a, direct)) => (a.worker_id.as_str(), a.lease.as_secs_f64(), direct),
        None => ("", 0.0, false),
    };
    // One statement: the pushes, then the replies of those stored `done`,
    // in push order (outbound ids follow the order the user wrote).
    // (`OFFSET 0` keeps each check a single probe per row: flattened, the
    // planner would repeat it in every `CASE` that reads it.)
    // The latest open reply is probed in `x`, once a push, and read from
    // there: joined as a CTE of its own on the user's three columns, the
    // generic plan (which takes an array parameter for 10 rows) compared
    // every reply with every user of the batch, quadratic in the batch
    // (BENCHMARKS.md, "Where a message waits"). It is the same probe as
    // the decide workers' `last` (`outbox::plan`), which still joins it on
    // the user's columns (its plans are small; not measured the other way).
    let stored = sqlx::query!(
        r#"WITH x AS (
               -- Each push, with the latest open reply of its user (one
               -- probe of the index of open replies): a reply goes now only
               -- when there is none, or when it is leased to this process,
               -- and then follows it (each follower follows the one before).
               SELECT x.*, l.id AS last_id,
                      $18 AND (l.id IS NULL OR (l.status = 'sending' AND l.lease_owner = $16)) AS go
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::int8[], $8::text[], $9::bytea[], $10::text[], $11::bool[],
                             $19::date[])
                      WITH ORDINALITY AS x(a, m, u, t, d, i, c, j, r, tr, ok, day, n)
                 LEFT JOIN LATERAL (
                      SELECT e.id, e.status, e.lease_owner FROM outbound_messages e
                       WHERE x.ok AND e.app_key = x.a AND e.mcid = x.m AND e.user_id = x.u
                         AND e.status IN ('pending', 'sending') AND e.day BETWEEN $20 AND $21
                       ORDER BY e.inbound_id DESC, e.reply_index DESC, e.sub_index DESC
                       LIMIT 1) l ON true
           ), ins AS (
               INSERT INTO inbound_messages
                      (id, day, app_key, mcid, user_id, msg_type, dedup_key, msg_id, create_time, message, raw,
                       trace_id, status, processed_at)
               SELECT pubbot_id(day, nextval('inbound_messages_id_seq')), day, a, m, u, t, d, i, c, j::json, r, tr,
                      CASE WHEN done THEN 'done' ELSE 'pending' END, CASE WHEN done THEN now() END
                 FROM (SELECT x.*, x.ok
                              AND NOT EXISTS (SELECT 1 FROM inbound_messages e
                                               WHERE e.app_key = x.a AND e.mcid = x.m AND e.user_id = x.u
                                                 AND e.status = 'pending' AND e.day BETWEEN $20 AND $21)
                              AND NOT EXISTS (SELECT 1 FROM outbound_messages h
                                               WHERE h.app_key = x.a AND h.mcid = x.m AND h.user_id = x.u
                                                 AND h.handler IS NOT NULL AND h.status IN ('pending', 'sending')
                                                 AND h.day BETWEEN $20 AND $21)
                              AND NOT EXISTS (SELECT 1 FROM takeovers k
                                               WHERE k.app_key = x.a AND k.mcid = x.m AND k.user_id = x.u) AS done
                         FROM x OFFSET 0) x
                ORDER BY n
               ON CONFLICT (app_key, mcid, dedup_key, day) DO NOTHING
               RETURNING id, day, app_key, dedup_key, status
           ), planned AS (
               INSERT INTO outbound_messages
                      (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id,
                       status, lease_owner, lease_until, attempts)
               SELECT pubbot_id(ins.day, nextval('outbound_messages_id_seq')), ins.day, ins.id, p.ri, x.a, x.m, x.u, p.rule, p.payload::json, x.tr,
                      CASE WHEN x.go THEN 'sending' ELSE 'pending' END,
                      CASE WHEN x.go THEN $16 END,
                      CASE WHEN x.go THEN now() + make_interval(secs => $17) END,
                      CASE WHEN x.go THEN 1 ELSE 0 END
                 FROM ins
                 JOIN x ON x.a = ins.app_key AND x.d = ins.dedup_key
                 JOIN UNNEST($12::int8[], $13::int4[], $14::text[], $15::text[]) AS p(n, ri, rule, payload)
                   ON p.n = x.n
                WHERE ins.status = 'done'
                ORDER BY ins.id, p.ri
               RETURNING id, app_key, mcid, user_id, payload, attempts, trace_id, inbound_id, reply_index,
                         sub_index, created_at
           )
           SELECT ins.app_key AS "app_key!", ins.dedup_key AS "dedup_key!", ins.status AS "status!",
                  o.id AS "reply_id?", o.inbound_id AS "inbound_id?", o.mcid AS "mcid?", o.user_id AS "user_id?",
                  o.payload AS "payload?: Json<PlannedReply>", o.attempts AS "attempts?",
                  o.trace_id AS "trace_id?", o.reply_index AS "reply_index?", o.sub_index AS "sub_index?",
                  o.created_at AS "created_at?",
                  CASE WHEN o.attempts > 0 THEN x.last_id END AS "follows?"
             FROM ins LEFT JOIN planned o ON o.inbound_id = ins.id
             -- the push (of equal pushes in a batch only the first is `ok`)
             LEFT JOIN x ON x.a = ins.app_key AND x.d = ins.dedup_key AND x.ok
            ORDER BY o.id"#,
        &cols.app_key,
        &cols.mcid,
        &cols.user_id,
        &cols.msg_type,
        &cols.dedup_key,
        &cols.msg_id as &[Option<String>],
        &cols.create_time as &[Option<i64>],
        &cols.message,
        &cols.raw,
        &cols.trace_id,
        &ok,
        &place,
        &index,
        &rule,
        &payload,
        worker_id,
        lease,
        direct,
        &cols.day,
        window,
        crate::pipeline::days::newest(now.date_naive()),
    )
    .fetch_all(&mut *crate::db::acquire(pool, "ingest").await?)
    .await?;
    let mut out = Stored::default();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in stored {
        let key = (r.app_key, r.dedup_key);
        // One row per push and planned reply (a push without a reply: one
        // row with the reply columns NULL).
        if !seen.contains(&key) {
            seen.insert(key.clone());
            out.new.push(key.clone());
            if r.status == "done" {
                out.decided.push(key.clone());
            } else {
                out.undecided += 1;
            }
        }
        if let (Some(id), Some(mcid), Some(user_id), Some(payload), Some(attempts)) =
            (r.reply_id, r.mcid, r.user_id, r.payload, r.attempts)
        {
            if attempts > 0 {
                out.leased.push((
                    Claimed {
                        id,
                        app_key: key.0.clone(),
                        mcid: mcid.into(),
                        user_id: user_id.into(),
                        payload,
                        attempts,
                        trace_id: r.trace_id.unwrap_or_default(),
                        inbound_id: r.inbound_id,
                        reply_index: r.reply_index.unwrap_or_default(),
                        sub_index: r.sub_index.unwrap_or_default(),
                        created_at: r.created_at.unwrap_or_else(chrono::Utc::now),
                    },
                    r.follows,
                ));
            } else {
                out.pending_replies
                    .push((key.0.clone(), mcid.into(), user_id.into()));
            }
        }
    }
    Ok(out)
}

/// The users of each batch being committed, and its end: a batch holding a
/// user of one still being committed waits for that commit before its own.
/// Each statement leases a reply only behind the earlier ones of its user
/// it can see, and two at once would not see each other's (a user's
/// replies leased side by side, sent in either order). Rare: a user
/// writing twice within a commit.
#[derive(Default)]
pub(super) struct Committing {
    batches: Vec<(HashSet<u64>, CancellationToken)>,
}

impl Committing {
    /// A batch of `rows` begins: the ends to wait for before its
    /// statement, and its own (cancelled when the guard drops).
    pub(super) fn begin<'a>(
        &mut self,
        rows: impl IntoIterator<Item = &'a Row>,
    ) -> (Vec<CancellationToken>, CancellationToken) {
        self.batches.retain(|(_, done)| !done.is_cancelled());
        let users: HashSet<u64> = rows.into_iter().map(user_of).collect();
        let before = self
            .batches
            .iter()
            .filter(|(u, _)| !u.is_disjoint(&users))
            .map(|(_, done)| done.clone())
            .collect();
        let done = CancellationToken::new();
        self.batches.push((users, done.clone()));
        (before, done)
    }
}

/// A push's user, hashed (to tell batches that share one).
fn user_of(row: &Row) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (&row.app_key, &row.mcid, &row.user_id).hash(&mut h);
    h.finish()
}

/// Whether an error is about a row's data (one push at fault), not the
/// database being away: class 22 (data exception: a NUL, an encoding) and
/// 54000 (an index row too large).
pub(super) fn row_level(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c == "54000")
}

#[derive(Default)]
struct Columns {
    app_key: Vec<String>,
    mcid: Vec<String>,
    user_id: Vec<String>,
    msg_type: Vec<String>,
    dedup_key: Vec<String>,
    msg_id: Vec<Option<String>>,
    create_time: Vec<Option<i64>>,
    message: Vec<String>,
    raw: Vec<Vec<u8>>,
    trace_id: Vec<String>,
    day: Vec<chrono::NaiveDate>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            app_key: Vec::with_capacity(n),
            mcid: Vec::with_capacity(n),
            user_id: Vec::with_capacity(n),
            msg_type: Vec::with_capacity(n),
            dedup_key: Vec::with_capacity(n),
            msg_id: Vec::with_capacity(n),
            create_time: Vec::with_capacity(n),
            message: Vec::with_capacity(n),
            raw: Vec::with_capacity(n),
            trace_id: Vec::with_capacity(n),
            day: Vec::with_capacity(n),
        }
    }

    /// Copies the row's fields into the statement's arrays (the one copy
    /// a push's fields make on their way to PostgreSQL).
    fn push(&mut self, r: &Row, now: chrono::DateTime<chrono::Utc>) {
        self.day
            .push(crate::pipeline::days::push_day(r.create_time, now));
        self.app_key.push(r.app_key.clone());
        self.mcid.push(r.mcid.clone());
        self.user_id.push(r.user_id.clone());
        self.msg_type.push(r.msg_type.clone());
        self.dedup_key.push(r.dedup_key.clone());
        self.msg_id.push(r.msg_id.clone());
        self.create_time.push(r.create_time);
        self.message.push(r.message.clone());
        self.raw.push(r.raw.clone());
        self.trace_id.push(r.trace_id.clone());
    }
}
