//! The database: pool, migrations, and the schema check `serve` makes.
//!
//! # Plans of the queue statements
//!
//! sqlx prepares every statement once per connection, and PostgreSQL
//! switches a prepared statement to a cached generic plan after five
//! executions. The queue tables start empty, so an update by
//! `id = ANY($1)` planned in the first second of a fresh database gets a
//! sequential scan — cheapest for one page — and keeps it while the table
//! grows, until an autovacuum ANALYZE invalidates it (up to a minute, and
//! the cost grows with every row meanwhile; measured: half a core at
//! 1,000 messages/s; and the per-user order check of a claim, planned as
//! nested loops over an empty table, took 1-2.5 s a claim on a 10,000-row
//! queue). Every connection therefore runs with
//! `plan_cache_mode = force_custom_plan`: PostgreSQL plans each execution
//! with its actual parameters and table sizes — a few microseconds of
//! planning instead of a plan that goes stale as the tables grow. (The
//! by-id updates are also sent unnamed, `.persistent(false)`.)
//!
//! Custom plans are not free: planning was 60% of PostgreSQL's statement
//! time at 1,000 messages/s (BENCHMARKS.md). The two statements that run
//! for every message, the ingest statement and the recorder's settle,
//! touch the tables only through index lookups by key (the R6 key, ids,
//! a user's open rows), whose best plan is the same at any table size. Their
//! pools ([`Pools::ingest`], [`Pools::settle`]) run with
//! `plan_cache_mode = force_generic_plan` and `enable_seqscan = off`: each
//! connection plans them once, and never with a sequential scan, which is
//! the only plan an empty table could freeze. That held for the single
//! table, not for day partitions: planned on an empty partition, the
//! settle's lock scan took the whole index of open rows (no key in its
//! condition), and two SQL functions of its parameters ran at every probe
//! (fixed: day ranges are parameters, `pipeline::days::span`). A plan
//! made once is replaced when its partition is analyzed, which pubbot
//! does early for young partitions (`pipeline::days::analyze_young`).

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use std::str::FromStr;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseSettings;

/// Every migration of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Opens the pool.
///
/// # Errors
/// When the URL is invalid or the database cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_with(guarded(
            options,
            Duration::from_secs(settings.idle_in_transaction_timeout_secs),
        ))
        .await
}

/// A pool on `settings` that connects when first used: for a database
/// other than `[database]`, whose outage at start must not stop the rest
/// (its pipeline's first statement reports it).
///
/// # Errors
/// When the URL is invalid.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_lazy_with(guarded(
            options,
            Duration::from_secs(settings.idle_in_transaction_timeout_secs),
        )))
}

/// Connection options with `idle_in_transaction_session_timeout` set: a
/// process that hangs or vanishes mid-transaction (a decide batch holds its
/// rows locked) cannot keep those rows from the other replicas for longer.
///
/// Also `plan_cache_mode = force_custom_plan` (see "Plans" above).
pub fn guarded(options: PgConnectOptions, idle_in_transaction: Duration) -> PgConnectOptions {
    options.options([
        (
            "idle_in_transaction_session_timeout",
            format!("{}ms", idle_in_transaction.as_millis()),
        ),
        ("plan_cache_mode", "force_custom_plan".to_owned()),
    ])
}

/// Options for a pool whose statements are planned once per connection,
/// without sequential scans (see "Plans" above). Later `-c` options win
/// over the `force_custom_plan` of [`guarded`].
pub(crate) fn planned_once(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ])
}

/// One pool per stage, each with a fixed share of
/// `database.max_connections`, so that no stage can starve another: a burst
/// of pushes cannot take the connections that senders need to record what
/// they sent, and a database blip that parks the recorder cannot stop
/// ingest. No task holds a connection while it waits for another.
#[derive(Clone, Debug)]
pub(crate) struct Pools {
    /// Group commits of pushes and the spool's drain.
    pub ingest: PgPool,
    /// Deciding transactions.
    pub decide: PgPool,
    /// Claims and pre-call lease renewals of senders.
    pub send: PgPool,
    /// Recording call outcomes (never waits behind claims).
    pub settle: PgPool,
    /// Heartbeat, recovery, queue depths, rules, LISTEN, readiness.
    pub housekeeping: PgPool,
}

/// How `total` connections are shared: (ingest, decide, send, settle,
/// housekeeping), at least two each, summing to `total` (at least 10).
pub(crate) fn budget(total: u32) -> [u32; 5] {
    let total = total.max(10);
    let ingest = (total / 4).max(2);
    let decide = (total / 5).max(2);
    let send = (total / 5).max(2);
    let settle = (total / 8).max(2);
    let housekeeping = total - ingest - decide - send - settle;
    [ingest, decide, send, settle, housekeeping]
}

