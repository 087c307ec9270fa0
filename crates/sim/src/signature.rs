//! The platform's signature (R1, R2, R3): lowercase hex SHA-1 of
//! `secret + nonce + timestamp`.

use sha1::{Digest, Sha1};

/// Computes the signature the platform expects for these three strings.
pub fn sign(secret: &str, nonce: &str, timestamp: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(timestamp.as_bytes());
    hex::encode(h.finalize())
}

/// Reads a timestamp of either unit as seconds (R2: above 10^11 it is
/// milliseconds).
pub fn timestamp_secs(raw: &str) -> Option<i64> {
    let v: i64 = raw.trim().parse().ok()?;
    Some(if v > 100_000_000_000 { v / 1000 } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha1_of_the_concatenation() {
        // Computed independently: `printf %s Y1W2MeFwwwRxa0143141408706337 | sha1sum`.
        assert_eq!(
            sign("Y1W2MeFwwwRxa0", "14314", "1408706337"),
            "e107e3819638b81a00383951d1d871197910ffe6"
        );
    }

    #[test]
    fn reads_both_units() {
        assert_eq!(timestamp_secs("1408706337"), Some(1_408_706_337));
        assert_eq!(timestamp_secs("1408706337123"), Some(1_408_706_337));
        assert_eq!(timestamp_secs("x"), None);
    }
}
