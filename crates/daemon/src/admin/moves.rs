//! Moving an app from its database to another (`pubbot app move`; README
//! "Moving an app to another database") while pubbot serves it, without
//! losing a push or sending a reply twice.
//!
//! Before: `[databases.NAME]` and the app's `move_to = "NAME"` are in every
//! replica's configuration (both databases' pipelines then serve the app;
//! its pushes still go to its database). Then [`run`]:
//!
//! 1. Writes `arriving` into the destination's `app_moves` (its pushes
//!    will be stored there undecided: `pipeline::moves`), then `leaving`
//!    into the source's: within [`crate::pipeline::moves::EVERY`] every
//!    replica sends the app's pushes to the destination.
//! 2. Waits `grace` for every replica to have switched, then until the
//!    source has decided every push and settled every reply of the app
//!    (`wait` at most; run it again to go on waiting): the source's
//!    replies all go out before the destination decides anything, so each
//!    user's replies keep the order they wrote.
//! 3. Copies the app's rows: accounts, followers, conversation state,
//!    takeovers, then pushes and replies (new ids, each reply linked to
//!    its push by the R6 key). A push the destination stored meanwhile that
//!    the source had already (a platform retry across the switch) is
//!    marked done there, never decided twice; a later retry finds its key.
//! 4. Marks the move `done` in both: the destination decides the pushes
//!    that waited, in the order they came.
//!
//! After: set the app's `database = "NAME"` and remove `move_to` on every
//! replica (in any order: the source keeps routing the app's pushes to the
//! destination). Not moved: rules (each database has its own: import them
//! first), broadcast schedules, broadcasts, campaigns, menus and media,
//! which the report counts so they can be made again there.

use std::time::Duration;

use sqlx::PgPool;

use crate::config::{ConfigError, Settings, DEFAULT_DATABASE};

