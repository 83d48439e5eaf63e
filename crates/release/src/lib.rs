//! Signed edge releases, two-tier like Tailscale's `distsign`: an offline
//! **root** key certifies **signing keys** for a time; a signing key signs each
//! release's metadata (product, version, target, size, SHA-256). A root is
//! replaced only by a **rotation** the old root signed. Every signature is
//! Ed25519 (ring) over a domain-separated message, so one kind never passes
//! for another. No I/O here except in [`cli`] (the `drawbridge-release`
//! tool): the server and the edge read and write their own files.
//!
//! The order of checks on an edge: [`current_root`] (from the pinned root
//! through the rotations), [`verify`] (certificate and release signatures,
//! metadata bounds), [`check_install`] (product, target, version order), then
//! the binary through a [`Digest`] as it streams in.

#![warn(missing_docs)]

pub mod cli;
mod digest;
mod envelope;
mod keys;
mod meta;
mod verify;

pub use digest::Digest;
pub use envelope::{Envelope, Kind};
pub use keys::{PrivateKey, PublicKey};
pub use meta::{
    PRODUCT_EDGE, ReleaseMeta, RootRotation, SignedRelease, SigningKeyCert, check_install,
    this_target,
};
pub use verify::{certify, current_root, rotate_root, sign_release, verify};

/// Why something signed, or a binary, was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not well-formed: bad JSON, an unknown field, a value out of bounds.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A signature is not the expected key's signature of this kind of document.
    #[error("the signature does not verify")]
    BadSignature,
    /// The signing key's certificate ended at this time (unix seconds).
    #[error("the signing key expired at {0} (unix seconds)")]
    Expired(i64),
    /// The signing key's certificate starts at this time (unix seconds).
    #[error("the signing key is valid only from {0} (unix seconds)")]
    NotYetValid(i64),
    /// The release is for another product than the edge agent.
    #[error("the release is for {0}, not for the edge")]
    WrongProduct(String),
    /// The release is for another kind of machine.
    #[error("the release is for {release}, this machine is {running}")]
    WrongTarget {
        /// The release's target.
        release: String,
        /// This machine's target.
        running: String,
    },
    /// The release's version is the running one (or equal in precedence).
    #[error("version {release} is not newer than the running {running}")]
    NotNewer {
        /// The release's version.
        release: String,
        /// The running version.
        running: String,
    },
    /// The release is older than the running version, and the admin did not
    /// ask for a downgrade or the release was not signed as one.
    #[error(
        "version {release} is older than the running {running}, and no signed downgrade was asked for"
    )]
    Downgrade {
        /// The release's version.
        release: String,
        /// The running version.
        running: String,
    },
    /// The binary is longer (refused as soon as it is) or shorter than signed.
    #[error("the binary's size is wrong: {got} bytes received, the release says {expected}")]
    Size {
        /// The signed size.
        expected: u64,
        /// The bytes received so far.
        got: u64,
    },
    /// The binary's SHA-256 is not the signed one.
    #[error("the binary's SHA-256 is not the release's")]
    Hash,
    /// The root rotations do not lead from the pinned root.
    #[error("the root rotations do not lead from the pinned root: {0}")]
    BrokenRotation(String),
}

#[cfg(test)]
mod tests;
