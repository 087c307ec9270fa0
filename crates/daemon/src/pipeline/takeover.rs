//! Human takeover: a person holds a user's conversation, and while they do
//! the bot stays silent for that user. Staff messages go out through the
//! outbox like any reply ([`crate::pipeline::outbox::enqueue_staff`]):
//! ordered after every reply already planned for the user, rate limited,
//! retried and counted by the same senders.
//!
//! # Who writes `takeovers`
//!
//! This module, and no other. A hold is live while it exists and its
//! `last_activity_at` (set by a hold and by every staff message) is newer
//! than `console.takeover_idle_secs`; an expired hold is as good as
//! released (the next hold replaces it).
//!
//! # How the bot stays silent
//!
//! Ingest stores a push of a user with a hold row undecided (never decided
//! at receipt: one index probe in its statement), so every such push goes
//! through a decide worker, which checks [`held`] in its transaction and
//! plans no reply and no state change for a live hold. Follow events are
//! still recorded.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Who holds a conversation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hold {
    /// The console user holding it.
    pub held_by: String,
    /// Since when.
    pub since: DateTime<Utc>,
    /// The last hold or staff message: the bot resumes `idle` after it.
    pub last_activity_at: DateTime<Utc>,
}

/// Takes (or renews) the hold of a conversation for `staff`.
///
/// # Errors
/// The database.
pub async fn hold(
    conn: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &str,
    user_id: &str,
    staff: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO takeovers (app_key, mcid, user_id, held_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_key, mcid, user_id) DO UPDATE
            SET held_by = EXCLUDED.held_by, last_activity_at = now(),
                since = CASE WHEN takeovers.held_by = EXCLUDED.held_by THEN takeovers.since ELSE now() END",
        app_key,
        mcid,
        user_id,
        staff
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives a conversation back to the bot. Returns whether it was held.
///
/// # Errors
/// The database.
pub async fn release(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    user_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM takeovers WHERE app_key = $1 AND mcid = $2 AND user_id = $3",
        app_key,
        mcid,
        user_id
    )
    .execute(pool)
    .await?
    .rows_affected()
        > 0)
}

/// The live hold of a conversation, if any.
///
/// # Errors
/// The database.
pub async fn holder(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    user_id: &str,
    idle: Duration,
) -> Result<Option<Hold>, sqlx::Error> {
    sqlx::query_as!(
        Hold,
        "SELECT held_by, since, last_activity_at FROM takeovers
          WHERE app_key = $1 AND mcid = $2 AND user_id = $3
            AND last_activity_at > now() - make_interval(secs => $4)",
        app_key,
        mcid,
        user_id,
        idle.as_secs_f64()
    )
    .fetch_optional(pool)
    .await
}

/// Which of the conversations `(apps[i], mcids[i], users[i])` have a live
/// hold (the decide worker, in its transaction).
///
/// # Errors
/// The database.
pub(crate) async fn held(
    conn: &mut sqlx::PgConnection,
    apps: &[String],
    mcids: &[String],
    users: &[String],
    idle: Duration,
) -> Result<HashSet<(String, String, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT t.app_key, t.mcid, t.user_id FROM takeovers t
           JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(a, m, u)
             ON t.app_key = k.a AND t.mcid = k.m AND t.user_id = k.u
          WHERE t.last_activity_at > now() - make_interval(secs => $4)",
        apps,
        mcids,
        users,
        idle.as_secs_f64()
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|r| (r.app_key, r.mcid, r.user_id))
    .collect())
}
