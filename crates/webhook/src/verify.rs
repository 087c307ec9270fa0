//! Push signature and freshness (R3): `sha1(secret + rc-nonce +
//! rc-timestamp)` compared in constant time, a timestamp window, and a
//! replay memory for the nonces seen inside it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Why a push was turned away before its body was read. Each reason has its
/// own status, always with an empty body:
///
/// | reason | status |
/// |---|---|
/// | a query parameter missing or not a number | 400 |
/// | unknown app key in the route | 404 |
/// | signature does not match any secret of the app | 401 |
/// | timestamp outside the window (either direction) | 403 |
/// | the same nonce + timestamp + signature already accepted | 409 |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `rc-nonce`, `rc-timestamp` or `rc-signature` is missing or malformed.
    #[error("{0} is missing or malformed")]
    MissingParameter(&'static str),
    /// No such app is configured.
    #[error("unknown app key")]
    UnknownApp,
    /// The signature matches none of the app's secrets.
    #[error("signature does not match")]
    BadSignature,
    /// The timestamp is further than the window from our clock.
    #[error("timestamp is {skew_secs} s away from now")]
    Stale {
        /// Distance from now, seconds.
        skew_secs: u64,
    },
    /// Already accepted inside the window.
    #[error("replayed push")]
    Replay,
}

impl Rejection {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingParameter(_) => StatusCode::BAD_REQUEST,
            Self::UnknownApp => StatusCode::NOT_FOUND,
            Self::BadSignature => StatusCode::UNAUTHORIZED,
            Self::Stale { .. } => StatusCode::FORBIDDEN,
            Self::Replay => StatusCode::CONFLICT,
        }
    }

    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingParameter(_) => "missing_parameter",
            Self::UnknownApp => "unknown_app",
            Self::BadSignature => "bad_signature",
            Self::Stale { .. } => "stale",
            Self::Replay => "replay",
        }
    }
}

/// The three signature parameters of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushParams {
    /// `rc-nonce`.
    pub nonce: String,
    /// `rc-timestamp`, as given.
    pub timestamp: String,
    /// `rc-signature`, as given.
    pub signature: String,
}

impl PushParams {
    /// Reads them from a raw query string.
    ///
    /// # Errors
    /// [`Rejection::MissingParameter`] naming the first one missing.
    pub fn from_query(query: Option<&str>) -> Result<Self, Rejection> {
        let mut nonce = None;
        let mut timestamp = None;
        let mut signature = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "rc-nonce" => nonce = Some(v.into_owned()),
                "rc-timestamp" => timestamp = Some(v.into_owned()),
                "rc-signature" => signature = Some(v.into_owned()),
                _ => {}
            }
        }
        let nonempty = |v: Option<String>, name| {
            v.filter(|s| !s.is_empty())
                .ok_or(Rejection::MissingParameter(name))
        };
        Ok(Self {
            nonce: nonempty(nonce, "rc-nonce")?,
            timestamp: nonempty(timestamp, "rc-timestamp")?,
            signature: nonempty(signature, "rc-signature")?,
        })
    }

    fn replay_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.nonce,
            self.timestamp,
            self.signature.to_ascii_lowercase()
        )
    }
}

/// Proof that a push passed [`Verifier::verify`]; hand it back to
/// [`Verifier::remember`] once the push is safely stored.
#[derive(Debug)]
pub struct Verified {
    key: String,
    expires_at: i64,
}

/// Bounded memory of accepted pushes, oldest forgotten first.
#[derive(Debug, Default)]
struct ReplayMemory {
    seen: HashSet<String>,
    order: VecDeque<(i64, String)>,
}

/// Checks pushes for every configured app.
#[derive(Debug)]
pub struct Verifier {
    apps: HashMap<String, Vec<SecretString>>,
    window: Duration,
    capacity: usize,
    memory: Mutex<ReplayMemory>,
}

fn sha1_hex(secret: &str, nonce: &str, ts: &str) -> String {
    pubbot_protocol::sign(secret, nonce, ts)
}

