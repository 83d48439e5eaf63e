//! Signing (the offline tool's side) and verifying (the server's and the
//! edge's side) of certificates, releases and root rotations.

use crate::{Envelope, Error, Kind, PrivateKey, PublicKey, ReleaseMeta, RootRotation};
use crate::{SignedRelease, SigningKeyCert};
use drawbridge_proto::update::MAX_ROTATIONS;

/// The root certifies a signing key (its public key, name and validity).
pub fn certify(root: &PrivateKey, cert: &SigningKeyCert) -> Envelope {
    Envelope::sign(root, Kind::SigningKey, cert)
}

/// A signing key (certified by `signing_key`, the root's [`certify`]
/// envelope) signs a release's metadata.
pub fn sign_release(key: &PrivateKey, signing_key: Envelope, meta: &ReleaseMeta) -> SignedRelease {
    SignedRelease {
        release: Envelope::sign(key, Kind::Release, meta),
        signing_key,
    }
}

/// The old root hands over to `next`: the JSON text of the signed rotation.
pub fn rotate_root(old: &PrivateKey, next: &PublicKey, created: i64) -> String {
    let r = RootRotation {
        previous: old.public(),
        next: *next,
        created,
    };
    Envelope::sign(old, Kind::RootRotation, &r).to_json()
}

/// The root in force after `rotations` (JSON texts, oldest first), starting
/// from the `pinned` one.
///
/// Each rotation after the pinned root must name the root before it as
/// `previous` and be signed by it. Rotations up to the one that introduced
/// the pinned root (the part of the chain an edge pinned past) are passed
/// over unverified: they cannot change what the pinned root allows. Anything
/// else (out of order, signed by another key, unparseable, more than
/// [`MAX_ROTATIONS`]) is an error.
pub fn current_root(pinned: &PublicKey, rotations: &[String]) -> Result<PublicKey, Error> {
    if rotations.len() > MAX_ROTATIONS {
        return Err(Error::BrokenRotation(format!(
            "more than {MAX_ROTATIONS} rotations"
        )));
    }
    let parsed: Vec<(Envelope, RootRotation)> = rotations
        .iter()
        .map(|t| {
            let e = Envelope::from_json(t)?;
            let r: RootRotation = e.payload_unverified()?;
            Ok((e, r))
        })
        .collect::<Result<_, Error>>()
        .map_err(|e: Error| Error::BrokenRotation(e.to_string()))?;
    // Start after the last rotation that introduced the pinned root, if any.
    let start = parsed
        .iter()
        .rposition(|(_, r)| r.next == *pinned)
        .map_or(0, |i| i + 1);
    let mut current = *pinned;
    for (e, r) in &parsed[start..] {
        if r.previous != current {
            return Err(Error::BrokenRotation(format!(
                "a rotation from {} follows root {current}",
                r.previous
            )));
        }
        let r: RootRotation = e.open(&current, Kind::RootRotation).map_err(|_| {
            Error::BrokenRotation(format!("a rotation is not signed by root {current}"))
        })?;
        current = r.next;
    }
    Ok(current)
}

/// Checks a signed release under `root` at `now` (unix seconds): the signing
/// key's certificate (the root's signature, then `not_before <= now <=
/// not_after`), then the release's signature by that key and its metadata's
/// bounds. Says nothing yet about whether it may be installed here
/// ([`check_install`](crate::check_install)) or about the binary
/// ([`Digest`](crate::Digest)).
pub fn verify(root: &PublicKey, signed: &SignedRelease, now: i64) -> Result<ReleaseMeta, Error> {
    let cert = verify_cert(root, &signed.signing_key, now)?;
    let meta: ReleaseMeta = signed.release.open(&cert.public_key, Kind::Release)?;
    meta.check()?;
    Ok(meta)
}

/// The certificate of a signing key, when `root` signed it and it is valid at `now`.
pub(crate) fn verify_cert(
    root: &PublicKey,
    cert: &Envelope,
    now: i64,
) -> Result<SigningKeyCert, Error> {
    let cert: SigningKeyCert = cert.open(root, Kind::SigningKey)?;
    cert.check()?;
    if now < cert.not_before {
        return Err(Error::NotYetValid(cert.not_before));
    }
    if now > cert.not_after {
        return Err(Error::Expired(cert.not_after));
    }
    Ok(cert)
}
