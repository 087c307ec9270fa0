//! Retention: processed pushes and settled replies older than
//! `retention.days` are deleted, in small batches by id (each a short
//! transaction of its own, so the hot path never waits behind one), every
//! `retention.every_secs` by every replica (`SKIP LOCKED`: replicas share
//! the work). Undecided pushes and unsettled replies are never touched,
//! whatever their age; a push goes only after every reply to it.
//! `pubbot prune --dry-run` shows what would go.
//!
//! Batched deletes, not partitions: they need no partition maintenance, and
//! the deleted space is reused after vacuum. They keep up because a prune
//! that finds full batches goes on, a batch at a time, resting as long as
//! each took, instead of waiting `every_secs` (timer-paced, with the
//! defaults, it took at most 333 rows a second, a third of the inflow at
//! 1,000 msgs/s); see [`run`] and BENCHMARKS.md, session 6.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Settled replies (sent, failed, expired).
    pub replies: i64,
    /// Decided pushes with no reply left.
    pub pushes: i64,
    /// Chunks of finished campaigns.
    pub campaign_chunks: i64,
}

/// Counts what [`prune`] would remove before `cutoff`.
///
/// # Errors
/// Database errors.
pub async fn dry_run(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Pruned, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT
             (SELECT count(*) FROM outbound_messages
               WHERE status IN ('sent', 'failed', 'expired') AND created_at < $1) AS "replies!",
             (SELECT count(*) FROM inbound_messages i
               WHERE i.status = 'done' AND i.received_at < $1
                 AND NOT EXISTS (SELECT 1 FROM outbound_messages o
                                  WHERE o.inbound_id = i.id
                                    AND NOT (o.status IN ('sent', 'failed', 'expired') AND o.created_at < $1))) AS "pushes!",
             (SELECT count(*) FROM campaign_chunks k JOIN campaigns c ON c.id = k.campaign_id
               WHERE c.state <> 'running' AND c.finished_at < $1) AS "chunks!""#,
        cutoff
    )
    .fetch_one(pool)
    .await?;
    Ok(Pruned {
        replies: r.replies,
        pushes: r.pushes,
        campaign_chunks: r.chunks,
    })
}

/// Where each table's old rows end: the id of its first row not older
/// than the cutoff (ids grow with time), or one past its last row. A
/// delete looks only below it: without the bound, a prune with fewer old
/// rows left than a batch walked the whole table (30 days of rows) looking
/// for more, and the pushes' anti-join hashed all of `outbound_messages`
/// for every batch (a second a batch at 200,000 rows; BENCHMARKS.md,
/// session 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Replies: ids below this may be old.
    pub replies: i64,
    /// Pushes: ids below this may be old.
    pub pushes: i64,
}

/// The [`Bounds`] for `cutoff`: a walk of each primary key from its
/// oldest row to the first young one (the old rows themselves, which the
/// prune is about to delete).
///
/// # Errors
/// Database errors.
pub async fn bounds(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Bounds, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT
             coalesce((SELECT id FROM outbound_messages WHERE created_at >= $1 ORDER BY id LIMIT 1),
                      (SELECT max(id) + 1 FROM outbound_messages), 0) AS "replies!",
             coalesce((SELECT id FROM inbound_messages WHERE received_at >= $1 ORDER BY id LIMIT 1),
                      (SELECT max(id) + 1 FROM inbound_messages), 0) AS "pushes!""#,
        cutoff
    )
    .fetch_one(pool)
    .await?;
    Ok(Bounds {
        replies: r.replies,
        pushes: r.pushes,
    })
}

/// Deletes, `batch` rows at a time, what is older than `cutoff` (at most
/// `max_batches` batches of each kind per call).
///
/// # Errors
/// Database errors (what was deleted before stays deleted).
pub async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    max_batches: usize,
) -> Result<Pruned, sqlx::Error> {
    let below = bounds(pool, cutoff).await?;
    prune_below(pool, cutoff, below, batch, max_batches).await
}