/// What a move did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MoveReport {
    /// The database the app left, and the one it is on now.
    pub from: String,
    /// See `from`.
    pub to: String,
    /// Pushes copied.
    pub pushes: i64,
    /// Replies copied.
    pub replies: i64,
    /// Pushes the destination had stored too (retries across the switch),
    /// marked done there.
    pub duplicates: i64,
    /// Rows of accounts, followers, conversation state and takeovers
    /// copied, by table.
    pub state: Vec<(&'static str, u64)>,
    /// Rows of the app left in the source, by table (make them again at
    /// the destination where still wanted).
    pub left_behind: Vec<(&'static str, i64)>,
    /// The move had been done before: nothing was copied this time.
    pub already_done: bool,
}

/// Why a move stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The app is not in `[[apps]]`.
    #[error("app {0:?} is not configured")]
    UnknownApp(String),
    /// The app has no `move_to`.
    #[error("app {0:?} has no move_to: set move_to = \"NAME\" in its [[apps]] on every replica (and restart them) first")]
    NoDestination(String),
    /// The destination holds no rules.
    #[error("database {0} holds no rules: import them there first (pubbot --database {0} rules import FILE)")]
    NoRules(String),
    /// The source still has open work for the app after `wait`.
    #[error("{open} pushes and replies of app {app:?} are still open on database {from} after {secs} s; the app's new pushes wait on {to}. Run the move again to go on waiting")]
    StillOpen {
        /// The app.
        app: String,
        /// Open rows.
        open: i64,
        /// The source.
        from: String,
        /// The destination.
        to: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The configuration names a database that is not there.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A database failed.
    #[error("database {database}: {source}")]
    Db {
        /// Which.
        database: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
}

/// The app's rows with a natural key (app, account, user): copied as they
/// are.
const STATE_TABLES: [&str; 4] = ["accounts", "followers", "conversation_state", "takeovers"];
/// The app's rows not moved (counted in the report).
const LEFT_TABLES: [&str; 5] = [
    "broadcast_schedules",
    "broadcasts",
    "campaigns",
    "menu_items",
    "media",
];
/// Pushes per copied chunk (one transaction each at the destination).
const CHUNK: i64 = 1000;

/// Moves `app` to its `move_to` database (see the module doc). `say` is
/// told each step, for a person watching.
///
/// # Errors
/// [`MoveError`]; every step can be run again.
pub async fn run(
    settings: &Settings,
    app: &str,
    grace: Duration,
    wait: Duration,
    say: impl Fn(&str),
) -> Result<MoveReport, MoveError> {
    let conf = settings
        .apps
        .iter()
        .find(|a| a.key == app)
        .ok_or_else(|| MoveError::UnknownApp(app.to_owned()))?;
    let to = conf
        .move_to
        .clone()
        .ok_or_else(|| MoveError::NoDestination(app.to_owned()))?;
    let from = conf
        .database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let db = |name: &str| {
        let name = name.to_owned();
        move |source| MoveError::Db {
            database: name.clone(),
            source,
        }
    };
    let src = crate::db::connect(&settings.database_named(&from)?)
        .await
        .map_err(db(&from))?;
    let dst = crate::db::connect(&settings.database_named(&to)?)
        .await
        .map_err(db(&to))?;
    let mut report = MoveReport {
        from: from.clone(),
        to: to.clone(),
        ..MoveReport::default()
    };

    let done: Option<String> = sqlx::query_scalar(
        "SELECT state FROM app_moves WHERE app_key = $1 AND direction = 'arriving'",
    )
    .bind(app)
    .fetch_optional(&dst)
    .await
    .map_err(db(&to))?;
    if done.as_deref() == Some("done") {
        report.already_done = true;
        return Ok(report);
    }
    let rules: i64 = sqlx::query_scalar("SELECT count(*) FROM rules")
        .fetch_one(&dst)
        .await
        .map_err(db(&to))?;
    if rules == 0 {
        return Err(MoveError::NoRules(to));
    }

    // 1. Park at the destination, then switch.
    for (pool, direction, other, name) in [
        (&dst, "arriving", &from, &to),
        (&src, "leaving", &to, &from),
    ] {
        sqlx::query(
            "INSERT INTO app_moves (app_key, direction, other_database) VALUES ($1, $2, $3)
             ON CONFLICT (app_key) DO NOTHING",
        )
        .bind(app)
        .bind(direction)
        .bind(other)
        .execute(pool)
        .await
        .map_err(db(name))?;
    }
    say(&format!(
        "app {app}: new pushes go to database {to} (stored, not yet decided)"
    ));

    // 2. Every replica switched; the source's work for the app done.
    tokio::time::sleep(grace).await;
    let started = std::time::Instant::now();
    loop {
        let open = open_rows(&src, app).await.map_err(db(&from))?;
        if open == 0 {
            break;
        }
        if started.elapsed() >= wait {
            return Err(MoveError::StillOpen {
                app: app.to_owned(),
                open,
                from,
                to,
                secs: wait.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(&format!(
        "app {app}: every push decided and every reply settled on database {from}"
    ));

    // 3. Copy.
    for table in STATE_TABLES {
        let n = copy_table(&src, &dst, table, app)
            .await
            .map_err(|e| MoveError::Db {
                database: format!("{from} -> {to} ({table})"),
                source: e,
            })?;
        report.state.push((table, n));
    }
    let mut after = 0_i64;
    loop {
        let chunk = sqlx::query!(
            r#"SELECT coalesce(json_agg(t ORDER BY t.id), '[]'::json) AS "rows!", max(t.id) AS last,
                      min(t.day) AS first_day, max(t.day) AS last_day
                 FROM (SELECT * FROM inbound_messages WHERE app_key = $1 AND id > $2
                        ORDER BY id LIMIT $3) t"#,
            app,
            after,
            CHUNK
        )
        .fetch_one(&src)
        .await
        .map_err(db(&from))?;
        let (Some(last), Some(first_day), Some(last_day)) =
            (chunk.last, chunk.first_day, chunk.last_day)
        else {
            break;
        };
        let replies = sqlx::query_scalar!(
            r#"SELECT coalesce(json_agg(x ORDER BY x.id), '[]'::json) AS "rows!"
                 FROM (SELECT o.*, i.dedup_key AS inbound_dedup_key
                         FROM outbound_messages o
                         JOIN inbound_messages i
                           ON i.app_key = o.app_key AND i.id = o.inbound_id AND i.day = o.day
                        WHERE o.app_key = $1 AND o.inbound_id > $2 AND o.inbound_id <= $3) x"#,
            app,
            after,
            last
        )
        .fetch_one(&src)
        .await
        .map_err(db(&from))?;
        crate::pipeline::days::create(&dst, first_day, last_day)
            .await
            .map_err(db(&to))?;
        let mut tx = dst.begin().await.map_err(db(&to))?;
        let (pushes, duplicates) = crate::pipeline::ingest::moved::copy_in(&mut tx, &chunk.rows)
            .await
            .map_err(db(&to))?;
        let replies = crate::pipeline::outbox::moved::copy_in(&mut tx, &replies)
            .await
            .map_err(db(&to))?;
        tx.commit().await.map_err(db(&to))?;
        report.pushes += pushes;
        report.duplicates += duplicates;
        report.replies += replies;
        after = last;
    }
    // Messages people wrote from the console (no push of their own).
    let staff = sqlx::query_scalar!(
        r#"SELECT coalesce(json_agg(o ORDER BY o.id), '[]'::json) AS "rows!"
             FROM outbound_messages o WHERE app_key = $1 AND inbound_id IS NULL"#,
        app
    )
    .fetch_one(&src)
    .await
    .map_err(db(&from))?;
    let mut tx = dst.begin().await.map_err(db(&to))?;
    report.replies += crate::pipeline::outbox::moved::copy_in(&mut tx, &staff)
        .await
        .map_err(db(&to))?;
    tx.commit().await.map_err(db(&to))?;
    say(&format!(
        "app {app}: copied {} pushes and {} replies ({} pushes stored on both marked done)",
        report.pushes, report.replies, report.duplicates
    ));

    // 4. Done: the destination decides what waited.
    for (pool, name) in [(&dst, &to), (&src, &from)] {
        sqlx::query("UPDATE app_moves SET state = 'done', done_at = now() WHERE app_key = $1")
            .bind(app)
            .execute(pool)
            .await
            .map_err(db(name))?;
    }
    for table in LEFT_TABLES {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE app_key = $1"))
                .bind(app)
                .fetch_one(&src)
                .await
                .map_err(db(&from))?;
        if n > 0 {
            report.left_behind.push((table, n));
        }
    }
    Ok(report)
}

/// The app's pushes not decided and replies not settled.
async fn open_rows(pool: &PgPool, app: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT (SELECT count(*) FROM inbound_messages WHERE app_key = $1 AND status = 'pending')
                + (SELECT count(*) FROM outbound_messages
                    WHERE app_key = $1 AND status IN ('pending', 'sending')) AS "open!""#,
        app
    )
    .fetch_one(pool)
    .await
}

/// Copies the app's rows of `table` (one of [`STATE_TABLES`]: keyed by app,
/// account and user, no ids) as they are; rows the destination has
/// already stay.
async fn copy_table(
    src: &PgPool,
    dst: &PgPool,
    table: &str,
    app: &str,
) -> Result<u64, sqlx::Error> {
    let rows: serde_json::Value = sqlx::query_scalar(&format!(
        "SELECT coalesce(json_agg(t), '[]'::json) FROM {table} t WHERE app_key = $1"
    ))
    .bind(app)
    .fetch_one(src)
    .await?;
    let done = sqlx::query(&format!(
        "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::json)
         ON CONFLICT DO NOTHING"
    ))
    .bind(rows)
    .execute(dst)
    .await?;
    Ok(done.rows_affected())
}
