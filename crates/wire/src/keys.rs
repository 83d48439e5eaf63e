//! WireGuard key helpers (x25519 via `x25519-dalek`, the implementation gotatun uses).

use rand::RngCore;
use x25519_dalek::{PublicKey, StaticSecret};

/// A fresh private key from the operating system's CSPRNG.
pub fn generate_private_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// The public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(*private)).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_derive_stable_public_keys() {
        let (a, b) = (generate_private_key(), generate_private_key());
        assert_ne!(a, b);
        assert_eq!(public_key(&a), public_key(&a));
        assert_ne!(public_key(&a), public_key(&b));
    }
}
