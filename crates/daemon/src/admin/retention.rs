//! Retention: the pushes and replies of days older than `retention.days`
//! go, a day at a time, as a `DROP TABLE` of the day's two partitions
//! ([`crate::pipeline::days::drop_before`]), every `retention.every_secs`,
//! by whichever replica gets there first. A day goes only once it is
//! settled: an undecided push or an unsent reply is never deleted,
//! whatever its age, and keeps its day (and the days after it, which
//! settle in order) until it is done. Expired conversation state and the
//! chunks of finished campaigns go in the same round (small tables).
//! `pubbot prune --dry-run` answers from the catalog without a scan.
//!
//! Partitions, not batched deletes (sessions 5-10): deleting 7,740 rows/s
//! raised p99 at 1,000 msgs/s 4.2x; dropping a day costs the hot path one
//! catalog lock (BENCHMARKS.md, "Day partitions").

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::pipeline::days;

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Pruned {
    /// The days whose pushes and replies went.
    pub days: Vec<NaiveDate>,
    /// Their rows, from the planner's statistics (the catalog; no count).
    pub rows_estimate: i64,
    /// Older days kept because something in them is still open.
    pub kept_open: Vec<NaiveDate>,
    /// Chunks of finished campaigns.
    pub campaign_chunks: i64,
}

/// The first day kept when keeping `days` days on `today`.
pub(crate) fn cutoff(today: NaiveDate, days: u32) -> NaiveDate {
    today - Days::new(u64::from(days))
}

/// What [`prune`] would remove before `cutoff`: from the catalog
/// (`partition_days` and the planner's row estimates), no table scanned.
///
/// # Errors
/// Database errors.
pub(crate) async fn dry_run(pool: &PgPool, cutoff: NaiveDate) -> Result<Pruned, sqlx::Error> {
    let mut out = Pruned::default();
    for d in days::list(pool)
        .await?
        .into_iter()
        .filter(|d| d.day < cutoff)
    {
        if d.settled {
            out.days.push(d.day);
            out.rows_estimate += d.rows_estimate;
        } else {
            out.kept_open.push(d.day);
        }
    }
    out.campaign_chunks = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM campaign_chunks k JOIN campaigns c ON c.id = k.campaign_id
            WHERE c.state <> 'running' AND c.finished_at < $1"#,
        start_of(cutoff)
    )
    .fetch_one(pool)
    .await?;
    Ok(out)
}

