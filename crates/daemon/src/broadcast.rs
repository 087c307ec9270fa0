//! Broadcasts and campaigns: the one mass send a natural day allows (R11),
//! exactly once across replicas, and messages to every follower in
//! `batchsend` chunks.
//!
//! # Invariants
//!
//! 1. **Once a day, by a row.** `broadcasts` has at most one live row
//!    (`scheduled`, `sending`, `sent`, `unknown`) per (app, account,
//!    platform day) — a unique index, so of two replicas (or a daily
//!    schedule and a one-off) only one insert wins. The platform's day is
//!    its natural day in UTC+8 ([`crate::clock::platform_day`]), whatever
//!    zone a schedule is written in. No leader election: every replica runs
//!    the scheduler.
//! 2. **One claim.** `scheduled -> sending` is an update of a locked row
//!    (`FOR UPDATE SKIP LOCKED`): one replica sends a given row.
//! 3. **Never twice by itself.** `called_at` is set just before the call.
//!    A `sending` row whose lease expired goes back to `scheduled` if it was
//!    never called, and to `unknown` if it was: a second send would
//!    double-post or hit `1007`, so only the operator settles an `unknown`
//!    (`pubbot broadcast resolve ID sent|failed`). It is logged, counted and
//!    shown.
//! 4. **Late, within grace.** A row whose time passed while every replica
//!    was down is sent late within `broadcast.grace_secs`, else `missed`.
//! 5. **Campaign chunks** (<= 100 users) follow the same rules: claimed with
//!    `SKIP LOCKED` by any replica, `called_at` before the call, a chunk
//!    whose call may have been accepted is never sent again (`unknown`), a
//!    chunk refused with a retryable code (`1008`, `1000`, 5xx, no
//!    connection) is retried with backoff.
//! 6. **The clock is injectable** ([`crate::clock::Clock`]); every "is it
//!    due" and "which day" is computed from it and passed to SQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use pubbot_api_client::{Article, McId, MediaRef, Message, UserId};
use pubbot_protocol::limits;
use pubbot_rules::broadcast::{check_broadcast_template, render_broadcast, BroadcastVars};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::{platform_day, Clock};
use crate::send::AppClient;

/// What a broadcast or campaign sends. Text and news titles/descriptions
/// are templates ([`pubbot_rules::broadcast`]) rendered at send time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BroadcastContent {
    /// Text (`sendall.json`, `msgtype = text`).
    Text {
        /// Template.
        text: String,
    },
    /// An image, by URL (`operation/sendall.json`) or uploaded `media_id`
    /// (`sendall.json`).
    Image {
        /// Direct URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
    },
    /// A voice, by URL or uploaded `media_id`.
    Voice {
        /// Direct URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Uploaded material.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
    },
    /// Uploaded news material (`sendall.json`, `mpnews`, R8).
    Mpnews {
        /// The material.
        media_id: String,
    },
    /// Inline news (`operation/sendall.json`, sent as `news`, R8).
    News {
        /// 1 to 10 articles.
        articles: Vec<NewsArticle>,
    },
}

/// An inline article; `title` and `description` are templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewsArticle {
    /// Title (template).
    pub title: String,
    /// Description (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Picture.
    pub picurl: String,
}

fn media(kind: &str, url: &Option<String>, media_id: &Option<String>) -> Result<MediaRef, String> {
    match (
        url.as_deref().map(str::trim),
        media_id.as_deref().map(str::trim),
    ) {
        (Some(u), None) if !u.is_empty() => Ok(MediaRef::Url(u.to_owned())),
        (None, Some(m)) if !m.is_empty() => Ok(MediaRef::Uploaded(m.into())),
        _ => Err(format!(
            "{kind}: give exactly one of url and media_id, not empty"
        )),
    }
}

