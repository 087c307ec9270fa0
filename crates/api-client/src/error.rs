//! The one error type of the client, and the platform's codes (R10).

/// A platform business code (R10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `1000` internal error: retry with backoff.
    Internal,
    /// `1002` bad parameter: permanent.
    BadParameter,
    /// `1003` invalid media type: permanent.
    InvalidMediaType,
    /// `1004` bad signature: permanent, check the secret.
    BadSignature,
    /// `1007` call restricted (e.g. a second mass send in a day): permanent.
    Restricted,
    /// `1008` rate limit exceeded: retry with backoff, slow down.
    RateLimited,
    /// A code the document does not list, kept as given.
    Other(i64),
}

impl ErrorCode {
    /// Maps a numeric `errcode`.
    pub fn from_code(code: i64) -> Self {
        match code {
            1000 => Self::Internal,
            1002 => Self::BadParameter,
            1003 => Self::InvalidMediaType,
            1004 => Self::BadSignature,
            1007 => Self::Restricted,
            1008 => Self::RateLimited,
            other => Self::Other(other),
        }
    }

    /// What the code means and what to do (R10), for messages.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Internal => "internal error at the platform; retried with backoff",
            Self::BadParameter => {
                "bad parameter; fix the request (an unknown account or media_id, a limit)"
            }
            Self::InvalidMediaType => "invalid media type; upload JPG/PNG images and AMR voices",
            Self::BadSignature => {
                "bad signature; check the app key and secret (and apps.timestamp_unit, R2)"
            }
            Self::Restricted => {
                "call restricted; e.g. a second mass send on the same natural day (R11)"
            }
            Self::RateLimited => "rate limit exceeded; slow down (apps.rate_limit_per_sec)",
            Self::Other(_) => "a code the document does not list",
        }
    }

    /// The numeric `errcode`.
    pub fn code(self) -> i64 {
        match self {
            Self::Internal => 1000,
            Self::BadParameter => 1002,
            Self::InvalidMediaType => 1003,
            Self::BadSignature => 1004,
            Self::Restricted => 1007,
            Self::RateLimited => 1008,
            Self::Other(c) => c,
        }
    }
}

