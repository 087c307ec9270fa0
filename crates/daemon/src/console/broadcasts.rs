//! The Broadcasts page: what goes out on each coming platform day, the
//! daily schedule, one-offs, the history with the platform's answer,
//! unknown outcomes to resolve, and campaigns with their progress.
//!
//! Scheduling goes through [`crate::mass`], the functions `pubbot
//! broadcast` calls: a second daily schedule, or a one-off on a day a
//! daily send holds, is refused with the same words, and the form offers
//! "replace" to take the day explicitly (R11: one mass send a natural
//! day).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{NaiveDateTime, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};

use super::auth::{urlencode, Role, Staff};
use super::{audit, Console, PageError, ScopeQuery, Shared};
use crate::mass::{self, BroadcastContent, BroadcastError, NewSchedule};

/// The two scheduling forms, as typed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ScheduleForm {
    app: String,
    mcid: String,
    /// Daily: its name.
    name: String,
    /// Daily: `HH:MM`; once: `YYYY-MM-DD HH:MM` (the browser's
    /// `datetime-local` value, `YYYY-MM-DDTHH:MM`, is read too) or empty
    /// for now.
    at: String,
    timezone: String,
    text: String,
    replace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    app: Option<String>,
    mcid: Option<String>,
    done: Option<String>,
}

