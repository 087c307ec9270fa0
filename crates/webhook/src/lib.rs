//! # pubbot-webhook: where the platform's pushes come in
//!
//! The platform POSTs what users send an account to the account's
//! `routeUrl` as XML, signed in the query string. This crate turns such a
//! request into a typed [`InboundMessage`] and hands it to an [`Inbox`] the
//! service provides, answering the platform only once the inbox has it.
//!
//! **What it is for:**
//! - the signature (R3): `sha1(secret + rc-nonce + rc-timestamp)`, compared
//!   in constant time, several secrets per app (rotation), a freshness
//!   window (default 300 s, both directions, seconds or milliseconds per
//!   R2) and a bounded replay memory — see [`Rejection`] for the status of
//!   each refusal (always an empty body, a `warn` log line without the
//!   secret, and `pubbot_webhook_pushes_total{outcome="rejected",reason}`);
//! - lenient parsing (R4, R5): [`parse`];
//! - the dedup key (R6): [`InboundMessage::dedup_key`];
//! - the answer (R15): `200` with an empty body (the document's "received,
//!   do not retry") once [`Inbox::accept`] returned, for a new push and for
//!   a duplicate alike. A push the inbox could not make durable — it failed,
//!   or missed the deadline (default 3 s, inside the platform's 5) — gets
//!   **no answer**: the request is held until
//!   [`WebhookConfig::unanswered_hold`] (default 6 s) has passed since it
//!   came in, past the platform's five-second timeout, so the platform
//!   has dropped it and tries again; any status it saw in time could be
//!   taken as final. Refusals that no retry can cure are answered at once:
//!   `401`/`403`/`409` for the signature checks ([`Rejection`]), `413` for a
//!   body over the cap (default 64 KiB), `400` for a body that is not a
//!   push, `422` for a push the inbox will never take.
//!
//! **What it is not for:** storage, deduplication across replicas, or
//! deciding replies. It knows no SQL; the service's [`Inbox`] does that.
//!
//! ## Route and routeUrl
//! The router serves `POST /webhook/{app_key}`. Which account a push is for
//! comes from its `ToUserName`, so one route serves every account of an
//! app: set each account's routeUrl to `https://your.host/webhook/{app_key}`.
//!
//! ## Mounting it
//! ```no_run
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use pubbot_webhook::{Accepted, Inbox, InboxError, Push, Verifier, Webhook, WebhookConfig};
//! use secrecy::SecretString;
//!
//! struct Printer;
//! impl Inbox for Printer {
//!     async fn accept(&self, push: Push) -> Result<Accepted, InboxError> {
//!         println!("{} wrote {:?}", push.message.from, push.message.body);
//!         Ok(Accepted::New)
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let apps = HashMap::from([("appkey".to_owned(), vec![SecretString::from("secret")])]);
//! let verifier = Verifier::new(apps, Duration::from_secs(300), 100_000);
//! let app = Webhook::new(WebhookConfig::default(), verifier, Printer).router();
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod message;
mod parse;
mod quiet;
mod verify;

pub use quiet::LogSummary;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

pub use message::{CreateTime, DedupKey, Event, InboundMessage, McId, MessageBody, MsgId, UserId};
pub use parse::{parse, ParseError};
pub use verify::{PushParams, Rejection, Verified, Verifier};

/// A push that passed every check, for the inbox to keep.
#[derive(Debug, Clone)]
pub struct Push {
    /// The app, from the route.
    pub app_key: String,
    /// The parsed message.
    pub message: InboundMessage,
    /// Its dedup key (R6).
    pub dedup_key: DedupKey,
    /// The body as received, to keep beside the parsed form.
    pub raw: Bytes,
}

/// What the inbox did with a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored for the first time.
    New,
    /// Already stored (a retry or a duplicate delivery).
    Duplicate,
}

/// Why the inbox could not take a push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// Storage is down or overloaded: the push gets no answer in time, so
    /// the platform retries (R15).
    #[error("inbox unavailable: {0}")]
    Unavailable(String),
    /// The inbox will never take it (a field storage cannot hold, say):
    /// answered 422 at once, which ends the platform's tries (R15).
    #[error("push refused: {0}")]
    Refused(String),
}

/// Where accepted pushes go; the service implements it (the daemon with
/// PostgreSQL). `accept` must return only once the push is safe.
pub trait Inbox: Send + Sync + 'static {
    /// Stores one push, or says it was stored already.
    fn accept(&self, push: Push) -> impl Future<Output = Result<Accepted, InboxError>> + Send;
}

/// Knobs of the receiving side.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Largest body read; larger is answered 413.
    pub max_body_bytes: usize,
    /// How long the inbox may take to make a push durable; past it the
    /// push is not answered in time (R15).
    pub accept_deadline: Duration,
    /// How long, from its arrival, a push that could not be made durable is
    /// held before its connection gets a `503`: longer than the platform's
    /// five-second timeout, so the platform has given up on this try and
    /// retries, and never sees a status it might take as final (R15).
    pub unanswered_hold: Duration,
    /// How long a request may take to send its body once its headers are
    /// in; a slower one is answered `408` and its connection closed (a
    /// slow client must not hold a slot; the platform sends at once).
    pub body_timeout: Duration,
    /// How often refused pushes are summed up in the log (one WARN line
    /// with counts by reason and app, the first of each interval in full).
    pub rejection_log_every: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            accept_deadline: Duration::from_secs(3),
            unanswered_hold: Duration::from_secs(6),
            body_timeout: Duration::from_secs(5),
            rejection_log_every: Duration::from_secs(10),
        }
    }
}

