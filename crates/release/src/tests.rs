use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const NOW: i64 = 1_800_000_000;

fn meta(version: &str, binary: &[u8]) -> ReleaseMeta {
    ReleaseMeta {
        product: PRODUCT_EDGE.into(),
        version: version.into(),
        target: this_target(),
        size: binary.len() as u64,
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, binary).as_ref()),
        created: NOW,
        downgrade: false,
    }
}

fn cert(root: &PrivateKey, key: &PrivateKey, from: i64, to: i64) -> Envelope {
    certify(
        root,
        &SigningKeyCert {
            name: "release-key".into(),
            public_key: key.public(),
            not_before: from,
            not_after: to,
        },
    )
}

fn setup() -> (PrivateKey, PrivateKey, Envelope) {
    let root = PrivateKey::generate();
    let key = PrivateKey::generate();
    let c = cert(&root, &key, NOW - 10, NOW + 1000);
    (root, key, c)
}

#[test]
fn a_release_signed_under_the_root_verifies_and_round_trips_through_json() {
    let (root, key, c) = setup();
    let m = meta("1.2.3", b"binary");
    let s = sign_release(&key, c, &m);
    let back = SignedRelease::from_json(&s.to_json()).unwrap();
    assert_eq!(verify(&root.public(), &back, NOW).unwrap(), m);
}

#[test]
fn tampering_another_root_or_a_foreign_signing_key_is_refused() {
    let (root, key, c) = setup();
    let s = sign_release(&key, c.clone(), &meta("1.2.3", b"binary"));
    // Another root.
    assert_eq!(
        verify(&PrivateKey::generate().public(), &s, NOW),
        Err(Error::BadSignature)
    );
    // The payload changed after signing.
    let mut edited = s.clone();
    let mut m: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(&s.release.payload).unwrap()).unwrap();
    m["version"] = "9.9.9".into();
    edited.release.payload = STANDARD.encode(m.to_string());
    assert_eq!(
        verify(&root.public(), &edited, NOW),
        Err(Error::BadSignature)
    );
    // Signed by a key the certificate does not name.
    let stranger = PrivateKey::generate();
    let s2 = sign_release(&stranger, c, &meta("1.2.3", b"binary"));
    assert_eq!(verify(&root.public(), &s2, NOW), Err(Error::BadSignature));
}

#[test]
fn one_kind_of_signature_never_passes_for_another() {
    let (root, key, _) = setup();
    // The root signs release metadata directly: not a signing-key certificate.
    let m = meta("1.0.0", b"x");
    let as_release = Envelope::sign(&root, Kind::Release, &m);
    assert!(
        as_release
            .open::<SigningKeyCert>(&root.public(), Kind::SigningKey)
            .is_err()
    );
    let c = cert(&root, &key, NOW - 1, NOW + 1);
    assert!(
        c.open::<ReleaseMeta>(&root.public(), Kind::Release)
            .is_err()
    );
}

#[test]
fn an_expired_or_not_yet_valid_signing_key_is_refused() {
    let (root, key, _) = setup();
    let m = meta("1.0.0", b"x");
    let old = sign_release(&key, cert(&root, &key, NOW - 100, NOW - 1), &m);
    assert_eq!(
        verify(&root.public(), &old, NOW),
        Err(Error::Expired(NOW - 1))
    );
    let early = sign_release(&key, cert(&root, &key, NOW + 5, NOW + 100), &m);
    assert_eq!(
        verify(&root.public(), &early, NOW),
        Err(Error::NotYetValid(NOW + 5))
    );
}

