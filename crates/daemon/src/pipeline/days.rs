//! The days of the hot tables: `inbound_messages` and `outbound_messages`
//! are partitioned by UTC day (migration 0012), and this room owns
//! `partition_days`, the partitions' own DDL, and the rules that say which
//! day a row goes to.
//!
//! - **A push's day** ([`push_day`]) is the UTC day of its CreateTime (R5),
//!   so the platform's retries of one push, whenever they arrive, meet the
//!   first copy in one partition and the R6 dedup key stays unique there.
//!   A CreateTime more than a day from the receiving clock (absent, or a
//!   client's wrong clock) gives way to the day of receipt. A reply's day
//!   is its push's day, so a day's pushes and replies go together.
//! - **Ids carry their day** (`pubbot_id(day, n)`): statements that name
//!   rows by id name their partition with `day = pubbot_day_of(id)` (or
//!   `day BETWEEN $lo AND $hi` from [`span`] for an array), and PostgreSQL
//!   opens that one.
//! - **Partitions ahead** ([`ensure_ahead`]): every replica creates the
//!   partitions from yesterday to [`AHEAD_DAYS`] ahead at start and every
//!   maintenance round; an advisory lock makes them one at a time, and a day
//!   already listed is never created twice.
//! - **Settled days and the open window** ([`settle`], [`Window`]): a day is
//!   settled when none of its rows is open (an undecided push, a reply not
//!   sent or failed for good) and it is older than yesterday (no new push
//!   can be written to it). Statements that look for a user's open rows,
//!   and the claims, look only at days from the oldest unsettled one:
//!   with thirty days of partitions, a probe of all of them cost 9x a probe
//!   of one (BENCHMARKS.md, "Day partitions"). A row that opens again in a
//!   settled day (an operator's retry of an old failed reply, a person's
//!   message after a long silence) reopens its day first ([`reopen`], in
//!   the same transaction, behind the same row lock as [`settle`]), and
//!   tells every process to look again (`NOTIFY pubbot_days`).
//! - **Retention** drops whole settled days ([`drop_before`]): a
//!   `DROP TABLE` of two partitions instead of deleting rows.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;

/// Days ahead of today that have partitions (created at start and every
/// maintenance round).
pub(crate) const AHEAD_DAYS: u64 = 2;

/// The day a push's rows go to: the UTC day of its CreateTime when that is
/// within a day of `now`, else `now`'s day.
pub(crate) fn push_day(create_time: Option<i64>, now: DateTime<Utc>) -> NaiveDate {
    let today = now.date_naive();
    create_time
        .map(pubbot_protocol::unix_millis)
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .filter(|t| (*t - now).num_seconds().abs() <= 86_400)
        .map_or(today, |t| t.date_naive())
}

/// The newest day a row may be in, seen from `today`: a push's day is at
/// most a day past its receiver's clock ([`push_day`]; another replica's
/// clock a few hours ahead makes it two), and partitions exist to
/// [`AHEAD_DAYS`] ahead. Probes for a user's open rows stop there, so they
/// skip the empty partitions beyond: a fresh install has a week of them
/// (migration 0012), and probing those cost 15% of the ingest statement's
/// time in a fresh database (BENCHMARKS.md, "Where a message waits"). Only
/// the per-push probes of the ingest statement and of the decide workers'
/// plan stop here; the claims, the safety net for whatever those leave
/// `pending`, still look at every day from the window on, so a row a
/// grossly wrong clock put further ahead is still found and sent.
pub(crate) fn newest(today: NaiveDate) -> NaiveDate {
    today + Days::new(AHEAD_DAYS)
}

/// A window's lower bound that takes in every day (ids start at the epoch).
pub(crate) const ALL_DAYS: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MIN,
};

fn epoch() -> NaiveDate {
    ALL_DAYS
}

/// Days since 1970-01-01 (how [`Window`] keeps a day in an atomic).
fn epoch_day(day: NaiveDate) -> i32 {
    i32::try_from((day - epoch()).num_days()).unwrap_or(i32::MAX)
}

/// The day an id carries (the SQL function `pubbot_day_of`).
pub(crate) fn day_of(id: i64) -> NaiveDate {
    epoch()
        .checked_add_signed(chrono::Duration::days(id >> 40))
        .unwrap_or(NaiveDate::MIN)
}

