//! Request signing (R1, R2).

use rand::Rng;

pub use pubbot_protocol::{sign, TimestampUnit};

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
        let timestamp = unit.now();
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
