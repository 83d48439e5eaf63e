//! An offer, checked before a byte is fetched: the root this edge trusts (the
//! pinned one, moved on only by rotations it signed), the release's signature
//! chain under it, and whether this edge may install that release (product,
//! target, a newer version, or an older one only as an explicit, signed
//! downgrade). Pure: nothing here touches the disk or the network.

use super::UpdateError;
use drawbridge_proto::update::{MAX_ROTATIONS, MAX_SIGNED_LEN, UpdateOffer};
use drawbridge_release::{PublicKey, ReleaseMeta, SignedRelease};

/// Longest id (rollout, release) an offer may carry.
pub const MAX_ID: usize = 64;

/// A release this edge may install, as its signature says.
#[derive(Debug, Clone)]
pub struct Checked {
    pub meta: ReleaseMeta,
    /// The root the release verified under…
    pub root: PublicKey,
    /// …which is not the pinned one yet (a rotation, or the first offer of an
    /// edge enrolled before the server had a root): pinned when installed.
    pub repin: bool,
}

/// An id the server gave: 1–64 of `[A-Za-z0-9_-]` (it goes into a URL path
/// and a file).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn malformed(what: &str) -> UpdateError {
    UpdateError::Offer(what.to_string())
}

fn parse_root(text: &str) -> Option<PublicKey> {
    if text.len() > 128 {
        return None;
    }
    text.trim().parse().ok()
}

