//! Random secrets, their stored hashes and constant-time comparison.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// A fresh secret of 32 random bytes (256 bits) from the OS CSPRNG, base64url,
/// behind a short prefix that tells what it is (`dbs_` login, `dbt_` API token,
/// `dba_` activation key, `dbf_` fleet key, `dbx_` setup token).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random number generator failed");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a high-entropy secret: SHA-256, hex. (Passwords use argon2id.)
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_long() {
        let a = new_token("dbs_");
        let b = new_token("dbs_");
        assert_ne!(a, b);
        assert!(a.starts_with("dbs_"));
        assert_eq!(a.len(), 4 + 43, "32 bytes base64url");
        assert_ne!(token_hash(&a), a);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
