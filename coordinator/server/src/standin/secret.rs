//! Federation shared secrets as the stand-in keeps them: only the SHA-256
//! (`SecretHash`) of each inbound secret, compared in constant time with
//! the hash of what a caller presents. It also generates new secrets (32
//! random bytes, as Ampora's are) for `tern stand-in secret` and tests.
//!
//! It must never keep, log or print a presented secret, and `Debug` of a
//! hash is redacted.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The length of a generated federation secret, bytes.
pub const SECRET_LEN: usize = 32;

/// SHA-256 of a federation secret: what a peer entry stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// The hash of `secret` (the raw bytes, not their hex form).
    pub fn of(secret: &[u8]) -> SecretHash {
        SecretHash(Sha256::digest(secret).into())
    }

    /// Whether `presented` hashes to this value. The comparison of the two
    /// hashes takes the same time wherever they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        ct_eq(&self.0, &SecretHash::of(presented).0)
    }

    /// Constant-time equality with another hash.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        ct_eq(&self.0, &other.0)
    }

    /// Lower-case hex, for configuration files.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// Why a string is not a secret hash. Never carries the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretHashError {
    #[error("must be 64 hex digits (SHA-256); got {0} characters")]
    Length(usize),
    #[error("contains a character that is not a hex digit")]
    NotHex,
}

impl FromStr for SecretHash {
    type Err = SecretHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(SecretHashError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| SecretHashError::NotHex)?;
        Ok(SecretHash(out))
    }
}

/// A new random federation secret: 32 bytes from the OS-seeded generator.
pub fn generate_secret() -> [u8; SECRET_LEN] {
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// Equality of two 32-byte values without an early exit.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: the hash is SHA-256 of the raw bytes (known answer for
    // the empty input), and it round-trips through hex.
    #[test]
    fn hash_is_sha256_of_raw_bytes() {
        let h = SecretHash::of(b"");
        assert_eq!(
            h.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h.to_hex().parse::<SecretHash>(), Ok(h));
    }

    // Property: only the right secret matches; any one-bit difference in
    // the stored hash is a mismatch.
    #[test]
    fn matches_only_the_right_secret() {
        let secret = generate_secret();
        let h = SecretHash::of(&secret);
        assert!(h.matches(&secret));
        assert!(!h.matches(b"wrong"));
        for i in 0..32 {
            let mut other = h;
            other.0[i] ^= 1;
            assert!(!h.ct_eq(&other), "byte {i}");
        }
    }

    // Property: Debug never shows the hash; parse errors never echo input.
    #[test]
    fn debug_and_errors_are_redacted() {
        let h = SecretHash::of(b"x");
        assert_eq!(format!("{h:?}"), "SecretHash(<redacted>)");
        let e = "secretsecret".parse::<SecretHash>().expect_err("short");
        assert!(!e.to_string().contains("secret"));
    }
}
