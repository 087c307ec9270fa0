//! Replies planned by the decide workers: one `INSERT` a batch, in the
//! deciding transaction (invariant 1), leasing to this process's senders
//! what may go at once or follow a reply held here.

use std::time::Duration;

use pubbot_protocol::{McId, UserId};
use pubbot_rules::PlannedReply;
use sqlx::types::Json;

use super::Claimed;

/// Replies planned by deciding a batch of pushes, as columns for one
/// `INSERT` ([`plan`]): a handler call is a row with `handler` set.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The push each reply answers.
    pub inbound_id: Vec<i64>,
    /// Its place among the push's replies.
    pub reply_index: Vec<i32>,
    /// App.
    pub app_key: Vec<String>,
    /// Account.
    pub mcid: Vec<String>,
    /// User.
    pub user_id: Vec<String>,
    /// The rule that decided it.
    pub rule_name: Vec<String>,
    /// The reply, as JSON text.
    pub payload: Vec<String>,
    /// The push's trace id.
    pub trace_id: Vec<String>,
    /// The handler to call instead of sending (a handler call row).
    pub handler: Vec<Option<String>>,
}

impl Plan {
    /// Whether nothing was planned.
    pub(crate) fn is_empty(&self) -> bool {
        self.inbound_id.is_empty()
    }
}

/// Inserts planned replies in the deciding transaction (invariant 1:
/// planned once, by the unique place of each reply). With `direct`, a row
/// goes straight to this process's senders (`sending`, leased to
/// `worker_id` for `lease`) when no earlier reply of its user is open, or
/// when the latest open one is leased to this process too: it then follows
/// that one in process ("Following a reply held here"); every other row is
/// `pending`. Returns the rows inserted, each leased one with the reply it
/// follows.
///
/// # Errors
/// Database errors.
pub(crate) async fn plan(
    tx: &mut sqlx::PgConnection,
    plan: &Plan,
    direct: bool,
    worker_id: &str,
    lease: Duration,
    since: chrono::NaiveDate,
) -> Result<Vec<(Claimed, Option<i64>)>, sqlx::Error> {
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    // The latest open reply of each user: one probe of the index of open
    // replies, the same as the ingest statement's (keep the two alike;
    // sqlx checks each statement's text as written). The ingest statement
    // probes it in `x` instead of joining `last` on the user's columns,
    // which its generic plan did as a nested loop, quadratic in the batch;
    // here plans are small and the other form was not measured.
    let rows = sqlx::query!(
        r#"WITH x AS (
               SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::text[], $12::text[])
                    WITH ORDINALITY AS x(i, r, a, m, u, n, p, t, h, k)
           ), last AS (
               SELECT u.a, u.m, u.u, l.id AS last_id,
                      $9 AND (l.id IS NULL OR (l.status = 'sending' AND l.lease_owner = $10)) AS go
                 FROM (SELECT DISTINCT a, m, u FROM x) u
                 LEFT JOIN LATERAL (
                      SELECT e.id, e.status, e.lease_owner FROM outbound_messages e
                       WHERE e.app_key = u.a AND e.mcid = u.m AND e.user_id = u.u
                         AND e.status IN ('pending', 'sending') AND e.day BETWEEN $13 AND $14
                       ORDER BY e.inbound_id DESC, e.reply_index DESC, e.sub_index DESC
                       LIMIT 1) l ON true
           ), planned AS (
               INSERT INTO outbound_messages
                      (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id,
                       status, lease_owner, lease_until, attempts, handler)
               SELECT pubbot_id(pubbot_day_of(x.i), nextval('outbound_messages_id_seq')), pubbot_day_of(x.i),
                      x.i, x.r, x.a, x.m, x.u, x.n, x.p::json, x.t,
                      CASE WHEN l.go THEN 'sending' ELSE 'pending' END,
                      CASE WHEN l.go THEN $10 END,
                      CASE WHEN l.go THEN now() + make_interval(secs => $11) END,
                      CASE WHEN l.go THEN 1 ELSE 0 END, x.h
                 FROM x JOIN last l ON l.a = x.a AND l.m = x.m AND l.u = x.u
                ORDER BY x.k
               ON CONFLICT (app_key, mcid, inbound_id, reply_index, sub_index, day) DO NOTHING
               RETURNING id, app_key, mcid, user_id, payload, attempts, trace_id, inbound_id, reply_index,
                         sub_index, created_at
           )
           SELECT o.id AS "id!", o.app_key AS "app_key!", o.mcid AS "mcid!: McId", o.user_id AS "user_id!: UserId",
                  o.payload AS "payload!: Json<PlannedReply>", o.attempts AS "attempts!", o.trace_id AS "trace_id!",
                  o.inbound_id, o.reply_index AS "reply_index!", o.sub_index AS "sub_index!",
                  o.created_at AS "created_at!",
                  CASE WHEN o.attempts > 0 THEN l.last_id END AS "follows?"
             FROM planned o JOIN last l ON l.a = o.app_key AND l.m = o.mcid AND l.u = o.user_id
            ORDER BY o.id"#,
        &plan.inbound_id,
        &plan.reply_index,
        &plan.app_key,
        &plan.mcid,
        &plan.user_id,
        &plan.rule_name,
        &plan.payload,
        &plan.trace_id,
        direct,
        worker_id,
        lease.as_secs_f64(),
        &plan.handler as &[Option<String>],
        since,
        crate::pipeline::days::newest(chrono::Utc::now().date_naive()),
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                Claimed {
                    id: r.id,
                    app_key: r.app_key,
                    mcid: r.mcid,
                    user_id: r.user_id,
                    payload: r.payload,
                    attempts: r.attempts,
                    trace_id: r.trace_id,
                    inbound_id: r.inbound_id,
                    reply_index: r.reply_index,
                    sub_index: r.sub_index,
                    created_at: r.created_at,
                },
                r.follows,
            )
        })
        .collect())
}