/// Checks `offer` for an edge that pinned `pinned` (base64; `None`: nothing
/// pinned yet, the offer's root is trusted on first use), runs `running` on
/// `target`, at `now` (Unix seconds).
pub fn check(
    offer: &UpdateOffer,
    pinned: Option<&str>,
    running: &str,
    target: &str,
    now: i64,
) -> Result<Checked, UpdateError> {
    if !valid_id(&offer.rollout_id) || !valid_id(&offer.release_id) {
        return Err(malformed("its ids are not 1-64 letters, digits, - or _"));
    }
    if offer.signed.len() > MAX_SIGNED_LEN {
        return Err(malformed("its signed metadata is too long"));
    }
    if offer.rotations.len() > MAX_ROTATIONS
        || offer.rotations.iter().any(|r| r.len() > MAX_SIGNED_LEN)
    {
        return Err(malformed("too many or too long root rotations"));
    }
    let (start, first_use) = match pinned {
        Some(p) => (
            parse_root(p).ok_or_else(|| {
                UpdateError::Pin("device.json's release_root is not a public key".into())
            })?,
            false,
        ),
        None => (
            parse_root(&offer.root).ok_or_else(|| malformed("its root is not a public key"))?,
            true,
        ),
    };
    let root = drawbridge_release::current_root(&start, &offer.rotations)?;
    let signed = SignedRelease::from_json(&offer.signed)?;
    let meta = drawbridge_release::verify(&root, &signed, now)?;
    if meta.size != offer.size
        || !meta.sha256.eq_ignore_ascii_case(&offer.sha256)
        || meta.version != offer.version
    {
        return Err(malformed(
            "its version, size or hash differs from the signed ones",
        ));
    }
    drawbridge_release::check_install(&meta, running, target, offer.downgrade)?;
    let repin = first_use || root.to_string() != start.to_string();
    Ok(Checked { meta, root, repin })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use drawbridge_release::{PrivateKey, SigningKeyCert};

    pub(crate) const TARGET: &str = "x86_64-linux";

    /// A root and a signing key it certified for `not_before..not_after`.
    pub(crate) struct Keys {
        pub root: PrivateKey,
        pub signing: PrivateKey,
        pub cert: drawbridge_release::Envelope,
    }

    impl Keys {
        pub(crate) fn new(not_before: i64, not_after: i64) -> Keys {
            let root = PrivateKey::generate();
            let signing = PrivateKey::generate();
            let cert = drawbridge_release::certify(
                &root,
                &SigningKeyCert {
                    name: "test".into(),
                    public_key: signing.public(),
                    not_before,
                    not_after,
                },
            );
            Keys {
                root,
                signing,
                cert,
            }
        }

        pub(crate) fn root_b64(&self) -> String {
            self.root.public().to_string()
        }

        /// An offer of `binary` as `version`, signed with these keys.
        pub(crate) fn offer(&self, binary: &[u8], version: &str, downgrade: bool) -> UpdateOffer {
            self.offer_with(&self.cert, binary, version, downgrade)
        }

        /// The same with the signing key's certificate `cert`.
        pub(crate) fn offer_with(
            &self,
            cert: &drawbridge_release::Envelope,
            binary: &[u8],
            version: &str,
            downgrade: bool,
        ) -> UpdateOffer {
            let meta = ReleaseMeta {
                product: drawbridge_release::PRODUCT_EDGE.into(),
                version: version.into(),
                target: TARGET.into(),
                size: binary.len() as u64,
                sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, binary)),
                created: 1_000,
                downgrade,
            };
            let signed = drawbridge_release::sign_release(&self.signing, cert.clone(), &meta);
            UpdateOffer {
                rollout_id: "rollout-1".into(),
                release_id: format!("rel-{}", version.replace('.', "-")),
                version: version.into(),
                size: meta.size,
                sha256: meta.sha256.clone(),
                signed: signed.to_json(),
                root: self.root_b64(),
                rotations: vec![],
                downgrade: false,
            }
        }
    }

    const NOW: i64 = 10_000;

    #[test]
    fn a_release_signed_under_the_pinned_root_is_accepted() {
        let k = Keys::new(0, 20_000);
        let o = k.offer(b"build B", "1.1.0", false);
        let c = check(&o, Some(&k.root_b64()), "1.0.0", TARGET, NOW).unwrap();
        assert_eq!(c.meta.version, "1.1.0");
        assert!(!c.repin);
    }

    #[test]
    fn a_release_signed_under_another_root_is_refused() {
        let k = Keys::new(0, 20_000);
        let attacker = Keys::new(0, 20_000);
        let mut o = attacker.offer(b"evil", "9.0.0", false);
        assert!(check(&o, Some(&k.root_b64()), "1.0.0", TARGET, NOW).is_err());
        // Naming the pinned root in the offer changes nothing.
        o.root = k.root_b64();
        let e = check(&o, Some(&k.root_b64()), "1.0.0", TARGET, NOW).unwrap_err();
        assert_eq!(e.state(), drawbridge_proto::update::UpdateState::Refused);
    }

    #[test]
    fn an_expired_signing_key_is_refused() {
        let k = Keys::new(0, NOW - 1);
        let o = k.offer(b"build B", "1.1.0", false);
        assert!(check(&o, Some(&k.root_b64()), "1.0.0", TARGET, NOW).is_err());
    }

    #[test]
    fn an_older_or_equal_version_is_refused_unless_an_explicit_signed_downgrade() {
        let k = Keys::new(0, 20_000);
        let root = k.root_b64();
        let old = k.offer(b"build 0", "0.9.0", false);
        assert!(check(&old, Some(&root), "1.0.0", TARGET, NOW).is_err());
        let same = k.offer(b"build A", "1.0.0", false);
        assert!(check(&same, Some(&root), "1.0.0", TARGET, NOW).is_err());
        // The admin asks for a downgrade, but the release was not signed as one.
        let mut asked = old.clone();
        asked.downgrade = true;
        assert!(check(&asked, Some(&root), "1.0.0", TARGET, NOW).is_err());
        // Signed as a downgrade, but nobody asked.
        let signed_down = k.offer(b"build 0", "0.9.0", true);
        assert!(check(&signed_down, Some(&root), "1.0.0", TARGET, NOW).is_err());
        let mut both = signed_down;
        both.downgrade = true;
        check(&both, Some(&root), "1.0.0", TARGET, NOW).unwrap();
    }

    #[test]
    fn another_target_and_an_offer_that_contradicts_its_signature_are_refused() {
        let k = Keys::new(0, 20_000);
        let root = k.root_b64();
        let o = k.offer(b"build B", "1.1.0", false);
        assert!(check(&o, Some(&root), "1.0.0", "aarch64-linux", NOW).is_err());
        let mut lying = o.clone();
        lying.size += 1;
        assert!(check(&lying, Some(&root), "1.0.0", TARGET, NOW).is_err());
        let mut bad_id = o;
        bad_id.release_id = "../../etc".into();
        assert!(check(&bad_id, Some(&root), "1.0.0", TARGET, NOW).is_err());
    }

    #[test]
    fn nothing_pinned_trusts_the_offers_root_on_first_use_and_repins() {
        let k = Keys::new(0, 20_000);
        let o = k.offer(b"build B", "1.1.0", false);
        let c = check(&o, None, "1.0.0", TARGET, NOW).unwrap();
        assert!(c.repin);
        assert_eq!(c.root.to_string(), k.root_b64());
        let e = check(&o, Some("not a key"), "1.0.0", TARGET, NOW).unwrap_err();
        assert!(matches!(e, UpdateError::Pin(_)), "{e}");
    }

    #[test]
    fn a_rotation_signed_by_the_pinned_root_moves_the_pin() {
        let old = Keys::new(0, 20_000);
        let new = Keys::new(0, 20_000);
        let rotation = drawbridge_release::rotate_root(&old.root, &new.root.public(), 500);
        let mut o = new.offer(b"build B", "1.1.0", false);
        o.root = old.root_b64();
        o.rotations = vec![rotation];
        let c = check(&o, Some(&old.root_b64()), "1.0.0", TARGET, NOW).unwrap();
        assert!(c.repin);
        assert_eq!(c.root.to_string(), new.root_b64());
        // A rotation signed by someone else is not followed.
        let stranger = Keys::new(0, 20_000);
        o.rotations = vec![drawbridge_release::rotate_root(
            &stranger.root,
            &new.root.public(),
            500,
        )];
        assert!(check(&o, Some(&old.root_b64()), "1.0.0", TARGET, NOW).is_err());
    }
}
