//! Encryption at rest of the secrets the database holds (the device CA's and the
//! relay's private keys, users' TOTP secrets), so that a database dump, backup or
//! replica alone reveals none of them.
//!
//! The secrets key (32 random bytes, a file next to the server, not in the database)
//! seals each value with AES-256-GCM (ring) under a fresh random nonce, bound to where
//! it is stored (the "context", e.g. `users.totp_secret:<user id>`, as associated data):
//! a sealed value copied into another row or column does not open. Stored form:
//! `sealed:v1:` + base64(nonce ‖ ciphertext ‖ tag).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

const PREFIX: &str = "sealed:v1:";

/// Where a `server_secrets` row's value is stored.
pub fn server_secret_context(name: &str) -> String {
    format!("server_secrets:{name}")
}

/// The `server_secrets` row of the device CA's private key.
pub const CA_KEY_NAME: &str = "device_ca_key";

/// The `server_secrets` row of the relay-token signing key.
pub const RELAY_KEY_NAME: &str = "relay_signing_key";

/// The portal's CSRF key's `server_secrets` row: one key for every replica, so a form
/// rendered by one is accepted by another.
pub const PORTAL_KEY_NAME: &str = "portal_csrf_key";

/// The `server_secrets` rows that are secrets, stored sealed (the others are public,
/// e.g. the CA's certificate).
pub const SECRET_NAMES: [&str; 3] = [CA_KEY_NAME, RELAY_KEY_NAME, PORTAL_KEY_NAME];

/// Where a user's TOTP secret (or the one being set up) is stored.
pub fn totp_context(user_id: &str, pending: bool) -> String {
    if pending {
        format!("users.totp_pending_secret:{user_id}")
    } else {
        format!("users.totp_secret:{user_id}")
    }
}

/// Whether a stored value is sealed (else it is a value from before sealing).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error(
        "a sealed secret does not open with this secrets key (another key, or moved from elsewhere)"
    )]
    WrongKey,
}

/// The key that seals the database's secrets.
pub struct SecretsKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        SecretsKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// Reads the key file (base64 of 32 bytes), creating it with mode 0600 when it
    /// does not exist yet.
    pub fn load_or_create(path: &Path) -> anyhow::Result<SecretsKey> {
        if !path.exists() {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for the secrets key"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            // Written aside, then linked into place: the link never replaces a key
            // another process made at the same time, and nobody reads half a file.
            let mut tag = [0u8; 8];
            SystemRandom::new()
                .fill(&mut tag)
                .map_err(|_| anyhow::anyhow!("no randomness for the secrets key"))?;
            let tmp = path.with_extension(format!("tmp-{}", hex::encode(tag)));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            {
                use std::io::Write;
                let mut f = opts
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                f.write_all(format!("{}\n", STANDARD.encode(bytes)).as_bytes())?;
                f.sync_all()?;
            }
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // A file system without hard links: create it in place instead (still
                // never replacing one that exists).
                Err(_) => {
                    use std::io::Write;
                    match opts.open(path) {
                        Ok(mut f) => {
                            f.write_all(format!("{}\n", STANDARD.encode(bytes)).as_bytes())?;
                            f.sync_all()?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("creating {}", path.display()));
                        }
                    }
                }
            }
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secrets key {}", path.display()))?;
        let bytes = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let Some(bytes) = bytes else {
            bail!(
                "{} is not a secrets key (base64 of 32 bytes)",
                path.display()
            );
        };
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// Seals `plaintext` for the place `context` names.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the operating system's random source works");
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any length we store");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, stored: &str) -> Result<Vec<u8>, SealError> {
        let b64 = stored.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        let mut raw = STANDARD.decode(b64).map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).map_err(|_| SealError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SealError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_in_its_place() {
        let k = SecretsKey::from_bytes(&[7; 32]);
        let s = k.seal("users.totp_secret:u1", b"JBSWY3DPEHPK3PXP");
        assert!(is_sealed(&s));
        assert!(!s.contains("JBSWY3DPEHPK3PXP"));
        assert_ne!(
            s,
            k.seal("users.totp_secret:u1", b"JBSWY3DPEHPK3PXP"),
            "fresh nonce"
        );
        assert_eq!(
            k.open("users.totp_secret:u1", &s).unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        // Copied into another user's row: refused.
        assert!(matches!(
            k.open("users.totp_secret:u2", &s),
            Err(SealError::WrongKey)
        ));
        let other = SecretsKey::from_bytes(&[8; 32]);
        assert!(matches!(
            other.open("users.totp_secret:u1", &s),
            Err(SealError::WrongKey)
        ));
        // Damaged in any way: refused, never a panic.
        for bad in [
            "sealed:v1:",
            "sealed:v1:!!!",
            "sealed:v1:AAAA",
            "JBSWY3DPEHPK3PXP",
        ] {
            assert!(k.open("users.totp_secret:u1", bad).is_err(), "{bad}");
        }
        let mut flipped = s.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            k.open("users.totp_secret:u1", &String::from_utf8(flipped).unwrap())
                .is_err()
        );
    }

    #[test]
    fn the_key_file_is_made_once_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/secrets.key");
        let a = SecretsKey::load_or_create(&path).unwrap();
        let sealed = a.seal("x", b"secret");
        let b = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(b.open("x", &sealed).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(SecretsKey::load_or_create(&path).is_err());
    }
}
