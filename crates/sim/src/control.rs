//! The control API under `/_sim`: what users do (follow, unfollow, send a
//! message), and what the platform saw (inboxes, push log, call log), plus
//! run-time fault injection and the platform clock. Unsigned: it is the
//! test's and the bot author's hand on the world, not part of the platform.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Faults;
use crate::push::{PushContent, UserMessage};
use crate::Inner;

/// A refused control call: 400 or 404 with `{"error": ".."}`.
pub(crate) struct ControlError(StatusCode, String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, msg.into())
}

/// How a push is delivered, beyond the platform's normal behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushOptions {
    /// Answer only once every copy is delivered or has failed.
    #[serde(default)]
    pub wait: bool,
    /// Extra copies of the same push (same `MsgId`), as a platform that
    /// delivers twice would send.
    #[serde(default)]
    pub duplicates: u32,
    /// Deliver the copies at the same time rather than one after another.
    #[serde(default)]
    pub concurrent: bool,
    /// Sign with a wrong secret.
    #[serde(default)]
    pub bad_signature: bool,
    /// Send copy `i` to `route_urls[i % len]` instead of the account's
    /// routeUrl (two daemon replicas, say).
    #[serde(default)]
    pub route_urls: Option<Vec<String>>,
}

/// `POST /_sim/follow` and `/_sim/unfollow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowRequest {
    /// App key; may be left out when the simulator has one app.
    #[serde(default)]
    pub app_key: Option<String>,
    /// The account.
    pub mcid: String,
    /// The user.
    pub user: String,
    /// Delivery options.
    #[serde(flatten)]
    pub options: PushOptions,
}

/// `POST /_sim/message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRequest {
    /// App key; may be left out when the simulator has one app.
    #[serde(default)]
    pub app_key: Option<String>,
    /// The account written to.
    pub mcid: String,
    /// The user writing.
    pub user: String,
    /// What the user sends (`"type": "text", "content": ".."`, ...).
    #[serde(flatten)]
    pub message: UserMessage,
    /// Delivery options.
    #[serde(flatten)]
    pub options: PushOptions,
}

#[derive(Deserialize)]
struct AppQuery {
    app_key: Option<String>,
    path: Option<String>,
    since: Option<u64>,
}

#[derive(Deserialize)]
struct Clock {
    offset_secs: i64,
}

pub(crate) fn router() -> Router<Arc<Inner>> {
    Router::new()
        .route("/_sim/health", get(|| async { "ok" }))
        .route("/_sim/follow", post(follow))
        .route("/_sim/unfollow", post(unfollow))
        .route("/_sim/message", post(message))
        .route("/_sim/inbox/{user}", get(inbox))
        .route("/_sim/deliveries", get(deliveries))
        .route("/_sim/accounts", get(accounts))
        .route("/_sim/pushes", get(pushes))
        .route("/_sim/pushes/{id}", get(push_one))
        .route("/_sim/calls", get(calls))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/clock", get(get_clock).put(put_clock))
}

impl Inner {
    fn resolve_app(&self, app_key: Option<&str>) -> Result<String, ControlError> {
        let w = self.lock();
        match app_key {
            Some(k) if w.apps.contains_key(k) => Ok(k.to_owned()),
            Some(k) => Err(ControlError(StatusCode::NOT_FOUND, format!("no app {k:?}"))),
            None if w.apps.len() == 1 => Ok(w.apps.keys().next().cloned().unwrap_or_default()),
            None => Err(bad(
                "app_key is required when the simulator has several apps",
            )),
        }
    }
}

async fn follow(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<FollowRequest>,
) -> Result<Json<Value>, ControlError> {
    set_follow(inner, req, true).await
}

async fn unfollow(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<FollowRequest>,
) -> Result<Json<Value>, ControlError> {
    set_follow(inner, req, false).await
}

async fn set_follow(
    inner: Arc<Inner>,
    req: FollowRequest,
    follow: bool,
) -> Result<Json<Value>, ControlError> {
    let app = inner.resolve_app(req.app_key.as_deref())?;
    inner
        .lock()
        .set_follower(&app, &req.mcid, &req.user, follow)
        .map_err(|e| ControlError(StatusCode::NOT_FOUND, e.message().to_owned()))?;
    let event = if follow { "subscribe" } else { "unsubscribe" };
    let ids = Inner::start_push(
        &inner,
        &app,
        &req.mcid,
        &req.user,
        PushContent::Event(event),
        &req.options,
    )
    .await
    .map_err(|e| ControlError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(json!({"pushes": inner.push_records(&ids)})))
}