fn start_of(day: NaiveDate) -> chrono::DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// Drops the settled days before `cutoff` (settling first what can be),
/// then expired conversation state and finished campaigns' chunks.
///
/// # Errors
/// Database errors (what went before stays gone).
pub(crate) async fn prune(pool: &PgPool, cutoff: NaiveDate) -> Result<Pruned, sqlx::Error> {
    days::settle(pool, Utc::now().date_naive()).await?;
    let before = dry_run(pool, cutoff).await?;
    let dropped = days::drop_before(pool, cutoff).await?;
    let listed = days::list(pool).await?;
    let kept_open = listed
        .iter()
        .filter(|d| d.day < cutoff && !d.settled)
        .map(|d| d.day)
        .collect();
    sqlx::query!("DELETE FROM conversation_state WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let chunks = sqlx::query!(
        "DELETE FROM campaign_chunks k USING campaigns c
          WHERE c.id = k.campaign_id AND c.state <> 'running' AND c.finished_at < $1",
        start_of(cutoff)
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(Pruned {
        rows_estimate: if dropped == before.days {
            before.rows_estimate
        } else {
            0
        },
        days: dropped,
        kept_open,
        campaign_chunks: i64::try_from(chunks).unwrap_or(0),
    })
}

/// Prunes at start, then every `every`, until `token` is cancelled. No
/// round starts while ingest is behind (ingest first, as decide and send:
/// dropping can wait, a push cannot).
pub(crate) async fn run(
    pool: PgPool,
    keep_days: u32,
    every: Duration,
    progress: Arc<crate::progress::Progress>,
    token: CancellationToken,
) {
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = every;
        progress.ingest_first.wait("retention", &token).await;
        if token.is_cancelled() {
            return;
        }
        let cut = cutoff(Utc::now().date_naive(), keep_days);
        match prune(&pool, cut).await {
            Ok(p) => {
                metrics::counter!("pubbot_retention_days_dropped_total")
                    .increment(p.days.len() as u64);
                if !p.days.is_empty() || p.campaign_chunks > 0 {
                    tracing::info!(
                        days = ?p.days,
                        rows_estimate = p.rows_estimate,
                        chunks = p.campaign_chunks,
                        "dropped days older than retention.days"
                    );
                }
                if !p.kept_open.is_empty() {
                    tracing::warn!(
                        days = ?p.kept_open,
                        "days older than retention.days kept: something in them is still open (an undecided push or an unsent reply)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes and replies on day `ago` days back (its partitions created),
    /// push `n` done with one reply of `status`.
    async fn day_with(pool: &PgPool, ago: i32, n: i64, status: &str) {
        sqlx::query("SELECT pubbot_create_partitions(current_date - $1, current_date - $1)")
            .bind(ago)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, message, raw, trace_id, status, received_at)
             VALUES (pubbot_id(current_date - $1, $2), current_date - $1, 'a', 'm', 'u', 'text', 'k' || $2, '{}', '', 't', 'done',
                     now() - make_interval(days => $1))",
        )
        .bind(ago)
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status, created_at)
             VALUES (pubbot_id(current_date - $1, $2), current_date - $1, pubbot_id(current_date - $1, $2), 0, 'a', 'm', 'u', 'r', '{}', 't', $3,
                     now() - make_interval(days => $1))",
        )
        .bind(ago)
        .bind(n)
        .bind(status)
        .execute(pool)
        .await
        .unwrap();
    }

    fn ago(n: u64) -> NaiveDate {
        Utc::now().date_naive() - Days::new(n)
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn old_settled_days_go_and_a_day_with_open_work_stays(pool: PgPool) {
        // 40 days ago: a sent reply. 39: a reply still pending. 38: sent.
        // Today: sent.
        day_with(&pool, 40, 1, "sent").await;
        day_with(&pool, 39, 2, "pending").await;
        day_with(&pool, 38, 3, "sent").await;
        day_with(&pool, 0, 4, "sent").await;
        sqlx::query("ANALYZE inbound_messages, outbound_messages")
            .execute(&pool)
            .await
            .unwrap();
        let cut = cutoff(Utc::now().date_naive(), 30);
        // Nothing settled yet: a dry run says so and drops nothing.
        let dry = dry_run(&pool, cut).await.unwrap();
        assert!(dry.days.is_empty());
        assert_eq!(dry.kept_open, [ago(40), ago(39), ago(38)]);

        let p = prune(&pool, cut).await.unwrap();
        assert_eq!(p.days, [ago(40)]);
        assert_eq!(
            p.rows_estimate, 2,
            "one push and one reply, from the catalog"
        );
        // Days settle in order: 38 waits behind 39's open reply.
        assert_eq!(p.kept_open, [ago(39), ago(38)]);
        let pushes: Vec<i64> =
            sqlx::query_scalar("SELECT id & 255 FROM inbound_messages ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(pushes, [2, 3, 4], "open work and new rows stay");
        let parts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_class WHERE relname = 'inbound_messages_' || to_char(current_date - 40, 'YYYYMMDD')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(parts, 0, "the day's partition is gone, not emptied");

        // The reply goes out: both older days go.
        sqlx::query("UPDATE outbound_messages SET status = 'sent' WHERE status = 'pending'")
            .execute(&pool)
            .await
            .unwrap();
        let p = prune(&pool, cut).await.unwrap();
        assert_eq!(p.days, [ago(39), ago(38)]);
        assert!(p.kept_open.is_empty());
        assert_eq!(prune(&pool, cut).await.unwrap(), Pruned::default());
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbound_messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 1);
    }

    /// No round starts while ingest is behind; once it is not, old days go
    /// without waiting the interval (an hour here).
    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn retention_waits_while_ingest_is_behind(pool: PgPool) {
        day_with(&pool, 40, 1, "sent").await;
        day_with(&pool, 35, 2, "sent").await;
        let progress = Arc::new(crate::progress::Progress::default());
        progress
            .ingest_first
            .set_threshold(Duration::from_millis(1));
        progress.ingest_first.batch(Duration::from_millis(10));
        assert!(progress.ingest_first.behind());
        let token = CancellationToken::new();
        let pruning = tokio::spawn(run(
            pool.clone(),
            30,
            Duration::from_secs(3600),
            Arc::clone(&progress),
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
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(progress.ingest_first.behind());
        assert_eq!(left().await, 4, "nothing dropped while ingest is behind");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while left().await > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            left().await,
            0,
            "both old days went without waiting an hour"
        );
        token.cancel();
        pruning.await.unwrap();
    }
}
