//! Retention: processed pushes and settled replies older than
//! `retention.days` are deleted, in small batches by id (each a short
//! transaction of its own, so the hot path never waits behind one), every
//! `retention.every_secs` by every replica (`SKIP LOCKED`: replicas share
//! the work). Undecided pushes and unsettled replies are never touched,
//! whatever their age; a push goes only after every reply to it.
//! `pubbot prune --dry-run` shows what would go.
//!
//! Batched deletes, not partitions: they need no partition maintenance, and
//! the deleted space is reused after vacuum. They keep up because a round
//! that found more than it may take (`ROUND_BATCHES` full batches of a
//! table) goes on at once, a batch at a time, instead of waiting
//! `every_secs`: the pace is the database's, not the timer's (with the
//! defaults a timer-paced round took at most 333 rows a second, a third of
//! the inflow at 1,000 msgs/s; BENCHMARKS.md, session 6, has the delete
//! rate beside the insert rate).

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
    let mut out = Pruned::default();
    for _ in 0..max_batches {
        let n = sqlx::query!(
            "DELETE FROM outbound_messages WHERE id IN (
                SELECT id FROM outbound_messages
                 WHERE status IN ('sent', 'failed', 'expired') AND created_at < $1
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cutoff,
            batch
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
        let n = sqlx::query!(
            "DELETE FROM inbound_messages WHERE id IN (
                SELECT i.id FROM inbound_messages i
                 WHERE i.status = 'done' AND i.received_at < $1
                   AND NOT EXISTS (SELECT 1 FROM outbound_messages o WHERE o.inbound_id = i.id)
                 ORDER BY i.id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cutoff,
            batch
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

/// Batches of each table one round takes before it looks at the time
/// again (and at the token).
const ROUND_BATCHES: usize = 20;

/// Prunes at start, then every `every` — at once again while a round finds
/// more than it may take — until `token` is cancelled.
pub async fn run(pool: PgPool, days: u32, every: Duration, batch: i64, token: CancellationToken) {
    let mut behind = true;
    loop {
        let pause = if behind {
            // Behind: only a breath between rounds (the hot path's
            // statements interleave with every batch anyway).
            Duration::from_millis(10)
        } else {
            every
        };
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
        let most = batch.saturating_mul(i64::try_from(ROUND_BATCHES).unwrap_or(i64::MAX));
        match prune(&pool, cutoff, batch, ROUND_BATCHES).await {
            Ok(p) => {
                behind = p.replies >= most || p.pushes >= most;
                metrics::counter!("pubbot_pruned_total", "table" => "outbound_messages")
                    .increment(u64::try_from(p.replies).unwrap_or(0));
                metrics::counter!("pubbot_pruned_total", "table" => "inbound_messages")
                    .increment(u64::try_from(p.pushes).unwrap_or(0));
                if p != Pruned::default() {
                    tracing::info!(
                        replies = p.replies,
                        pushes = p.pushes,
                        chunks = p.campaign_chunks,
                        "pruned rows older than retention.days"
                    );
                }
            }
            Err(e) => {
                behind = false;
                tracing::warn!(error = %e, "pruning failed; trying again later");
            }
        }
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

    /// More old rows than a round takes: the loop goes on at once instead
    /// of waiting its interval (an hour here), so it keeps up with any
    /// inflow the database can delete as fast as it inserts.
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_round_that_finds_more_than_it_takes_goes_on_at_once(pool: PgPool) {
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
