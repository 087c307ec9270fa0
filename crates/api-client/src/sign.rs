//! Request signing (R1, R2).

use rand::Rng;
use sha1::{Digest, Sha1};

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

/// The platform's signature: lowercase hex SHA-1 of
/// `secret + nonce + timestamp`, plain concatenation (R1).
///
/// ```
/// assert_eq!(
///     pubbot_api_client::sign("Y1W2MeFwwwRxa0", "14314", "1408706337"),
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

/// The four signature values of one call.
#[derive(Debug, Clone)]
pub(crate) struct Signature {
    pub nonce: String,
    pub timestamp: String,
    pub signature: String,
}

impl Signature {
    /// A fresh random nonce and the current time.
    pub fn now(secret: &str, unit: TimestampUnit) -> Self {
        let nonce = rand::rng().random::<u64>().to_string();
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let timestamp = match unit {
            TimestampUnit::Seconds => since_epoch.as_secs().to_string(),
            TimestampUnit::Milliseconds => since_epoch.as_millis().to_string(),
        };
        let signature = sign(secret, &nonce, &timestamp);
        Self {
            nonce,
            timestamp,
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_from_the_documents_formula() {
        // `printf %s Y1W2MeFwwwRxa0143141408706337 | sha1sum`
        assert_eq!(
            sign("Y1W2MeFwwwRxa0", "14314", "1408706337"),
            "e107e3819638b81a00383951d1d871197910ffe6"
        );
    }

    #[test]
    fn fresh_nonce_per_call() {
        let a = Signature::now("s", TimestampUnit::Seconds);
        let b = Signature::now("s", TimestampUnit::Seconds);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.signature, sign("s", &a.nonce, &a.timestamp));
        let ms = Signature::now("s", TimestampUnit::Milliseconds);
        assert!(ms.timestamp.len() >= 13);
    }
}
