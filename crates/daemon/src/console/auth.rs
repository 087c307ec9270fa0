//! Who is at the browser: console users and their roles, sign-in with
//! argon2id hashes (rate limited), sessions in PostgreSQL, the trusted
//! proxy header, and the CSRF check every form passes through ([`gate`]).

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::{Console, PageError, Shared};

/// What a console user may do; each role can do what the ones before it
/// can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page.
    Viewer,
    /// Also changes rules, menus and broadcasts, and retries replies.
    Editor,
    /// Everything.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "editor" => Ok(Self::Editor),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (viewer, editor, admin)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        })
    }
}

/// The signed-in person, put in every gated request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Staff {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) csrf: String,
}

impl Staff {
    /// Refuses unless the role is at least `role`.
    pub(crate) fn require(&self, role: Role) -> Result<(), PageError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(PageError::Forbidden(self.role))
        }
    }

    pub(crate) fn value(&self) -> minijinja::Value {
        minijinja::context! {
            name => self.name,
            role => self.role.to_string(),
            csrf => self.csrf,
            can_edit => self.role >= Role::Editor,
            is_admin => self.role >= Role::Admin,
        }
    }
}

const SESSION_COOKIE: &str = "pubbot_session";
const LOGIN_COOKIE: &str = "pubbot_login";
/// Largest form body the gate reads (a rule file pasted for import fits).
const MAX_FORM_BYTES: usize = 1 << 20;

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(c: &Console, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let path = if c.base.is_empty() { "/" } else { &c.base };
    let secure = if c.settings.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Strict{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Hashes a password (argon2id, a fresh salt).
///
/// # Errors
/// Only if argon2 refuses its own parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Adds a console user, or changes an existing one's role and password
/// (`pubbot console user add`). Written to the audit log as `cli`.
///
/// # Errors
/// A password shorter than 10 characters, or the database.
pub async fn add_user(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: Option<&str>,
) -> anyhow::Result<bool> {
    if name.trim().is_empty() || name.len() > 64 {
        anyhow::bail!("a user name is 1 to 64 characters");
    }
    let hash = match password {
        Some(p) if p.chars().count() < 10 => {
            anyhow::bail!("a password has at least 10 characters")
        }
        Some(p) => Some(hash_password(p)?),
        None => None,
    };
    let mut tx = pool.begin().await?;
    let existed = sqlx::query_scalar!(
        r#"INSERT INTO console_users (name, role, password_hash) VALUES ($1, $2, $3)
           ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash
           RETURNING (xmax <> 0) AS "existed!""#,
        name,
        role.to_string(),
        hash
    )
    .fetch_one(&mut *tx)
    .await?;
    // A changed password or role ends the user's sessions.
    sqlx::query!("DELETE FROM console_sessions WHERE user_name = $1", name)
        .execute(&mut *tx)
        .await?;
    super::audit::record_in(
        &mut tx,
        "cli",
        if existed { "user.update" } else { "user.add" },
        name,
        serde_json::json!({ "role": role.to_string(), "password": hash.is_some() }),
    )
    .await?;
    tx.commit().await?;
    Ok(existed)
}

/// Removes a console user and their sessions.
///
/// # Errors
/// The database; no such user.
pub async fn remove_user(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query!("DELETE FROM console_users WHERE name = $1", name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        anyhow::bail!("no console user named {name:?}");
    }
    super::audit::record_in(&mut tx, "cli", "user.remove", name, serde_json::json!({})).await?;
    tx.commit().await?;
    Ok(())
}

/// A console user as `pubbot console user list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserLine {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Whether they can sign in with a password (else only by proxy).
    pub password: bool,
    /// Sessions open now.
    pub sessions: i64,
}

/// Every console user.
///
/// # Errors
/// The database.
pub async fn users(pool: &PgPool) -> Result<Vec<UserLine>, sqlx::Error> {
    sqlx::query_as!(
        UserLine,
        r#"SELECT u.name, u.role, u.password_hash IS NOT NULL AS "password!",
                  (SELECT count(*) FROM console_sessions s WHERE s.user_name = u.name AND s.expires_at > now()) AS "sessions!"
             FROM console_users u ORDER BY u.name"#
    )
    .fetch_all(pool)
    .await
}

async fn open_session(c: &Console, user: &str) -> Result<(String, String), sqlx::Error> {
    let token = random_token();
    let csrf = random_token();
    sqlx::query!(
        "INSERT INTO console_sessions (token_hash, user_name, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        token_hash(&token),
        user,
        csrf,
        c.settings.console.session_hours as i32
    )
    .execute(&c.pool)
    .await?;
    // Expired sessions of anyone go with each sign-in: the table stays the
    // size of the people using the console.
    sqlx::query!("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(&c.pool)
        .await?;
    Ok((token, csrf))
}

async fn session(c: &Console, token: &str) -> Result<Option<Staff>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT u.name, u.role, s.csrf_token FROM console_sessions s
           JOIN console_users u ON u.name = s.user_name
          WHERE s.token_hash = $1 AND s.expires_at > now()",
        token_hash(token)
    )
    .fetch_optional(&c.pool)
    .await?;
    Ok(row.and_then(|r| {
        Some(Staff {
            name: r.name,
            role: r.role.parse().ok()?,
            csrf: r.csrf_token,
        })
    }))
}

