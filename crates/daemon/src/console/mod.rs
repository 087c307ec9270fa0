//! The web console: the pages the people who write a shop's replies,
//! schedule its broadcasts and read what users wrote work in (issue 24).
//!
//! It is served on a listener of its own (`console.listen`, off by
//! default, never the webhook's address) by every replica that has it on;
//! everything it keeps — users, sessions, the audit log — is in
//! PostgreSQL, so any replica serves any request. Pages are rendered on
//! the server from the templates in `console/templates` (minijinja, loaded
//! once at start, HTML-escaped) and work without JavaScript; the one
//! vendored-free script (`static/console.js`) adds live rule validation
//! and a conversation that refreshes itself.
//!
//! # Rooms and writes
//!
//! The console owns the writes of its own tables (`console_users`,
//! `console_sessions`, `console_login_failures`, `console_audit`). Every
//! other change goes through the room that owns its table: rules through
//! [`crate::pipeline::rules`], a failed reply's retry through
//! [`crate::admin::inspect::retry`], broadcasts through [`crate::mass`] —
//! the same functions the CLI calls, so the console cannot do what the CLI
//! would refuse (a second daily schedule, a one-off on a day a daily send
//! holds) and says why in the same words.
//!
//! # Security
//!
//! - Who: console users with a role ([`Role`]); `viewer` reads, `editor`
//!   also changes rules, menus and broadcasts, `admin` everything. Every
//!   change checks the role on the server; pages only hide what a role
//!   cannot do.
//! - Sessions: a random cookie (`HttpOnly`, `SameSite=Strict`, `Secure`
//!   unless `console.secure_cookies = false`, scoped to the path prefix),
//!   stored as its SHA-256 only.
//! - CSRF: every POST carries the session's token in `_csrf`, checked in
//!   one place ([`auth::gate`]) before any handler runs; the sign-in form
//!   carries a token bound to a cookie of its own.
//! - Sign-ins: argon2id hashes; failures are counted per name and per
//!   client address over `console.login_window_secs`.
//! - Nothing secret is rendered: pages show app keys and account ids, never
//!   an app's secret, a handler's secret or the database URL (a test
//!   searches every page for them).
//! - Every change is written to the audit log (who, when, what), shown on
//!   the Audit page.

mod accounts;
mod audit;
pub mod auth;
mod broadcasts;
mod conversations;
mod pages;
mod rules;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Role;

use crate::clock::Clock;
use crate::config::Settings;

/// What every page handler shares.
pub(crate) struct Console {
    pool: PgPool,
    settings: Arc<Settings>,
    options: pubbot_rules::Options,
    clock: Arc<dyn Clock>,
    pages: minijinja::Environment<'static>,
    /// `console.path_prefix`: every link and the cookie's path start here.
    base: String,
}

type Shared = State<Arc<Console>>;

/// Why a page could not be shown or a change not made. 4xx carry text fit
/// for the person at the browser; a 5xx says nothing internal and is
/// logged once, here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    /// Not signed in: to the sign-in page.
    #[error("sign in first")]
    SignIn(String),
    /// The role does not allow it.
    #[error("your role ({0}) cannot do this; ask an admin")]
    Forbidden(Role),
    /// A form without the right CSRF token.
    #[error("this form did not come from a page of this console, or it expired (CSRF token missing or wrong); reload the page and try again")]
    Csrf,
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Too many failed sign-ins.
    #[error("too many failed sign-ins; try again in {0} minutes")]
    TooMany(u64),
    /// Anything else: the database, a template.
    #[error("internal")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<minijinja::Error> for PageError {
    fn from(e: minijinja::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::SignIn(to) => return Redirect::to(to).into_response(),
            Self::Forbidden(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console page failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let text = if status.is_server_error() {
            "Something went wrong on the server; it is in the daemon's log.".to_owned()
        } else {
            self.to_string()
        };
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{code} · pubbot</title></head><body><main><h1>{code}</h1><p role=\"alert\">{text}</p><p><a href=\"javascript:history.back()\">Back</a></p></main></body></html>",
            code = status.as_u16(),
            text = escape(&text)
        );
        (status, Html(body)).into_response()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("home.html", include_str!("templates/home.html")),
    ("rules.html", include_str!("templates/rules.html")),
    ("rule_edit.html", include_str!("templates/rule_edit.html")),
    (
        "rules_import.html",
        include_str!("templates/rules_import.html"),
    ),
    ("rules_try.html", include_str!("templates/rules_try.html")),
    (
        "conversations.html",
        include_str!("templates/conversations.html"),
    ),
    (
        "conversation.html",
        include_str!("templates/conversation.html"),
    ),
    ("thread.html", include_str!("templates/thread.html")),
    ("scope.html", include_str!("templates/scope.html")),
    ("broadcasts.html", include_str!("templates/broadcasts.html")),
    ("followers.html", include_str!("templates/followers.html")),
    ("menus.html", include_str!("templates/menus.html")),
    ("stats.html", include_str!("templates/stats.html")),
    ("audit.html", include_str!("templates/audit.html")),
];

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// The page templates, parsed once: a template that does not parse stops
/// the start, not a request.
///
/// # Errors
/// A template's syntax error, naming it.
pub(crate) fn templates() -> Result<minijinja::Environment<'static>, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    env.add_filter("urlencode", |s: Option<String>| {
        auth::urlencode(s.as_deref().unwrap_or(""))
    });
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

impl Console {
    /// Renders page `name` with `ctx`.
    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Html<String>, PageError> {
        Ok(Html(self.pages.get_template(name)?.render(ctx)?))
    }