/// The receiving service: verifier, inbox and knobs.
pub struct Webhook<I> {
    config: WebhookConfig,
    verifier: Verifier,
    inbox: I,
    rejections: Arc<LogSummary>,
}

fn now_secs() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn rejected(reason: &'static str) {
    metrics::counter!("pubbot_webhook_pushes_total", "outcome" => "rejected", "reason" => reason)
        .increment(1);
}

impl<I: Inbox> Webhook<I> {
    /// Puts the pieces together.
    pub fn new(config: WebhookConfig, verifier: Verifier, inbox: I) -> Self {
        let rejections = Arc::new(LogSummary::new(
            "pushes refused",
            config.rejection_log_every,
        ));
        Self {
            config,
            verifier,
            inbox,
            rejections,
        }
    }

    /// The summary refused pushes are logged through; call its
    /// [`LogSummary::flush`] on a timer so a burst's tail is logged too.
    pub fn rejections(&self) -> Arc<LogSummary> {
        Arc::clone(&self.rejections)
    }

    /// `POST /webhook/{app_key}`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/webhook/{app_key}", post(receive::<I>))
            .with_state(Arc::new(self))
    }

    /// Handles one push; the router calls this, and a service with its own
    /// routing may too.
    pub async fn handle(&self, app_key: &str, query: Option<&str>, body: Body) -> StatusCode {
        let params = match PushParams::from_query(query) {
            Ok(p) => p,
            Err(r) => return self.refuse(app_key, &r),
        };
        let verified = match self.verifier.verify(app_key, &params, now_secs()) {
            Ok(v) => v,
            Err(r) => return self.refuse(app_key, &r),
        };
        let read = axum::body::to_bytes(body, self.config.max_body_bytes);
        let raw = match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                if self.rejections.note(|| format!("too_large app={app_key}")) {
                    tracing::warn!(app_key, error = %e, limit = self.config.max_body_bytes, "push body refused");
                }
                rejected("too_large");
                return StatusCode::PAYLOAD_TOO_LARGE;
            }
            Err(_) => {
                if self.rejections.note(|| format!("slow_body app={app_key}")) {
                    tracing::warn!(app_key, timeout = ?self.config.body_timeout, "push body not sent in time; connection closed");
                }
                rejected("slow_body");
                return StatusCode::REQUEST_TIMEOUT;
            }
        };
        let message = match parse(&raw) {
            Ok(m) => m,
            Err(e) => {
                if self.rejections.note(|| format!("malformed app={app_key}")) {
                    tracing::warn!(app_key, error = %e, bytes = raw.len(), "push is not valid XML for the platform");
                }
                rejected("malformed");
                return StatusCode::BAD_REQUEST;
            }
        };
        let dedup_key = message.dedup_key();
        let push = Push {
            app_key: app_key.to_owned(),
            message,
            dedup_key,
            raw,
        };
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.config.accept_deadline, self.inbox.accept(push)).await;
        metrics::histogram!("pubbot_webhook_accept_seconds")
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(accepted)) => {
                self.verifier.remember(verified, now_secs());
                let label = match accepted {
                    Accepted::New => "accepted",
                    Accepted::Duplicate => "duplicate",
                };
                metrics::counter!("pubbot_webhook_pushes_total", "outcome" => label, "reason" => "").increment(1);
                StatusCode::OK
            }
            Ok(Err(InboxError::Refused(why))) => {
                tracing::warn!(app_key, reason = %why, "inbox refused push");
                rejected("refused");
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Ok(Err(InboxError::Unavailable(why))) => {
                tracing::warn!(app_key, reason = %why, "push not stored; no answer, the platform will retry");
                self.unanswered(started, "unavailable").await
            }
            Err(_) => {
                tracing::warn!(app_key, deadline = ?self.config.accept_deadline, "push not stored in time; no answer, the platform will retry");
                self.unanswered(started, "deadline").await
            }
        }
    }

    /// R15: no answer for a push that is not durable. Held until the
    /// platform has timed out on this try; the `503` then reaches a
    /// connection the platform has already dropped.
    async fn unanswered(&self, started: Instant, reason: &'static str) -> StatusCode {
        metrics::counter!("pubbot_webhook_pushes_total", "outcome" => "unanswered", "reason" => reason)
            .increment(1);
        tokio::time::sleep_until((started + self.config.unanswered_hold).into()).await;
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn refuse(&self, app_key: &str, r: &Rejection) -> StatusCode {
        if self
            .rejections
            .note(|| format!("{} app={app_key}", r.reason()))
        {
            tracing::warn!(app_key, reason = r.reason(), detail = %r, "push rejected");
        }
        rejected(r.reason());
        r.status()
    }
}

async fn receive<I: Inbox>(
    State(hook): State<Arc<Webhook<I>>>,
    Path(app_key): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let status = hook.handle(&app_key, query.as_deref(), body).await;
    if status == StatusCode::REQUEST_TIMEOUT {
        // A client that trickles its body loses its connection too.
        return (status, [(axum::http::header::CONNECTION, "close")]).into_response();
    }
    status.into_response()
}