/// [`prune`] with the bounds given (kept through a catch-up: they only
/// grow, and what a stale bound misses the next prune takes).
///
/// # Errors
/// Database errors (what was deleted before stays deleted).
pub async fn prune_below(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    below: Bounds,
    batch: i64,
    max_batches: usize,
) -> Result<Pruned, sqlx::Error> {
    let mut out = Pruned::default();
    for _ in 0..max_batches {
        let n = sqlx::query!(
            "DELETE FROM outbound_messages WHERE id IN (
                SELECT id FROM outbound_messages
                 WHERE id < $3 AND status IN ('sent', 'failed', 'expired') AND created_at < $1
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cutoff,
            batch,
            below.replies
        )
        .execute(pool)
        .await?
        .rows_affected();
        out.replies += i64::try_from(n).unwrap_or(0);
        if i64::try_from(n).unwrap_or(0) < batch {
            break;
        }
    }
    for _ in 0..max_batches {
        // (`OFFSET 0` keeps the reply check a probe of the planned-once
        // index per push, in id order, stopping at the batch: as an
        // anti-join the planner hashed every reply.)
        let n = sqlx::query!(
            "DELETE FROM inbound_messages WHERE id IN (
                SELECT i.id FROM inbound_messages i
                 WHERE i.id < $3 AND i.status = 'done' AND i.received_at < $1
                   AND NOT EXISTS (SELECT 1 FROM outbound_messages o WHERE o.inbound_id = i.id OFFSET 0)
                 ORDER BY i.id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cutoff,
            batch,
            below.pushes
        )
        .execute(pool)
        .await?
        .rows_affected();
        out.pushes += i64::try_from(n).unwrap_or(0);
        if i64::try_from(n).unwrap_or(0) < batch {
            break;
        }
    }
    sqlx::query!("DELETE FROM conversation_state WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let n = sqlx::query!(
        "DELETE FROM campaign_chunks k USING campaigns c
          WHERE c.id = k.campaign_id AND c.state <> 'running' AND c.finished_at < $1",
        cutoff
    )
    .execute(pool)
    .await?
    .rows_affected();
    out.campaign_chunks = i64::try_from(n).unwrap_or(0);
    Ok(out)
}

