//! The client: one method per endpoint, signing, answers, retries.

mod accounts;
mod followers;
mod media;
mod menus;
mod messages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use crate::error::{Error, ErrorCode};
use crate::sign::{Signature, TimestampUnit};
use crate::types::{MediaRef, Message, UserId};

/// When and how often to try a failed call again. Only errors for which
/// [`Error::is_retryable`] is true are retried; sends (not idempotent on the
/// platform) only when `include_sends` is set.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First pause.
    pub min_delay: Duration,
    /// Longest pause.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// Upper bound on the pauses added up.
    pub max_total_delay: Duration,
    /// Also retry message sends (may deliver twice after a timeout).
    pub include_sends: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: 4,
            max_total_delay: Duration::from_secs(30),
            include_sends: false,
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    app_key: String,
    secret: SecretString,
    base_url: String,
    unit: TimestampUnit,
    connect_timeout: Duration,
    timeout: Duration,
    retry: Option<RetryPolicy>,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// `RC-Timestamp` in seconds (default) or milliseconds (R2).
    #[must_use]
    pub fn timestamp_unit(mut self, unit: TimestampUnit) -> Self {
        self.unit = unit;
        self
    }

    /// Connect timeout (default 5 s). Ignored with [`Self::http_client`].
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Timeout of a whole request, answer included (default 10 s).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Retries retryable errors (off by default).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Shares a connection pool with other clients (several apps, one pool).
    #[must_use]
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// # Errors
    /// When the base URL does not parse or the HTTP client cannot be built.
    pub fn build(self) -> Result<Client, Error> {
        let mut base = self.base_url.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base = Url::parse(&base)?;
        let http = match self.http {
            Some(h) => h,
            None => http_builder()
                .connect_timeout(self.connect_timeout)
                .build()
                .map_err(Error::Connect)?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                app_key: self.app_key,
                secret: self.secret,
                base,
                unit: self.unit,
                timeout: self.timeout,
                retry: self.retry,
                http,
                endpoints: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }
}

struct Inner {
    app_key: String,
    secret: SecretString,
    base: Url,
    unit: TimestampUnit,
    timeout: Duration,
    retry: Option<RetryPolicy>,
    http: reqwest::Client,
    /// Endpoint URLs, resolved against the base once each (parsing a URL
    /// on every call showed in the daemon's profile).
    endpoints: std::sync::Mutex<HashMap<&'static str, Url>>,
}

/// The HTTP client a [`Client`] builds for itself, for callers that share
/// one between apps ([`ClientBuilder::http_client`]): no redirects followed
/// (the platform's API answers, it does not redirect; a redirect is an
/// error to see, not a hop to take with a signed body) and no retries of
/// reqwest's own (the only retries are this crate's, counted and
/// configured).
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("pubbot-api-client/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
}

/// A typed, signed client for one app. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("app_key", &self.inner.app_key)
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// What one chunk of a chunked call did.
#[derive(Debug)]
pub struct ChunkOutcome {
    /// The users of this chunk.
    pub users: Vec<UserId>,
    /// Its result.
    pub result: Result<(), Error>,
}

