//! The `drawbridge-release` binary end to end: keys, certificate, signature,
//! verification (and its refusals), root rotation.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_drawbridge-release");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs and expects success; the combined output.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?} failed: {text}");
    text
}

/// Runs and expects a failure (non-zero exit); the error output.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

/// The base64 PKCS#8 line of a private key file.
fn secret(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn keygen_certify_sign_verify_tamper_and_rotate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut outputs = String::new();

    // Keys: the printed public key is the .pub file's; the private key is 0600.
    let printed = ok(d, &["keygen", "--out", "root.key"]);
    let root_pub = std::fs::read_to_string(d.join("root.pub")).unwrap();
    assert!(printed.contains(root_pub.trim()), "{printed}");
    outputs += &printed;
    outputs += &ok(d, &["keygen", "--out", "signing.key"]);
    #[cfg(unix)]
    for f in ["root.key", "signing.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Never over an existing key.
    let before = std::fs::read(d.join("root.key")).unwrap();
    fails(d, &["keygen", "--out", "root.key"]);
    assert_eq!(std::fs::read(d.join("root.key")).unwrap(), before);

    // The root certifies the signing key; the root cannot certify itself.
    outputs += &ok(
        d,
        &[
            "certify",
            "--root",
            "root.key",
            "--key",
            "signing.pub",
            "--name",
            "releases test",
            "--days",
            "30",
            "--out",
            "signing.cert",
        ],
    );
    fails(
        d,
        &[
            "certify", "--root", "root.key", "--key", "root.pub", "--name", "x", "--out", "x.cert",
        ],
    );
    // Nor write a certificate over a private key.
    fails(
        d,
        &[
            "certify",
            "--root",
            "root.key",
            "--key",
            "signing.pub",
            "--name",
            "x",
            "--out",
            "root.key",
        ],
    );
    assert_eq!(std::fs::read(d.join("root.key")).unwrap(), before);

    // Sign a binary.
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("edge"), &binary).unwrap();
    outputs += &ok(
        d,
        &[
            "sign",
            "--key",
            "signing.key",
            "--cert",
            "signing.cert",
            "--version",
            "1.4.0",
            "edge",
        ],
    );
    assert!(d.join("edge.release.json").is_file());
    // The root key is not the certified one: it cannot sign with this cert.
    fails(
        d,
        &[
            "sign",
            "--key",
            "root.key",
            "--cert",
            "signing.cert",
            "--version",
            "1.4.0",
            "edge",
            "--out",
            "other.json",
        ],
    );
    fails(
        d,
        &[
            "sign",
            "--key",
            "signing.key",
            "--cert",
            "signing.cert",
            "--version",
            "latest",
            "edge",
            "--out",
            "other.json",
        ],
    );

    // Verify as an edge would.
    let verified = ok(
        d,
        &["verify", "--root", "root.pub", "edge", "edge.release.json"],
    );
    assert!(verified.contains("OK"), "{verified}");
    assert!(verified.contains("1.4.0"), "{verified}");
    outputs += &verified;
    // The root given as base64 works the same.
    ok(
        d,
        &[
            "verify",
            "--root",
            root_pub.trim(),
            "edge",
            "edge.release.json",
        ],
    );
    ok(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "edge",
            "edge.release.json",
            "--running",
            "1.3.9",
        ],
    );
    let err = fails(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "edge",
            "edge.release.json",
            "--running",
            "1.4.0",
        ],
    );
    assert!(err.contains("not newer"), "{err}");
    // Another root refuses.
    ok(d, &["keygen", "--out", "stranger.key"]);
    fails(
        d,
        &[
            "verify",
            "--root",
            "stranger.pub",
            "edge",
            "edge.release.json",
        ],
    );

    // One byte changed: refused, and says why.
    let mut tampered = binary.clone();
    tampered[50_000] ^= 1;
    std::fs::write(d.join("edge"), &tampered).unwrap();
    let err = fails(
        d,
        &["verify", "--root", "root.pub", "edge", "edge.release.json"],
    );
    assert!(err.contains("SHA-256"), "{err}");
    // One byte more.
    let mut longer = binary.clone();
    longer.push(0);
    std::fs::write(d.join("edge"), &longer).unwrap();
    let err = fails(
        d,
        &["verify", "--root", "root.pub", "edge", "edge.release.json"],
    );
    assert!(err.contains("size"), "{err}");
    std::fs::write(d.join("edge"), &binary).unwrap();
    // One byte of the signature file's metadata changed.
    let sig = std::fs::read_to_string(d.join("edge.release.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&sig).unwrap();
    let payload = v["release"]["payload"].as_str().unwrap();
    let mut bytes = payload.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let edited = sig.replace(payload, std::str::from_utf8(&bytes).unwrap());
    std::fs::write(d.join("edited.json"), edited).unwrap();
    fails(d, &["verify", "--root", "root.pub", "edge", "edited.json"]);

    // Rotate the root: the new root alone does not know the old signing key's
    // certificate, but the old root with the rotation leads to the new one.
    ok(d, &["keygen", "--out", "root2.key"]);
    outputs += &ok(
        d,
        &[
            "rotate-root",
            "--old",
            "root.key",
            "--new",
            "root2.pub",
            "--out",
            "rotation.json",
        ],
    );
    ok(
        d,
        &[
            "certify",
            "--root",
            "root2.key",
            "--key",
            "signing.pub",
            "--name",
            "releases after rotation",
            "--out",
            "signing2.cert",
        ],
    );
    ok(
        d,
        &[
            "sign",
            "--key",
            "signing.key",
            "--cert",
            "signing2.cert",
            "--version",
            "1.5.0",
            "edge",
            "--out",
            "edge2.release.json",
        ],
    );
    let verified = ok(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "--rotation",
            "rotation.json",
            "edge",
            "edge2.release.json",
        ],
    );
    let root2_pub = std::fs::read_to_string(d.join("root2.pub")).unwrap();
    assert!(verified.contains(root2_pub.trim()), "{verified}");
    // Without the rotation the old root does not accept the new root's certificate…
    fails(
        d,
        &["verify", "--root", "root.pub", "edge", "edge2.release.json"],
    );
    // …and after it, the old root's certificate no longer counts.
    fails(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "--rotation",
            "rotation.json",
            "edge",
            "edge.release.json",
        ],
    );
    // A rotation signed by a stranger is refused.
    ok(
        d,
        &[
            "rotate-root",
            "--old",
            "stranger.key",
            "--new",
            "root2.pub",
            "--out",
            "forged.json",
        ],
    );
    fails(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "--rotation",
            "forged.json",
            "edge",
            "edge2.release.json",
        ],
    );

    // No output ever showed a private key.
    for key in ["root.key", "signing.key", "root2.key"] {
        assert!(!outputs.contains(&secret(d, key)), "{key} was printed");
    }
}