/// Prunes at start, then every `every`, until `token` is cancelled. While
/// it finds full batches (behind: a backlog of old rows, or an inflow
/// above what one prune a period takes) it goes on a batch of each table
/// at a time, resting as long as the batch took: deletes run at most half
/// the time, which keeps up with the inflow several times over
/// (BENCHMARKS.md, session 6) and leaves the hot path the other half.
pub async fn run(pool: PgPool, days: u32, every: Duration, batch: i64, token: CancellationToken) {
    let mut pause = Duration::ZERO;
    // Rows of the catch-up under way, logged when it ends.
    let mut caught = Pruned::default();
    let mut kept: Option<(DateTime<Utc>, Bounds)> = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let started = std::time::Instant::now();
        // Cutoff and bounds are taken when a catch-up starts and kept
        // through it (rows that turn old meanwhile go in the next one).
        let (cutoff, below) = match kept {
            Some(k) => k,
            None => {
                let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
                match bounds(&pool, cutoff).await {
                    Ok(b) => (cutoff, b),
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning failed; trying again later");
                        pause = every;
                        continue;
                    }
                }
            }
        };
        match prune_below(&pool, cutoff, below, batch, 1).await {
            Ok(p) => {
                metrics::counter!("pubbot_pruned_total", "table" => "outbound_messages")
                    .increment(u64::try_from(p.replies).unwrap_or(0));
                metrics::counter!("pubbot_pruned_total", "table" => "inbound_messages")
                    .increment(u64::try_from(p.pushes).unwrap_or(0));
                caught.replies += p.replies;
                caught.pushes += p.pushes;
                caught.campaign_chunks += p.campaign_chunks;
                if p.replies >= batch || p.pushes >= batch {
                    pause = started.elapsed();
                    kept = Some((cutoff, below));
                    continue;
                }
                if caught != Pruned::default() {
                    tracing::info!(
                        replies = caught.replies,
                        pushes = caught.pushes,
                        chunks = caught.campaign_chunks,
                        "pruned rows older than retention.days"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
        }
        caught = Pruned::default();
        kept = None;
        pause = every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn old_processed_rows_go_and_open_ones_stay(pool: PgPool) {
        // Pushes 1-3 are 40 days old: 1 done with a sent reply, 2 done with a
        // reply still pending, 3 pending. Push 4 is new and done.
        sqlx::query(
            "INSERT INTO inbound_messages (id, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status, received_at)
             SELECT i, 'a', 'm', 'u', 'text', 'k' || i, '{}', '', 't',
                    CASE WHEN i = 3 THEN 'pending' ELSE 'done' END,
                    CASE WHEN i = 4 THEN now() ELSE now() - interval '40 days' END
               FROM generate_series(1, 4) i",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO outbound_messages (inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status, created_at)
             VALUES (1, 0, 'a', 'm', 'u', 'r', '{}', 't', 'sent', now() - interval '40 days'),
                    (2, 0, 'a', 'm', 'u', 'r', '{}', 't', 'pending', now() - interval '40 days'),
                    (4, 0, 'a', 'm', 'u', 'r', '{}', 't', 'sent', now())",
        )
        .execute(&pool)
        .await
        .unwrap();
        let cutoff = Utc::now() - chrono::Duration::days(30);
        let want = Pruned {
            replies: 1,
            pushes: 1,
            campaign_chunks: 0,
        };
        assert_eq!(dry_run(&pool, cutoff).await.unwrap(), want);
        // Old rows end at push 4 and at the third reply (ids follow time).
        let first_young: i64 =
            sqlx::query_scalar("SELECT id FROM outbound_messages WHERE inbound_id = 4")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            bounds(&pool, cutoff).await.unwrap(),
            Bounds {
                replies: first_young,
                pushes: 4
            }
        );
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            count("SELECT count(*) FROM inbound_messages").await,
            4,
            "dry"
        );
        assert_eq!(prune(&pool, cutoff, 1, 10).await.unwrap(), want);
        let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM inbound_messages ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(left, [2, 3, 4], "open work and new rows stay");
        assert_eq!(count("SELECT count(*) FROM outbound_messages").await, 2);
        assert_eq!(
            prune(&pool, cutoff, 1, 10).await.unwrap(),
            Pruned::default()
        );
    }

    /// Many full batches of old rows: the loop goes on, a batch at a time,
    /// instead of waiting its interval (an hour here), so it keeps up with
    /// an inflow larger than one batch a period.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_prune_that_finds_full_batches_goes_on_without_waiting(pool: PgPool) {
        let rows = 5 * 20 * 3; // three rounds of 20 batches of 5
        sqlx::query(
            "INSERT INTO inbound_messages (id, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status, received_at)
             SELECT i, 'a', 'm', 'u', 'text', 'k' || i, '{}', '', 't', 'done', now() - interval '40 days'
               FROM generate_series(1, $1) i",
        )
        .bind(rows)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO outbound_messages (inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status, created_at)
             SELECT i, 0, 'a', 'm', 'u', 'r', '{}', 't', 'sent', now() - interval '40 days'
               FROM generate_series(1, $1) i",
        )
        .bind(rows)
        .execute(&pool)
        .await
        .unwrap();
        let token = CancellationToken::new();
        let pruning = tokio::spawn(run(
            pool.clone(),
            30,
            Duration::from_secs(3600),
            5,
            token.clone(),
        ));
        let left = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT (SELECT count(*) FROM inbound_messages) + (SELECT count(*) FROM outbound_messages)",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while left().await > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            left().await,
            0,
            "every old row went without waiting an hour"
        );
        token.cancel();
        pruning.await.unwrap();
    }
}
