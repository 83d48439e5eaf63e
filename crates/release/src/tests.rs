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
    let root = PrivateKey::generate();
    let c = SigningKeyCert {
        name: "k".into(),
        public_key: PrivateKey::generate().public(),
        not_before: NOW - 1,
        not_after: NOW + 1,
    };
    let kinds = [Kind::SigningKey, Kind::Release, Kind::RootRotation];
    // The same payload, signed as one kind, opened as every other: the
    // signature itself must fail, whatever the payload parses as.
    for signed_as in kinds {
        let e = Envelope::sign(&root, signed_as, &c);
        for opened_as in kinds {
            let r = e.open::<serde_json::Value>(&root.public(), opened_as);
            if signed_as == opened_as {
                assert!(r.is_ok());
            } else {
                assert_eq!(
                    r,
                    Err(Error::BadSignature),
                    "{signed_as:?} as {opened_as:?}"
                );
            }
        }
    }
    // A root's rotation or release-shaped signature is never a certificate.
    let rotation = Envelope::from_json(&rotate_root(&root, &c.public_key, NOW)).unwrap();
    let as_cert = SignedRelease {
        release: Envelope::sign(&root, Kind::Release, &meta("1.0.0", b"x")),
        signing_key: rotation,
    };
    assert_eq!(
        verify(&root.public(), &as_cert, NOW),
        Err(Error::BadSignature)
    );
}

#[test]
fn the_signed_message_is_the_documented_domain_separated_bytes() {
    let key = PrivateKey::generate();
    let m = meta("1.0.0", b"x");
    let e = Envelope::sign(&key, Kind::Release, &m);
    let payload = STANDARD.decode(&e.payload).unwrap();
    let sig = STANDARD.decode(&e.signature).unwrap();
    let mut msg = b"drawbridge-release-v1\0release\0".to_vec();
    msg.extend_from_slice(&payload);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public().0)
        .verify(&msg, &sig)
        .unwrap();
    // The bare payload, without the context, is not what was signed.
    assert!(!key.public().verifies(&payload, &sig));
    for (kind, name) in [
        (Kind::SigningKey, &b"signing-key"[..]),
        (Kind::RootRotation, b"root-rotation"),
    ] {
        let e = Envelope::sign(&key, kind, &m);
        let mut msg = b"drawbridge-release-v1\0".to_vec();
        msg.extend_from_slice(name);
        msg.push(0);
        msg.extend_from_slice(&STANDARD.decode(&e.payload).unwrap());
        assert!(
            key.public()
                .verifies(&msg, &STANDARD.decode(&e.signature).unwrap())
        );
    }
}

#[test]
fn a_signing_key_certified_by_another_root_is_refused() {
    let (root, key, _) = setup();
    let other_root = PrivateKey::generate();
    let s = sign_release(
        &key,
        cert(&other_root, &key, NOW - 10, NOW + 10),
        &meta("1.0.0", b"x"),
    );
    assert_eq!(verify(&root.public(), &s, NOW), Err(Error::BadSignature));
    assert!(verify(&other_root.public(), &s, NOW).is_ok());
    // A certificate's signature moved onto another key's certificate.
    let mut swapped = cert(&root, &PrivateKey::generate(), NOW - 10, NOW + 10);
    swapped.signature = cert(&root, &key, NOW - 10, NOW + 10).signature;
    let s = sign_release(&key, swapped, &meta("1.0.0", b"x"));
    assert_eq!(verify(&root.public(), &s, NOW), Err(Error::BadSignature));
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
    // Both ends of the window count.
    let window = sign_release(&key, cert(&root, &key, NOW, NOW + 10), &m);
    assert!(verify(&root.public(), &window, NOW).is_ok());
    assert!(verify(&root.public(), &window, NOW + 10).is_ok());
    assert_eq!(
        verify(&root.public(), &window, NOW + 11),
        Err(Error::Expired(NOW + 10))
    );
    assert_eq!(
        verify(&root.public(), &window, NOW - 1),
        Err(Error::NotYetValid(NOW))
    );
    // A window that ends before it starts is malformed, whoever signed it.
    let backwards = sign_release(&key, cert(&root, &key, NOW + 10, NOW - 10), &m);
    assert!(matches!(
        verify(&root.public(), &backwards, NOW),
        Err(Error::Malformed(_))
    ));
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
    // The largest allowed size is fine.
    let big = ReleaseMeta {
        size: drawbridge_proto::update::MAX_RELEASE_SIZE,
        ..meta("1.0.0", b"x")
    };
    assert!(verify(&root.public(), &sign_release(&key, c.clone(), &big), NOW).is_ok());
    // A signing key's name: 1 to 64 printable characters.
    for name in [String::new(), "n".repeat(65), "a\u{7}b".into()] {
        let bad = certify(
            &root,
            &SigningKeyCert {
                name,
                public_key: key.public(),
                not_before: NOW,
                not_after: NOW,
            },
        );
        let s = sign_release(&key, bad, &meta("1.0.0", b"x"));
        assert!(matches!(
            verify(&root.public(), &s, NOW),
            Err(Error::Malformed(_))
        ));
    }
}