/// The first and last day `ids` carry (an empty range when there are
/// none): passed to a statement as two dates instead of calling the SQL
/// functions `pubbot_day_lo/hi($ids)` there. Those unnest the whole array
/// per call and cannot be inlined; in a generic plan (the settle pool's,
/// see "Plans" in `crate::db`) nothing folds them, and an index condition
/// evaluates them again at every probe of a nested loop: a settle of 300
/// rows called them 600 times over 300 elements each, 120 ms of
/// PostgreSQL's CPU a settle at 3,000 messages/s (BENCHMARKS.md, "Where a
/// message waits").
pub(crate) fn span(ids: &[i64]) -> (NaiveDate, NaiveDate) {
    match (ids.iter().min(), ids.iter().max()) {
        (Some(&lo), Some(&hi)) => (day_of(lo), day_of(hi)),
        _ => (epoch().succ_opt().unwrap_or(epoch()), epoch()),
    }
}

/// The oldest day that may hold an open row, as this process last read it.
/// It only rises by [`settle`] and falls by [`reopen`] (which notifies), so
/// a value read before a settle is still safe: it looks at more days, not
/// fewer.
#[derive(Debug)]
pub(crate) struct Window {
    since: AtomicI32,
}

impl Default for Window {
    /// Before the first read: every day (no partition is skipped).
    fn default() -> Self {
        Self {
            since: AtomicI32::new(i32::MIN),
        }
    }
}

impl Window {
    /// The oldest day to look at for open rows.
    pub(crate) fn since(&self) -> NaiveDate {
        let d = self.since.load(Ordering::Acquire);
        if d == i32::MIN {
            return ALL_DAYS;
        }
        epoch()
            .checked_add_signed(chrono::Duration::days(i64::from(d)))
            .unwrap_or(ALL_DAYS)
    }

    /// Reads the oldest unsettled day again.
    ///
    /// # Errors
    /// Database errors (the last value stays).
    pub(crate) async fn refresh(&self, pool: &PgPool) -> Result<NaiveDate, sqlx::Error> {
        let since = sqlx::query_scalar!(
            r#"SELECT coalesce(min(day), current_date - 1) AS "since!" FROM partition_days WHERE NOT settled"#
        )
        .fetch_one(pool)
        .await?;
        self.since.store(epoch_day(since), Ordering::Release);
        Ok(since)
    }
}

/// Creates the partitions from yesterday to [`AHEAD_DAYS`] ahead that do
/// not exist yet; returns how many days were added.
///
/// # Errors
/// Database errors.
pub(crate) async fn ensure_ahead(pool: &PgPool, today: NaiveDate) -> Result<i32, sqlx::Error> {
    let first = today - Days::new(1);
    let last = today + Days::new(AHEAD_DAYS);
    let added = sqlx::query_scalar!(
        r#"SELECT pubbot_create_partitions($1, $2) AS "added!""#,
        first,
        last
    )
    .fetch_one(pool)
    .await?;
    Ok(added)
}

/// Creates the partitions of the days from `first` to `last` that do not
/// exist yet (rows copied in from another database, `pubbot app move`).
///
/// # Errors
/// Database errors.
pub(crate) async fn create(
    pool: &PgPool,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pubbot_create_partitions($1, $2) AS "added!""#,
        first,
        last
    )
    .fetch_one(pool)
    .await
}

/// Marks settled every day older than yesterday with no open row; returns
/// the days settled. Each day is looked at under its `partition_days` row
/// lock (taken `SKIP LOCKED`: a replica settling it, or a [`reopen`] under
/// way, leaves it for the next round).
///
/// # Errors
/// Database errors.
pub(crate) async fn settle(pool: &PgPool, today: NaiveDate) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let candidates = sqlx::query_scalar!(
        "SELECT day FROM partition_days WHERE NOT settled AND day < $1 ORDER BY day",
        today - Days::new(1)
    )
    .fetch_all(pool)
    .await?;
    let mut settled = Vec::new();
    for day in candidates {
        let mut tx = pool.begin().await?;
        let locked = sqlx::query_scalar!(
            "SELECT day FROM partition_days WHERE day = $1 AND NOT settled FOR UPDATE SKIP LOCKED",
            day
        )
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            continue;
        }
        // A new statement: it sees what a reopen committed before the lock.
        let open = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM inbound_messages WHERE day = $1 AND status = 'pending')
                   OR EXISTS (SELECT 1 FROM outbound_messages WHERE day = $1 AND status IN ('pending', 'sending'))
                   AS "open!""#,
            day
        )
        .fetch_one(&mut *tx)
        .await?;
        if open {
            // Days settle oldest first: the window cannot pass an open one.
            break;
        }
        sqlx::query!(
            "UPDATE partition_days SET settled = true, settled_at = now() WHERE day = $1",
            day
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        settled.push(day);
    }
    Ok(settled)
}

