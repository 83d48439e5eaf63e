//! Relay admission tokens: issued (signed) by the control plane, verified by relays.
//!
//! Format: `drt1.<base64url(JSON claims)>.<base64url(Ed25519 signature)>`; the signature
//! covers everything before the last dot. Ed25519 comes from `ring`; relays hold only the
//! public key. Every field and the whole token are bounded.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Most peers one token may name.
pub const MAX_ALLOWED_PEERS: usize = 64;
/// Longest session id.
pub const MAX_SESSION_ID_LEN: usize = 128;
const PREFIX: &str = "drt1";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The session this connection belongs to; the relay forwards only within a session.
    pub session_id: String,
    /// The WireGuard (x25519) public key the holder connects as.
    pub peer: [u8; 32],
    /// Public keys of the peers the holder may reach.
    pub allowed_peers: Vec<[u8; 32]>,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// The holder (an edge) accepts standard WireGuard clients bridged from the relay's UDP
    /// port: the relay may hand it handshakes addressed to its key (by `mac1`) and send
    /// its answers to those clients' endpoints.
    pub bridge: bool,
}

/// Why a token was refused (or could not be made).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("token malformed")]
    Malformed,
    #[error("token signature invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("claims out of bounds")]
    OutOfBounds,
    #[error("key error")]
    Key,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    sid: String,
    pk: String,
    allow: Vec<String>,
    exp: u64,
    /// [`Claims::bridge`]; absent means false (older tokens stay valid and unchanged).
    #[serde(default, skip_serializing_if = "is_false")]
    br: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The control plane's Ed25519 signing key.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Generates a key; returns it with its PKCS#8 document (store that secret safely).
    pub fn generate() -> Result<(Self, Vec<u8>), TokenError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| TokenError::Key)?;
        let bytes = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(SigningKey)
            .map_err(|_| TokenError::Key)
    }

    /// Signs `msg` (for the other signed formats of this crate, each with its own prefix).
    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg).as_ref().to_vec()
    }

    /// The public half, for relays.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        VerifyingKey(k)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// The Ed25519 public key relays verify tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(pub [u8; 32]);

