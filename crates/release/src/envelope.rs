//! A signed JSON payload: the payload's exact bytes in base64 (so nothing is
//! re-serialised before checking) and an Ed25519 signature over
//! `"drawbridge-release-v1" 0 kind 0 payload`.

use crate::{Error, PrivateKey, PublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::update::MAX_SIGNED_LEN;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The start of every signed message: no signature made here is valid for
/// anything else, nor for a later version of this format.
const CONTEXT: &[u8] = b"drawbridge-release-v1\0";
/// Base64 of a 64-byte signature is 88 characters; anything much longer is refused unread.
const MAX_SIGNATURE_B64: usize = 128;

/// What a signature is for; part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A root certifies a signing key ([`SigningKeyCert`](crate::SigningKeyCert)).
    SigningKey,
    /// A signing key signs a release ([`ReleaseMeta`](crate::ReleaseMeta)).
    Release,
    /// A root hands over to the next ([`RootRotation`](crate::RootRotation)).
    RootRotation,
}

impl Kind {
    /// The name that goes into the signed message.
    fn name(self) -> &'static [u8] {
        match self {
            Kind::SigningKey => b"signing-key",
            Kind::Release => b"release",
            Kind::RootRotation => b"root-rotation",
        }
    }
}

/// A payload and its signature. The payload is kept as the exact bytes that
/// were signed; it is parsed only after the signature checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Base64 of the payload's JSON.
    pub payload: String,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
}

/// What is signed: `CONTEXT || kind || 0 || payload`.
pub(crate) fn message(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(kind.name());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

impl Envelope {
    /// Signs `value` as `kind`.
    pub fn sign<T: Serialize>(key: &PrivateKey, kind: Kind, value: &T) -> Envelope {
        let payload = serde_json::to_vec(value).expect("plain structs serialise");
        Envelope {
            signature: STANDARD.encode(key.sign(&message(kind, &payload))),
            payload: STANDARD.encode(payload),
        }
    }

    /// The payload's bytes, bounded.
    fn payload_bytes(&self) -> Result<Vec<u8>, Error> {
        if self.payload.len() > MAX_SIGNED_LEN || self.signature.len() > MAX_SIGNATURE_B64 {
            return Err(Error::Malformed("a signed payload is too long".into()));
        }
        STANDARD
            .decode(&self.payload)
            .map_err(|_| Error::Malformed("the payload is not base64".into()))
    }

    /// The payload when `key` signed it as `kind` (any other key or kind is
    /// [`Error::BadSignature`]); unknown fields are [`Error::Malformed`].
    pub fn open<T: DeserializeOwned>(&self, key: &PublicKey, kind: Kind) -> Result<T, Error> {
        let payload = self.payload_bytes()?;
        let sig = STANDARD
            .decode(&self.signature)
            .map_err(|_| Error::BadSignature)?;
        if !key.verifies(&message(kind, &payload), &sig) {
            return Err(Error::BadSignature);
        }
        serde_json::from_slice(&payload).map_err(|e| Error::Malformed(e.to_string()))
    }

    /// The payload without checking the signature (to learn which key to check it with).
    pub(crate) fn payload_unverified<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload_bytes()?).map_err(|e| Error::Malformed(e.to_string()))
    }

    /// Its JSON text (a certificate file, a rotation file).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain structs serialise")
    }

    /// Reads its JSON text (at most `MAX_SIGNED_LEN` bytes, no unknown
    /// fields); nothing is verified yet.
    pub fn from_json(text: &str) -> Result<Envelope, Error> {
        if text.len() > MAX_SIGNED_LEN {
            return Err(Error::Malformed("the signed document is too long".into()));
        }
        serde_json::from_str(text).map_err(|e| Error::Malformed(e.to_string()))
    }
}
