//! A WireGuard public key as it travels: standard base64 of 32 bytes (44
//! characters with one `=`), parsed on deserialisation so that no handler sees
//! a malformed key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a text is not a WireGuard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WgKeyError {
    #[error("a WireGuard key is 44 characters of base64 (32 bytes)")]
    Length,
    #[error("a WireGuard key is standard base64 of 32 bytes")]
    Base64,
}

/// A WireGuard (x25519) public key: 32 bytes, base64 on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgKey([u8; 32]);

crate::string_schema!(
    WgKey,
    "A WireGuard public key: standard base64 of 32 bytes.",
    Some(44),
    Some(44),
    Some("^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
);

impl WgKey {
    /// The length of a key in base64.
    pub const BASE64_LEN: usize = 44;

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        WgKey(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub const fn to_bytes(self) -> [u8; 32] {
        self.0
    }
}

impl From<[u8; 32]> for WgKey {
    fn from(bytes: [u8; 32]) -> Self {
        WgKey(bytes)
    }
}

impl FromStr for WgKey {
    type Err = WgKeyError;
    fn from_str(s: &str) -> Result<Self, WgKeyError> {
        if s.len() != Self::BASE64_LEN {
            return Err(WgKeyError::Length);
        }
        let bytes = STANDARD.decode(s).map_err(|_| WgKeyError::Base64)?;
        bytes.try_into().map(WgKey).map_err(|_| WgKeyError::Length)
    }
}

impl TryFrom<String> for WgKey {
    type Error = WgKeyError;
    fn try_from(s: String) -> Result<Self, WgKeyError> {
        s.parse()
    }
}

impl From<WgKey> for String {
    fn from(k: WgKey) -> String {
        k.to_string()
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_as_base64_of_32_bytes() {
        let k = WgKey::from_bytes([7u8; 32]);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", STANDARD.encode([7u8; 32])));
        assert_eq!(serde_json::from_str::<WgKey>(&json).unwrap(), k);
    }

    #[test]
    fn malformed_keys_are_refused_at_parse_time() {
        for bad in [
            "",
            "x",
            "not base64 at all, but forty-four chars long",
            &STANDARD.encode([1u8; 31]),
            &STANDARD.encode([1u8; 33]),
            // 44 characters whose last one carries bits beyond the 32 bytes.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
        ] {
            let json = serde_json::to_string(bad).unwrap();
            assert!(serde_json::from_str::<WgKey>(&json).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schema_pattern_matches_every_key() {
        // The pattern's last character class: the 2 bits a 32-byte key leaves are zero.
        for last in [0u8, 1, 2, 3, 0xff, 0x10, 0x3c] {
            let mut b = [0u8; 32];
            b[31] = last;
            let s = WgKey::from_bytes(b).to_string();
            let c = s.as_bytes()[42] as char;
            assert!("AEIMQUYcgkosw048".contains(c), "{s}");
        }
    }
}
