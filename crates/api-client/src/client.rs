//! The client: one method per endpoint, signing, answers, retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use crate::error::{Error, ErrorCode, Invalid};
use crate::sign::{Signature, TimestampUnit};
use crate::types::{
    AccountInfo, AccountProfile, MassMsgId, McId, MediaKind, MediaRef, MenuAction, MenuId,
    MenuItem, Message, NewAccount, NewMenuItem, NewsMaterial, UploadedMedia, UserId,
};
use crate::validate;

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

    // ----- accounts ---------------------------------------------------------

    /// `/mc/add.json`: creates an account.
    ///
    /// # Errors
    /// `1002` when the mcid exists already; see [`Error`].
    pub async fn add_account(&self, account: &NewAccount) -> Result<AccountInfo, Error> {
        let ui = account.profile.ui_type.to_string();
        let p = &account.profile;
        let form = self.form(
            &[
                ("mcid", account.mcid.as_str()),
                ("displayName", &p.display_name),
                ("portraitUrl", &p.portrait_url),
                ("uiType", &ui),
                ("introduction", &p.introduction),
                ("isFollow", if account.is_follow { "true" } else { "false" }),
                ("routeUrl", &account.route_url),
            ],
            true,
        );
        decode(
            self.call("/mc/add.json", SignIn::Headers, form, Idempotent::No)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/refresh.json`: updates the profile.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn refresh_account(
        &self,
        mcid: &McId,
        profile: &AccountProfile,
    ) -> Result<AccountInfo, Error> {
        let ui = profile.ui_type.to_string();
        let form = self.form(
            &[
                ("mcid", mcid.as_str()),
                ("displayName", &profile.display_name),
                ("portraitUrl", &profile.portrait_url),
                ("uiType", &ui),
                ("introduction", &profile.introduction),
            ],
            true,
        );
        decode(
            self.call("/mc/refresh.json", SignIn::Headers, form, Idempotent::Yes)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/info.json`: reads an account.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn account_info(&self, mcid: &McId) -> Result<AccountInfo, Error> {
        let form = self.form(&[("mcid", mcid.as_str())], true);
        decode(
            self.call("/mc/info.json", SignIn::Headers, form, Idempotent::Yes)
                .await?,
            Some("info"),
        )
    }

    /// `/mc/route/setUrl.json`: where pushes go.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_route_url(&self, mcid: &McId, route_url: &str) -> Result<AccountInfo, Error> {
        let form = self.form(&[("mcid", mcid.as_str()), ("routeUrl", route_url)], true);
        decode(
            self.call(
                "/mc/route/setUrl.json",
                SignIn::Headers,
                form,
                Idempotent::Yes,
            )
            .await?,
            Some("info"),
        )
    }

    /// `/mc/route/setSwitch.json`: turns pushes on or off.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn set_route_switch(&self, mcid: &McId, open: bool) -> Result<AccountInfo, Error> {
        let form = self.form(
            &[
                ("mcid", mcid.as_str()),
                ("isOpen", if open { "true" } else { "false" }),
            ],
            true,
        );
        decode(
            self.call(
                "/mc/route/setSwitch.json",
                SignIn::Headers,
                form,
                Idempotent::Yes,
            )
            .await?,
            Some("info"),
        )
    }

    // ----- menus --------------------------------------------------------------

    /// `/mc/menu/refresh.json`: adds a first- or second-level item.
    ///
    /// # Errors
    /// [`Invalid::MenuName`] / [`Invalid::MenuUrlMissing`] before sending;
    /// see [`Error`].
    pub async fn add_menu_item(&self, mcid: &McId, item: &NewMenuItem) -> Result<MenuItem, Error> {
        validate::menu_item(item)?;
        let (kind, url) = match &item.action {
            MenuAction::None => ("0", ""),
            MenuAction::OpenUrl(u) => ("1", u.as_str()),
        };
        let mut pairs = vec![
            ("mcid", mcid.as_str()),
            ("name", item.name.as_str()),
            ("type", kind),
        ];
        if !url.is_empty() {
            pairs.push(("url", url));
        }
        match &item.parent {
            None => pairs.push(("level", "1")),
            Some(pid) => {
                pairs.push(("level", "2"));
                pairs.push(("pid", pid.as_str()));
            }
        }
        let form = self.form(&pairs, false);
        decode(
            self.call(
                "/mc/menu/refresh.json",
                SignIn::Headers,
                form,
                Idempotent::No,
            )
            .await?,
            Some("info"),
        )
    }

    /// `/mc/menu/delete.json`.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn delete_menu_item(&self, mcid: &McId, menu_id: &MenuId) -> Result<(), Error> {
        let form = self.form(
            &[("mcid", mcid.as_str()), ("menuId", menu_id.as_str())],
            false,
        );
        self.call(
            "/mc/menu/delete.json",
            SignIn::Headers,
            form,
            Idempotent::Yes,
        )
        .await
        .map(drop)
    }

    /// `/mc/menu/order.json`: each pair ranks an item among its siblings
    /// (R13).
    ///
    /// # Errors
    /// [`Invalid::EmptyOrder`] before sending; see [`Error`].
    pub async fn order_menu(&self, order: &[(MenuId, i64)]) -> Result<(), Error> {
        if order.is_empty() {
            return Err(Invalid::EmptyOrder.into());
        }
        let mut f = Vec::with_capacity(order.len() * 2);
        for (id, rank) in order {
            f.push(("menuIds", id.as_str().to_owned()));
            f.push(("orders", rank.to_string()));
        }
        self.call(
            "/mc/menu/order.json",
            SignIn::Headers,
            Payload::Form(f),
            Idempotent::Yes,
        )
        .await
        .map(drop)
    }

    // ----- followers ------------------------------------------------------------

    /// `/mc/subscribe.json` (`follow`) or `/mc/unsubscribe.json`: at most 50
    /// users; no event is pushed.
    ///
    /// # Errors
    /// [`Invalid::Recipients`] before sending; see [`Error`].
    pub async fn subscribe(
        &self,
        mcid: &McId,
        users: &[UserId],
        follow: bool,
    ) -> Result<(), Error> {
        validate::recipients(users.len(), validate::SUBSCRIBE_MAX_USERS)?;
        let path = if follow {
            "/mc/subscribe.json"
        } else {
            "/mc/unsubscribe.json"
        };
        let body = json!({"mcId": mcid, "userId": users});
        self.call(path, SignIn::Headers, Payload::Json(body), Idempotent::Yes)
            .await
            .map(drop)
    }

    /// [`Self::subscribe`] for any number of users, in calls of 50.
    ///
    /// # Errors
    /// Only when `users` is empty; each chunk reports its own result.
    pub async fn subscribe_many(
        &self,
        mcid: &McId,
        users: &[UserId],
        follow: bool,
    ) -> Result<Vec<ChunkOutcome>, Error> {
        if users.is_empty() {
            return Err(Invalid::Recipients {
                count: 0,
                max: validate::SUBSCRIBE_MAX_USERS,
            }
            .into());
        }
        let mut out = Vec::new();
        for chunk in users.chunks(validate::SUBSCRIBE_MAX_USERS) {
            let result = self.subscribe(mcid, chunk, follow).await;
            out.push(ChunkOutcome {
                users: chunk.to_vec(),
                result,
            });
        }
        Ok(out)
    }

    // ----- messages ---------------------------------------------------------------

    async fn send_json(&self, path: &'static str, body: Value) -> Result<Value, Error> {
        self.call(path, SignIn::Headers, Payload::Json(body), Idempotent::No)
            .await
    }

    fn one(&self, from: &McId, to: &UserId, msg: &Message) -> Value {
        let (msgtype, inner) = message_body(msg);
        json!({"fromuser": self.address(from.as_str()), "touser": self.address(to.as_str()), "msgtype": msgtype, msgtype: inner})
    }

    fn many(&self, from: &McId, to: &[UserId], msg: &Message) -> Value {
        let (msgtype, inner) = message_body(msg);
        let to: Vec<String> = to.iter().map(|u| self.address(u.as_str())).collect();
        json!({"fromuser": self.address(from.as_str()), "touser": to, "msgtype": msgtype, msgtype: inner})
    }

    fn all(&self, from: &McId, msg: &Message, filter: bool) -> Value {
        let (msgtype, inner) = message_body(msg);
        let mut v =
            json!({"fromuser": self.address(from.as_str()), "msgtype": msgtype, msgtype: inner});
        if filter {
            v["filter"] = json!({"is_to_all": true});
        }
        v
    }

    /// `/message/send.json`: to one user; text, news, or image / voice by
    /// uploaded `media_id`.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or a URL media (use
    /// [`Self::operation_send`]); see [`Error`].
    pub async fn send(&self, from: &McId, to: &UserId, msg: &Message) -> Result<(), Error> {
        validate::message(msg)?;
        match msg {
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => {
                return Err(Invalid::Unsupported(
                    "send.json takes uploaded media; send URLs with operation_send",
                )
                .into())
            }
            Message::MpNews(_) => {
                return Err(Invalid::Unsupported("mpnews is for mass sends only").into())
            }
            _ => {}
        }
        self.send_json("/message/send.json", self.one(from, to, msg))
            .await
            .map(drop)
    }

    /// `/message/operation/send.json`: to one user; text, news, or image /
    /// voice by URL.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or uploaded media; see [`Error`].
    pub async fn operation_send(
        &self,
        from: &McId,
        to: &UserId,
        msg: &Message,
    ) -> Result<(), Error> {
        validate::message(msg)?;
        match msg {
            Message::Image(MediaRef::Uploaded(_)) | Message::Voice(MediaRef::Uploaded(_)) => {
                return Err(Invalid::Unsupported(
                    "operation/send.json takes URLs; send uploaded media with send",
                )
                .into())
            }
            Message::MpNews(_) => {
                return Err(Invalid::Unsupported("mpnews is for mass sends only").into())
            }
            _ => {}
        }
        self.send_json("/message/operation/send.json", self.one(from, to, msg))
            .await
            .map(drop)
    }

    /// Sends to one user by the right endpoint: image / voice by URL go to
    /// `operation/send.json`, everything else to `send.json`.
    ///
    /// # Errors
    /// As [`Self::send`] and [`Self::operation_send`].
    pub async fn send_to(&self, from: &McId, to: &UserId, msg: &Message) -> Result<(), Error> {
        match msg {
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => {
                self.operation_send(from, to, msg).await
            }
            _ => self.send(from, to, msg).await,
        }
    }

    /// `/message/batchsend.json`: text or news to at most 100 users.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another message kind; see [`Error`].
    pub async fn batch_send(&self, from: &McId, to: &[UserId], msg: &Message) -> Result<(), Error> {
        validate::recipients(to.len(), validate::BATCH_MAX_USERS)?;
        validate::message(msg)?;
        if !matches!(msg, Message::Text(_) | Message::News(_)) {
            return Err(Invalid::Unsupported("batchsend.json takes text and news; images and voices by URL go to operation_batch_send").into());
        }
        self.send_json("/message/batchsend.json", self.many(from, to, msg))
            .await
            .map(drop)
    }

    /// `/message/operation/batchsend.json`: image or voice by URL to at most
    /// 100 users.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another message kind; see [`Error`].
    pub async fn operation_batch_send(
        &self,
        from: &McId,
        to: &[UserId],
        msg: &Message,
    ) -> Result<(), Error> {
        validate::recipients(to.len(), validate::BATCH_MAX_USERS)?;
        if !matches!(
            msg,
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_))
        ) {
            return Err(Invalid::Unsupported(
                "operation/batchsend.json takes images and voices by URL",
            )
            .into());
        }
        self.send_json(
            "/message/operation/batchsend.json",
            self.many(from, to, msg),
        )
        .await
        .map(drop)
    }

    /// Sends one message to any number of users, in calls of at most 100 by
    /// the right endpoint (text and news: `batchsend`; image / voice by URL:
    /// `operation/batchsend`). Each chunk reports its own result, so a
    /// caller knows exactly which users failed.
    ///
    /// # Errors
    /// Up front, before anything is sent: no users, a broken limit, or a
    /// message no batch endpoint takes (uploaded media, mpnews).
    pub async fn send_to_many(
        &self,
        from: &McId,
        to: &[UserId],
        msg: &Message,
    ) -> Result<Vec<ChunkOutcome>, Error> {
        if to.is_empty() {
            return Err(Invalid::Recipients {
                count: 0,
                max: validate::BATCH_MAX_USERS,
            }
            .into());
        }
        validate::message(msg)?;
        let by_url = match msg {
            Message::Text(_) | Message::News(_) => false,
            Message::Image(MediaRef::Url(_)) | Message::Voice(MediaRef::Url(_)) => true,
            _ => {
                return Err(Invalid::Unsupported(
                    "no batch endpoint takes uploaded media or mpnews",
                )
                .into())
            }
        };
        let mut out = Vec::new();
        for chunk in to.chunks(validate::BATCH_MAX_USERS) {
            let result = if by_url {
                self.operation_batch_send(from, chunk, msg).await
            } else {
                self.batch_send(from, chunk, msg).await
            };
            out.push(ChunkOutcome {
                users: chunk.to_vec(),
                result,
            });
        }
        Ok(out)
    }

    /// `/message/sendall.json`: to every follower, uploaded material (text,
    /// mpnews, image / voice by `media_id`), `filter.is_to_all = true`.
    /// Once per natural day, UTC+8 (R11): a second one is `1007`.
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another kind; see [`Error`].
    pub async fn send_all(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        validate::message(msg)?;
        if !matches!(
            msg,
            Message::Text(_)
                | Message::MpNews(_)
                | Message::Image(MediaRef::Uploaded(_))
                | Message::Voice(MediaRef::Uploaded(_))
        ) {
            return Err(Invalid::Unsupported("sendall.json takes text and uploaded material; news inline and URLs go to operation_send_all").into());
        }
        decode(
            self.send_json("/message/sendall.json", self.all(from, msg, true))
                .await?,
            Some("msg_id"),
        )
    }

    /// `/message/operation/sendall.json`: to every follower, direct (text,
    /// news inline as `news` per R8, image / voice by URL). Once per
    /// natural day (R11).
    ///
    /// # Errors
    /// [`Invalid`] for a broken limit or another kind; see [`Error`].
    pub async fn operation_send_all(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        validate::message(msg)?;
        if !matches!(
            msg,
            Message::Text(_)
                | Message::News(_)
                | Message::Image(MediaRef::Url(_))
                | Message::Voice(MediaRef::Url(_))
        ) {
            return Err(Invalid::Unsupported("operation/sendall.json takes text, news and URLs; uploaded material goes to send_all").into());
        }
        decode(
            self.send_json(
                "/message/operation/sendall.json",
                self.all(from, msg, false),
            )
            .await?,
            Some("msg_id"),
        )
    }

    /// The day's mass send by the right endpoint: news inline and URLs go to
    /// `operation/sendall.json`, the rest to `sendall.json`.
    ///
    /// # Errors
    /// As [`Self::send_all`] and [`Self::operation_send_all`].
    pub async fn broadcast(&self, from: &McId, msg: &Message) -> Result<MassMsgId, Error> {
        match msg {
            Message::News(_)
            | Message::Image(MediaRef::Url(_))
            | Message::Voice(MediaRef::Url(_)) => self.operation_send_all(from, msg).await,
            _ => self.send_all(from, msg).await,
        }
    }

    // ----- media -------------------------------------------------------------------

    /// `/media/upload?type=T`: uploads a file (multipart field `file`,
    /// signature in the query string).
    ///
    /// # Errors
    /// [`Invalid::UploadTooLarge`], [`Invalid::UploadFormat`],
    /// [`Invalid::VoiceTooLong`] before sending; see [`Error`].
    pub async fn upload_media(
        &self,
        kind: MediaKind,
        file_name: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<UploadedMedia, Error> {
        let bytes: Bytes = bytes.into();
        validate::upload(kind, &bytes)?;
        let path = match kind {
            MediaKind::Image => "/media/upload?type=image",
            MediaKind::Thumb => "/media/upload?type=thumb",
            MediaKind::Voice => "/media/upload?type=voice",
        };
        let payload = Payload::File {
            name: file_name.to_owned(),
            bytes,
        };
        decode(
            self.call(path, SignIn::Query, payload, Idempotent::No)
                .await?,
            None,
        )
    }

    /// `/media/uploadnews`: uploads news material (1 to 10 articles) for
    /// `mpnews` mass sends.
    ///
    /// # Errors
    /// [`Invalid`] before sending; see [`Error`].
    pub async fn upload_news(&self, articles: &[NewsMaterial]) -> Result<UploadedMedia, Error> {
        validate::news_material(articles)?;
        let body = json!({"articles": articles});
        decode(
            self.call(
                "/media/uploadnews",
                SignIn::Query,
                Payload::Json(body),
                Idempotent::No,
            )
            .await?,
            None,
        )
    }

    /// The raw JSON body a send of `msg` from `from` to `to` would carry; for
    /// logs and for checking against the document.
    pub fn send_body(&self, from: &McId, to: &UserId, msg: &Message) -> Value {
        self.one(from, to, msg)
    }
}
