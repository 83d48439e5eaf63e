//! End-to-end: setting up a second factor in two steps with the real
//! `drawbridge` binary against the real `drawbridge-server` on loopback.

use crate::common;

use common::{ADMIN_PASSWORD, Server};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use totp_rs::{Algorithm, Secret, TOTP};

fn totp(secret: &str) -> TOTP {
    let bytes = Secret::Encoded(secret.to_string())
        .to_bytes()
        .expect("base32 secret");
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "test".into()).expect("TOTP parameters")
}

fn now_step() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

/// A code the server accepts: for a step after `last_used` (each code works
/// once) and within one step of now; waits for the clock when needed.
fn fresh_code(t: &TOTP, last_used: u64) -> (String, u64) {
    let step = (last_used + 1).max(now_step());
    while step > now_step() + 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    (t.generate(step * 30), step)
}

/// A six-digit code that is none of the key's codes near now.
fn wrong_code(t: &TOTP) -> String {
    let near: Vec<String> = (now_step() - 1..=now_step() + 2)
        .map(|s| t.generate(s * 30))
        .collect();
    (0..)
        .map(|n| format!("{:06}", (123_457 * n) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

#[test]
fn totp_enable_prints_a_key_that_a_later_enable_with_code_confirms() {
    let server = Server::start();
    let cli = server.cli();
    cli.login("root", ADMIN_PASSWORD, &[]).expect_ok();

    // Nothing to confirm yet: a clear refusal.
    let run = cli.run(&["totp", "enable", "--code", "123456"], None);
    assert!(
        run.expect_err()
            .contains("drawbridge totp enable` without --code"),
        "{run:#?}"
    );

    // Step 1 without a code at hand: the key and URI are printed and kept on
    // the server, not active yet.
    let run = cli.run(&["totp", "enable"], None);
    let out = run.expect_ok();
    let secret = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no secret printed: {run:#?}"));
    assert!(out.contains("otpauth://totp/"), "{run:#?}");
    assert!(run.stderr.contains("totp enable --code"), "{run:#?}");
    let me = cli.run(&["whoami", "--json"], None).json();
    assert_eq!(
        me["user"]["totp_enabled"], false,
        "not active before a code"
    );
    let t = totp(&secret);

    // A wrong code is refused and changes nothing.
    let run = cli.run(&["totp", "enable", "--code", &wrong_code(&t)], None);
    assert!(run.expect_err().contains("does not match"), "{run:#?}");
    let me = cli.run(&["whoami", "--json"], None).json();
    assert_eq!(me["user"]["totp_enabled"], false);

    // Step 2: a code computed from the printed key confirms that same key.
    let (code, confirmed) = fresh_code(&t, 0);
    cli.run(&["totp", "enable", "--code", &code], None)
        .expect_ok();
    let me = cli.run(&["whoami", "--json"], None).json();
    assert_eq!(
        me["user"]["totp_enabled"], true,
        "the stored login was replaced"
    );

    // Again: already active.
    let (code, _) = fresh_code(&t, confirmed);
    let run = cli.run(&["totp", "enable", "--code", &code], None);
    assert!(run.expect_err().contains("already active"), "{run:#?}");

    // Logins now need a code from that key.
    cli.run(&["logout"], None).expect_ok();
    let run = cli.login("root", ADMIN_PASSWORD, &[]);
    assert!(run.expect_err().contains("TOTP code"), "{run:#?}");
    let (code, _) = fresh_code(&t, confirmed);
    cli.login("root", ADMIN_PASSWORD, &["--totp", &code])
        .expect_ok();
}
