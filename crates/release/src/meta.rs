//! What is signed: a signing key's certificate, a release's metadata, a root
//! rotation; and the checks an edge makes before it installs anything.

use crate::{Envelope, Error, PublicKey};
use drawbridge_proto::update::{MAX_RELEASE_SIZE, MAX_SIGNED_LEN};
use serde::{Deserialize, Serialize};

/// The product name of the edge agent's releases.
pub const PRODUCT_EDGE: &str = "drawbridge-edge";

/// The machine a binary is for: `arch-os`, e.g. `x86_64-linux`.
pub fn this_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// 1 to `max` bytes, no control characters.
fn printable(s: &str, max: usize, what: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(Error::Malformed(format!(
            "{what} is 1 to {max} printable characters"
        )));
    }
    Ok(())
}

/// A signing key, certified by the root for a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyCert {
    /// A name for people (1 to 64 printable characters), e.g. "releases 2026".
    pub name: String,
    /// The signing key.
    pub public_key: PublicKey,
    /// First second (unix) the key may be used.
    pub not_before: i64,
    /// Last second (unix) the key may be used; keep the window short.
    pub not_after: i64,
}

impl SigningKeyCert {
    /// Its fields' bounds (the name; a window that does not end before it starts).
    pub(crate) fn check(&self) -> Result<(), Error> {
        printable(&self.name, 64, "a signing key's name")?;
        if self.not_after < self.not_before {
            return Err(Error::Malformed(
                "a signing key's validity ends before it starts".into(),
            ));
        }
        Ok(())
    }
}

/// A release's metadata, signed by a signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    /// What the binary is: [`PRODUCT_EDGE`] for the edge agent.
    pub product: String,
    /// Semantic version (at most 64 characters).
    pub version: String,
    /// [`this_target`] of the machines it is for (1 to 64 of `a-z 0-9 _ -`).
    pub target: String,
    /// The binary's length in bytes (1 to `MAX_RELEASE_SIZE`).
    pub size: u64,
    /// Lowercase hex SHA-256 of the binary (64 digits).
    pub sha256: String,
    /// When it was signed (unix seconds); informative only.
    pub created: i64,
    /// Signed as a downgrade release: it may replace a newer version, when
    /// the admin asks for a downgrade too.
    #[serde(default)]
    pub downgrade: bool,
}

impl ReleaseMeta {
    /// Its fields' bounds: printable product, semver version, target
    /// characters, size, lowercase hex SHA-256.
    pub(crate) fn check(&self) -> Result<(), Error> {
        printable(&self.product, 64, "the product")?;
        printable(&self.version, 64, "the version")?;
        semver::Version::parse(&self.version)
            .map_err(|e| Error::Malformed(format!("the version: {e}")))?;
        if self.target.is_empty()
            || self.target.len() > 64
            || !self
                .target
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(Error::Malformed(
                "the target is 1 to 64 of a-z 0-9 _ -".into(),
            ));
        }
        if self.size == 0 || self.size > MAX_RELEASE_SIZE {
            return Err(Error::Malformed(format!(
                "the size is 1 to {MAX_RELEASE_SIZE} bytes"
            )));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::Malformed(
                "the SHA-256 is 64 lowercase hex digits".into(),
            ));
        }
        Ok(())
    }
}

/// A release's signature file: the signed metadata and the signing key's
/// certificate, so that the root alone verifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRelease {
    /// The [`ReleaseMeta`], signed by the signing key.
    pub release: Envelope,
    /// The [`SigningKeyCert`], signed by the root.
    pub signing_key: Envelope,
}

impl SignedRelease {
    /// The signature file's text (what `drawbridge-release sign` writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain structs serialise")
    }

    /// Reads a signature file's text (at most `MAX_SIGNED_LEN` bytes, no
    /// unknown fields); nothing is verified yet.
    pub fn from_json(text: &str) -> Result<SignedRelease, Error> {
        if text.len() > MAX_SIGNED_LEN {
            return Err(Error::Malformed("the signature file is too long".into()));
        }
        serde_json::from_str(text).map_err(|e| Error::Malformed(e.to_string()))
    }
}

/// A root hands over to the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRotation {
    /// The root that signed this rotation.
    pub previous: PublicKey,
    /// The root in force after it.
    pub next: PublicKey,
    /// When it was signed (unix seconds); informative only.
    pub created: i64,
}

/// Whether a verified release may replace the running binary: the edge's
/// product, this machine's target, and a newer version — an older one only
/// when the admin asked for a downgrade and the release was signed as one.
/// Versions are compared by semver precedence: build metadata (`+…`) does not
/// count, so `1.2.0+b` is not newer than `1.2.0+a` (the same version is never
/// reinstalled).
pub fn check_install(
    meta: &ReleaseMeta,
    running_version: &str,
    target: &str,
    downgrade_requested: bool,
) -> Result<(), Error> {
    if meta.product != PRODUCT_EDGE {
        return Err(Error::WrongProduct(meta.product.clone()));
    }
    if meta.target != target {
        return Err(Error::WrongTarget {
            release: meta.target.clone(),
            running: target.into(),
        });
    }
    let new = semver::Version::parse(&meta.version)
        .map_err(|e| Error::Malformed(format!("the version: {e}")))?;
    let running = semver::Version::parse(running_version)
        .map_err(|e| Error::Malformed(format!("the running version: {e}")))?;
    let not_newer = || Error::NotNewer {
        release: meta.version.clone(),
        running: running_version.into(),
    };
    match new.cmp_precedence(&running) {
        std::cmp::Ordering::Greater => Ok(()),
        std::cmp::Ordering::Equal => Err(not_newer()),
        std::cmp::Ordering::Less if downgrade_requested && meta.downgrade => Ok(()),
        std::cmp::Ordering::Less => Err(Error::Downgrade {
            release: meta.version.clone(),
            running: running_version.into(),
        }),
    }
}