    /// Every account pages can be about: the configured apps' listed
    /// accounts and every account seen in the database.
    async fn accounts(&self) -> Result<Vec<(String, String)>, PageError> {
        let mut out: Vec<(String, String)> =
            sqlx::query!("SELECT app_key, mcid FROM accounts ORDER BY app_key, mcid")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| (r.app_key, r.mcid))
                .collect();
        for app in &self.settings.apps {
            for m in app.accounts.listed() {
                if !out.iter().any(|(a, b)| a == &app.key && b == m) {
                    out.push((app.key.clone(), m.clone()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The account a page is about: the one asked for, else the first.
    async fn scope(&self, q: &ScopeQuery) -> Result<Scope, PageError> {
        let all = self.accounts().await?;
        let picked = match (&q.app, &q.mcid) {
            (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => Some((a.clone(), m.clone())),
            _ => all.first().cloned(),
        };
        Ok(Scope { picked, all })
    }
}

/// `?app=...&mcid=...` on a page about one account.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ScopeQuery {
    app: Option<String>,
    mcid: Option<String>,
}

/// The account a page shows, and every account to pick from.
pub(crate) struct Scope {
    picked: Option<(String, String)>,
    all: Vec<(String, String)>,
}

impl Scope {
    fn value(&self) -> minijinja::Value {
        minijinja::context! {
            app => self.picked.as_ref().map(|p| p.0.clone()),
            mcid => self.picked.as_ref().map(|p| p.1.clone()),
            all => self.all.iter().map(|(a, m)| minijinja::context! { app => a, mcid => m }).collect::<Vec<_>>(),
        }
    }

    fn require(&self) -> Result<(String, String), PageError> {
        self.picked.clone().ok_or_else(|| {
            PageError::NotFound(
                "no account is configured yet (apps.accounts in the configuration)".into(),
            )
        })
    }
}

/// The console's routes, under `console.path_prefix`.
pub(crate) fn router(console: Arc<Console>) -> Router {
    let pages = Router::new()
        .route("/", get(pages::home))
        .route("/rules", get(rules::list))
        .route("/rules/new", get(rules::new_form).post(rules::create))
        .route("/rules/check", post(rules::check))
        .route("/rules/export", get(rules::export))
        .route("/rules/import", get(rules::import_form).post(rules::import))
        .route("/rules/try", get(rules::try_form).post(rules::try_message))
        .route("/rules/{id}", get(rules::edit_form).post(rules::update))
        .route("/rules/{id}/enabled", post(rules::set_enabled))
        .route("/rules/{id}/priority", post(rules::set_priority))
        .route("/rules/{id}/delete", post(rules::delete))
        .route("/conversations", get(conversations::list))
        .route("/conversations/{user}", get(conversations::show))
        .route("/conversations/{user}/hold", post(conversations::hold))
        .route(
            "/conversations/{user}/release",
            post(conversations::release),
        )
        .route(
            "/conversations/{user}/message",
            post(conversations::message),
        )
        .route("/replies/{id}/retry", post(conversations::retry))
        .route("/broadcasts", get(broadcasts::page))
        .route("/broadcasts/daily", post(broadcasts::daily))
        .route("/broadcasts/once", post(broadcasts::once))
        .route("/broadcasts/{id}/cancel", post(broadcasts::cancel))
        .route("/broadcasts/{id}/resolve", post(broadcasts::resolve))
        .route("/schedules/{id}/cancel", post(broadcasts::cancel_schedule))
        .route("/followers", get(accounts::followers))
        .route("/menus", get(accounts::menus).post(accounts::menu_apply))
        .route("/stats", get(stats::page))
        .route("/audit", get(audit::page))
        .route("/logout", post(auth::logout))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            auth::gate,
        ))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(Arc::clone(&console));
    if console.base.is_empty() {
        pages
    } else {
        // Behind a proxy that forwards the prefix: the prefix is taken off
        // before routing (`/pubbot` and `/pubbot/` are the overview);
        // anything outside it is not the console's.
        Router::new()
            .fallback_service(pages)
            .layer(axum::middleware::map_request_with_state(
                console.base.clone(),
                strip_prefix,
            ))
    }
}

async fn strip_prefix(
    State(base): State<String>,
    mut req: axum::extract::Request,
) -> axum::extract::Request {
    let path = req.uri().path();
    let rest = match path.strip_prefix(base.as_str()) {
        Some("") => "/".to_owned(),
        Some(r) if r.starts_with('/') => r.to_owned(),
        _ => "/-/not-the-console".to_owned(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{rest}{query}").parse() {
        *req.uri_mut() = uri;
    }
    req
}

async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
}

/// Binds `console.listen` (when set) and serves the console until `stop`.
/// Returns the bound address.
///
/// # Errors
/// The address cannot be bound, or a template does not parse.
pub(crate) async fn start(
    settings: Arc<Settings>,
    pool: PgPool,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Option<SocketAddr>> {
    use anyhow::Context as _;
    let Some(at) = settings.console.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("binding console.listen {at}"))?;
    let addr = listener.local_addr()?;
    let options =
        pubbot_rules::Options::with_timezone(&settings.timezone).map_err(anyhow::Error::msg)?;
    let console = Arc::new(Console {
        pool,
        base: settings.console.path_prefix.clone(),
        settings,
        options,
        clock,
        pages: templates().context("console templates")?,
    });
    let app = router(console).into_make_service_with_connect_info::<SocketAddr>();
    tasks.spawn(async move {
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "console listener stopped");
        }
    });
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_parses() {
        super::templates().expect("templates parse");
    }
}
