//! Which send goes out on each platform day of an account: the ledger and
//! the daily schedules read together (a daily schedule holds every day
//! from its creation on, before the scheduler has written that day's row).
//! Every way of taking a day — a one-off, a second daily schedule — is
//! checked against both, and refused the same way unless the operator
//! says `--replace` (issue 27: a one-off used to push a daily schedule's
//! announced send to the next day with only a log line).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::clock::platform_day;
use crate::mass::{local_instant, BroadcastError};

/// What goes out on one platform day.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DaySend {
    /// The platform day (UTC+8).
    pub day: NaiveDate,
    /// When.
    pub at: DateTime<Utc>,
    /// `daily "name"` or `one-off`.
    pub by: String,
    /// The ledger row, once written (a daily schedule's is written a day
    /// ahead).
    pub broadcast: Option<i64>,
    /// The daily schedule it comes from.
    pub schedule: Option<i64>,
    /// The ledger row's state, or `planned` before it is written.
    pub state: String,
}

/// A daily schedule in force, as the day checks read it.
struct Daily {
    id: i64,
    name: String,
    time_of_day: chrono::NaiveTime,
    timezone: String,
    created_at: DateTime<Utc>,
}

impl Daily {
    /// Its send on platform day `day`, if it has one: the local date whose
    /// time of day falls on `day`, not before the schedule existed.
    fn on(&self, day: NaiveDate) -> Option<DateTime<Utc>> {
        let tz: Tz = self.timezone.parse().ok()?;
        (-1..=1)
            .filter_map(|d| local_instant(tz, day + chrono::Duration::days(d), self.time_of_day))
            .find(|at| platform_day(*at) == day && *at >= self.created_at)
    }
}

async fn dailies(
    conn: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &str,
) -> Result<Vec<Daily>, sqlx::Error> {
    sqlx::query_as!(
        Daily,
        r#"SELECT id, name, time_of_day, timezone, created_at FROM broadcast_schedules
            WHERE app_key = $1 AND mcid = $2 AND enabled AND cancelled_at IS NULL ORDER BY id"#,
        app_key,
        mcid
    )
    .fetch_all(&mut *conn)
    .await
}

/// Serializes the changes to one account's days (two operators, or a
/// one-off and a daily schedule, at once): held until the transaction ends.
pub(crate) async fn lock_account(
    conn: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext('pubbot broadcast ' || $1 || '/' || $2))",
        app_key,
        mcid
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// The send that holds `day`, if any: its ledger row in a live state, or
/// a daily schedule's send not yet written (and not settled otherwise:
/// a day whose row was cancelled or missed is free).
pub(crate) async fn holder(
    conn: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &str,
    day: NaiveDate,
) -> Result<Option<DaySend>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT b.id, b.state, b.due_at, b.schedule_id, s.name AS "name?"
             FROM broadcasts b LEFT JOIN broadcast_schedules s ON s.id = b.schedule_id
            WHERE b.app_key = $1 AND b.mcid = $2 AND b.platform_day = $3
              AND b.state IN ('scheduled', 'sending', 'sent', 'unknown')"#,
        app_key,
        mcid,
        day
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = row {
        return Ok(Some(DaySend {
            day,
            at: r.due_at,
            by: r
                .name
                .map_or_else(|| "one-off".to_owned(), |n| format!("daily {n:?}")),
            broadcast: Some(r.id),
            schedule: r.schedule_id,
            state: r.state,
        }));
    }
    for d in dailies(conn, app_key, mcid).await? {
        let Some(at) = d.on(day) else { continue };
        let settled = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM broadcasts WHERE schedule_id = $1 AND due_at = $2) AS "e!""#,
            d.id,
            at
        )
        .fetch_one(&mut *conn)
        .await?;
        if !settled {
            return Ok(Some(DaySend {
                day,
                at,
                by: format!("daily {:?}", d.name),
                broadcast: None,
                schedule: Some(d.id),
                state: "planned".into(),
            }));
        }
    }
    Ok(None)
}

/// The refusal for a day that `holder` holds.
pub(crate) fn taken(app_key: &str, mcid: &str, holder: DaySend) -> BroadcastError {
    BroadcastError::DayTaken {
        app_key: app_key.to_owned(),
        mcid: mcid.to_owned(),
        day: holder.day,
        id: holder.broadcast.unwrap_or(0),
        by: match holder.broadcast {
            Some(_) => holder.by,
            None => format!(
                "{} at {} UTC, announced, not yet in the ledger",
                holder.by,
                holder.at.format("%H:%M")
            ),
        },
        state: holder.state,
    }
}

/// Frees `day` for a one-off the operator means to send instead
/// (`--replace`): a scheduled ledger row is cancelled; a daily send not
/// yet written is left to find the day taken. A send already under way or
/// done cannot be replaced.
pub(crate) async fn free_for_replacement(
    conn: &mut sqlx::PgConnection,
    app_key: &str,
    mcid: &str,
    holder: &DaySend,
    now: DateTime<Utc>,
) -> Result<(), BroadcastError> {
    match (holder.broadcast, holder.state.as_str()) {
        (None, _) => Ok(()),
        (Some(id), "scheduled") => {
            sqlx::query!(
                "UPDATE broadcasts SET state = 'cancelled', finished_at = $2,
                        error = 'replaced by a one-off (--replace)'
                  WHERE id = $1 AND state = 'scheduled'",
                id,
                now
            )
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        (Some(_), _) => Err(taken(app_key, mcid, holder.clone())),
    }
}

/// What goes out on each of the `days` platform days from `from`'s, for
/// every account with a schedule or a broadcast (a day without a send is
/// left out).
///
/// # Errors
/// Database errors.
pub async fn coming(
    pool: &sqlx::PgPool,
    from: DateTime<Utc>,
    days: u32,
) -> Result<Vec<(String, String, DaySend)>, BroadcastError> {
    let mut conn = pool.acquire().await?;
    let accounts = sqlx::query!(
        r#"SELECT DISTINCT app_key AS "app_key!", mcid AS "mcid!" FROM (
               SELECT app_key, mcid FROM broadcast_schedules WHERE enabled AND cancelled_at IS NULL
               UNION ALL
               SELECT app_key, mcid FROM broadcasts WHERE platform_day >= $1 AND state IN ('scheduled', 'sending', 'unknown')
           ) a ORDER BY 1, 2"#,
        platform_day(from)
    )
    .fetch_all(&mut *conn)
    .await?;
    let first = platform_day(from);
    let mut out = Vec::new();
    for a in accounts {
        for d in 0..days {
            let day = first + chrono::Duration::days(i64::from(d));
            if let Some(h) = holder(&mut conn, &a.app_key, &a.mcid, day).await? {
                out.push((a.app_key.clone(), a.mcid.clone(), h));
            }
        }
    }
    Ok(out)
}
