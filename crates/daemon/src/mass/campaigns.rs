//! Campaigns: a message to every follower (or a list of users) in
//! `batchsend` chunks of at most 100 users (R9), sent by the scheduler.

use std::collections::HashMap;

use pubbot_protocol::limits;
use serde::Serialize;
use sqlx::PgPool;

use crate::clock::Clock;
use crate::mass::*;

/// A campaign's progress.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignStatus {
    /// Id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// `running`, `done`, `cancelled`.
    pub state: String,
    /// Recipients.
    pub users: i32,
    /// Chunks by state.
    pub chunks: HashMap<String, i64>,
    /// Users by the state of their chunk.
    pub users_by_state: HashMap<String, i64>,
}

/// Starts a campaign: to `users`, or (None) every tracked follower of the
/// account, in chunks of at most 100 (R9), snapshotted now.
///
/// # Errors
/// [`BroadcastError::Invalid`] for content a batch endpoint does not take,
/// or no recipients.
pub async fn start_campaign(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    content: &BroadcastContent,
    users: Option<Vec<String>>,
) -> Result<(i64, usize), BroadcastError> {
    content.validate()?;
    if !content.batchable() {
        return Err(BroadcastError::Invalid(
            "a campaign goes out by batchsend: text, news, or an image/voice by url (not uploaded media)".into(),
        ));
    }
    let body = serde_json::to_value(content).map_err(|e| BroadcastError::Invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let (list, source) = match users {
        Some(mut u) => {
            u.retain(|s| !s.trim().is_empty());
            u.sort();
            u.dedup();
            (u, "file")
        }
        None => (
            sqlx::query_scalar!(
                "SELECT user_id FROM followers WHERE app_key = $1 AND mcid = $2 ORDER BY user_id",
                app_key,
                mcid
            )
            .fetch_all(&mut *tx)
            .await?,
            "followers",
        ),
    };
    if list.is_empty() {
        return Err(BroadcastError::Invalid(format!(
            "no recipients ({source} of {app_key}/{mcid} is empty)"
        )));
    }
    let id = sqlx::query_scalar!(
        "INSERT INTO campaigns (app_key, mcid, content, source, users) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        app_key,
        mcid,
        body,
        source,
        i32::try_from(list.len()).unwrap_or(i32::MAX)
    )
    .fetch_one(&mut *tx)
    .await?;
    let chunks: Vec<Vec<String>> = list
        .chunks(limits::BATCH_MAX_USERS)
        .map(<[String]>::to_vec)
        .collect();
    for (seq, chunk) in chunks.iter().enumerate() {
        sqlx::query!(
            "INSERT INTO campaign_chunks (campaign_id, seq, users) VALUES ($1, $2, $3)",
            id,
            i32::try_from(seq).unwrap_or(i32::MAX),
            chunk
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((id, chunks.len()))
}

/// A campaign's progress.
///
/// # Errors
/// [`BroadcastError::NotFound`].
pub async fn campaign_status(pool: &PgPool, id: i64) -> Result<CampaignStatus, BroadcastError> {
    let c = sqlx::query!(
        "SELECT id, app_key, mcid, state, users FROM campaigns WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| BroadcastError::NotFound(format!("campaign #{id}")))?;
    let rows = sqlx::query!(
        r#"SELECT state, count(*) AS "n!", coalesce(sum(cardinality(users)), 0)::int8 AS "u!"
             FROM campaign_chunks WHERE campaign_id = $1 GROUP BY state"#,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(CampaignStatus {
        id: c.id,
        app_key: c.app_key,
        mcid: c.mcid,
        state: c.state,
        users: c.users,
        chunks: rows.iter().map(|r| (r.state.clone(), r.n)).collect(),
        users_by_state: rows.iter().map(|r| (r.state.clone(), r.u)).collect(),
    })
}

/// Cancels the chunks not yet sent.
///
/// # Errors
/// [`BroadcastError::NotFound`].
pub async fn cancel_campaign(
    pool: &PgPool,
    clock: &dyn Clock,
    id: i64,
) -> Result<u64, BroadcastError> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query!(
        "UPDATE campaigns SET state = 'cancelled', finished_at = $2 WHERE id = $1 AND state = 'running'",
        id,
        clock.now()
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(BroadcastError::NotFound(format!("running campaign #{id}")));
    }
    let m = sqlx::query!(
        "UPDATE campaign_chunks SET state = 'cancelled' WHERE campaign_id = $1 AND state = 'pending'",
        id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(m)
}
