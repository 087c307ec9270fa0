//! Retention: processed pushes and settled replies older than
//! `retention.days` are deleted, in small batches by id (each a short
//! transaction of its own, so the hot path never waits behind one), every
//! `retention.every_secs` by every replica (`SKIP LOCKED`: replicas share
//! the work). Undecided pushes and unsettled replies are never touched,
//! whatever their age; a push goes only after every reply to it.
//! `pubbot prune --dry-run` shows what would go.
//!
//! Batched deletes, not partitions: they need no partition maintenance, and
//! the deleted space is reused after vacuum. A prune is a [`Pass`]: each
//! table's primary key walked in windows of `retention.batch` ids up to its
//! first young row, the old settled rows of each window deleted; [`run`]
//! rests after each window as long as it took. On 2 cores that deletes
//! 5,270 rows/s while the daemon takes 1,000 msgs/s (2,000 rows/s), with
//! p99 reply latency about 100 ms meanwhile (BENCHMARKS.md, "Retention").
//! Timer-paced batches (session 5) took at most 333 rows/s; partitions are
//! the answer past what this keeps up with.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Pruned {
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
pub(crate) async fn dry_run(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Pruned, sqlx::Error> {
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
/// than the cutoff (ids grow with time), or one past its last row. A pass
/// looks only below it: without the bound, a prune with fewer old rows
/// left than a batch walked the whole table (30 days of rows) looking for
/// more (BENCHMARKS.md, "Retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
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
pub(crate) async fn bounds(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Bounds, sqlx::Error> {
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

/// One pass over the old rows: each table's primary key walked from its
/// start to its [`Bounds`], a window of `batch` ids at a time (an index
/// range scan whatever the planner thinks of the filters: with a filter
/// and a `LIMIT` it chose a sequential scan of the table for every batch),
/// the old settled rows of each window deleted. Replies first, then the
/// pushes they leave without replies. Rows a window skips (locked, or not
/// settled yet) are looked at again by the next pass. A window locks its
/// rows in id order, like every statement that may wait for a row lock
/// (outbox invariant 6).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    cutoff: DateTime<Utc>,
    below: Bounds,
    /// The last id of each table's windows so far.
    after: Bounds,
    replies_done: bool,
    pushes_done: bool,
}

impl Pass {
    /// A pass over what is older than `cutoff` now.
    ///
    /// # Errors
    /// Database errors.
    pub(crate) async fn start(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Self, sqlx::Error> {
        Ok(Self {
            cutoff,
            below: bounds(pool, cutoff).await?,
            after: Bounds {
                replies: 0,
                pushes: 0,
            },
            replies_done: false,
            pushes_done: false,
        })
    }

    /// Both tables walked to their bounds.
    pub(crate) fn done(&self) -> bool {
        self.replies_done && self.pushes_done
    }

    /// One window of the table not done yet (replies before pushes).
    ///
    /// # Errors
    /// Database errors (what was deleted stays deleted; the pass can go on).
    pub(crate) async fn step(&mut self, pool: &PgPool, batch: i64) -> Result<Pruned, sqlx::Error> {
        let mut out = Pruned::default();
        if !self.replies_done {
            let r = sqlx::query!(
                r#"WITH w AS (SELECT id FROM outbound_messages WHERE id > $2 AND id < $3
                               ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED),
                        d AS (DELETE FROM outbound_messages o USING w
                               WHERE o.id = w.id AND o.status IN ('sent', 'failed', 'expired')
                                 AND o.created_at < $1
                              RETURNING 1)
                   SELECT (SELECT max(id) FROM w) AS "last?", (SELECT count(*) FROM w) AS "seen!",
                          (SELECT count(*) FROM d) AS "deleted!""#,
                self.cutoff,
                self.after.replies,
                self.below.replies,
                batch
            )
            .fetch_one(pool)
            .await?;
            out.replies = r.deleted;
            self.replies_done = !advance(&mut self.after.replies, r.last, r.seen, batch);
            return Ok(out);
        }
        if !self.pushes_done {
            let r = sqlx::query!(
                r#"WITH w AS (SELECT id FROM inbound_messages WHERE id > $2 AND id < $3
                               ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED),
                        d AS (DELETE FROM inbound_messages i USING w
                               WHERE i.id = w.id AND i.status = 'done' AND i.received_at < $1
                                 AND NOT EXISTS (SELECT 1 FROM outbound_messages o WHERE o.inbound_id = i.id)
                              RETURNING 1)
                   SELECT (SELECT max(id) FROM w) AS "last?", (SELECT count(*) FROM w) AS "seen!",
                          (SELECT count(*) FROM d) AS "deleted!""#,
                self.cutoff,
                self.after.pushes,
                self.below.pushes,
                batch
            )
            .fetch_one(pool)
            .await?;
            out.pushes = r.deleted;
            self.pushes_done = !advance(&mut self.after.pushes, r.last, r.seen, batch);
        }
        Ok(out)
    }

    /// What ends a pass: expired conversation state and finished
    /// campaigns' chunks (small tables, one statement each).
    ///
    /// # Errors
    /// Database errors.
    pub(crate) async fn finish(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query!("DELETE FROM conversation_state WHERE expires_at < now()")
            .execute(pool)
            .await?;
        let n = sqlx::query!(
            "DELETE FROM campaign_chunks k USING campaigns c
              WHERE c.id = k.campaign_id AND c.state <> 'running' AND c.finished_at < $1",
            self.cutoff
        )
        .execute(pool)
        .await?
        .rows_affected();
        Ok(i64::try_from(n).unwrap_or(0))
    }
}

/// Moves a table's walk past a window that saw `seen` ids, the last
/// `last`; false when the window was not full (the walk reached the bound).
fn advance(after: &mut i64, last: Option<i64>, seen: i64, batch: i64) -> bool {
    match last {
        Some(last) if seen >= batch => {
            *after = last;
            true
        }
        _ => false,
    }
}

/// Deletes what is older than `cutoff`: one whole [`Pass`], `batch` ids
/// a window.
///
/// # Errors
/// Database errors (what was deleted before stays deleted).
pub(crate) async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<Pruned, sqlx::Error> {
    let mut pass = Pass::start(pool, cutoff).await?;
    let mut out = Pruned::default();
    while !pass.done() {
        let p = pass.step(pool, batch).await?;
        out.replies += p.replies;
        out.pushes += p.pushes;
    }
    out.campaign_chunks = pass.finish(pool).await?;
    Ok(out)
}

/// Prunes at start, then every `every`, until `token` is cancelled: a
/// [`Pass`] a window at a time, resting after each window as long as it
/// took, so deletes take at most half the time and the hot path the other
/// half (BENCHMARKS.md, "Retention", has the delete rate beside the inflow).
/// No window starts while ingest is behind (ingest first, as decide and
/// send: deleting can wait, a push cannot).
pub(crate) async fn run(
    pool: PgPool,
    days: u32,
    every: Duration,
    batch: i64,
    progress: Arc<crate::progress::Progress>,
    token: CancellationToken,
) {
    let mut pause = Duration::ZERO;
    let mut pass: Option<Pass> = None;
    // Rows of the pass under way, logged when it ends.
    let mut caught = Pruned::default();
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        progress.ingest_first.wait("retention", &token).await;
        if token.is_cancelled() {
            return;
        }
        let started = std::time::Instant::now();
        let step = async {
            let mut p = match pass.take() {
                Some(p) => p,
                None => {
                    let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
                    Pass::start(&pool, cutoff).await?
                }
            };
            let pruned = p.step(&pool, batch).await?;
            Ok::<_, sqlx::Error>((p, pruned))
        };
        match step.await {
            Ok((p, pruned)) => {
                metrics::counter!("pubbot_pruned_total", "table" => "outbound_messages")
                    .increment(u64::try_from(pruned.replies).unwrap_or(0));
                metrics::counter!("pubbot_pruned_total", "table" => "inbound_messages")
                    .increment(u64::try_from(pruned.pushes).unwrap_or(0));
                caught.replies += pruned.replies;
                caught.pushes += pruned.pushes;
                if !p.done() {
                    pass = Some(p);
                    pause = started.elapsed();
                    continue;
                }
                match p.finish(&pool).await {
                    Ok(chunks) => caught.campaign_chunks = chunks,
                    Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
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
        assert_eq!(prune(&pool, cutoff, 1).await.unwrap(), want);
        let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM inbound_messages ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(left, [2, 3, 4], "open work and new rows stay");
        assert_eq!(count("SELECT count(*) FROM outbound_messages").await, 2);
        assert_eq!(prune(&pool, cutoff, 1).await.unwrap(), Pruned::default());
    }

    /// Many full batches of old rows: the loop goes on, a batch at a time,
    /// instead of waiting its interval (an hour here), so it keeps up with
    /// an inflow larger than one batch a period. It starts only once ingest
    /// is no longer behind.
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
        // Ingest is behind (a commit waited past its threshold).
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
            5,
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
        assert_eq!(
            left().await,
            2 * i64::from(rows),
            "nothing deleted while ingest is behind"
        );
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