#[test]
fn malformed_metadata_is_refused_even_when_signed() {
    let (root, key, c) = setup();
    for bad in [
        ReleaseMeta {
            version: "latest".into(),
            ..meta("1.0.0", b"x")
        },
        ReleaseMeta {
            sha256: "AB".repeat(32),
            ..meta("1.0.0", b"x")
        },
        ReleaseMeta {
            size: 0,
            ..meta("1.0.0", b"x")
        },
        ReleaseMeta {
            size: u64::MAX,
            ..meta("1.0.0", b"x")
        },
        ReleaseMeta {
            target: "x86_64 linux".into(),
            ..meta("1.0.0", b"x")
        },
    ] {
        let s = sign_release(&key, c.clone(), &bad);
        assert!(
            matches!(verify(&root.public(), &s, NOW), Err(Error::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(SignedRelease::from_json("{").is_err());
    assert!(SignedRelease::from_json(&"x".repeat(100_000)).is_err());
    assert!(SignedRelease::from_json(r#"{"release":{"payload":"","signature":""},"signing_key":{"payload":"","signature":""},"extra":1}"#).is_err());
}

#[test]
fn only_a_newer_version_for_this_machine_installs_and_an_older_only_as_a_signed_downgrade() {
    let m = meta("1.2.0", b"x");
    let t = this_target();
    assert!(check_install(&m, "1.1.9", &t, false).is_ok());
    assert!(matches!(
        check_install(&m, "1.2.0", &t, false),
        Err(Error::NotNewer { .. })
    ));
    assert!(matches!(
        check_install(&m, "1.3.0", &t, false),
        Err(Error::Downgrade { .. })
    ));
    // Asked for, but not signed as a downgrade: refused.
    assert!(matches!(
        check_install(&m, "1.3.0", &t, true),
        Err(Error::Downgrade { .. })
    ));
    let d = ReleaseMeta {
        downgrade: true,
        ..m.clone()
    };
    assert!(matches!(
        check_install(&d, "1.3.0", &t, false),
        Err(Error::Downgrade { .. })
    ));
    assert!(check_install(&d, "1.3.0", &t, true).is_ok());
    assert!(matches!(
        check_install(&m, "1.0.0", "riscv64-linux", false),
        Err(Error::WrongTarget { .. })
    ));
    let other = ReleaseMeta {
        product: "drawbridge".into(),
        ..m
    };
    assert!(matches!(
        check_install(&other, "1.0.0", &t, false),
        Err(Error::WrongProduct(_))
    ));
}

#[test]
fn the_digest_refuses_extra_bytes_at_once_and_a_wrong_hash_or_short_binary_at_the_end() {
    let m = meta("1.0.0", b"0123456789");
    let mut d = Digest::new(&m);
    d.update(b"01234").unwrap();
    d.update(b"56789").unwrap();
    d.finish().unwrap();
    let mut d = Digest::new(&m);
    d.update(b"0123456789").unwrap();
    assert!(matches!(d.update(b"!"), Err(Error::Size { .. })));
    let mut d = Digest::new(&m);
    d.update(b"012345678").unwrap();
    assert!(matches!(d.finish(), Err(Error::Size { .. })));
    let mut d = Digest::new(&m);
    d.update(b"0123456788").unwrap();
    assert_eq!(d.finish(), Err(Error::Hash));
}

#[test]
fn rotations_chain_from_the_pinned_root_and_a_stranger_cannot_rotate() {
    let r1 = PrivateKey::generate();
    let r2 = PrivateKey::generate();
    let r3 = PrivateKey::generate();
    let a = rotate_root(&r1, &r2.public(), NOW);
    let b = rotate_root(&r2, &r3.public(), NOW);
    let chain = vec![a.clone(), b.clone()];
    assert_eq!(current_root(&r1.public(), &chain).unwrap(), r3.public());
    // An edge that pinned r2 already passes over the first link.
    assert_eq!(current_root(&r2.public(), &chain).unwrap(), r3.public());
    assert_eq!(current_root(&r3.public(), &chain).unwrap(), r3.public());
    assert_eq!(current_root(&r1.public(), &[]).unwrap(), r1.public());
    // Out of order.
    assert!(current_root(&r1.public(), &[b.clone(), a.clone()]).is_err());
    // A stranger's rotation naming r1 as previous.
    let stranger = PrivateKey::generate();
    let forged = Envelope::sign(
        &stranger,
        Kind::RootRotation,
        &RootRotation {
            previous: r1.public(),
            next: stranger.public(),
            created: NOW,
        },
    )
    .to_json();
    assert!(matches!(
        current_root(&r1.public(), &[forged]),
        Err(Error::BrokenRotation(_))
    ));
    // A pinned root the chain does not reach.
    assert!(current_root(&stranger.public(), &chain).is_err());
    assert!(current_root(&r1.public(), &["{".into()]).is_err());
}

#[test]
fn private_key_files_round_trip_and_garbage_is_refused() {
    let k = PrivateKey::generate();
    let back = PrivateKey::from_file_text(&k.to_file_text()).unwrap();
    assert_eq!(back.public(), k.public());
    assert!(PrivateKey::from_file_text("hello\nAAAA\n").is_err());
    assert!(PrivateKey::from_file_text("drawbridge-release private key v1\n!!!\n").is_err());
    assert!("not a key".parse::<PublicKey>().is_err());
    assert_eq!(
        k.public().to_string().parse::<PublicKey>().unwrap(),
        k.public()
    );
}
