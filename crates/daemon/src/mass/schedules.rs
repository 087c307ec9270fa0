//! The broadcast ledger and the daily schedules that feed it: one live row
//! a platform day (invariant 1 of [`crate::mass`]).

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::PgPool;

use crate::clock::{platform_day, Clock};
use crate::mass::days;
use crate::mass::*;

/// Why a broadcast operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    /// The database failed.
    #[error("database")]
    Db(#[from] sqlx::Error),
    /// The platform day is taken (R11): names the broadcast that took it.
    #[error(
        "platform day {day} (UTC+8) of {app_key}/{mcid} is already taken by {} ({by}, {state}); the platform allows one mass send a natural day (R11){}",
        if *id > 0 { format!("broadcast #{id}") } else { "a daily schedule".to_owned() },
        if state == "scheduled" || state == "planned" { "; give --replace to send this one instead" } else { "" }
    )]
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
    /// The account has a daily schedule already (one a day: a second
    /// would collide with it every day).
    #[error("{app_key}/{mcid} already has daily schedule #{id} {name:?}, which sends every platform day; cancel it first, or give --replace")]
    ScheduleTaken {
        /// App.
        app_key: String,
        /// Account.
        mcid: String,
        /// The schedule in force.
        id: i64,
        /// Its name.
        name: String,
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
/// the scheduler (on days no one-off took). An account has one daily
/// schedule at most — a second would collide with it every day — so
/// another is refused, naming it, unless `replace`: then the other is
/// cancelled with its scheduled sends, in the same transaction.
///
/// # Errors
/// [`BroadcastError::Invalid`] for a bad time zone or content, or a name
/// taken; [`BroadcastError::ScheduleTaken`] for another daily schedule.
pub async fn schedule_daily(
    pool: &PgPool,
    clock: &dyn Clock,
    new: NewSchedule<'_>,
    replace: bool,
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
    content.validate()?;
    let body = serde_json::to_value(content).map_err(|e| BroadcastError::Invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    days::lock_account(&mut tx, app_key, mcid).await?;
    let other = sqlx::query!(
        "SELECT id, name FROM broadcast_schedules
          WHERE app_key = $1 AND mcid = $2 AND enabled AND cancelled_at IS NULL",
        app_key,
        mcid
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(other) = other {
        if other.name == name {
            return Err(BroadcastError::Invalid(format!(
                "a schedule named {name:?} exists for {app_key}/{mcid}"
            )));
        }
        if !replace {
            return Err(BroadcastError::ScheduleTaken {
                app_key: app_key.to_owned(),
                mcid: mcid.to_owned(),
                id: other.id,
                name: other.name,
            });
        }
        cancel_schedule(&mut tx, other.id, clock.now()).await?;
        tracing::info!(replaced = other.id, %app_key, %mcid, "daily schedule replaced (--replace)");
    }
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
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(BroadcastError::Invalid(format!(
            "a schedule named {name:?} exists for {app_key}/{mcid}"
        )));
    };
    tx.commit().await?;
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

/// Adds a one-off broadcast at `at` (now, or later). Refused when its
/// platform day is taken — by a ledger row, or by a daily schedule's send
/// announced for that day and not yet written — naming what took it,
/// unless `replace`: then a scheduled send of that day is cancelled (a send
/// under way or done never is) and the one-off takes the day.
///
/// # Errors
/// [`BroadcastError::DayTaken`], [`BroadcastError::Invalid`].
pub async fn schedule_once(
    pool: &PgPool,
    clock: &dyn Clock,
    app_key: &str,
    mcid: &str,
    at: DateTime<Utc>,
    content: &BroadcastContent,
    replace: bool,
) -> Result<Broadcast, BroadcastError> {
    content.validate()?;
    let body = serde_json::to_value(content).map_err(|e| BroadcastError::Invalid(e.to_string()))?;
    let day = platform_day(at);
    let mut tx = pool.begin().await?;
    days::lock_account(&mut tx, app_key, mcid).await?;
    if let Some(h) = days::holder(&mut tx, app_key, mcid, day).await? {
        if !replace {
            return Err(days::taken(app_key, mcid, h));
        }
        days::free_for_replacement(&mut tx, app_key, mcid, &h, clock.now()).await?;
        tracing::info!(%app_key, %mcid, %day, replaced = %h.by, "a one-off takes the day (--replace)");
    }
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
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = row else {
        // Taken since the check by a writer that does not lock (the
        // scheduler writing a daily send): named like any other.
        let h = days::holder(&mut tx, app_key, mcid, day).await?;
        return Err(match h {
            Some(h) => days::taken(app_key, mcid, h),
            None => BroadcastError::Invalid(format!(
                "platform day {day} was taken meanwhile; try again"
            )),
        });
    };
    tx.commit().await?;
    show(pool, r.id).await
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
        let m = cancel_schedule(&mut tx, id, now).await?;
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

/// Cancels a daily schedule and its scheduled sends in `tx`; the sends
/// cancelled.
async fn cancel_schedule(
    tx: &mut sqlx::PgConnection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<u64, BroadcastError> {
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
    Ok(sqlx::query!(
        "UPDATE broadcasts SET state = 'cancelled', finished_at = $2 WHERE schedule_id = $1 AND state = 'scheduled'",
        id,
        now
    )
    .execute(&mut *tx)
    .await?
    .rows_affected())
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

#[cfg(test)]
mod tests {
    use super::*;

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
