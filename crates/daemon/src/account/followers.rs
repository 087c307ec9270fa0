//! Followers: the table kept from subscribe/unsubscribe events, read for
//! the CLI, and changed through the platform's subscribe API
//! (`/mc/subscribe.json`, `/mc/unsubscribe.json`, 50 users a call, R9),
//! which pushes no event — so the table is updated here, chunk by chunk,
//! for the chunks the platform accepted.

use pubbot_api_client::{Client, McId, UserId};
use serde::Serialize;
use sqlx::PgPool;

use super::AccountError;

/// One follower.
#[derive(Debug, Clone, Serialize)]
pub struct Follower {
    /// The user.
    pub user_id: String,
    /// Since when (the subscribe event, or the API call).
    pub followed_at: chrono::DateTime<chrono::Utc>,
}

/// How many followers the account has.
///
/// # Errors
/// Database errors.
pub async fn count(pool: &PgPool, app_key: &str, mcid: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM followers WHERE app_key = $1 AND mcid = $2"#,
        app_key,
        mcid
    )
    .fetch_one(pool)
    .await
}

/// The followers, by user id.
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    limit: i64,
) -> Result<Vec<Follower>, sqlx::Error> {
    sqlx::query_as!(
        Follower,
        "SELECT user_id, followed_at FROM followers WHERE app_key = $1 AND mcid = $2 ORDER BY user_id LIMIT $3",
        app_key,
        mcid,
        limit
    )
    .fetch_all(pool)
    .await
}

/// What a subscribe or unsubscribe run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changed {
    /// Users in chunks the platform accepted (and the table now says so).
    pub done: usize,
    /// Users in chunks the platform refused, with the reason.
    pub failed: Vec<(Vec<String>, String)>,
}

/// Follows (`follow`) or unfollows `users` through the platform's API, in
/// chunks of 50, and updates the table for each accepted chunk.
///
/// # Errors
/// Database errors, or no users; a refused chunk is reported in
/// [`Changed::failed`].
pub async fn subscribe(
    pool: &PgPool,
    client: &Client,
    app_key: &str,
    mcid: &str,
    users: &[String],
    follow: bool,
) -> Result<Changed, AccountError> {
    let ids: Vec<UserId> = users.iter().map(|u| UserId::from(u.as_str())).collect();
    let outcomes = client
        .subscribe_many(&McId::from(mcid), &ids, follow)
        .await
        .map_err(AccountError::platform(if follow {
            "subscribing"
        } else {
            "unsubscribing"
        }))?;
    let mut changed = Changed::default();
    let mut at = 0;
    for o in outcomes {
        let chunk: Vec<String> = users[at..at + o.users.len()].to_vec();
        at += o.users.len();
        match o.result {
            Ok(()) => {
                if follow {
                    sqlx::query!(
                        "INSERT INTO followers (app_key, mcid, user_id)
                         SELECT $1, $2, u FROM UNNEST($3::text[]) AS u ON CONFLICT DO NOTHING",
                        app_key,
                        mcid,
                        &chunk
                    )
                    .execute(pool)
                    .await?;
                } else {
                    sqlx::query!(
                        "DELETE FROM followers WHERE app_key = $1 AND mcid = $2 AND user_id = ANY($3)",
                        app_key,
                        mcid,
                        &chunk
                    )
                    .execute(pool)
                    .await?;
                }
                changed.done += chunk.len();
            }
            Err(e) => changed.failed.push((chunk, e.to_string())),
        }
    }
    Ok(changed)
}

/// Reads user ids from a file: one per line (or the first CSV column);
/// blank lines and `#` comments are skipped.
///
/// # Errors
/// The file cannot be read, or holds no user.
pub fn read_users(path: &std::path::Path) -> Result<Vec<String>, AccountError> {
    let text = std::fs::read_to_string(path).map_err(AccountError::read(path))?;
    let users: Vec<String> = text
        .lines()
        .map(|l| l.split(',').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "user_id")
        .map(str::to_owned)
        .collect();
    if users.is_empty() {
        return Err(AccountError::Invalid(format!(
            "{} holds no user ids",
            path.display()
        )));
    }
    Ok(users)
}

/// Follow and unfollow events (app, account, user, followed) decided in the
/// caller's transaction, applied in key order so that two transactions
/// never wait on each other in opposite orders.
///
/// # Errors
/// Database errors.
pub async fn record_events(
    tx: &mut sqlx::PgConnection,
    events: &mut [(String, String, String, bool)],
) -> Result<(), sqlx::Error> {
    events.sort();
    for (app, mcid, user, follow) in events.iter() {
        if *follow {
            sqlx::query!(
                    "INSERT INTO followers (app_key, mcid, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    app,
                    mcid,
                    user
                )
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query!(
                "DELETE FROM followers WHERE app_key = $1 AND mcid = $2 AND user_id = $3",
                app,
                mcid,
                user
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