#[derive(Debug, Clone)]
enum Payload {
    Form(Vec<(&'static str, String)>),
    Json(Value),
    File { name: String, bytes: Bytes },
}

/// Whether a call may be repeated without changing the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// Where the signature goes: headers, or the query string (the upload
/// endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignIn {
    Headers,
    Query,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(512);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn transport(e: reqwest::Error) -> Error {
    // Connect first: a connect timeout is also a timeout, but nothing left.
    if e.is_connect() {
        Error::Connect(e)
    } else if e.is_timeout() {
        Error::Timeout
    } else {
        Error::Transport(e)
    }
}

/// Reads an answer: HTTP 401 is a signature error (R1); a non-zero
/// `errcode` is a platform error whatever the status; other non-2xx are
/// HTTP errors.
fn interpret(status: StatusCode, body: &str) -> Result<Value, Error> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let errmsg = parsed
        .as_ref()
        .and_then(|v| v.get("errmsg"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if status == StatusCode::UNAUTHORIZED {
        return Err(Error::Signature(errmsg.unwrap_or_else(|| cut(body))));
    }
    if let Some(code) = parsed
        .as_ref()
        .and_then(|v| v.get("errcode"))
        .and_then(Value::as_i64)
    {
        if code != 0 {
            return Err(Error::Platform {
                code: ErrorCode::from_code(code),
                message: errmsg.unwrap_or_default(),
            });
        }
    }
    if !status.is_success() {
        return Err(Error::Http {
            status: status.as_u16(),
            body: cut(body),
        });
    }
    parsed.ok_or_else(|| Error::Decode {
        reason: "not JSON".into(),
        body: cut(body),
    })
}

fn decode<T: serde::de::DeserializeOwned>(v: Value, key: Option<&str>) -> Result<T, Error> {
    let body = cut(&v.to_string());
    let v = match key {
        Some(k) => v.get(k).cloned().ok_or_else(|| Error::Decode {
            reason: format!("no {k:?}"),
            body: body.clone(),
        })?,
        None => v,
    };
    serde_json::from_value(v).map_err(|e| Error::Decode {
        reason: e.to_string(),
        body,
    })
}

fn message_body(msg: &Message) -> (&'static str, Value) {
    let media = |m: &MediaRef| match m {
        MediaRef::Uploaded(id) => json!({"media_id": id}),
        MediaRef::Url(u) => json!({"url": u}),
    };
    match msg {
        Message::Text(t) => ("text", json!({"content": t})),
        Message::Image(m) => ("image", media(m)),
        Message::Voice(m) => ("voice", media(m)),
        Message::News(a) => ("news", json!({"articles": a})),
        Message::MpNews(id) => ("mpnews", json!({"media_id": id})),
    }
}

impl Client {
    /// Starts a client for one app: its key, its secret and the platform's
    /// base URL ("your own domain or IP + port").
    pub fn builder(
        app_key: impl Into<String>,
        secret: SecretString,
        base_url: impl Into<String>,
    ) -> ClientBuilder {
        ClientBuilder {
            app_key: app_key.into(),
            secret,
            base_url: base_url.into(),
            unit: TimestampUnit::Seconds,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            retry: None,
            http: None,
        }
    }

    /// The app key.
    pub fn app_key(&self) -> &str {
        &self.inner.app_key
    }

    fn address(&self, id: &str) -> String {
        format!("{id}@{}", self.inner.app_key)
    }

    async fn call(
        &self,
        path: &'static str,
        sign_in: SignIn,
        payload: Payload,
        idempotent: Idempotent,
    ) -> Result<Value, Error> {
        let policy = match &self.inner.retry {
            Some(p) if idempotent == Idempotent::Yes || p.include_sends => p.clone(),
            _ => return self.once(path, sign_in, &payload).await,
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries)
            .with_total_delay(Some(policy.max_total_delay))
            .with_jitter();
        (|| self.once(path, sign_in, &payload))
            .retry(backoff)
            .when(Error::is_retryable)
            .notify(|e, pause| tracing::warn!(endpoint = path, error = %e, ?pause, "retrying"))
            .await
    }

    #[tracing::instrument(name = "platform_call", skip_all, fields(endpoint = path, app_key = %self.inner.app_key))]
    async fn once(
        &self,
        path: &'static str,
        sign_in: SignIn,
        payload: &Payload,
    ) -> Result<Value, Error> {
        let sig = Signature::now(self.inner.secret.expose_secret(), self.inner.unit);
        let mut url = self.endpoint(path)?;
        if sign_in == SignIn::Query {
            url.query_pairs_mut()
                .append_pair("RC-App-Key", &self.inner.app_key)
                .append_pair("RC-Nonce", &sig.nonce)
                .append_pair("RC-Timestamp", &sig.timestamp)
                .append_pair("RC-Signature", &sig.signature);
        }
        let mut req = self.inner.http.post(url).timeout(self.inner.timeout);
        if sign_in == SignIn::Headers {
            req = req
                .header("RC-App-Key", &self.inner.app_key)
                .header("RC-Nonce", &sig.nonce)
                .header("RC-Timestamp", &sig.timestamp)
                .header("RC-Signature", &sig.signature);
        }
        req = match payload {
            Payload::Form(f) => req.form(f),
            Payload::Json(v) => req.json(v),
            Payload::File { name, bytes } => {
                let part = reqwest::multipart::Part::stream(bytes.clone()).file_name(name.clone());
                req.multipart(reqwest::multipart::Form::new().part("file", part))
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.text().await.map_err(transport)?;
        let result = interpret(status, &body);
        match &result {
            Ok(_) => tracing::debug!(status = status.as_u16(), "ok"),
            Err(e) => tracing::debug!(status = status.as_u16(), error = %e, "refused"),
        }
        result
    }

    fn endpoint(&self, path: &'static str) -> Result<Url, Error> {
        let mut known = self
            .inner
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(url) = known.get(path) {
            return Ok(url.clone());
        }
        let url = self.inner.base.join(path.trim_start_matches('/'))?;
        known.insert(path, url.clone());
        Ok(url)
    }

    fn form(&self, pairs: &[(&'static str, &str)], with_app_key: bool) -> Payload {
        let mut f: Vec<(&'static str, String)> =
            pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if with_app_key {
            // R12: RC-App-Key is also a form field where the table lists it.
            f.push(("RC-App-Key", self.inner.app_key.clone()));
        }
        Payload::Form(f)
    }
}