/// The proxy-signed-in user, when the header is configured, set, and
/// comes from a trusted proxy.
async fn proxy_user(
    c: &Console,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Option<(String, Role)>, PageError> {
    let cfg = &c.settings.console;
    if cfg.trusted_user_header.is_empty()
        || !cfg.trusted_proxies.iter().any(|n| n.contains(&peer.ip()))
    {
        return Ok(None);
    }
    let Some(name) = headers
        .get(cfg.trusted_user_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    let stored = sqlx::query_scalar!("SELECT role FROM console_users WHERE name = $1", name)
        .fetch_optional(&c.pool)
        .await?;
    let role = match stored {
        Some(r) => r.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        None if cfg.proxy_default_role.is_empty() => {
            return Err(PageError::Forbidden(Role::Viewer));
        }
        None => {
            let role: Role = cfg
                .proxy_default_role
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            sqlx::query!(
                "INSERT INTO console_users (name, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                name,
                role.to_string()
            )
            .execute(&c.pool)
            .await?;
            role
        }
    };
    Ok(Some((name.to_owned(), role)))
}

/// Every page but sign-in and the static files passes here: finds the
/// signed-in person (session cookie, or the trusted proxy header), sends
/// everyone else to sign in, and refuses a POST whose `_csrf` field is not
/// the session's token — before any handler sees it.
pub(crate) async fn gate(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match pass(&c, peer, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn pass(
    c: &Console,
    peer: SocketAddr,
    req: Request,
    next: Next,
) -> Result<Response, PageError> {
    let mut staff = match cookie(req.headers(), SESSION_COOKIE) {
        Some(t) => session(c, &t).await?,
        None => None,
    };
    let mut new_cookie = None;
    if let Some((name, role)) = proxy_user(c, peer, req.headers()).await? {
        if staff.as_ref().is_none_or(|s| s.name != name) {
            let (token, csrf) = open_session(c, &name).await?;
            new_cookie = Some(token);
            staff = Some(Staff { name, role, csrf });
        }
    }
    let Some(staff) = staff else {
        let next_path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let to = if req.method() == Method::GET {
            format!(
                "{}/login?next={}",
                c.base,
                urlencode(&format!("{}{next_path}", c.base))
            )
        } else {
            format!("{}/login", c.base)
        };
        return Err(PageError::SignIn(to));
    };
    let (mut parts, body) = req.into_parts();
    let body = if parts.method == Method::POST {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| PageError::BadRequest("the form is too large (1 MiB at most)".into()))?;
        let sent = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "_csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(staff.csrf.as_bytes())) {
            tracing::warn!(user = %staff.name, path = %parts.uri.path(), "console form refused: CSRF token missing or wrong");
            return Err(PageError::Csrf);
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(staff);
    let mut res = next.run(Request::from_parts(parts, body)).await;
    if let Some(token) = new_cookie {
        res.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(c, SESSION_COOKIE, &token, None),
        );
    }
    Ok(res)
}

pub(crate) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// `GET /login`.
pub(crate) async fn login_form(
    State(c): Shared,
    Query(q): Query<LoginQuery>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    login_page(
        &c,
        &headers,
        q.next.as_deref().unwrap_or(""),
        "",
        None,
        axum::http::StatusCode::OK,
    )
}

fn login_page(
    c: &Console,
    headers: &HeaderMap,
    next: &str,
    name: &str,
    error: Option<String>,
    status: axum::http::StatusCode,
) -> Result<Response, PageError> {
    // The browser's token is kept while it looks like one of ours: a second
    // sign-in page loaded meanwhile (another tab, the favicon's redirect)
    // must not invalidate the form on screen.
    let token = cookie(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(random_token);
    let page = c.render(
        "login.html",
        minijinja::context! { base => c.base, next, name, error, csrf => token, staff => minijinja::Value::from(()) },
    )?;
    let mut res = (status, page).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(c, LOGIN_COOKIE, &token, Some(3600)),
    );
    Ok(res)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

/// `POST /login`: checks the sign-in form's own CSRF token, the rate
/// limit, then the password.
pub(crate) async fn login(
    State(c): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(f.csrf.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(PageError::Csrf);
    }
    let cfg = &c.settings.console;
    let peer_s = peer.ip().to_string();
    let failures = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE user_name = $1) AS "by_name!",
                  count(*) FILTER (WHERE peer = $2) AS "by_peer!"
             FROM console_login_failures
            WHERE at > now() - make_interval(secs => $3) AND (user_name = $1 OR peer = $2)"#,
        f.name,
        peer_s,
        cfg.login_window_secs as f64
    )
    .fetch_one(&c.pool)
    .await?;
    let max = i64::from(cfg.login_max_failures);
    if failures.by_name >= max || failures.by_peer >= max {
        tracing::warn!(user = %f.name, peer = %peer_s, "console sign-in refused: too many failures");
        return Err(PageError::TooMany(cfg.login_window_secs.div_ceil(60)));
    }
    let hash = sqlx::query_scalar!(
        "SELECT password_hash FROM console_users WHERE name = $1",
        f.name
    )
    .fetch_optional(&c.pool)
    .await?
    .flatten();
    let ok = match &hash {
        Some(h) => {
            let (password, h) = (f.password.clone(), h.clone());
            tokio::task::spawn_blocking(move || verify(&password, &h))
                .await
                .unwrap_or(false)
        }
        None => false,
    };
    if !ok {
        sqlx::query!(
            "INSERT INTO console_login_failures (user_name, peer) VALUES ($1, $2)",
            f.name,
            peer_s
        )
        .execute(&c.pool)
        .await?;
        sqlx::query!("DELETE FROM console_login_failures WHERE at < now() - interval '1 day'")
            .execute(&c.pool)
            .await?;
        tracing::info!(user = %f.name, peer = %peer_s, "console sign-in failed");
        return login_page(
            &c,
            &headers,
            &f.next,
            &f.name,
            Some("Wrong name or password.".into()),
            axum::http::StatusCode::UNAUTHORIZED,
        );
    }
    sqlx::query!(
        "DELETE FROM console_login_failures WHERE user_name = $1",
        f.name
    )
    .execute(&c.pool)
    .await?;
    let (token, _) = open_session(&c, &f.name).await?;
    super::audit::record(
        &c.pool,
        &f.name,
        "session.sign_in",
        &peer_s,
        serde_json::json!({}),
    )
    .await?;
    // Only a path of this console: never an open redirect.
    let to = if f.next.starts_with(&format!("{}/", c.base)) && !f.next.starts_with("//") {
        f.next.clone()
    } else {
        format!("{}/", c.base)
    };
    let mut res = Redirect::to(&to).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&c, SESSION_COOKIE, &token, None),
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&c, LOGIN_COOKIE, "", Some(0)),
    );
    Ok(res)
}

/// `POST /logout`.
pub(crate) async fn logout(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        sqlx::query!(
            "DELETE FROM console_sessions WHERE token_hash = $1",
            token_hash(&t)
        )
        .execute(&c.pool)
        .await?;
    }
    tracing::debug!(user = %staff.name, "console sign-out");
    let mut res = Redirect::to(&format!("{}/login", c.base)).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&c, SESSION_COOKIE, "", Some(0)),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_and_nothing_else() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterz", &h));
        assert!(!verify("correct horse battery", "not a hash"));
    }

    #[test]
    fn roles_are_ordered_and_parse_from_their_names() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        for r in [Role::Viewer, Role::Editor, Role::Admin] {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("viewer, editor, admin"));
    }
}
