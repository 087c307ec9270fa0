//! How the simulated platform answers a call it refuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A refused call. Business errors are HTTP 200 with the document's
/// `{"errcode":N,"errmsg":"..."}` body; a failed signature is HTTP 401 (R1)
/// with code `1004` in the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong signature headers, unknown app, stale timestamp.
    #[error("signature: {0}")]
    Unauthorized(String),
    /// `1000`: internal error (only injected).
    #[error("1000 {0}")]
    Internal(String),
    /// `1002`: bad parameter; the message names the field.
    #[error("1002 {0}")]
    BadParameter(String),
    /// `1003`: invalid media type.
    #[error("1003 {0}")]
    InvalidMediaType(String),
    /// `1007`: call restricted (a second mass send in one natural day).
    #[error("1007 {0}")]
    Restricted(String),
    /// `1008`: rate limit exceeded.
    #[error("1008 {0}")]
    RateLimited(String),
}

impl ApiError {
    /// The platform's code (R10).
    pub fn code(&self) -> u32 {
        match self {
            Self::Unauthorized(_) => 1004,
            Self::Internal(_) => 1000,
            Self::BadParameter(_) => 1002,
            Self::InvalidMediaType(_) => 1003,
            Self::Restricted(_) => 1007,
            Self::RateLimited(_) => 1008,
        }
    }

    /// The `errmsg` text.
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthorized(m)
            | Self::Internal(m)
            | Self::BadParameter(m)
            | Self::InvalidMediaType(m)
            | Self::Restricted(m)
            | Self::RateLimited(m) => m,
        }
    }

    /// The HTTP status the simulator answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::OK,
        }
    }

    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self::BadParameter(msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"errcode": self.code(), "errmsg": self.message()});
        (self.status(), axum::Json(body)).into_response()
    }
}
