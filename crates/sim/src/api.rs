//! The HTTP face of the platform API: routing by path, signature (R1/R2),
//! content types (R12), fault injection, the call log.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::Value;

use crate::error::ApiError;
use crate::signature::{sign, timestamp_secs};
use crate::world::{CallRecord, Form, Source};
use crate::Inner;

/// How an endpoint's body is encoded (R12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Form,
    Json,
    Multipart,
}

/// The 18 endpoints of the READING table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    AddAccount,
    RefreshAccount,
    AccountInfo,
    SetRouteUrl,
    SetRouteSwitch,
    AddMenu,
    DeleteMenu,
    OrderMenus,
    Subscribe,
    Unsubscribe,
    Send,
    OperationSend,
    BatchSend,
    OperationBatchSend,
    SendAll,
    OperationSendAll,
    Upload,
    UploadNews,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/mc/add.json" => Self::AddAccount,
            "/mc/refresh.json" => Self::RefreshAccount,
            "/mc/info.json" => Self::AccountInfo,
            "/mc/route/setUrl.json" => Self::SetRouteUrl,
            "/mc/route/setSwitch.json" => Self::SetRouteSwitch,
            "/mc/menu/refresh.json" => Self::AddMenu,
            "/mc/menu/delete.json" => Self::DeleteMenu,
            "/mc/menu/order.json" => Self::OrderMenus,
            "/mc/subscribe.json" => Self::Subscribe,
            "/mc/unsubscribe.json" => Self::Unsubscribe,
            "/message/send.json" => Self::Send,
            "/message/operation/send.json" => Self::OperationSend,
            "/message/batchsend.json" => Self::BatchSend,
            "/message/operation/batchsend.json" => Self::OperationBatchSend,
            "/message/sendall.json" => Self::SendAll,
            "/message/operation/sendall.json" => Self::OperationSendAll,
            "/media/upload" => Self::Upload,
            "/media/uploadnews" => Self::UploadNews,
            _ => return None,
        })
    }

    fn encoding(self) -> Encoding {
        match self {
            Self::AddAccount
            | Self::RefreshAccount
            | Self::AccountInfo
            | Self::SetRouteUrl
            | Self::SetRouteSwitch
            | Self::AddMenu
            | Self::DeleteMenu
            | Self::OrderMenus => Encoding::Form,
            Self::Upload => Encoding::Multipart,
            _ => Encoding::Json,
        }
    }

    /// The two upload endpoints carry the signature in the query string.
    fn signed_in_query(self) -> bool {
        matches!(self, Self::Upload | Self::UploadNews)
    }
}

/// The signature parameters of one call, wherever they came from.
struct Credentials {
    app_key: Option<String>,
    nonce: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
}

impl Credentials {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            app_key: get("RC-App-Key"),
            nonce: get("RC-Nonce"),
            timestamp: get("RC-Timestamp"),
            signature: get("RC-Signature"),
        }
    }

    fn from_query(q: &[(String, String)]) -> Self {
        let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        Self {
            app_key: get("RC-App-Key"),
            nonce: get("RC-Nonce"),
            timestamp: get("RC-Timestamp"),
            signature: get("RC-Signature"),
        }
    }
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

impl Inner {
    fn authenticate(&self, creds: &Credentials, now_ms: i64) -> Result<String, ApiError> {
        let missing = |n: &str| ApiError::Unauthorized(format!("{n} is missing"));
        let app_key = creds
            .app_key
            .as_deref()
            .ok_or_else(|| missing("RC-App-Key"))?;
        let nonce = creds.nonce.as_deref().ok_or_else(|| missing("RC-Nonce"))?;
        let ts = creds
            .timestamp
            .as_deref()
            .ok_or_else(|| missing("RC-Timestamp"))?;
        let given = creds
            .signature
            .as_deref()
            .ok_or_else(|| missing("RC-Signature"))?;
        let secret = {
            let world = self
                .world
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match world.apps.get(app_key) {
                Some(app) => app.secret.clone(),
                None => {
                    return Err(ApiError::Unauthorized(format!(
                        "unknown app key {app_key:?}"
                    )))
                }
            }
        };
        let secs = timestamp_secs(ts).ok_or_else(|| {
            ApiError::Unauthorized(format!("RC-Timestamp {ts:?} is not a number"))
        })?;
        // R2: a platform that checks the unit strictly.
        let millis = ts.trim().parse::<i64>().is_ok_and(|v| v > 100_000_000_000);
        match (self.config.timestamp_unit, millis) {
            (crate::config::AcceptedUnit::Seconds, true) => {
                return Err(ApiError::Unauthorized(
                    "RC-Timestamp must be in seconds".into(),
                ))
            }
            (crate::config::AcceptedUnit::Milliseconds, false) => {
                return Err(ApiError::Unauthorized(
                    "RC-Timestamp must be in milliseconds".into(),
                ))
            }
            _ => {}
        }
        let skew = (now_ms / 1000 - secs).unsigned_abs();
        if skew > self.config.skew_secs {
            return Err(ApiError::Unauthorized(format!(
                "RC-Timestamp is {skew} s away from the platform clock (at most {} s)",
                self.config.skew_secs
            )));
        }
        if !sign(&secret, nonce, ts).eq_ignore_ascii_case(given.trim()) {
            return Err(ApiError::Unauthorized("RC-Signature does not match".into()));
        }
        Ok(app_key.to_owned())
    }