/// Reopens `day` in the caller's transaction, before a row of that day is
/// opened again (waits for a [`settle`] of the day under way), and tells
/// every process to widen its [`Window`] at commit.
///
/// # Errors
/// Database errors; `RowNotFound` when retention is dropping the day.
pub(crate) async fn reopen(tx: &mut sqlx::PgConnection, day: NaiveDate) -> Result<(), sqlx::Error> {
    let open = sqlx::query_scalar!(
        "UPDATE partition_days SET settled = false, settled_at = NULL WHERE day = $1 AND NOT dropping
         RETURNING day",
        day
    )
    .fetch_optional(&mut *tx)
    .await?;
    if open.is_none() {
        // Retention is dropping the day (or dropped it): its rows are going.
        return Err(sqlx::Error::RowNotFound);
    }
    // Every time (rare: retries and a person's messages): whether the day
    // was settled is only known for sure at commit.
    sqlx::query!("SELECT pg_notify('pubbot_days', '')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How often [`maintain`] creates partitions ahead, settles days and reads
/// the window again (a `NOTIFY pubbot_days` reads it at once).
pub(crate) const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// Partitions ahead, settled days and this process's [`Window`]: once
/// before the daemon serves (so the first push has its partition and the
/// first claim its window), then every [`MAINTAIN_EVERY`] and at every
/// `NOTIFY pubbot_days` (a day reopened) until `token` is cancelled.
///
/// # Errors
/// Database errors of the first round (a daemon that cannot create today's
/// partition cannot store a push).
pub(crate) async fn prepare(pool: &PgPool, window: &Window) -> Result<(), sqlx::Error> {
    let today = Utc::now().date_naive();
    ensure_ahead(pool, today).await?;
    settle(pool, today).await?;
    window.refresh(pool).await?;
    Ok(())
}

/// How often young partitions are looked at for statistics
/// ([`analyze_young`]).
pub(crate) const ANALYZE_EVERY: Duration = Duration::from_secs(5);

/// Rows changed since a partition's last statistics before it is looked
/// at again (and then only when they outnumber the rows it had).
const ANALYZE_AFTER_ROWS: i64 = 1_000;

/// Statistics for the hot tables' young partitions: `ANALYZE` of each whose
/// rows changed since its last statistics number at least
/// [`ANALYZE_AFTER_ROWS`] and more than it had then (so at about 1,000,
/// 2,000, 4,000 ... rows; past a few hundred thousand autovacuum's own
/// 10% comes first). A day's partition starts empty and without
/// statistics, and autovacuum analyzes it a minute or more after its rows
/// come: planned meanwhile, an equality on the app looks like 0.5% of the
/// rows (PostgreSQL's default), and statements whose plan should probe by
/// key scanned every open row of the app instead — on a fresh database at
/// 3,000-5,000 pushes/s, settles of 10 s and 55,000 of 60,000 replies
/// unsent 30 s after the last push (BENCHMARKS.md, "Where a message
/// waits"). `SKIP_LOCKED`: a partition another replica is analyzing is
/// left to it. Returns how many partitions were analyzed.
///
/// # Errors
/// Database errors.
pub(crate) async fn analyze_young(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let young: Vec<String> = sqlx::query_scalar!(
        r#"SELECT format('%I', c.relname) AS "name!"
             FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_stat_user_tables s ON s.relid = i.inhrelid
            WHERE i.inhparent IN ('inbound_messages'::regclass, 'outbound_messages'::regclass)
              AND s.n_mod_since_analyze >= $1
              AND s.n_mod_since_analyze > c.reltuples"#,
        ANALYZE_AFTER_ROWS,
    )
    .fetch_all(pool)
    .await?;
    for name in &young {
        sqlx::query(&format!("ANALYZE (SKIP_LOCKED) {name}"))
            .execute(pool)
            .await?;
        tracing::debug!(partition = %name, "analyzed a young partition");
    }
    Ok(young.len())
}

/// The rounds after [`prepare`] (see there), and [`analyze_young`] every
/// [`ANALYZE_EVERY`].
pub(crate) async fn maintain(
    pool: PgPool,
    progress: Arc<Progress>,
    reopened: Arc<tokio::sync::Notify>,
    token: CancellationToken,
) {
    let mut rounds = tokio::time::interval(MAINTAIN_EVERY);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `prepare` did the first round.
    rounds.tick().await;
    let mut analyses = tokio::time::interval(ANALYZE_EVERY);
    analyses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut analyze_failing = false;
    loop {
        let woken = tokio::select! {
            () = token.cancelled() => return,
            _ = rounds.tick() => false,
            () = reopened.notified() => true,
            _ = analyses.tick() => {
                // Warned once per run of failures (the database away: every
                // 5 s otherwise), then quiet until it works again.
                match analyze_young(&pool).await {
                    Ok(_) => analyze_failing = false,
                    Err(e) if !analyze_failing => {
                        analyze_failing = true;
                        tracing::warn!(error = %e, "statistics for young day partitions failed; trying again every 5 s");
                    }
                    Err(e) => tracing::debug!(error = %e, "statistics for young day partitions failed again"),
                }
                continue;
            }
        };
        let round = async {
            if !woken {
                let today = Utc::now().date_naive();
                let added = ensure_ahead(&pool, today).await?;
                if added > 0 {
                    tracing::info!(days = added, "created day partitions ahead");
                }
                settle(&pool, today).await?;
            }
            progress.days.refresh(&pool).await
        };
        if let Err(e) = round.await {
            tracing::warn!(error = %e, "day partition maintenance failed; trying again later");
        }
    }
}

/// Detaches (`CONCURRENTLY`, or finishing a detach a killed round left
/// pending) and drops `table`'s partition of `day`; nothing when it is
/// gone already.
async fn drop_partition(pool: &PgPool, table: &str, day: NaiveDate) -> Result<(), sqlx::Error> {
    let part = format!("{table}_{}", day.format("%Y%m%d"));
    let state = sqlx::query_scalar!(
        r#"SELECT i.inhdetachpending AS "pending!" FROM pg_inherits i
            WHERE i.inhrelid = to_regclass($1) AND i.inhparent = to_regclass($2)"#,
        part,
        table
    )
    .fetch_optional(pool)
    .await?;
    // Outside a transaction block (simple protocol): CONCURRENTLY commits
    // twice on its own.
    match state {
        Some(true) => {
            sqlx::raw_sql(&format!(
                "ALTER TABLE {table} DETACH PARTITION {part} FINALIZE"
            ))
            .execute(pool)
            .await?;
        }
        Some(false) => {
            sqlx::raw_sql(&format!(
                "ALTER TABLE {table} DETACH PARTITION {part} CONCURRENTLY"
            ))
            .execute(pool)
            .await?;
        }
        None => {}
    }
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {part}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// One day's partitions as the catalog sees them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Day {
    /// The UTC day.
    pub day: NaiveDate,
    /// No open row and none can open without reopening the day.
    pub settled: bool,
    /// Rows of both partitions, from the planner's statistics (no scan).
    pub rows_estimate: i64,
    /// Bytes of both partitions with their indexes.
    pub bytes: i64,
}

/// Every day with partitions, oldest first, from the catalog only.
///
/// # Errors
/// Database errors.
pub(crate) async fn list(pool: &PgPool) -> Result<Vec<Day>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT d.day, d.settled,
                  coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 AS "rows!",
                  coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 AS "bytes!"
             FROM partition_days d
             LEFT JOIN pg_class c
               ON c.relname IN ('inbound_messages_' || to_char(d.day, 'YYYYMMDD'),
                                'outbound_messages_' || to_char(d.day, 'YYYYMMDD'))
                  AND c.relnamespace = current_schema()::regnamespace
            GROUP BY d.day, d.settled
            ORDER BY d.day"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Day {
            day: r.day,
            settled: r.settled,
            rows_estimate: r.rows,
            bytes: r.bytes,
        })
        .collect())
}