/// A limit of R9 (or a routing rule) broken before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Text content over 2000 bytes of UTF-8.
    #[error("text is {bytes} bytes, at most {max} are allowed")]
    TextTooLong {
        /// Bytes given.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Empty text content.
    #[error("text is empty")]
    EmptyText,
    /// Not 1..=10 articles.
    #[error("{count} articles, 1 to {max} are allowed")]
    ArticleCount {
        /// Articles given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A required article field is empty.
    #[error("article {index}: {field} is required")]
    ArticleField {
        /// Article position.
        index: usize,
        /// `title`, `picurl`, `thumb_media_id` or `content_source_url`.
        field: &'static str,
    },
    /// An article description wider than 2000 (CJK counts 2).
    #[error(
        "article {index}: description is {width} wide, at most {max} (a CJK character counts 2)"
    )]
    DescriptionTooWide {
        /// Article position.
        index: usize,
        /// Width given.
        width: usize,
        /// The limit.
        max: usize,
    },
    /// A menu name over 10 characters, or empty.
    #[error("menu name has {chars} characters, 1 to {max} are allowed")]
    MenuName {
        /// Characters given.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A menu item that opens a URL has none.
    #[error("a menu item that opens a URL needs the URL")]
    MenuUrlMissing,
    /// More recipients than one call takes (100 for batch sends, 50 for
    /// subscribe), or none.
    #[error("{count} users in one call, 1 to {max} are allowed")]
    Recipients {
        /// Users given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `menuIds` and `orders` of different lengths, or none.
    #[error("menu order needs at least one (menu, order) pair")]
    EmptyOrder,
    /// An upload over its size limit.
    #[error("{kind} upload is {bytes} bytes, at most {max}")]
    UploadTooLarge {
        /// `image`, `thumb` or `voice`.
        kind: &'static str,
        /// Bytes given.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An upload whose bytes are not of an accepted format.
    #[error("{kind} upload must be {expected}")]
    UploadFormat {
        /// `image`, `thumb` or `voice`.
        kind: &'static str,
        /// What the platform accepts.
        expected: &'static str,
    },
    /// A voice longer than 60 s.
    #[error("voice is {millis} ms long, at most 60 s")]
    VoiceTooLong {
        /// Duration in milliseconds.
        millis: u64,
    },
    /// An image or voice with an empty url or `media_id`.
    #[error("{0} is empty")]
    EmptyMedia(&'static str),
    /// The message kind is not available on the chosen endpoint.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused before sending: a limit of R9 or a routing rule.
    #[error("invalid request: {0}")]
    Invalid(#[from] Invalid),
    /// The platform answered with a non-zero `errcode`.
    #[error("platform error {} ({}): {message}", code.code(), code.meaning())]
    Platform {
        /// The code (R10).
        code: ErrorCode,
        /// The platform's `errmsg`.
        message: String,
    },
    /// HTTP 401: the signature was refused (R1). Check key, secret, clock.
    #[error("signature refused (HTTP 401; check the app key and secret, the clock, and apps.timestamp_unit, R2): {0}")]
    Signature(String),
    /// A non-2xx answer without a platform code.
    #[error("HTTP {status}: {body}")]
    Http {
        /// The status.
        status: u16,
        /// The body, cut at 512 bytes.
        body: String,
    },
    /// The call took longer than the configured timeout after the request
    /// was sent: the platform may have acted on it (ambiguous).
    #[error("timed out")]
    Timeout,
    /// No connection could be made (refused, DNS, TLS, connect timeout):
    /// the request never left, so trying again cannot repeat it.
    #[error("connect: {0}")]
    Connect(#[source] reqwest::Error),
    /// The connection broke after the request was sent (the call may or
    /// may not have taken effect: ambiguous).
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
    /// A 2xx answer that is not the documented shape.
    #[error("unexpected answer ({reason}): {body}")]
    Decode {
        /// What was wrong.
        reason: String,
        /// The body, cut at 512 bytes.
        body: String,
    },
    /// The base URL and path do not make a URL.
    #[error("bad base URL: {0}")]
    Url(#[from] url::ParseError),
}

impl Error {
    /// Whether trying again later can help (R10): `1000`, `1008`, HTTP
    /// 5xx and 429, timeouts and transport failures. Note that sends are
    /// not idempotent: a timeout may hide a delivered message.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Platform { code, .. } => {
                matches!(code, ErrorCode::Internal | ErrorCode::RateLimited)
            }
            Self::Http { status, .. } => *status >= 500 || *status == 429,
            Self::Timeout | Self::Transport(_) | Self::Connect(_) => true,
            Self::Invalid(_) | Self::Signature(_) | Self::Decode { .. } | Self::Url(_) => false,
        }
    }

    /// Whether the platform refused the call for its rate (R10: `1008`,
    /// "retry with backoff, slow down"; or HTTP 429). Nothing was carried
    /// out, and the refusal says nothing of the call itself: it goes once
    /// the rate allows.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Self::Platform {
                code: ErrorCode::RateLimited,
                ..
            } | Self::Http { status: 429, .. }
        )
    }

    /// Whether the platform may have acted on the call although no answer
    /// came back: a timeout or a connection broken after the request was
    /// written. Retrying such a send may deliver it twice; a
    /// [`Error::Connect`] failure never left and is not ambiguous.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Timeout | Self::Transport(_))
    }

    /// The platform code, when the platform gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Platform { code, .. } => Some(*code),
            Self::Signature(_) => Some(ErrorCode::BadSignature),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_both_ways_and_retry_per_r10() {
        for c in [1000, 1002, 1003, 1004, 1007, 1008, 4242] {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
        let p = |c| Error::Platform {
            code: ErrorCode::from_code(c),
            message: String::new(),
        };
        assert!(p(1000).is_retryable());
        assert!(p(1008).is_retryable());
        assert!(p(1008).is_rate_limited());
        assert!(!p(1000).is_rate_limited());
        assert!(Error::Http {
            status: 429,
            body: String::new()
        }
        .is_rate_limited());
        assert!(!Error::Timeout.is_rate_limited());
        for c in [1002, 1003, 1004, 1007, 4242] {
            assert!(!p(c).is_retryable(), "{c}");
        }
        assert!(Error::Http {
            status: 503,
            body: String::new()
        }
        .is_retryable());
        assert!(!Error::Http {
            status: 404,
            body: String::new()
        }
        .is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(Error::Timeout.is_ambiguous());
        assert!(!p(1000).is_ambiguous());
        assert!(!Error::Invalid(Invalid::EmptyText).is_retryable());
    }
}