#[test]
fn malformed_oversized_or_extended_json_is_refused() {
    let (root, key, c) = setup();
    let good = sign_release(&key, c.clone(), &meta("1.0.0", b"x")).to_json();
    assert!(SignedRelease::from_json(&good).is_ok());
    for bad in [
        "",
        "{",
        "null",
        "[]",
        r#"{"release":1,"signing_key":2}"#,
        &good[..good.len() - 1],
    ] {
        assert!(
            matches!(SignedRelease::from_json(bad), Err(Error::Malformed(_))),
            "{bad}"
        );
    }
    // Over the bound: refused before parsing, even when well-formed.
    let padded = format!(
        "{good}{}",
        " ".repeat(drawbridge_proto::update::MAX_SIGNED_LEN)
    );
    assert!(matches!(
        SignedRelease::from_json(&padded),
        Err(Error::Malformed(_))
    ));
    assert!(Envelope::from_json(&padded).is_err());
    // An unknown field around the envelopes, or in one.
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["extra"] = 1.into();
    assert!(SignedRelease::from_json(&v.to_string()).is_err());
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["release"]["extra"] = 1.into();
    assert!(SignedRelease::from_json(&v.to_string()).is_err());
    // An unknown field inside a correctly signed payload.
    let mut m = serde_json::to_value(meta("1.0.0", b"x")).unwrap();
    m["install_script"] = "curl | sh".into();
    let s = SignedRelease {
        release: Envelope::sign(&key, Kind::Release, &m),
        signing_key: c,
    };
    assert!(matches!(
        verify(&root.public(), &s, NOW),
        Err(Error::Malformed(_))
    ));
    let mut cv = serde_json::to_value(SigningKeyCert {
        name: "k".into(),
        public_key: key.public(),
        not_before: NOW - 1,
        not_after: NOW + 1,
    })
    .unwrap();
    cv["may_sign_roots"] = true.into();
    let s = SignedRelease {
        release: Envelope::sign(&key, Kind::Release, &meta("1.0.0", b"x")),
        signing_key: Envelope::sign(&root, Kind::SigningKey, &cv),
    };
    assert!(matches!(
        verify(&root.public(), &s, NOW),
        Err(Error::Malformed(_))
    ));
    // A payload over the bound, or not base64, or a signature that is not.
    let (root, key, c) = setup();
    let mut s = sign_release(&key, c.clone(), &meta("1.0.0", b"x"));
    s.release.payload = "A".repeat(drawbridge_proto::update::MAX_SIGNED_LEN + 4);
    assert!(matches!(
        verify(&root.public(), &s, NOW),
        Err(Error::Malformed(_))
    ));
    let mut s = sign_release(&key, c.clone(), &meta("1.0.0", b"x"));
    s.release.payload.insert(0, '!');
    assert!(matches!(
        verify(&root.public(), &s, NOW),
        Err(Error::Malformed(_))
    ));
    let mut s2 = sign_release(&key, c, &meta("1.0.0", b"x"));
    s2.release.signature = "not base64!".into();
    assert_eq!(verify(&root.public(), &s2, NOW), Err(Error::BadSignature));
    s2.release.signature = STANDARD.encode([0u8; 63]);
    assert_eq!(verify(&root.public(), &s2, NOW), Err(Error::BadSignature));
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
    // A chunk that crosses the end is refused on that chunk.
    let mut d = Digest::new(&m);
    d.update(b"012345678").unwrap();
    assert_eq!(
        d.update(b"9!"),
        Err(Error::Size {
            expected: 10,
            got: 11
        })
    );
    // Nothing at all is too short; the right bytes in another order are the wrong hash.
    assert!(matches!(
        Digest::new(&m).finish(),
        Err(Error::Size {
            expected: 10,
            got: 0
        })
    ));
    let mut d = Digest::new(&m);
    d.update(b"9876543210").unwrap();
    assert_eq!(d.finish(), Err(Error::Hash));
    // A huge chunk does not wrap the count.
    let mut d = Digest::new(&m);
    d.update(b"0").unwrap();
    d.seen = u64::MAX - 1;
    assert!(matches!(d.update(b"12"), Err(Error::Size { .. })));
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
    // The old root's signature of another kind of document is not a rotation.
    let wrong_kind = Envelope::sign(
        &r1,
        Kind::SigningKey,
        &RootRotation {
            previous: r1.public(),
            next: stranger.public(),
            created: NOW,
        },
    )
    .to_json();
    assert!(matches!(
        current_root(&r1.public(), &[wrong_kind]),
        Err(Error::BrokenRotation(_))
    ));
    // A valid link followed by a stranger's: refused as a whole, not cut short.
    let forged2 = Envelope::sign(
        &stranger,
        Kind::RootRotation,
        &RootRotation {
            previous: r2.public(),
            next: stranger.public(),
            created: NOW,
        },
    )
    .to_json();
    assert!(current_root(&r1.public(), &[a.clone(), forged2]).is_err());
    // A link skipped over (the first) is repeated later: out of order.
    assert!(current_root(&r1.public(), &[a.clone(), b.clone(), a.clone()]).is_err());
    // An unknown field in a signed rotation.
    let mut v = serde_json::to_value(RootRotation {
        previous: r1.public(),
        next: r2.public(),
        created: NOW,
    })
    .unwrap();
    v["expires"] = 0.into();
    let extended = Envelope::sign(&r1, Kind::RootRotation, &v).to_json();
    assert!(current_root(&r1.public(), &[extended]).is_err());
    // Too many rotations, or an oversized one.
    let many = vec![a.clone(); drawbridge_proto::update::MAX_ROTATIONS + 1];
    assert!(current_root(&r1.public(), &many).is_err());
    let big = format!(
        "{a}{}",
        " ".repeat(drawbridge_proto::update::MAX_SIGNED_LEN)
    );
    assert!(current_root(&r1.public(), &[big]).is_err());
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
