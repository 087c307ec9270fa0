//! The pending side of `inbound_messages`, which ingest owns: decide claims
//! stored pushes here and marks them decided here; no other room changes a
//! push's status. What decide is handed is a [`StoredPush`]: the push as the
//! webhook parsed it, with its ids as the protocol's types.

use pubbot_protocol::{McId, UserId};
use pubbot_webhook::InboundMessage;

/// A stored push, claimed for deciding.
#[derive(Debug)]
pub(crate) struct StoredPush {
    /// Row id.
    pub id: i64,
    /// The app key it was pushed for.
    pub app_key: String,
    /// The account written to.
    pub mcid: McId,
    /// The user who wrote.
    pub user_id: UserId,
    /// R6 key.
    pub dedup_key: String,
    /// Carried from push to reply in logs and rows.
    pub trace_id: String,
    /// The push as the webhook parsed it, or why the stored JSON no longer
    /// parses (a row written by another version): such a push is marked
    /// decided without a reply, and logged, never retried forever.
    pub message: Result<InboundMessage, serde_json::Error>,
    /// When it was stored.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Claims up to `batch` pending pushes in the caller's transaction, in id
/// order: a user's pushes one at a time, in order (the state a push is
/// decided by is the one its predecessor left), and not while a handler
/// call of theirs is open (its answer may change that state). Other users
/// are never held back.
///
/// # Errors
/// Database errors.
pub(crate) async fn claim(
    tx: &mut sqlx::PgConnection,
    batch: i64,
    since: chrono::NaiveDate,
    apps: &[String],
) -> Result<Vec<StoredPush>, sqlx::Error> {
    // One statement per app (each claim names its tenant key: a
    // distributed engine routes it to one shard, docs/scaling.md), from a
    // turn that moves on every claim so that no app waits behind another's
    // backlog. Each probe is a subplan run per row (`OFFSET 0` keeps the
    // planner from turning it into an anti-join): on a day partition with
    // no statistics yet (a new day, autovacuum not run), the anti-join it
    // chose compared every pending row with every other, 8-30 s a claim
    // over 12,000 pushes drained from the spool (the 60 s database-outage
    // test); a probe per row is an index probe whatever the statistics.
    static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let first = TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    for k in 0..apps.len() {
        let left = batch - i64::try_from(out.len()).unwrap_or(i64::MAX);
        if left <= 0 {
            break;
        }
        let app = &apps[(first + k) % apps.len()];
        let rows = sqlx::query!(
            r#"SELECT i.id, i.app_key, i.mcid, i.user_id, i.dedup_key, i.message, i.trace_id, i.received_at
                 FROM inbound_messages i
                WHERE i.app_key = $3 AND i.status = 'pending' AND i.day >= $2
                  AND NOT EXISTS (SELECT 1 FROM inbound_messages e
                                   WHERE e.app_key = i.app_key AND e.mcid = i.mcid AND e.user_id = i.user_id
                                     AND e.status = 'pending' AND e.id < i.id AND e.day >= $2 OFFSET 0)
                  AND NOT EXISTS (SELECT 1 FROM outbound_messages h
                                   WHERE h.app_key = i.app_key AND h.mcid = i.mcid AND h.user_id = i.user_id
                                     AND h.handler IS NOT NULL AND h.status IN ('pending', 'sending')
                                     AND h.day >= $2 OFFSET 0)
                ORDER BY i.id LIMIT $1 FOR UPDATE OF i SKIP LOCKED"#,
            left,
            since,
            app
        )
        .fetch_all(&mut *tx)
        .await?;
        out.extend(rows.into_iter().map(|r| StoredPush {
            id: r.id,
            app_key: r.app_key,
            mcid: McId::new(r.mcid),
            user_id: UserId::new(r.user_id),
            dedup_key: r.dedup_key,
            trace_id: r.trace_id,
            message: serde_json::from_value(r.message),
            received_at: r.received_at,
        }));
    }
    Ok(out)
}

/// Marks claimed pushes decided, in the caller's transaction (the one that
/// planned their replies: outbox invariant 1), each with what it did to
/// its user's conversation state (`state_changes[i]` for `ids[i]`: JSON
/// `{"set", "clear"}`, or `None`).
///
/// # Errors
/// Database errors.
pub(crate) async fn mark_decided(
    tx: &mut sqlx::PgConnection,
    ids: &[i64],
    state_changes: &[Option<String>],
) -> Result<(), sqlx::Error> {
    let (lo, hi) = crate::pipeline::days::span(ids);
    sqlx::query!(
        "UPDATE inbound_messages i SET status = 'done', processed_at = now(), state_change = c.change::json
           FROM UNNEST($1::int8[], $2::text[]) AS c(id, change)
          WHERE i.id = c.id AND i.day BETWEEN $3 AND $4",
        ids,
        state_changes as &[Option<String>],
        lo,
        hi,
    )
    // Planned afresh each time (see "Plans" in `crate::db`).
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks decided, without a reply, the undecided pushes of apps this
/// process is not configured for (an app removed from `[[apps]]`: what
/// deciding them did before claims named their app, R16). Returns how many.
///
/// # Errors
/// Database errors.
pub(crate) async fn set_aside_unconfigured(
    pool: &sqlx::PgPool,
    apps: &[String],
    since: chrono::NaiveDate,
) -> Result<u64, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE inbound_messages SET status = 'done', processed_at = now()
          WHERE status = 'pending' AND day >= $2 AND NOT (app_key = ANY($1))",
        apps,
        since
    )
    .execute(pool)
    .await?
    .rows_affected();
    if n > 0 {
        tracing::warn!(
            pushes = n,
            "undecided pushes of apps not configured here marked done without a reply"
        );
    }
    Ok(n)
}