    async fn call(
        &self,
        endpoint: Endpoint,
        query: &[(String, String)],
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Value, ApiError> {
        let creds = if endpoint.signed_in_query() {
            Credentials::from_query(query)
        } else {
            Credentials::from_headers(headers)
        };
        let now = self.lock().now_ms();
        let app_key = self.authenticate(&creds, now)?;
        self.lock().inject(&app_key)?;

        let ct = content_type(headers);
        let (wanted, ok) = match endpoint.encoding() {
            Encoding::Form => (
                "application/x-www-form-urlencoded",
                ct.starts_with("application/x-www-form-urlencoded"),
            ),
            Encoding::Json => ("application/json", ct.starts_with("application/json")),
            Encoding::Multipart => ("multipart/form-data", ct.starts_with("multipart/form-data")),
        };
        if !ok {
            return Err(ApiError::bad(format!(
                "Content-Type must be {wanted}, got {ct:?}"
            )));
        }

        match endpoint.encoding() {
            Encoding::Form => {
                let form = Form::parse(body);
                let mut w = self.lock();
                match endpoint {
                    Endpoint::AddAccount => w.add_account(&app_key, &form),
                    Endpoint::RefreshAccount => w.refresh_account(&app_key, &form),
                    Endpoint::AccountInfo => w.account_info(&app_key, &form),
                    Endpoint::SetRouteUrl => w.set_route_url(&app_key, &form),
                    Endpoint::SetRouteSwitch => w.set_route_switch(&app_key, &form),
                    Endpoint::AddMenu => w.add_menu(&app_key, &form),
                    Endpoint::DeleteMenu => w.delete_menu(&app_key, &form),
                    _ => w.order_menus(&app_key, &form),
                }
            }
            Encoding::Multipart => {
                let file = read_file_field(&ct, body.clone()).await?;
                let kind = query
                    .iter()
                    .find(|(k, _)| k == "type")
                    .map(|(_, v)| v.as_str());
                self.lock().upload(&app_key, kind, file.as_deref())
            }
            Encoding::Json => {
                let json: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad(format!("body is not valid JSON: {e}")))?;
                let mut w = self.lock();
                match endpoint {
                    Endpoint::Subscribe => w.subscribe(&app_key, &json, true),
                    Endpoint::Unsubscribe => w.subscribe(&app_key, &json, false),
                    Endpoint::UploadNews => w.upload_news(&app_key, &json),
                    Endpoint::Send => w.send(
                        &app_key,
                        "/message/send.json",
                        &json,
                        &["text", "image", "voice", "news"],
                        Source::Uploaded,
                        false,
                    ),
                    Endpoint::OperationSend => w.send(
                        &app_key,
                        "/message/operation/send.json",
                        &json,
                        &["text", "image", "voice", "news"],
                        Source::Direct,
                        false,
                    ),
                    Endpoint::BatchSend => w.send(
                        &app_key,
                        "/message/batchsend.json",
                        &json,
                        &["text", "news"],
                        Source::Direct,
                        true,
                    ),
                    Endpoint::OperationBatchSend => w.send(
                        &app_key,
                        "/message/operation/batchsend.json",
                        &json,
                        &["image", "voice"],
                        Source::Direct,
                        true,
                    ),
                    Endpoint::SendAll => w.send_all(
                        &app_key,
                        "/message/sendall.json",
                        &json,
                        &["text", "mpnews", "image", "voice"],
                        Source::Uploaded,
                    ),
                    // R8: send `news`, accept `mpnews` too.
                    _ => w.send_all(
                        &app_key,
                        "/message/operation/sendall.json",
                        &json,
                        &["text", "news", "mpnews", "image", "voice"],
                        Source::Direct,
                    ),
                }
            }
        }
    }
}

async fn read_file_field(content_type: &str, body: Bytes) -> Result<Option<Vec<u8>>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad(format!("multipart body: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad(format!("multipart body: {e}")))?
    {
        if field.name() == Some("file") {
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad(format!("multipart body: {e}")))?;
            return Ok(Some(bytes.to_vec()));
        }
    }
    Ok(None)
}

/// The fallback handler: every path outside `/_sim` is the platform API.
pub(crate) async fn platform(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let Some(endpoint) = Endpoint::from_path(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let faults = inner.lock().faults.clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let result = inner.call(endpoint, &query, &headers, &body).await;
    let dropped = faults.drop_rate > 0.0 && rand::rng().random_bool(faults.drop_rate);

    let (status, errcode, errmsg) = match &result {
        Ok(_) => (StatusCode::OK, 0, "ok".to_owned()),
        Err(e) => (e.status(), e.code(), e.message().to_owned()),
    };
    if let Err(e) = &result {
        tracing::debug!(path, errcode, error = %e, "platform call refused");
    }
    let app_key = if endpoint.signed_in_query() {
        Credentials::from_query(&query).app_key
    } else {
        Credentials::from_headers(&headers).app_key
    };
    let mut shown = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    if endpoint.encoding() == Encoding::Multipart {
        shown = format!("<multipart, {} bytes>", body.len());
    }
    inner.lock().record_call(CallRecord {
        seq: 0,
        at_ms: chrono::Utc::now().timestamp_millis(),
        path,
        app_key,
        status: status.as_u16(),
        errcode,
        errmsg,
        body: shown,
        dropped,
    });

    if dropped {
        // Headers go out, then the body breaks: the client sees the
        // connection die mid-answer and cannot know whether the call
        // took effect (it did).
        let broken = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped (injected)"))
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(broken))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
