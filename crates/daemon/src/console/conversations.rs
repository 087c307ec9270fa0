//! The Conversations pages: an account's users by last activity, and one
//! user's pushes and replies in order, with the rule or handler that
//! decided each, the user's state, and a retry for failed replies (the
//! same retry as `pubbot outbound retry`: once, with the rules in force;
//! a person's message goes again as written).

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::auth::{urlencode, Role, Staff};
use super::{audit, PageError, ScopeQuery, Shared};
use crate::admin::inspect;
use crate::pipeline::outbox::{self, StaffError};
use crate::pipeline::takeover;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    app: Option<String>,
    mcid: Option<String>,
    q: Option<String>,
}

/// `GET /conversations`.
pub(crate) async fn list(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let scope = c
        .scope(&ScopeQuery {
            app: q.app.clone(),
            mcid: q.mcid.clone(),
        })
        .await?;
    let search = q.q.clone().unwrap_or_default();
    let users = match &scope.picked {
        None => Vec::new(),
        Some((app, mcid)) => sqlx::query!(
            r#"SELECT user_id, max(received_at) AS "last!", count(*) AS "pushes!",
                      (SELECT count(*) FROM outbound_messages o
                        WHERE o.app_key = $1 AND o.mcid = $2 AND o.user_id = i.user_id AND o.status = 'failed') AS "failed!"
                 FROM inbound_messages i
                WHERE app_key = $1 AND mcid = $2 AND ($3 = '' OR user_id ILIKE '%' || $3 || '%')
                GROUP BY user_id ORDER BY max(received_at) DESC LIMIT 200"#,
            app,
            mcid,
            search
        )
        .fetch_all(&c.pool)
        .await?
        .into_iter()
        .map(|r| {
            minijinja::context! {
                user => r.user_id, last => r.last.format("%Y-%m-%d %H:%M:%S").to_string(),
                pushes => r.pushes, failed => r.failed,
            }
        })
        .collect::<Vec<_>>(),
    };
    c.render(
        "conversations.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "conversations", scope => scope.value(), users, q => search },
    )
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ShowQuery {
    app: Option<String>,
    mcid: Option<String>,
    done: Option<String>,
    /// `1`: only the exchanges, for the page's own refresh.
    part: Option<String>,
}

/// `GET /conversations/{user}?app=..&mcid=..`.
pub(crate) async fn show(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(user): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Html<String>, PageError> {
    page(&c, &staff, &user, q, "", None).await
}

/// The conversation page; `message` and `message_error`: a staff message
/// that was refused, kept as typed with the reason at its field.
async fn page(
    c: &super::Console,
    staff: &Staff,
    user: &str,
    q: ShowQuery,
    message: &str,
    message_error: Option<String>,
) -> Result<Html<String>, PageError> {
    let user = user.to_owned();
    let scope = c
        .scope(&ScopeQuery {
            app: q.app.clone(),
            mcid: q.mcid.clone(),
        })
        .await?;
    let (app, mcid) = scope.require()?;
    let mut exchanges = inspect::conversation(&c.pool, &user, Some(&mcid), 100).await?;
    exchanges.retain(|e| e.app_key == app);
    let states = inspect::states(&c.pool, &user, Some(&mcid)).await?;
    let state = states.iter().find(|s| s.app_key == app).map(|s| {
        (
            serde_json::to_string_pretty(&s.state).unwrap_or_default(),
            s.expires_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
    });
    let rows: Vec<_> = exchanges
        .iter()
        .map(|e| {
            let replies: Vec<_> = e
                .replies
                .iter()
                .map(|r| {
                    minijinja::context! {
                        id => r.id, rule => r.rule, status => r.status, error => r.error,
                        text => reply_text(&r.payload), latency_ms => r.latency_ms,
                    }
                })
                .collect();
            minijinja::context! {
                id => e.id, at => e.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                msg_type => e.msg_type, summary => e.summary, status => e.status, trace_id => e.trace_id,
                replies, state_change => e.state_change.as_ref().map(ToString::to_string),
            }
        })
        .collect();
    let last_id = exchanges.last().map_or(0, |e| e.id);
    let idle = std::time::Duration::from_secs(c.settings.console.takeover_idle_secs);
    let hold = takeover::holder(&c.pool, &app, &mcid, &user, idle)
        .await?
        .map(|h| {
            let resumes = h.last_activity_at + chrono::Duration::seconds(idle.as_secs() as i64);
            minijinja::context! {
                by => h.held_by, since => h.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                resumes => resumes.format("%Y-%m-%d %H:%M:%S").to_string(),
                mine => h.held_by == staff.name,
            }
        });
    c.render(
        if q.part.is_some() {
            "thread.html"
        } else {
            "conversation.html"
        },
        minijinja::context! {
            base => c.base, staff => staff.value(), page => "conversations", user, app, mcid,
            rows, state, last_id, done => q.done, part => q.part.is_some(), hold,
            message, message_error,
            user_q => urlencode(&user), app_q => urlencode(&app), mcid_q => urlencode(&mcid),
        },
    )
}

/// A reply as a person reads it.
fn reply_text(payload: &serde_json::Value) -> String {
    let kind = payload.get("type").and_then(|v| v.as_str()).unwrap_or("");
    match kind {
        "text" => payload
            .get("content")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned(),
        "handler" => format!(
            "[handler {} called]",
            payload
                .get("handler")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        ),
        "" => payload.to_string(),
        other => format!("[{other}]"),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RetryForm {
    user: String,
    app: String,
    mcid: String,
}

/// `POST /replies/{id}/retry`.
pub(crate) async fn retry(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(id): Path<i64>,
    Form(f): Form<RetryForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let done = inspect::retry(&c.pool, &c.options, &[id])
        .await
        .map_err(|e| PageError::BadRequest(e.to_string()))?;
    let outcome = done
        .first()
        .map_or_else(|| "nothing happened".to_owned(), |r| r.outcome.to_string());
    audit::record(
        &c.pool,
        &staff.name,
        "reply.retry",
        &format!("reply #{id}"),
        serde_json::json!({ "outcome": outcome, "user": f.user }),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "{}/conversations/{}?app={}&mcid={}&done={}",
        c.base,
        urlencode(&f.user),
        urlencode(&f.app),
        urlencode(&f.mcid),
        urlencode(&format!("Reply #{id}: {outcome}."))
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TakeoverForm {
    app: String,
    mcid: String,
    #[serde(default)]
    text: String,
}

fn back_to(c: &super::Console, user: &str, app: &str, mcid: &str, done: &str) -> Redirect {
    Redirect::to(&format!(
        "{}/conversations/{}?app={}&mcid={}&done={}",
        c.base,
        urlencode(user),
        urlencode(app),
        urlencode(mcid),
        urlencode(done)
    ))
}

/// `POST /conversations/{user}/hold`: a person takes the conversation; the
/// bot stays silent for the user.
pub(crate) async fn hold(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(user): Path<String>,
    Form(f): Form<TakeoverForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let mut conn = c.pool.acquire().await?;
    takeover::hold(&mut conn, &f.app, &f.mcid, &user, &staff.name).await?;
    audit::record(
        &c.pool,
        &staff.name,
        "conversation.hold",
        &format!("{}/{}/{user}", f.app, f.mcid),
        serde_json::json!({}),
    )
    .await?;
    Ok(back_to(
        &c,
        &user,
        &f.app,
        &f.mcid,
        "You hold this conversation: the bot is silent for this user until you release it.",
    ))
}

/// `POST /conversations/{user}/release`: back to the bot.
pub(crate) async fn release(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(user): Path<String>,
    Form(f): Form<TakeoverForm>,
) -> Result<Redirect, PageError> {
    staff.require(Role::Editor)?;
    let was = takeover::release(&c.pool, &f.app, &f.mcid, &user).await?;
    audit::record(
        &c.pool,
        &staff.name,
        "conversation.release",
        &format!("{}/{}/{user}", f.app, f.mcid),
        serde_json::json!({ "was_held": was }),
    )
    .await?;
    Ok(back_to(
        &c,
        &user,
        &f.app,
        &f.mcid,
        "Released: the bot answers this user again.",
    ))
}

/// `POST /conversations/{user}/message`: a person writes to the user
/// through the outbox (ordered, rate limited, counted) and holds the
/// conversation.
pub(crate) async fn message(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Path(user): Path<String>,
    Form(f): Form<TakeoverForm>,
) -> Result<Response, PageError> {
    staff.require(Role::Editor)?;
    match outbox::enqueue_staff(&c.pool, &f.app, &f.mcid, &user, &staff.name, &f.text).await {
        Ok(id) => {
            audit::record(
                &c.pool,
                &staff.name,
                "conversation.message",
                &format!("{}/{}/{user}", f.app, f.mcid),
                serde_json::json!({ "reply": id }),
            )
            .await?;
            Ok(back_to(
                &c,
                &user,
                &f.app,
                &f.mcid,
                &format!("Message #{id} queued; it goes out after the replies before it."),
            )
            .into_response())
        }
        Err(StaffError::Db(e)) => Err(e.into()),
        Err(e) => {
            let q = ShowQuery {
                app: Some(f.app.clone()),
                mcid: Some(f.mcid.clone()),
                ..ShowQuery::default()
            };
            let page = page(&c, &staff, &user, q, &f.text, Some(e.to_string())).await?;
            Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
    }
}