impl VerifyingKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        VerifyingKey(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Whether `sig` is this key's signature of `msg`.
    pub(crate) fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

fn check_bounds(c: &Claims) -> Result<(), TokenError> {
    if c.session_id.is_empty()
        || c.session_id.len() > MAX_SESSION_ID_LEN
        || c.allowed_peers.len() > MAX_ALLOWED_PEERS
    {
        return Err(TokenError::OutOfBounds);
    }
    Ok(())
}

/// Signs `claims` into a token string.
pub fn issue(key: &SigningKey, claims: &Claims) -> Result<String, TokenError> {
    check_bounds(claims)?;
    let wire = Wire {
        sid: claims.session_id.clone(),
        pk: B64.encode(claims.peer),
        allow: claims.allowed_peers.iter().map(|k| B64.encode(k)).collect(),
        exp: claims.expires_at,
        br: claims.bridge,
    };
    let json = serde_json::to_vec(&wire).map_err(|_| TokenError::Malformed)?;
    let signed = format!("{PREFIX}.{}", B64.encode(json));
    let sig = key.0.sign(signed.as_bytes());
    let token = format!("{signed}.{}", B64.encode(sig.as_ref()));
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    Ok(token)
}

fn key32(s: &str) -> Result<[u8; 32], TokenError> {
    if s.len() > 64 {
        return Err(TokenError::Malformed);
    }
    let v = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    v.try_into().map_err(|_| TokenError::Malformed)
}

/// Verifies a token at unix time `now` and returns its claims.
pub fn verify(key: &VerifyingKey, token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let (signed, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (prefix, body_b64) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if prefix != PREFIX {
        return Err(TokenError::Malformed);
    }
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    UnparsedPublicKey::new(&ED25519, key.0)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    let body = B64.decode(body_b64).map_err(|_| TokenError::Malformed)?;
    let wire: Wire = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if wire.allow.len() > MAX_ALLOWED_PEERS {
        return Err(TokenError::OutOfBounds);
    }
    let claims = Claims {
        session_id: wire.sid,
        peer: key32(&wire.pk)?,
        allowed_peers: wire
            .allow
            .iter()
            .map(|s| key32(s))
            .collect::<Result<_, _>>()?,
        expires_at: wire.exp,
        bridge: wire.br,
    };
    check_bounds(&claims)?;
    if claims.expires_at <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            session_id: "s-1".into(),
            peer: [1; 32],
            allowed_peers: vec![[2; 32], [3; 32]],
            expires_at: 1_000,
            bridge: false,
        }
    }

    #[test]
    fn issued_token_verifies_and_round_trips_claims() {
        let (k, _) = SigningKey::generate().unwrap();
        let t = issue(&k, &claims()).unwrap();
        assert_eq!(verify(&k.verifying_key(), &t, 999).unwrap(), claims());
    }

    #[test]
    fn bridge_claim_round_trips_and_is_absent_from_tokens_without_it() {
        let (k, _) = SigningKey::generate().unwrap();
        let body = |t: &str| {
            let b64 = t.split('.').nth(1).unwrap();
            String::from_utf8(B64.decode(b64).unwrap()).unwrap()
        };
        let plain = issue(&k, &claims()).unwrap();
        assert!(!body(&plain).contains("\"br\""), "{}", body(&plain));
        let mut c = claims();
        c.bridge = true;
        let t = issue(&k, &c).unwrap();
        assert!(body(&t).contains("\"br\":true"), "{}", body(&t));
        assert_eq!(verify(&k.verifying_key(), &t, 999).unwrap(), c);
    }

    #[test]
    fn unknown_claim_fields_are_still_refused() {
        let (k, _) = SigningKey::generate().unwrap();
        let sign = |json: String| {
            let signed = format!("{PREFIX}.{}", B64.encode(json));
            let sig = k.0.sign(signed.as_bytes());
            format!("{signed}.{}", B64.encode(sig.as_ref()))
        };
        let pk = B64.encode([1u8; 32]);
        let t = sign(format!(
            r#"{{"sid":"s","pk":"{pk}","allow":[],"exp":1000,"zz":1}}"#
        ));
        assert_eq!(
            verify(&k.verifying_key(), &t, 0),
            Err(TokenError::Malformed)
        );
        // The same body without the unknown field verifies, without the bridge claim.
        let t = sign(format!(
            r#"{{"sid":"s","pk":"{pk}","allow":[],"exp":1000}}"#
        ));
        assert!(!verify(&k.verifying_key(), &t, 0).unwrap().bridge);
    }

    #[test]
    fn expired_token_is_refused() {
        let (k, _) = SigningKey::generate().unwrap();
        let t = issue(&k, &claims()).unwrap();
        assert_eq!(
            verify(&k.verifying_key(), &t, 1_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn token_from_another_key_is_refused() {
        let (k, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let t = issue(&other, &claims()).unwrap();
        assert_eq!(
            verify(&k.verifying_key(), &t, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_claims_are_refused() {
        let (k, _) = SigningKey::generate().unwrap();
        let t = issue(&k, &claims()).unwrap();
        let mut c2 = claims();
        c2.allowed_peers.push([9; 32]);
        let t2 = issue(&k, &c2).unwrap();
        // Body of one token with the signature of another.
        let (body, _) = t2.rsplit_once('.').unwrap();
        let (_, sig) = t.rsplit_once('.').unwrap();
        let forged = format!("{body}.{sig}");
        assert_eq!(
            verify(&k.verifying_key(), &forged, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn oversized_and_garbage_tokens_are_refused_without_panic() {
        let (k, _) = SigningKey::generate().unwrap();
        let vk = k.verifying_key();
        assert_eq!(
            verify(&vk, &"a".repeat(MAX_TOKEN_LEN + 1), 0),
            Err(TokenError::TooLong)
        );
        for t in ["", ".", "..", "drt1..", "drt1.x.y", "x.y.z", "drt1.!!.??"] {
            assert!(verify(&vk, t, 0).is_err(), "{t}");
        }
        let mut c = claims();
        c.allowed_peers = vec![[0; 32]; MAX_ALLOWED_PEERS + 1];
        assert_eq!(issue(&k, &c), Err(TokenError::OutOfBounds));
    }

    #[test]
    fn pkcs8_key_reloads_to_the_same_public_key() {
        let (k, doc) = SigningKey::generate().unwrap();
        let k2 = SigningKey::from_pkcs8(&doc).unwrap();
        assert_eq!(k.verifying_key(), k2.verifying_key());
    }
}
