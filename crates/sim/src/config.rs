//! Simulator configuration: which apps exist, how strict the clock is, how
//! pushes are retried and which faults are injected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One app registered on the simulated platform (R1: the key is public, the
/// secret signs every call).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppCredentials {
    /// The app key (`RC-App-Key`).
    pub key: String,
    /// The app secret, first part of every signature.
    pub secret: String,
}

impl AppCredentials {
    /// Parses `KEY:SECRET`, the form the CLI takes.
    ///
    /// # Errors
    /// When there is no `:` or either side is empty.
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some((key, secret)) if !key.is_empty() && !secret.is_empty() => Ok(Self {
                key: key.to_owned(),
                secret: secret.to_owned(),
            }),
            _ => Err(format!("app must be KEY:SECRET, got {spec:?}")),
        }
    }
}

/// How the simulator delivers pushes to an account's `routeUrl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// How long one attempt may take before the platform drops the
    /// connection (the document: 5 seconds).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Attempts in all, the first included (the document: a first try and
    /// three retries, R15).
    pub tries: u32,
    /// Retry a push answered with a 5xx too. The document retries only a
    /// push that got no answer within the timeout (R15); off by default.
    pub retry_on_5xx: bool,
    /// Pause between a failed attempt and the next one.
    #[serde(with = "millis")]
    pub retry_delay: Duration,
    /// Emit XML exactly as the document's examples do (`<MsgId>..</MsgID>`,
    /// R4). When false the XML is well-formed (`</MsgId>`).
    pub document_style: bool,
    /// Tries in flight at once, over all routes: the platform's
    /// connections. A try waits for one, and the wait counts against its
    /// timeout. Without a bound, a daemon that falls behind made the
    /// simulator open a connection per waiting push (tens of thousands),
    /// and the simulator, not the daemon, collapsed (ephemeral ports and
    /// its connection pool's queues).
    pub connections: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            tries: 4,
            retry_on_5xx: false,
            retry_delay: Duration::from_millis(500),
            document_style: true,
            connections: 2048,
        }
    }
}

/// Faults injected into the platform API (never into the control API).
/// Changeable at run time through `PUT /_sim/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Calls per second and app above which the platform answers `1008`;
    /// `0` refuses every call with `1008` (a rate-limit period that does
    /// not end until the fault is lifted).
    pub rate_limit_per_sec: Option<u32>,
    /// Fraction (0..=1) of calls answered with `1000`.
    pub error_rate: f64,
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of calls whose connection is dropped without an
    /// answer (the call is still carried out, as a real platform may do).
    pub drop_rate: f64,
}

impl Faults {
    /// Checks that the fractions are fractions.
    ///
    /// # Errors
    /// Names the field that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }
}

/// The `RC-Timestamp` units the simulator accepts on calls (R2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedUnit {
    /// Seconds or milliseconds (above 10^11 is milliseconds).
    #[default]
    Either,
    /// Seconds only: a millisecond timestamp is refused (401).
    Seconds,
    /// Milliseconds only: a second timestamp is refused (401).
    Milliseconds,
}

/// Everything the simulator needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// The apps that may call the API.
    pub apps: Vec<AppCredentials>,
    /// Accepted clock skew for `RC-Timestamp`, in seconds (R2).
    pub skew_secs: u64,
    /// Which `RC-Timestamp` unit calls must use (R2): either (default), or
    /// only one, as a platform that checks "strictly" might insist.
    pub timestamp_unit: AcceptedUnit,
    /// Push delivery behaviour.
    pub push: PushConfig,
    /// Faults at start.
    pub faults: Faults,
    /// How many API calls the call log keeps (oldest dropped first).
    pub call_log_capacity: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            apps: Vec::new(),
            skew_secs: 300,
            timestamp_unit: AcceptedUnit::Either,
            push: PushConfig::default(),
            faults: Faults::default(),
            call_log_capacity: 100_000,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
