//! Ed25519 keys (ring): a public key as 32 bytes in standard base64, a
//! private key as its PKCS#8 document in a small text file.

use crate::Error;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// First line of a private key file.
const PRIVATE_HEADER: &str = "drawbridge-release private key v1";

/// An Ed25519 public key; its text (`Display`, `FromStr`, serde) is the 32
/// bytes in standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.len() > 64 {
            return Err(Error::Malformed("a public key is 44 characters".into()));
        }
        let bytes = STANDARD
            .decode(s)
            .map_err(|_| Error::Malformed("a public key is base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Malformed("a public key has 32 bytes".into()))?;
        Ok(PublicKey(key))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PublicKey {
    /// Whether `sig` is this key's signature of `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

/// An Ed25519 private key (its PKCS#8 document). Its `Debug` shows only the
/// public key; its file text is the only way out.
pub struct PrivateKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> PrivateKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("the system's random generator works");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made")
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<PrivateKey, Error> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| Error::Malformed("not an Ed25519 private key".into()))?;
        Ok(PrivateKey {
            pkcs8: pkcs8.to_vec(),
            pair,
        })
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }

    /// Its Ed25519 signature of `msg` (use [`Envelope::sign`](crate::Envelope::sign),
    /// which separates the kinds of documents).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The key file's text: `drawbridge-release private key v1`, then the
    /// PKCS#8 document in base64.
    pub fn to_file_text(&self) -> String {
        format!("{PRIVATE_HEADER}\n{}\n", STANDARD.encode(&self.pkcs8))
    }

    /// Reads a key file's text.
    pub fn from_file_text(text: &str) -> Result<PrivateKey, Error> {
        if text.len() > 1024 {
            return Err(Error::Malformed("a private key file is short".into()));
        }
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(PRIVATE_HEADER) {
            return Err(Error::Malformed(format!(
                "a private key file starts with '{PRIVATE_HEADER}'"
            )));
        }
        let b64 = lines.next().unwrap_or("").trim();
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(Error::Malformed("a private key file has two lines".into()));
        }
        let der = STANDARD
            .decode(b64)
            .map_err(|_| Error::Malformed("the private key is base64".into()))?;
        Self::from_pkcs8(&der)
    }
}
