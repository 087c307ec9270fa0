//! The signature (R1 for calls, R3 for pushes) and the timestamp units of
//! R2.

use sha1::{Digest, Sha1};

/// The platform's signature: lowercase hex SHA-1 of
/// `secret + nonce + timestamp`, plain concatenation (R1, R3).
///
/// ```
/// assert_eq!(
///     pubbot_protocol::sign("Y1W2MeFwwwRxa0", "14314", "1408706337"),
///     "e107e3819638b81a00383951d1d871197910ffe6",
/// );
/// ```
pub fn sign(secret: &str, nonce: &str, timestamp: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(timestamp.as_bytes());
    hex::encode(h.finalize())
}

/// The unit of `RC-Timestamp` (R2: the header table says milliseconds, the
/// example and the PHP code use seconds; seconds is the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampUnit {
    /// Unix seconds (the document's example and PHP code).
    #[default]
    Seconds,
    /// Unix milliseconds (the document's header table).
    Milliseconds,
}

impl TimestampUnit {
    /// Now, in this unit, as the header's text.
    pub fn now(self) -> String {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        match self {
            Self::Seconds => since_epoch.as_secs().to_string(),
            Self::Milliseconds => since_epoch.as_millis().to_string(),
        }
    }

    /// The unit a received value is in: above 10^11 it is milliseconds
    /// (R2, R5: no date in seconds reaches 10^11 before the year 5138).
    pub fn of(value: i64) -> Self {
        if value > MILLIS_ABOVE {
            Self::Milliseconds
        } else {
            Self::Seconds
        }
    }
}

/// Above this a received timestamp is in milliseconds (R2, R5).
const MILLIS_ABOVE: i64 = 100_000_000_000;

/// A received timestamp of either unit as Unix milliseconds (R5's
/// `CreateTime`).
///
/// ```
/// assert_eq!(pubbot_protocol::unix_millis(1408706337123), 1408706337123);
/// assert_eq!(pubbot_protocol::unix_millis(1408706337), 1408706337000);
/// ```
pub fn unix_millis(value: i64) -> i64 {
    match TimestampUnit::of(value) {
        TimestampUnit::Milliseconds => value,
        TimestampUnit::Seconds => value.saturating_mul(1000),
    }
}

/// A received timestamp of either unit as Unix seconds (R2).
///
/// ```
/// assert_eq!(pubbot_protocol::unix_secs(1408706337123), 1408706337);
/// assert_eq!(pubbot_protocol::unix_secs(1408706337), 1408706337);
/// ```
pub fn unix_secs(value: i64) -> i64 {
    match TimestampUnit::of(value) {
        TimestampUnit::Milliseconds => value / 1000,
        TimestampUnit::Seconds => value,
    }
}