impl BroadcastContent {
    /// Checks what can be checked before the day (R9 limits of what is not
    /// a template, the templates' variables).
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Text { text } => {
                if text.trim().is_empty() {
                    return Err("text is empty".into());
                }
                check_broadcast_template(text)?;
                if !text.contains("{{") && text.len() > limits::TEXT_MAX_BYTES {
                    return Err(format!(
                        "text is {} bytes, at most {} (R9)",
                        text.len(),
                        limits::TEXT_MAX_BYTES
                    ));
                }
            }
            Self::Image { url, media_id } => {
                media("image", url, media_id)?;
            }
            Self::Voice { url, media_id } => {
                media("voice", url, media_id)?;
            }
            Self::Mpnews { media_id } => {
                if media_id.trim().is_empty() {
                    return Err("mpnews: media_id is empty".into());
                }
            }
            Self::News { articles } => {
                if articles.is_empty() || articles.len() > limits::ARTICLES_MAX {
                    return Err(format!(
                        "news has {} articles, 1 to {} (R9)",
                        articles.len(),
                        limits::ARTICLES_MAX
                    ));
                }
                for (i, a) in articles.iter().enumerate() {
                    if a.title.trim().is_empty() || a.picurl.trim().is_empty() {
                        return Err(format!("article {i}: title and picurl are required"));
                    }
                    check_broadcast_template(&a.title)
                        .map_err(|e| format!("article {i} title: {e}"))?;
                    if let Some(d) = &a.description {
                        check_broadcast_template(d)
                            .map_err(|e| format!("article {i} description: {e}"))?;
                        let w = pubbot_protocol::width(d);
                        if !d.contains("{{") && w > limits::DESCRIPTION_MAX_WIDTH {
                            return Err(format!(
                                "article {i}: description is {w} wide, at most {} (R9)",
                                limits::DESCRIPTION_MAX_WIDTH
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Renders the templates into the message to send.
    ///
    /// # Errors
    /// A render error, or an invalid result.
    pub fn render(&self, vars: &BroadcastVars) -> Result<Message, String> {
        Ok(match self {
            Self::Text { text } => Message::Text(render_broadcast(text, vars)?),
            Self::Image { url, media_id } => Message::Image(media("image", url, media_id)?),
            Self::Voice { url, media_id } => Message::Voice(media("voice", url, media_id)?),
            Self::Mpnews { media_id } => Message::MpNews(media_id.as_str().into()),
            Self::News { articles } => Message::News(
                articles
                    .iter()
                    .map(|a| {
                        Ok(Article {
                            title: render_broadcast(&a.title, vars)?,
                            description: a
                                .description
                                .as_deref()
                                .map(|d| render_broadcast(d, vars))
                                .transpose()?,
                            url: a.url.clone(),
                            picurl: a.picurl.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            ),
        })
    }

    /// Whether a `batchsend` endpoint takes it (campaigns): text, news, and
    /// images/voices by URL.
    pub fn batchable(&self) -> bool {
        match self {
            Self::Text { .. } | Self::News { .. } => true,
            Self::Image { url, .. } | Self::Voice { url, .. } => url.is_some(),
            Self::Mpnews { .. } => false,
        }
    }
}

/// Why a broadcast operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// The platform day is taken (R11): names the broadcast that took it.
    #[error("platform day {day} (UTC+8) of {app_key}/{mcid} is already taken by broadcast #{id} ({by}, {state}); the platform allows one mass send a natural day (R11)")]
    DayTaken {
        /// App.
        app_key: String,
        /// Account.
        mcid: String,
        /// The day.
        day: NaiveDate,
        /// The broadcast holding it.
        id: i64,
        /// What it is (`daily "name"` or `one-off`).
        by: String,
        /// Its state.
        state: String,
    },
    /// The content or schedule is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such broadcast, schedule or campaign.
    #[error("no {0}")]
    NotFound(String),
}

/// A broadcast row (the ledger).
#[derive(Debug, Clone, Serialize)]
pub struct Broadcast {
    /// Id.
    pub id: i64,
    /// The daily schedule that made it, if any.
    pub schedule_id: Option<i64>,
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// The platform day it takes.
    pub platform_day: NaiveDate,
    /// When it is due.
    pub due_at: DateTime<Utc>,
    /// `scheduled`, `sending`, `sent`, `failed`, `unknown`, `missed`,
    /// `cancelled`.
    pub state: String,
    /// The platform's `msg_id`, once sent.
    pub msg_id: Option<String>,
    /// The platform's refusal, or how it ended.
    pub error: Option<String>,
    /// What was sent (rendered).
    pub rendered: Option<serde_json::Value>,
    /// What it sends.
    pub content: serde_json::Value,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A daily schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Id.
    pub id: i64,
    /// App.
    pub app_key: String,
    /// Account.
    pub mcid: String,
    /// Name (unique per account).
    pub name: String,
    /// Local time of day.
    pub time_of_day: NaiveTime,
    /// Its time zone.
    pub timezone: String,
    /// What it sends.
    pub content: serde_json::Value,
    /// Off once cancelled.
    pub enabled: bool,
}

fn parse_tz(name: &str) -> Result<Tz, BroadcastError> {
    name.parse::<Tz>()
        .map_err(|_| BroadcastError::Invalid(format!("unknown time zone {name:?}")))
}

/// The instant `time` happens on local `date` in `tz` (the earlier of an
/// ambiguous time; a time skipped by a DST change moves an hour later).
pub fn local_instant(tz: Tz, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    let naive = date.and_time(time);
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// A daily schedule to add.
#[derive(Debug, Clone)]
pub struct NewSchedule<'a> {
    /// App.
    pub app_key: &'a str,
    /// Account.
    pub mcid: &'a str,
    /// Name, unique per account.
    pub name: &'a str,
    /// Local time of day.
    pub time_of_day: NaiveTime,
    /// Its time zone (IANA name).
    pub timezone: &'a str,
    /// What it sends.
    pub content: &'a BroadcastContent,
}

/// Adds a daily schedule. The next occurrences are added to the ledger by
/// the scheduler (on days no other broadcast took).
///
/// # Errors
/// [`BroadcastError::Invalid`] for a bad time zone or content, or a name
/// taken.
pub async fn schedule_daily(
    pool: &PgPool,
    clock: &dyn Clock,
    new: NewSchedule<'_>,
) -> Result<Schedule, BroadcastError> {
    let NewSchedule {
        app_key,
        mcid,
        name,
        time_of_day,
        timezone,
        content,
    } = new;
    parse_tz(timezone)?;
    content.validate().map_err(BroadcastError::Invalid)?;
    let body = serde_json::to_value(content).map_err(|e| BroadcastError::Invalid(e.to_string()))?;
    let row = sqlx::query!(
        r#"INSERT INTO broadcast_schedules (app_key, mcid, name, time_of_day, timezone, content, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (app_key, mcid, name) DO NOTHING
           RETURNING id"#,
        app_key,
        mcid,
        name,
        time_of_day,
        timezone,
        body,
        clock.now()
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Err(BroadcastError::Invalid(format!(
            "a schedule named {name:?} exists for {app_key}/{mcid}"
        )));
    };
    Ok(Schedule {
        id: row.id,
        app_key: app_key.to_owned(),
        mcid: mcid.to_owned(),
        name: name.to_owned(),
        time_of_day,
        timezone: timezone.to_owned(),
        content: body,
        enabled: true,
    })
}

async fn day_holder(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    day: NaiveDate,
) -> Result<Option<(i64, String, String)>, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT b.id, b.state, s.name AS "name?"
             FROM broadcasts b LEFT JOIN broadcast_schedules s ON s.id = b.schedule_id
            WHERE b.app_key = $1 AND b.mcid = $2 AND b.platform_day = $3
              AND b.state IN ('scheduled', 'sending', 'sent', 'unknown')"#,
        app_key,
        mcid,
        day
    )
    .fetch_optional(pool)
    .await?;
    Ok(r.map(|r| {
        let by = r
            .name
            .map_or_else(|| "one-off".to_owned(), |n| format!("daily {n:?}"));
        (r.id, by, r.state)
    }))
}

/// Adds a one-off broadcast at `at` (now, or later). Refused when its
/// platform day is taken, naming the broadcast that took it.
///
/// # Errors
/// [`BroadcastError::DayTaken`], [`BroadcastError::Invalid`].
pub async fn schedule_once(
    pool: &PgPool,
    app_key: &str,
    mcid: &str,
    at: DateTime<Utc>,
    content: &BroadcastContent,
) -> Result<Broadcast, BroadcastError> {
    content.validate().map_err(BroadcastError::Invalid)?;
    let body = serde_json::to_value(content).map_err(|e| BroadcastError::Invalid(e.to_string()))?;
    let day = platform_day(at);
    let row = sqlx::query!(
        r#"INSERT INTO broadcasts (app_key, mcid, platform_day, due_at, content)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (app_key, mcid, platform_day) WHERE state IN ('scheduled', 'sending', 'sent', 'unknown')
           DO NOTHING
           RETURNING id"#,
        app_key,
        mcid,
        day,
        at,
        body
    )
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => show(pool, r.id).await,
        None => {
            let (id, by, state) = day_holder(pool, app_key, mcid, day).await?.unwrap_or((
                0,
                "another broadcast".into(),
                "?".into(),
            ));
            Err(BroadcastError::DayTaken {
                app_key: app_key.to_owned(),
                mcid: mcid.to_owned(),
                day,
                id,
                by,
                state,
            })
        }
    }
}

/// One broadcast.
///
/// # Errors
/// [`BroadcastError::NotFound`].
pub async fn show(pool: &PgPool, id: i64) -> Result<Broadcast, BroadcastError> {
    let r = sqlx::query_as!(
        Broadcast,
        r#"SELECT id, schedule_id, app_key, mcid, platform_day, due_at, state, msg_id, error,
                  rendered, content, finished_at
             FROM broadcasts WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    r.ok_or_else(|| BroadcastError::NotFound(format!("broadcast #{id}")))
}

/// Broadcasts, newest day first (`limit` of them), optionally of one
/// account.
///
/// # Errors
/// Database errors.
pub async fn history(
    pool: &PgPool,
    mcid: Option<&str>,
    limit: i64,
) -> Result<Vec<Broadcast>, BroadcastError> {
    Ok(sqlx::query_as!(
        Broadcast,
        r#"SELECT id, schedule_id, app_key, mcid, platform_day, due_at, state, msg_id, error,
                  rendered, content, finished_at
             FROM broadcasts WHERE $1::text IS NULL OR mcid = $1
            ORDER BY platform_day DESC, id DESC LIMIT $2"#,
        mcid,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// The daily schedules in force.
///
/// # Errors
/// Database errors.
pub async fn schedules(pool: &PgPool) -> Result<Vec<Schedule>, BroadcastError> {
    Ok(sqlx::query_as!(
        Schedule,
        r#"SELECT id, app_key, mcid, name, time_of_day, timezone, content, enabled
             FROM broadcast_schedules WHERE cancelled_at IS NULL ORDER BY id"#
    )
    .fetch_all(pool)
    .await?)
}

/// Cancels a broadcast not yet sending, or (with `schedule`) a daily
/// schedule and its scheduled occurrences.
///
/// # Errors
/// [`BroadcastError::NotFound`], or a broadcast past `scheduled`.
pub async fn cancel(
    pool: &PgPool,
    clock: &dyn Clock,
    id: i64,
    schedule: bool,
) -> Result<u64, BroadcastError> {
    let now = clock.now();
    if schedule {
        let mut tx = pool.begin().await?;
        let n = sqlx::query!(
            "UPDATE broadcast_schedules SET enabled = false, cancelled_at = $2 WHERE id = $1 AND cancelled_at IS NULL",
            id,
            now
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(BroadcastError::NotFound(format!("schedule #{id}")));
        }
        let m = sqlx::query!(
            "UPDATE broadcasts SET state = 'cancelled', finished_at = $2 WHERE schedule_id = $1 AND state = 'scheduled'",
            id,
            now
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        return Ok(m);
    }
    let n = sqlx::query!(
        "UPDATE broadcasts SET state = 'cancelled', finished_at = $2 WHERE id = $1 AND state = 'scheduled'",
        id,
        now
    )
    .execute(pool)
    .await?
    .rows_affected();
    if n == 0 {
        let b = show(pool, id).await?;
        return Err(BroadcastError::Invalid(format!(
            "broadcast #{id} is {}, only a scheduled one can be cancelled",
            b.state
        )));
    }
    Ok(n)
}

/// The operator settles an `unknown` broadcast (invariant 3).
///
/// # Errors
/// [`BroadcastError::Invalid`] unless the broadcast is `unknown`.
pub async fn resolve(
    pool: &PgPool,
    clock: &dyn Clock,
    id: i64,
    sent: bool,
) -> Result<(), BroadcastError> {
    let state = if sent { "sent" } else { "failed" };
    let n = sqlx::query!(
        "UPDATE broadcasts SET state = $2, finished_at = $3,
                error = coalesce(error, '') || ' (resolved by the operator)'
          WHERE id = $1 AND state = 'unknown'",
        id,
        state,
        clock.now()
    )
    .execute(pool)
    .await?
    .rows_affected();
    if n == 0 {
        let b = show(pool, id).await?;
        return Err(BroadcastError::Invalid(format!(
            "broadcast #{id} is {}; only an unknown one is resolved",
            b.state
        )));
    }
    Ok(())
}

// ----- campaigns ---------------------------------------------------------

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
    content.validate().map_err(BroadcastError::Invalid)?;
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

// ----- the scheduler -----------------------------------------------------

/// The scheduler every replica runs: adds the daily schedules' occurrences
/// to the ledger, marks missed ones, recovers abandoned sends, and sends
/// what is due — broadcasts and campaign chunks.
pub struct Scheduler {
    /// Housekeeping pool.
    pub pool: PgPool,
    /// Clients and rate limits by app.
    pub apps: Arc<HashMap<String, AppClient>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Lease identity.
    pub worker_id: String,
    /// How late a broadcast may still go out.
    pub grace: Duration,
    /// How long a claim holds a row (longer than a call).
    pub lease: Duration,
    /// How often it looks.
    pub tick: Duration,
    /// Campaign chunk retry backoff, first and longest.
    pub backoff: (Duration, Duration),
    /// Tries of a campaign chunk.
    pub max_attempts: i32,
}

struct Claimed {
    id: i64,
    app_key: String,
    mcid: String,
    platform_day: NaiveDate,
    content: Json<BroadcastContent>,
    timezone: Option<String>,
}

struct ClaimedChunk {
    campaign_id: i64,
    seq: i32,
    users: Vec<String>,
    attempts: i32,
    app_key: String,
    mcid: String,
    content: Json<BroadcastContent>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Scheduler {
    /// Runs until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "broadcast scheduler round failed; trying again");
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// One round: materialize, mark missed, recover, send what is due.
    ///
    /// # Errors
    /// Database errors.
    pub async fn round(&self) -> Result<(), sqlx::Error> {
        self.materialize().await?;
        self.mark_missed().await?;
        self.recover().await?;
        while let Some(b) = self.claim().await? {
            self.send(b).await;
        }
        while let Some(c) = self.claim_chunk().await? {
            self.send_chunk(c).await;
        }
        Ok(())
    }

    /// Adds each enabled daily schedule's occurrences from now to a day
    /// ahead (and back to the grace) to the ledger; a day another broadcast
    /// took is skipped (invariant 1). Occurrences before the schedule
    /// existed are not added.
    async fn materialize(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let rows = sqlx::query!(
            r#"SELECT id, app_key, mcid, name, time_of_day, timezone, content, created_at
                 FROM broadcast_schedules WHERE enabled AND cancelled_at IS NULL"#
        )
        .fetch_all(&self.pool)
        .await?;
        for s in rows {
            let Ok(tz) = s.timezone.parse::<Tz>() else {
                continue;
            };
            let today = now.with_timezone(&tz).date_naive();
            for offset in -1..=1i64 {
                let date = today + chrono::Duration::days(offset);
                let Some(at) = local_instant(tz, date, s.time_of_day) else {
                    continue;
                };
                if at < s.created_at || at < now - grace || at > now + chrono::Duration::days(1) {
                    continue;
                }
                let day = platform_day(at);
                let added = sqlx::query!(
                    r#"INSERT INTO broadcasts (schedule_id, app_key, mcid, platform_day, due_at, content)
                       SELECT $1, $2, $3, $4, $5, $6
                        WHERE NOT EXISTS (SELECT 1 FROM broadcasts
                                           WHERE schedule_id = $1 AND due_at = $5)
                       ON CONFLICT (app_key, mcid, platform_day) WHERE state IN ('scheduled', 'sending', 'sent', 'unknown')
                       DO NOTHING"#,
                    s.id,
                    s.app_key,
                    s.mcid,
                    day,
                    at,
                    s.content
                )
                .execute(&self.pool)
                .await?
                .rows_affected();
                if added > 0 {
                    tracing::info!(schedule = %s.name, app_key = %s.app_key, mcid = %s.mcid, %day, due_at = %at, "daily broadcast scheduled");
                }
            }
        }
        Ok(())
    }

    async fn mark_missed(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let cutoff =
            now - chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let missed = sqlx::query!(
            r#"UPDATE broadcasts SET state = 'missed', finished_at = $2,
                      error = 'its time passed while no replica was up (broadcast.grace_secs)'
                WHERE state = 'scheduled' AND due_at < $1
            RETURNING id, app_key, mcid"#,
            cutoff,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for m in missed {
            tracing::warn!(broadcast = m.id, app_key = %m.app_key, mcid = %m.mcid, "broadcast missed");
            metrics::counter!("pubbot_broadcasts_total", "app_key" => m.app_key, "mcid" => m.mcid, "state" => "missed").increment(1);
        }
        Ok(())
    }

    /// Invariant 3 (and 5 for chunks).
    async fn recover(&self) -> Result<(), sqlx::Error> {
        let now = self.clock.now();
        let unknown = sqlx::query!(
            r#"UPDATE broadcasts SET
                      state = CASE WHEN called_at IS NULL THEN 'scheduled' ELSE 'unknown' END,
                      error = CASE WHEN called_at IS NULL THEN error
                                   ELSE 'interrupted during the sendall call by ' || coalesce(lease_owner, '?')
                                        || '; it may have been sent: resolve it (pubbot broadcast resolve)' END,
                      -- An unknown row keeps its owner: a process that did
                      -- send it may still record `sent` when it can.
                      lease_owner = CASE WHEN called_at IS NULL THEN NULL ELSE lease_owner END,
                      lease_until = NULL
                WHERE state = 'sending' AND lease_until < $1
            RETURNING id, app_key, mcid, state"#,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for u in unknown {
            if u.state == "unknown" {
                tracing::error!(broadcast = u.id, app_key = %u.app_key, mcid = %u.mcid, "broadcast interrupted mid-call: unknown whether it was sent; not sent again (pubbot broadcast resolve)");
                metrics::counter!("pubbot_broadcasts_total", "app_key" => u.app_key, "mcid" => u.mcid, "state" => "unknown").increment(1);
            }
        }
        let chunks = sqlx::query!(
            r#"UPDATE campaign_chunks SET
                      state = CASE WHEN called_at IS NULL THEN 'pending' ELSE 'unknown' END,
                      attempts = CASE WHEN called_at IS NULL THEN attempts - 1 ELSE attempts END,
                      error = CASE WHEN called_at IS NULL THEN error
                                   ELSE 'interrupted during the batchsend call; it may have been sent, not sent again' END,
                      lease_owner = NULL, lease_until = NULL
                WHERE state = 'sending' AND lease_until < $1
            RETURNING campaign_id, seq, state"#,
            now
        )
        .fetch_all(&self.pool)
        .await?;
        for c in chunks {
            if c.state == "unknown" {
                tracing::error!(
                    campaign = c.campaign_id,
                    chunk = c.seq,
                    "campaign chunk interrupted mid-call: not sent again"
                );
                metrics::counter!("pubbot_campaign_chunks_total", "result" => "unknown")
                    .increment(1);
            }
        }
        // A campaign whose last chunk ended here (recovered as unknown) is
        // done too.
        sqlx::query!(
            "UPDATE campaigns m SET state = 'done', finished_at = $1
              WHERE state = 'running'
                AND NOT EXISTS (SELECT 1 FROM campaign_chunks k
                                 WHERE k.campaign_id = m.id AND k.state IN ('pending', 'sending'))",
            now
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let now = self.clock.now();
        let earliest =
            now - chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::hours(1));
        let lease_until =
            now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(1));
        sqlx::query_as!(
            Claimed,
            r#"UPDATE broadcasts b SET state = 'sending', lease_owner = $3, lease_until = $4
                 FROM (SELECT id FROM broadcasts
                        WHERE state = 'scheduled' AND due_at <= $1 AND due_at >= $2
                        ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) c
                WHERE b.id = c.id
            RETURNING b.id, b.app_key, b.mcid, b.platform_day, b.content AS "content: Json<BroadcastContent>",
                      (SELECT timezone FROM broadcast_schedules s WHERE s.id = b.schedule_id) AS "timezone?""#,
            now,
            earliest,
            self.worker_id,
            lease_until
        )
        .fetch_optional(&self.pool)
        .await
    }

    async fn vars(&self, app_key: &str, mcid: &str, tz: Tz) -> Result<BroadcastVars, sqlx::Error> {
        let followers = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM followers WHERE app_key = $1 AND mcid = $2"#,
            app_key,
            mcid
        )
        .fetch_one(&self.pool)
        .await?;
        let now = self.clock.now();
        let local = now.with_timezone(&tz);
        Ok(BroadcastVars {
            date: local.format("%Y-%m-%d").to_string(),
            weekday: local.format("%a").to_string().to_lowercase(),
            time: local.format("%H:%M").to_string(),
            followers,
            account: mcid.to_owned(),
            app_key: app_key.to_owned(),
            platform_day: platform_day(now).to_string(),
        })
    }

    async fn finish(
        &self,
        id: i64,
        state: &str,
        msg_id: Option<String>,
        error: Option<String>,
        rendered: Option<serde_json::Value>,
    ) {
        let (msg_id, error, rendered) = (&msg_id, &error, &rendered);
        crate::db::until_recorded("broadcast", || {
            sqlx::query!(
                "UPDATE broadcasts SET state = $2, msg_id = $3, error = $4, rendered = coalesce($5, rendered),
                        finished_at = $6, lease_owner = NULL, lease_until = NULL
                  WHERE id = $1 AND lease_owner = $7 AND state IN ('sending', 'unknown')",
                id,
                state,
                msg_id.as_deref(),
                error.as_deref(),
                rendered.as_ref(),
                self.clock.now(),
                self.worker_id
            )
            .execute(&self.pool)
        })
        .await;
    }

    async fn send(&self, b: Claimed) {
        let tz = b
            .timezone
            .as_deref()
            .and_then(|t| t.parse::<Tz>().ok())
            .unwrap_or(chrono_tz::Asia::Shanghai);
        let message = match self.vars(&b.app_key, &b.mcid, tz).await {
            Ok(vars) => b.content.0.render(&vars),
            Err(e) => {
                // Not called yet: the lease expires and it is claimed again.
                tracing::warn!(broadcast = b.id, error = %e, "reading the followers count failed");
                return;
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                self.finish(b.id, "failed", None, Some(e), None).await;
                metrics::counter!("pubbot_broadcasts_total", "app_key" => b.app_key, "mcid" => b.mcid, "state" => "failed").increment(1);
                return;
            }
        };
        let rendered = serde_json::to_value(&message).ok();
        let Some(app) = self.apps.get(&b.app_key) else {
            self.finish(
                b.id,
                "failed",
                None,
                Some(format!("app {:?} is not configured", b.app_key)),
                rendered,
            )
            .await;
            return;
        };
        app.limiter.until_ready().await;
        // Invariant 3: from here on, a crash leaves `unknown`.
        let marked = sqlx::query!(
            "UPDATE broadcasts SET called_at = $2, rendered = $3 WHERE id = $1 AND lease_owner = $4 AND state = 'sending'",
            b.id,
            self.clock.now(),
            rendered,
            self.worker_id
        )
        .execute(&self.pool)
        .await;
        if !matches!(marked, Ok(r) if r.rows_affected() == 1) {
            tracing::warn!(
                broadcast = b.id,
                "could not mark the broadcast as called; not calling (claimed again later)"
            );
            return;
        }
        let result = app
            .client
            .broadcast(&McId::from(b.mcid.as_str()), &message)
            .await;
        let (state, msg_id, error) = match result {
            Ok(id) => ("sent", Some(id.to_string()), None),
            Err(e) if e.is_retryable() && e.is_ambiguous() => (
                "unknown",
                None,
                Some(format!(
                    "{e}; it may have been sent: resolve it (pubbot broadcast resolve)"
                )),
            ),
            // R10/R11: 1007 (the day taken at the platform), 1002, 1003,
            // 1004 — and retryable errors too: the day's one send is not
            // retried blindly; the operator may schedule it again.
            Err(e) => ("failed", None, Some(e.to_string())),
        };
        match state {
            "sent" => {
                tracing::info!(broadcast = b.id, app_key = %b.app_key, mcid = %b.mcid, day = %b.platform_day, msg_id = ?msg_id, "broadcast sent")
            }
            _ => {
                tracing::warn!(broadcast = b.id, app_key = %b.app_key, mcid = %b.mcid, day = %b.platform_day, state, error = ?error, "broadcast not sent")
            }
        }
        metrics::counter!("pubbot_broadcasts_total", "app_key" => b.app_key.clone(), "mcid" => b.mcid.clone(), "state" => state).increment(1);
        self.finish(b.id, state, msg_id, error, None).await;
    }

    async fn claim_chunk(&self) -> Result<Option<ClaimedChunk>, sqlx::Error> {
        let now = self.clock.now();
        let lease_until =
            now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(1));
        sqlx::query_as!(
            ClaimedChunk,
            r#"WITH c AS (
                 UPDATE campaign_chunks k SET state = 'sending', lease_owner = $2, lease_until = $3,
                        attempts = attempts + 1, called_at = NULL
                   FROM (SELECT campaign_id, seq FROM campaign_chunks
                          WHERE state = 'pending' AND next_attempt_at <= $1
                          ORDER BY next_attempt_at, campaign_id, seq LIMIT 1 FOR UPDATE SKIP LOCKED) s
                  WHERE k.campaign_id = s.campaign_id AND k.seq = s.seq
                 RETURNING k.campaign_id, k.seq, k.users, k.attempts)
               SELECT c.campaign_id AS "campaign_id!", c.seq AS "seq!", c.users AS "users!", c.attempts AS "attempts!",
                      m.app_key, m.mcid, m.content AS "content: Json<BroadcastContent>"
                 FROM c JOIN campaigns m ON m.id = c.campaign_id"#,
            now,
            self.worker_id,
            lease_until
        )
        .fetch_optional(&self.pool)
        .await
    }

    async fn send_chunk(&self, c: ClaimedChunk) {
        let tz = chrono_tz::Asia::Shanghai;
        let message = match self.vars(&c.app_key, &c.mcid, tz).await {
            Ok(vars) => c.content.0.render(&vars),
            Err(e) => {
                tracing::warn!(campaign = c.campaign_id, error = %e, "reading the followers count failed");
                return;
            }
        };
        let outcome: (&str, Option<String>, Duration) = match (message, self.apps.get(&c.app_key)) {
            (Err(e), _) => ("failed", Some(e), Duration::ZERO),
            (_, None) => (
                "failed",
                Some(format!("app {:?} is not configured", c.app_key)),
                Duration::ZERO,
            ),
            (Ok(message), Some(app)) => {
                app.limiter.until_ready().await;
                let marked = sqlx::query!(
                    "UPDATE campaign_chunks SET called_at = $3 WHERE campaign_id = $1 AND seq = $2 AND lease_owner = $4 AND state = 'sending'",
                    c.campaign_id,
                    c.seq,
                    self.clock.now(),
                    self.worker_id
                )
                .execute(&self.pool)
                .await;
                if !matches!(marked, Ok(r) if r.rows_affected() == 1) {
                    return;
                }
                let users: Vec<UserId> = c.users.iter().map(|u| UserId::from(u.as_str())).collect();
                let result = match app
                    .client
                    .send_to_many(&McId::from(c.mcid.as_str()), &users, &message)
                    .await
                {
                    Ok(chunks) => chunks
                        .into_iter()
                        .map(|o| o.result)
                        .find(Result::is_err)
                        .unwrap_or(Ok(())),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => ("sent", None, Duration::ZERO),
                    Err(e) if e.is_retryable() && e.is_ambiguous() => (
                        "unknown",
                        Some(format!("{e}; it may have been sent, not sent again")),
                        Duration::ZERO,
                    ),
                    Err(e) if e.is_retryable() && c.attempts < self.max_attempts => {
                        let exp = self
                            .backoff
                            .0
                            .saturating_mul(1u32 << c.attempts.clamp(1, 16).saturating_sub(1))
                            .min(self.backoff.1);
                        ("pending", Some(e.to_string()), exp)
                    }
                    Err(e) => ("failed", Some(e.to_string()), Duration::ZERO),
                }
            }
        };
        let (state, error, delay) = outcome;
        metrics::counter!("pubbot_campaign_chunks_total", "result" => state).increment(1);
        if state != "pending" {
            metrics::counter!("pubbot_campaign_users_total", "result" => state)
                .increment(c.users.len() as u64);
        }
        crate::db::until_recorded("campaign chunk", || async {
            let now = self.clock.now();
            {
                let mut tx = self.pool.begin().await?;
                sqlx::query!(
                    "UPDATE campaign_chunks SET state = $3, error = $4, lease_owner = NULL, lease_until = NULL,
                            sent_at = CASE WHEN $3 = 'sent' THEN $5::timestamptz END,
                            next_attempt_at = $5::timestamptz + make_interval(secs => $6),
                            called_at = CASE WHEN $3 = 'pending' THEN NULL ELSE called_at END
                      WHERE campaign_id = $1 AND seq = $2 AND lease_owner = $7 AND state = 'sending'",
                    c.campaign_id,
                    c.seq,
                    state,
                    error,
                    now,
                    secs(delay),
                    self.worker_id
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query!(
                    "UPDATE campaigns SET state = 'done', finished_at = $2
                      WHERE id = $1 AND state = 'running'
                        AND NOT EXISTS (SELECT 1 FROM campaign_chunks WHERE campaign_id = $1 AND state IN ('pending', 'sending'))",
                    c.campaign_id,
                    now
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
        })
        .await;
        tracing::info!(campaign = c.campaign_id, chunk = c.seq, users = c.users.len(), state, error = ?error, "campaign chunk");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_checked_before_the_day() {
        let ok = BroadcastContent::Text {
            text: "Good {{ weekday }}!".into(),
        };
        assert!(ok.validate().is_ok());
        let long = BroadcastContent::Text {
            text: "x".repeat(2001),
        };
        assert!(long.validate().unwrap_err().contains("2001 bytes"));
        let both = BroadcastContent::Image {
            url: Some("http://x/p.png".into()),
            media_id: Some("m".into()),
        };
        assert!(both.validate().unwrap_err().contains("exactly one"));
        let news = BroadcastContent::News { articles: vec![] };
        assert!(news.validate().unwrap_err().contains("0 articles"));
        let unknown = BroadcastContent::Text {
            text: "hi {{ user }}".into(),
        };
        assert!(unknown.validate().unwrap_err().contains("user"));
        assert!(!BroadcastContent::Mpnews {
            media_id: "m".into()
        }
        .batchable());
    }

    #[test]
    fn a_schedule_in_another_zone_falls_on_the_platform_day_it_falls_on() {
        // 00:30 in Berlin (UTC+1 in November) is 07:30 in Shanghai, the
        // same day; 23:30 in New York (UTC-5) is 12:30 the next day there.
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let t = NaiveTime::from_hms_opt(0, 30, 0).unwrap();
        let at = local_instant(chrono_tz::Europe::Berlin, d, t).unwrap();
        assert_eq!(platform_day(at).to_string(), "2026-11-26");
        let t = NaiveTime::from_hms_opt(23, 30, 0).unwrap();
        let at = local_instant(chrono_tz::America::New_York, d, t).unwrap();
        assert_eq!(platform_day(at).to_string(), "2026-11-27");
        // A time skipped by a DST change happens an hour later.
        let spring = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap();
        let skipped = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        let at = local_instant(chrono_tz::Europe::Berlin, spring, skipped).unwrap();
        assert_eq!(at.to_rfc3339(), "2026-03-29T01:30:00+00:00");
    }
}