impl Verifier {
    /// `apps`: app key to its valid secrets (several during a rotation).
    /// `window`: how far a timestamp may be from now, either way.
    /// `capacity`: how many accepted pushes the replay memory keeps.
    pub fn new(
        apps: HashMap<String, Vec<SecretString>>,
        window: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            apps,
            window,
            capacity: capacity.max(1),
            memory: Mutex::new(ReplayMemory::default()),
        }
    }

    /// Whether the app is configured.
    pub fn knows(&self, app_key: &str) -> bool {
        self.apps.contains_key(app_key)
    }

    /// Checks signature, window and replay, in that order.
    ///
    /// # Errors
    /// See [`Rejection`].
    pub fn verify(
        &self,
        app_key: &str,
        params: &PushParams,
        now_secs: i64,
    ) -> Result<Verified, Rejection> {
        let secrets = self.apps.get(app_key).ok_or(Rejection::UnknownApp)?;
        let ts: i64 = params
            .timestamp
            .trim()
            .parse()
            .map_err(|_| Rejection::MissingParameter("rc-timestamp"))?;
        // R2: a value above 10^11 is milliseconds.
        let ts_secs = pubbot_protocol::unix_secs(ts);
        let given = params.signature.trim().to_ascii_lowercase();
        let mut matched = subtle::Choice::from(0u8);
        for secret in secrets {
            let expected = sha1_hex(secret.expose_secret(), &params.nonce, &params.timestamp);
            matched |= expected.as_bytes().ct_eq(given.as_bytes());
        }
        if !bool::from(matched) {
            return Err(Rejection::BadSignature);
        }
        // Checked: a valid signature over `rc-timestamp=-9223372036854775808`
        // must be refused as stale, not overflow.
        let skew_secs = now_secs
            .checked_sub(ts_secs)
            .map_or(u64::MAX, i64::unsigned_abs);
        if skew_secs > self.window.as_secs() {
            return Err(Rejection::Stale { skew_secs });
        }
        let key = params.replay_key();
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if memory.seen.contains(&key) {
            return Err(Rejection::Replay);
        }
        let window = i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX);
        Ok(Verified {
            key,
            expires_at: ts_secs.saturating_add(window),
        })
    }

    /// Remembers an accepted push so that a replay inside the window is
    /// refused. Called only after the push is stored: a push whose storing
    /// failed may come back with the same query string and must get in.
    pub fn remember(&self, verified: Verified, now_secs: i64) {
        let mut m = self
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((expires, _)) = m.order.front() {
            if *expires >= now_secs && m.order.len() < self.capacity {
                break;
            }
            if let Some((_, k)) = m.order.pop_front() {
                m.seen.remove(&k);
            }
        }
        if m.seen.insert(verified.key.clone()) {
            m.order.push_back((verified.expires_at, verified.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> Verifier {
        let apps = HashMap::from([(
            "app".to_owned(),
            secrets.iter().map(|s| SecretString::from(*s)).collect(),
        )]);
        Verifier::new(apps, Duration::from_secs(300), 3)
    }

    fn params(secret: &str, nonce: &str, ts: i64) -> PushParams {
        let timestamp = ts.to_string();
        PushParams {
            signature: sha1_hex(secret, nonce, &timestamp),
            nonce: nonce.into(),
            timestamp,
        }
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn valid_tampered_wrong_secret_rotated() {
        let v = verifier(&["old", "new"]);
        assert!(v.verify("app", &params("new", "1", NOW), NOW).is_ok());
        assert!(
            v.verify("app", &params("old", "1", NOW), NOW).is_ok(),
            "rotation: both secrets valid"
        );
        assert_eq!(
            v.verify("app", &params("other", "1", NOW), NOW)
                .unwrap_err(),
            Rejection::BadSignature
        );
        let mut tampered = params("new", "1", NOW);
        tampered.nonce = "2".into();
        assert_eq!(
            v.verify("app", &tampered, NOW).unwrap_err(),
            Rejection::BadSignature
        );
        let mut upper = params("new", "1", NOW);
        upper.signature = upper.signature.to_uppercase();
        assert!(
            v.verify("app", &upper, NOW).is_ok(),
            "hex compared case-insensitively"
        );
        assert_eq!(
            v.verify("nope", &params("new", "1", NOW), NOW).unwrap_err(),
            Rejection::UnknownApp
        );
    }

    #[test]
    fn window_both_ways_and_milliseconds() {
        let v = verifier(&["s"]);
        assert_eq!(
            v.verify("app", &params("s", "1", NOW - 301), NOW)
                .unwrap_err(),
            Rejection::Stale { skew_secs: 301 }
        );
        assert_eq!(
            v.verify("app", &params("s", "1", NOW + 301), NOW)
                .unwrap_err(),
            Rejection::Stale { skew_secs: 301 }
        );
        assert!(v.verify("app", &params("s", "1", NOW - 300), NOW).is_ok());
        assert!(v
            .verify("app", &params("s", "1", NOW * 1000 + 999), NOW)
            .is_ok());
        let mut junk = params("s", "1", NOW);
        junk.timestamp = "soon".into();
        assert_eq!(
            v.verify("app", &junk, NOW).unwrap_err(),
            Rejection::MissingParameter("rc-timestamp")
        );
    }

    #[test]
    fn replay_only_after_remember_and_memory_is_bounded() {
        let v = verifier(&["s"]);
        let p = params("s", "n1", NOW);
        let first = v.verify("app", &p, NOW).unwrap();
        // Not yet stored: the platform may retry with the same query.
        assert!(v.verify("app", &p, NOW).is_ok());
        v.remember(first, NOW);
        assert_eq!(v.verify("app", &p, NOW).unwrap_err(), Rejection::Replay);
        for n in ["n2", "n3", "n4"] {
            let ok = v.verify("app", &params("s", n, NOW), NOW).unwrap();
            v.remember(ok, NOW);
        }
        // Capacity 3: the oldest is forgotten.
        assert!(v.verify("app", &p, NOW).is_ok());
        assert_eq!(v.memory.lock().unwrap().seen.len(), 3);
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        let v = verifier(&["s"]);
        for ts in [i64::MIN, i64::MIN + 1, -1, i64::MAX] {
            let e = v.verify("app", &params("s", "1", ts), NOW).unwrap_err();
            assert!(matches!(e, Rejection::Stale { .. }), "{ts}: {e}");
        }
    }

    #[test]
    fn missing_parameters_are_named() {
        assert_eq!(
            PushParams::from_query(None).unwrap_err(),
            Rejection::MissingParameter("rc-nonce")
        );
        assert_eq!(
            PushParams::from_query(Some("rc-nonce=1&rc-timestamp=2")).unwrap_err(),
            Rejection::MissingParameter("rc-signature")
        );
        let p =
            PushParams::from_query(Some("rc-nonce=1&rc-timestamp=2&rc-signature=ab&x=y")).unwrap();
        assert_eq!(
            (p.nonce.as_str(), p.timestamp.as_str(), p.signature.as_str()),
            ("1", "2", "ab")
        );
    }
}