/// Drops the partitions of every settled day before `cutoff` (exclusive);
/// returns the days dropped. An unsettled day stays, whatever its age (an
/// undecided push or an unsent reply is never deleted); it goes in a later
/// round once it settles.
///
/// A day is first marked `dropping` (a [`reopen`] of it fails from then
/// on), then each partition is detached `CONCURRENTLY` (a SHARE UPDATE
/// EXCLUSIVE lock on the parent: pushes and replies go on; it waits for
/// the statements that may still read the partition) and dropped, then the
/// day's row goes. A round cut short (a replica killed) is finished by the
/// next: a detach left pending is finalized, a table already gone skipped.
///
/// # Errors
/// Database errors (days dropped before stay dropped).
pub(crate) async fn drop_before(
    pool: &PgPool,
    cutoff: NaiveDate,
) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let days = sqlx::query_scalar!(
        "UPDATE partition_days SET dropping = true WHERE settled AND day < $1 RETURNING day",
        cutoff
    )
    .fetch_all(pool)
    .await?;
    let mut days = days;
    days.sort_unstable();
    let mut dropped = Vec::new();
    for day in days {
        // Both tables at once, on two connections (each detach waits for
        // the transactions open on its own parent).
        futures_util::future::try_join(
            drop_partition(pool, "outbound_messages", day),
            drop_partition(pool, "inbound_messages", day),
        )
        .await?;
        sqlx::query!("DELETE FROM partition_days WHERE day = $1", day)
            .execute(pool)
            .await?;
        dropped.push(day);
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_push_goes_to_the_day_of_its_create_time() {
        let now = at("2026-12-03T00:00:04Z");
        // Written a second before midnight, in seconds (R5) and millis.
        let t = at("2026-12-02T23:59:59Z").timestamp();
        let day = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(push_day(Some(t), now), day);
        assert_eq!(push_day(Some(t * 1000), now), day);
        // A retry ten seconds later goes to the same day.
        assert_eq!(push_day(Some(t), now + chrono::Duration::seconds(10)), day);
    }

    #[test]
    fn a_create_time_far_from_the_clock_or_absent_gives_way_to_the_day_of_receipt() {
        let now = at("2026-12-03T12:00:00Z");
        let today = now.date_naive();
        assert_eq!(push_day(None, now), today);
        assert_eq!(push_day(Some(0), now), today);
        assert_eq!(
            push_day(Some(at("2027-06-01T00:00:00Z").timestamp()), now),
            today
        );
        assert_eq!(push_day(Some(i64::MAX), now), today);
    }

    #[test]
    fn an_id_carries_its_day_as_the_database_writes_it() {
        // pubbot_id('2026-12-03', 7) = (20790 << 40) | 7.
        let id = (20_790_i64 << 40) | 7;
        assert_eq!(day_of(id), NaiveDate::from_ymd_opt(2026, 12, 3).unwrap());
    }

    #[test]
    fn the_span_of_ids_is_their_first_and_last_day_and_of_none_an_empty_range() {
        let (d3, d4) = ((20_790_i64 << 40) | 9, (20_791_i64 << 40) | 2);
        assert_eq!(
            span(&[d4, d3, d4]),
            (
                NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
                NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
            )
        );
        let (lo, hi) = span(&[]);
        assert!(lo > hi, "no day lies between {lo} and {hi}");
    }

    #[test]
    fn a_window_read_before_any_refresh_looks_at_every_day() {
        assert_eq!(Window::default().since(), ALL_DAYS);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_retry_in_a_settled_day_reopens_it_and_widens_the_window(pool: PgPool) {
        let today = Utc::now().date_naive();
        let old = today - Days::new(5);
        sqlx::query("SELECT pubbot_create_partitions($1, $1)")
            .bind(old)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id, rule_name, payload, trace_id, status)
             VALUES (pubbot_id($1, 1), $1, pubbot_id($1, 1), 0, 'a', 'm', 'u', 'r', '{\"type\":\"text\",\"content\":\"hi\"}', 't', 'failed')",
        )
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
        // Settled: nothing open in it; yesterday and today never settle.
        assert_eq!(settle(&pool, today).await.unwrap(), [old]);
        let window = Window::default();
        assert_eq!(window.refresh(&pool).await.unwrap(), today - Days::new(1));
        let id: i64 = sqlx::query_scalar("SELECT id FROM outbound_messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        let reply = pubbot_rules::PlannedReply::Text {
            content: "hi".into(),
        };
        assert!(crate::pipeline::outbox::requeue_failed(&pool, id, &reply)
            .await
            .unwrap());
        // Before the window is read again, a claim does not look there;
        // after, it does (the NOTIFY makes every process read it at once).
        let lease = Duration::from_secs(60);
        let sweep = crate::pipeline::outbox::Sweep::new(vec!["a".into()]);
        let claim = |since| {
            let (pool, sweep) = (pool.clone(), &sweep);
            async move {
                crate::pipeline::outbox::claim(&pool, "me", lease, 10, sweep, since)
                    .await
                    .unwrap()
                    .rows
            }
        };
        assert!(claim(window.since()).await.is_empty());
        assert_eq!(window.refresh(&pool).await.unwrap(), old);
        let rows = claim(window.since()).await;
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);
        // Open again: it does not settle, and retention leaves it.
        assert!(settle(&pool, today).await.unwrap().is_empty());
        assert!(drop_before(&pool, today).await.unwrap().is_empty());
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn replicas_creating_partitions_at_once_create_each_day_once(pool: PgPool) {
        let far = Utc::now().date_naive() + Days::new(30);
        let runs = (0..4).map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { ensure_ahead(&pool, far).await.unwrap() })
        });
        let mut added = 0;
        for r in runs {
            added += r.await.unwrap();
        }
        // From the day before `far` to AHEAD_DAYS after it: all new.
        assert_eq!(added, i32::try_from(AHEAD_DAYS).unwrap() + 2);
        let parts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'inbound_messages'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let days: i64 = sqlx::query_scalar("SELECT count(*) FROM partition_days")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(parts, days);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_young_partition_is_analyzed_from_a_thousand_rows_and_again_when_they_double(
        pool: PgPool,
    ) {
        let today = Utc::now().date_naive();
        ensure_ahead(&pool, today).await.unwrap();
        let partition = format!("outbound_messages_{}", today.format("%Y%m%d"));
        // Autovacuum's own analyses would race the counts below.
        sqlx::query(&format!(
            "ALTER TABLE {partition} SET (autovacuum_enabled = off)"
        ))
        .execute(&pool)
        .await
        .unwrap();
        // Rows `from..=to` of today's replies, their statistics flushed at
        // once (PostgreSQL otherwise sends a session's counts at most
        // once a second).
        let add = |from: i64, to: i64| {
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query(
                    "INSERT INTO outbound_messages (id, day, inbound_id, reply_index, app_key, mcid, user_id,
                                                    rule_name, payload, trace_id, status)
                     SELECT pubbot_id($1, g), $1, pubbot_id($1, g), 0, 'a', 'm', 'u' || g, 'r', '{}', 't', 'sent'
                       FROM generate_series($2::int8, $3::int8) g",
                )
                .bind(today)
                .bind(from)
                .bind(to)
                .execute(&mut *conn)
                .await
                .unwrap();
                sqlx::query("SELECT pg_stat_force_next_flush()")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        };
        let analyzed = || {
            let (pool, partition) = (pool.clone(), partition.clone());
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = $1",
                )
                .bind(partition)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        // Below a thousand rows: left to autovacuum.
        add(1, 900).await;
        assert_eq!(analyze_young(&pool).await.unwrap(), 0);
        // From a thousand: analyzed once, and not again until the rows
        // changed since outnumber those it had.
        add(901, 1_500).await;
        assert_eq!(analyze_young(&pool).await.unwrap(), 1);
        assert_eq!(analyzed().await, 1);
        assert_eq!(analyze_young(&pool).await.unwrap(), 0);
        add(1_501, 2_700).await;
        assert_eq!(
            analyze_young(&pool).await.unwrap(),
            0,
            "1,200 new rows, 1,500 known"
        );
        add(2_701, 3_100).await;
        assert_eq!(
            analyze_young(&pool).await.unwrap(),
            1,
            "1,600 new rows, 1,500 known"
        );
        assert_eq!(analyzed().await, 2);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_dropped_day_cannot_be_reopened(pool: PgPool) {
        let today = Utc::now().date_naive();
        let old = today - Days::new(9);
        sqlx::query("SELECT pubbot_create_partitions($1, $1)")
            .bind(old)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(settle(&pool, today).await.unwrap(), [old]);
        assert_eq!(
            drop_before(&pool, today - Days::new(3)).await.unwrap(),
            [old]
        );
        let mut tx = pool.begin().await.unwrap();
        assert!(matches!(
            reopen(&mut tx, old).await,
            Err(sqlx::Error::RowNotFound)
        ));
    }
}