fn fmt_local(at: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    at.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// What the page shows besides the account's data: the two forms as
/// typed, a refusal at one of them, a notice.
struct View<'a> {
    daily: &'a ScheduleForm,
    once: &'a ScheduleForm,
    /// (which form, why, whether "replace" is offered).
    error: Option<(&'a str, String, bool)>,
    done: Option<String>,
    status: StatusCode,
}

async fn render(
    c: &Console,
    staff: &Staff,
    scope: &super::Scope,
    view: View<'_>,
) -> Result<Response, PageError> {
    let tz: chrono_tz::Tz = c
        .settings
        .broadcast
        .timezone
        .parse()
        .unwrap_or(chrono_tz::Asia::Shanghai);
    let (app, mcid) = scope.picked.clone().unwrap_or_default();
    let coming: Vec<_> = mass::coming(&c.pool, c.clock.now(), 7)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .filter(|(a, m, _)| a == &app && m == &mcid)
        .map(|(_, _, d)| {
            minijinja::context! {
                day => d.day.to_string(), at => fmt_local(d.at, tz), by => d.by,
                state => d.state, broadcast => d.broadcast,
            }
        })
        .collect();
    let schedules: Vec<_> = mass::schedules(&c.pool)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .filter(|s| s.app_key == app && s.mcid == mcid)
        .map(|s| {
            minijinja::context! {
                id => s.id, name => s.name, at => s.time_of_day.format("%H:%M").to_string(),
                timezone => s.timezone, enabled => s.enabled, content => content_text(&s.content),
            }
        })
        .collect();
    let history: Vec<_> = mass::history(&c.pool, Some(&mcid), 50)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .filter(|b| b.app_key == app)
        .map(|b| {
            minijinja::context! {
                id => b.id, day => b.platform_day.to_string(), due => fmt_local(b.due_at, tz),
                state => b.state, msg_id => b.msg_id, error => b.error,
                content => content_text(&b.content), schedule => b.schedule_id,
                finished => b.finished_at.map(|f| fmt_local(f, tz)),
            }
        })
        .collect();
    let ids = sqlx::query_scalar!(
        "SELECT id FROM campaigns WHERE app_key = $1 AND mcid = $2 ORDER BY id DESC LIMIT 20",
        app,
        mcid
    )
    .fetch_all(&c.pool)
    .await?;
    let mut campaigns = Vec::new();
    for id in ids {
        let s = mass::campaign_status(&c.pool, id)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let sent = s.users_by_state.get("sent").copied().unwrap_or(0);
        campaigns.push(minijinja::context! {
            id => s.id, state => s.state, users => s.users, sent,
            percent => if s.users > 0 { sent * 100 / i64::from(s.users) } else { 0 },
            by_state => format!("{:?}", s.users_by_state),
        });
    }
    let View {
        daily,
        once,
        error,
        done,
        status,
    } = view;
    let (error_form, error_text, can_replace) = match error {
        Some((f, t, r)) => (Some(f), Some(t), r),
        None => (None, None, false),
    };
    let page = c.render(
        "broadcasts.html",
        minijinja::context! {
            base => c.base, staff => staff.value(), page => "broadcasts", scope => scope.value(),
            coming, schedules, history, campaigns, daily, once, error_form, error_text, can_replace,
            done, timezone => tz.name(),
        },
    )?;
    Ok((status, page).into_response())
}

fn content_text(v: &serde_json::Value) -> String {
    match v.get("text").and_then(|t| t.as_str()) {
        Some(t) => t.to_owned(),
        None => v.to_string(),
    }
}

/// `GET /broadcasts`.
pub(crate) async fn page(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<PageQuery>,
) -> Result<Response, PageError> {
    let scope = c
        .scope(&ScopeQuery {
            app: q.app,
            mcid: q.mcid,
        })
        .await?;
    let (app, mcid) = scope.picked.clone().unwrap_or_default();
    let blank = ScheduleForm {
        app,
        mcid,
        ..ScheduleForm::default()
    };
    let view = View {
        daily: &blank,
        once: &blank,
        error: None,
        done: q.done,
        status: StatusCode::OK,
    };
    render(&c, &staff, &scope, view).await
}

async fn refused(
    c: &Console,
    staff: &Staff,
    which: &'static str,
    f: &ScheduleForm,
    e: BroadcastError,
) -> Result<Response, PageError> {
    let can_replace = matches!(&e, BroadcastError::ScheduleTaken { .. })
        || matches!(&e, BroadcastError::DayTaken { state, .. } if state == "scheduled" || state == "planned");
    let text = match &e {
        BroadcastError::Db(_) => return Err(PageError::Internal(anyhow::anyhow!(e))),
        other => other
            .to_string()
            .replace("give --replace", "tick \"replace\"")
            .replace("or give --replace", "or tick \"replace\""),
    };
    let scope = c
        .scope(&ScopeQuery {
            app: Some(f.app.clone()),
            mcid: Some(f.mcid.clone()),
        })
        .await?;
    let blank = ScheduleForm {
        app: f.app.clone(),
        mcid: f.mcid.clone(),
        ..ScheduleForm::default()
    };
    let (daily, once) = if which == "daily" {
        (f, &blank)
    } else {
        (&blank, f)
    };
    let view = View {
        daily,
        once,
        error: Some((which, text, can_replace)),
        done: None,
        status: StatusCode::CONFLICT,
    };
    render(c, staff, &scope, view).await
}

fn back(c: &Console, f: &ScheduleForm, done: &str) -> Redirect {
    Redirect::to(&format!(
        "{}/broadcasts?app={}&mcid={}&done={}",
        c.base,
        urlencode(&f.app),
        urlencode(&f.mcid),
        urlencode(done)
    ))
}

/// `POST /broadcasts/daily`.
pub(crate) async fn daily(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(f): Form<ScheduleForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    let Ok(time) = NaiveTime::parse_from_str(f.at.trim(), "%H:%M") else {
        return refused(
            &c,
            &staff,
            "daily",
            &f,
            BroadcastError::Invalid(format!("the time is HH:MM (like 09:30), not {:?}", f.at)),
        )
        .await;
    };
    if f.name.trim().is_empty() {
        return refused(
            &c,
            &staff,
            "daily",
            &f,
            BroadcastError::Invalid("a daily schedule needs a name".into()),
        )
        .await;
    }
    let tz = if f.timezone.trim().is_empty() {
        c.settings.broadcast.timezone.clone()
    } else {
        f.timezone.trim().to_owned()
    };
    let content = BroadcastContent::Text {
        text: f.text.clone(),
    };
    let new = NewSchedule {
        app_key: &f.app,
        mcid: &f.mcid,
        name: f.name.trim(),
        time_of_day: time,
        timezone: &tz,
        content: &content,
    };
    match mass::schedule_daily(&c.pool, c.clock.as_ref(), new, f.replace.is_some()).await {
        Ok(s) => {
            audit::record(&c.pool, &staff.name, "broadcast.schedule_daily", &format!("{}/{}", f.app, f.mcid),
                serde_json::json!({ "id": s.id, "name": s.name, "at": f.at, "timezone": tz, "replace": f.replace.is_some() })).await?;
            Ok(back(
                &c,
                &f,
                &format!("Daily schedule {:?} at {} ({tz}) saved.", s.name, f.at),
            )
            .into_response())
        }
        Err(e) => refused(&c, &staff, "daily", &f, e).await,
    }
}

/// `POST /broadcasts/once`.
pub(crate) async fn once(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Form(f): Form<ScheduleForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    let tz_name = if f.timezone.trim().is_empty() {
        c.settings.broadcast.timezone.clone()
    } else {
        f.timezone.trim().to_owned()
    };
    let Ok(tz) = tz_name.parse::<chrono_tz::Tz>() else {
        return refused(
            &c,
            &staff,
            "once",
            &f,
            BroadcastError::Invalid(format!("unknown time zone {tz_name:?}")),
        )
        .await;
    };
    let at = match f.at.trim() {
        "" => c.clock.now(),
        s => {
            let s = s.replace('T', " ");
            match NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M")
                .ok()
                .and_then(|n| tz.from_local_datetime(&n).earliest())
            {
                Some(t) => t.with_timezone(&chrono::Utc),
                None => {
                    return refused(
                        &c,
                        &staff,
                        "once",
                        &f,
                        BroadcastError::Invalid(format!(
                        "the date and time is YYYY-MM-DD HH:MM (like 2026-12-24 18:00), not {:?}",
                        f.at
                    )),
                    )
                    .await
                }
            }
        }
    };
    let content = BroadcastContent::Text {
        text: f.text.clone(),
    };
    match mass::schedule_once(
        &c.pool,
        c.clock.as_ref(),
        &f.app,
        &f.mcid,
        at,
        &content,
        f.replace.is_some(),
    )
    .await
    {
        Ok(b) => {
            audit::record(&c.pool, &staff.name, "broadcast.once", &format!("{}/{}", f.app, f.mcid),
                serde_json::json!({ "id": b.id, "day": b.platform_day.to_string(), "replace": f.replace.is_some() })).await?;
            Ok(back(
                &c,
                &f,
                &format!(
                    "Broadcast #{} scheduled for platform day {}.",
                    b.id, b.platform_day
                ),
            )
            .into_response())
        }
        Err(e) => refused(&c, &staff, "once", &f, e).await,
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RowForm {
    app: String,
    mcid: String,
    #[serde(default)]
    sent: Option<String>,
}

/// `POST /broadcasts/{id}/cancel`.
pub(crate) async fn cancel(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<RowForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let n = mass::cancel(&c.pool, c.clock.as_ref(), id, false)
        .await
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    audit::record(
        &c.pool,
        &staff.name,
        "broadcast.cancel",
        &format!("broadcast #{id}"),
        serde_json::json!({ "cancelled": n }),
    )
    .await?;
    let form = ScheduleForm {
        app: f.app,
        mcid: f.mcid,
        ..ScheduleForm::default()
    };
    Ok(back(&c, &form, &format!("Broadcast #{id} cancelled.")))
}

/// `POST /schedules/{id}/cancel`.
pub(crate) async fn cancel_schedule(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<RowForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let n = mass::cancel(&c.pool, c.clock.as_ref(), id, true)
        .await
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    audit::record(
        &c.pool,
        &staff.name,
        "broadcast.cancel_schedule",
        &format!("schedule #{id}"),
        serde_json::json!({ "cancelled_sends": n }),
    )
    .await?;
    let form = ScheduleForm {
        app: f.app,
        mcid: f.mcid,
        ..ScheduleForm::default()
    };
    Ok(back(&c, &form, &format!("Daily schedule #{id} cancelled.")))
}

/// `POST /broadcasts/{id}/resolve`: an unknown outcome, settled by what
/// the account's followers saw (`sent=true`) or did not.
pub(crate) async fn resolve(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<RowForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let sent = f.sent.as_deref() == Some("true");
    mass::resolve(&c.pool, c.clock.as_ref(), id, sent)
        .await
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    audit::record(
        &c.pool,
        &staff.name,
        "broadcast.resolve",
        &format!("broadcast #{id}"),
        serde_json::json!({ "sent": sent }),
    )
    .await?;
    let form = ScheduleForm {
        app: f.app,
        mcid: f.mcid,
        ..ScheduleForm::default()
    };
    Ok(back(
        &c,
        &form,
        &format!(
            "Broadcast #{id} marked {}.",
            if sent { "sent" } else { "failed" }
        ),
    ))
}