impl Pools {
    /// Pools on `options` (with the guard of [`guarded`] applied by the
    /// caller), sized by [`budget`]. Connections are opened when first
    /// needed.
    pub(crate) fn split(options: &PgConnectOptions, settings: &DatabaseSettings) -> Self {
        let [ingest, decide, send, settle, housekeeping] = budget(settings.max_connections);
        let pool = |n: u32, options: PgConnectOptions, hot: bool| {
            PgPoolOptions::new()
                .max_connections(n)
                .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
                // The per-message pools skip the ping before each statement
                // (a round trip and a query for every push and outcome): a
                // broken connection fails the statement itself, which ingest
                // answers with the spool and the recorder retries.
                .test_before_acquire(!hot)
                .connect_lazy_with(options)
        };
        Self {
            ingest: pool(ingest, planned_once(options.clone()), true),
            decide: pool(decide, options.clone(), false),
            send: pool(send, options.clone(), false),
            settle: pool(settle, planned_once(options.clone()), true),
            housekeeping: pool(housekeeping, options.clone(), false),
        }
    }

    /// Every pool with its stage name (for gauges).
    pub(crate) fn named(&self) -> [(&'static str, &PgPool); 5] {
        [
            ("ingest", &self.ingest),
            ("decide", &self.decide),
            ("send", &self.send),
            ("settle", &self.settle),
            ("housekeeping", &self.housekeeping),
        ]
    }
}

/// A connection of `pool` (the stage `name`'s), the wait for it recorded
/// in `pubbot_pool_acquire_seconds{pool}`: a stage whose pool is too small
/// for its load shows there first.
///
/// # Errors
/// The pool's (its acquire timeout, a connection that cannot be opened).
pub(crate) async fn acquire(
    pool: &PgPool,
    name: &'static str,
) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let started = std::time::Instant::now();
    let conn = pool.acquire().await;
    metrics::histogram!("pubbot_pool_acquire_seconds", "pool" => name)
        .record(started.elapsed().as_secs_f64());
    conn
}

/// Runs `write` until it succeeds, pausing 100 ms, doubling to 2 s, between
/// tries; returns its value.
///
/// For the writes that record what has already happened outside the
/// database (a platform call made, a handler answered): giving up would
/// lose the record, and the rows stay leased to this worker meanwhile, so
/// no other worker takes them while the lease holds (each write checks it
/// still owns them). Each failure is a warning naming `what` and
/// counts `pubbot_settle_retries_total{what}`.
pub(crate) async fn until_recorded<T, F, Fut>(what: &'static str, mut write: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(what, error = %e, "recording an outcome failed; retrying");
                metrics::counter!("pubbot_settle_retries_total", "what" => what).increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Applies every pending migration.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Why `serve` will not start on this database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Migrations this binary knows are not applied.
    #[error("the database is not migrated ({missing} migration(s) pending): run `pubbot migrate`")]
    NotMigrated {
        /// How many.
        missing: usize,
    },
    /// The database has migrations this binary does not know.
    #[error("the database schema is newer than this pubbot (unknown migration {version}): upgrade pubbot")]
    Newer {
        /// The first unknown version.
        version: i64,
    },
    /// The database could not be read.
    #[error("reading the schema version: {0}")]
    Db(#[from] sqlx::Error),
}

/// Checks that exactly this binary's migrations are applied.
///
/// # Errors
/// [`SchemaError`].
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if let Some(v) = applied.iter().find(|v| !known.contains(v)) {
        return Err(SchemaError::Newer { version: *v });
    }
    let missing = known.iter().filter(|v| !applied.contains(v)).count();
    if missing > 0 {
        return Err(SchemaError::NotMigrated { missing });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_gets_two_and_the_shares_add_up() {
        for total in 10..=200 {
            let b = budget(total);
            assert_eq!(b.iter().sum::<u32>(), total, "{total}: {b:?}");
            assert!(b.iter().all(|n| *n >= 2), "{total}: {b:?}");
        }
        assert_eq!(budget(20), [5, 4, 4, 2, 5]);
    }

    #[sqlx::test(migrations = false)]
    async fn serve_refuses_unmigrated_and_newer_schemas(pool: PgPool) {
        let e = check_schema(&pool).await.unwrap_err();
        assert!(
            matches!(e, SchemaError::NotMigrated { missing } if missing == MIGRATOR.iter().count()),
            "{e}"
        );
        assert!(e.to_string().contains("run `pubbot migrate`"));
        migrate(&pool).await.unwrap();
        check_schema(&pool).await.unwrap();
        migrate(&pool).await.unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99990101000000, 'future', true, '\\x00', 0)")
            .execute(&pool)
            .await
            .unwrap();
        let e = check_schema(&pool).await.unwrap_err();
        assert!(
            matches!(
                e,
                SchemaError::Newer {
                    version: 99_990_101_000_000
                }
            ),
            "{e}"
        );
    }
}