async fn message(
    State(inner): State<Arc<Inner>>,
    Json(req): Json<MessageRequest>,
) -> Result<Json<Value>, ControlError> {
    let app = inner.resolve_app(req.app_key.as_deref())?;
    let msg_id = inner.next_msg_id();
    let ids = Inner::start_push(
        &inner,
        &app,
        &req.mcid,
        &req.user,
        PushContent::Message(req.message, msg_id.clone()),
        &req.options,
    )
    .await
    .map_err(|e| ControlError(StatusCode::NOT_FOUND, e))?;
    Ok(Json(
        json!({"msg_id": msg_id, "pushes": inner.push_records(&ids)}),
    ))
}

async fn inbox(
    State(inner): State<Arc<Inner>>,
    Path(user): Path<String>,
    Query(q): Query<AppQuery>,
) -> Result<Json<Value>, ControlError> {
    let app = inner.resolve_app(q.app_key.as_deref())?;
    let w = inner.lock();
    Ok(Json(json!(w.inbox(&app, &user))))
}

async fn deliveries(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<AppQuery>,
) -> Result<Json<Value>, ControlError> {
    let app = inner.resolve_app(q.app_key.as_deref())?;
    let since = q.since.unwrap_or(0);
    let w = inner.lock();
    let list: Vec<_> = w
        .deliveries(&app)
        .into_iter()
        .filter(|d| d.seq > since)
        .collect();
    Ok(Json(json!(list)))
}

async fn accounts(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<AppQuery>,
) -> Result<Json<Value>, ControlError> {
    let app = inner.resolve_app(q.app_key.as_deref())?;
    let w = inner.lock();
    let list: Vec<Value> = w.apps[&app]
        .accounts
        .values()
        .map(|a| json!({"account": a, "menu": w.menu_tree(&app, &a.mcid)}))
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn pushes(State(inner): State<Arc<Inner>>, Query(q): Query<AppQuery>) -> Json<Value> {
    let since = usize::try_from(q.since.unwrap_or(0)).unwrap_or(usize::MAX);
    let log = inner.lock_pushes();
    Json(json!(log.iter().skip(since).collect::<Vec<_>>()))
}

async fn push_one(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<usize>,
) -> Result<Json<Value>, ControlError> {
    let log = inner.lock_pushes();
    log.get(id)
        .map(|r| Json(json!(r)))
        .ok_or_else(|| ControlError(StatusCode::NOT_FOUND, format!("no push {id}")))
}

async fn calls(State(inner): State<Arc<Inner>>, Query(q): Query<AppQuery>) -> Json<Value> {
    let since = q.since.unwrap_or(0);
    let w = inner.lock();
    let keep = |c: &&crate::world::CallRecord| {
        c.seq > since && q.path.as_deref().is_none_or(|p| c.path == p)
    };
    // Mass sends from their own log: a long run's call log has dropped
    // the first days' ones.
    let list: Vec<_> = match q.path.as_deref() {
        Some(p) if crate::world::is_mass_send(p) => w.mass_calls().filter(keep).collect(),
        _ => w.calls().filter(keep).collect(),
    };
    Json(json!(list))
}

async fn get_faults(State(inner): State<Arc<Inner>>) -> Json<Faults> {
    Json(inner.lock().faults.clone())
}

async fn put_faults(
    State(inner): State<Arc<Inner>>,
    Json(faults): Json<Faults>,
) -> Result<Json<Faults>, ControlError> {
    faults.validate().map_err(bad)?;
    inner.lock().faults = faults.clone();
    Ok(Json(faults))
}

async fn get_clock(State(inner): State<Arc<Inner>>) -> Json<Value> {
    let w = inner.lock();
    Json(
        json!({"offset_secs": w.clock_offset_secs, "now_ms": w.now_ms(), "today_cst": w.today().to_string()}),
    )
}

async fn put_clock(State(inner): State<Arc<Inner>>, Json(c): Json<Clock>) -> Json<Value> {
    let mut w = inner.lock();
    w.clock_offset_secs = c.offset_secs;
    Json(
        json!({"offset_secs": w.clock_offset_secs, "now_ms": w.now_ms(), "today_cst": w.today().to_string()}),
    )
}