#[test]
fn a_downgrade_verifies_only_when_signed_and_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["keygen", "--out", "root.key"]);
    ok(d, &["keygen", "--out", "signing.key"]);
    ok(
        d,
        &[
            "certify",
            "--root",
            "root.key",
            "--key",
            "signing.pub",
            "--name",
            "k",
            "--out",
            "signing.cert",
        ],
    );
    std::fs::write(d.join("edge"), b"an old edge").unwrap();
    for (out, extra) in [("plain.json", None), ("down.json", Some("--downgrade"))] {
        let mut args = vec![
            "sign",
            "--key",
            "signing.key",
            "--cert",
            "signing.cert",
            "--version",
            "1.0.0",
            "--target",
            "armv7-linux",
            "edge",
            "--out",
            out,
        ];
        args.extend(extra);
        ok(d, &args);
    }
    let verify = |file: &str, downgrade: bool| {
        let mut args = vec![
            "verify",
            "--root",
            "root.pub",
            "edge",
            file,
            "--running",
            "2.0.0",
        ];
        if downgrade {
            args.push("--downgrade");
        }
        run(d, &args).status.success()
    };
    assert!(!verify("plain.json", false));
    assert!(!verify("plain.json", true));
    assert!(!verify("down.json", false));
    assert!(verify("down.json", true));
    // The target it was signed for is checked against the one given.
    let out = run(
        d,
        &[
            "verify",
            "--root",
            "root.pub",
            "edge",
            "down.json",
            "--running",
            "2.0.0",
            "--downgrade",
            "--target",
            "x86_64-linux",
        ],
    );
    assert!(!out.status.success());
}
