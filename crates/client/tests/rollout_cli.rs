//! End-to-end: `drawbridge release list` and `drawbridge rollout …` with the
//! real binaries on loopback. The release is signed here with
//! `drawbridge-release` (as an operator's machine would) and stored with
//! `drawbridge-server release root|add`, as docs/updates.md says.

use crate::common;

use common::{ADMIN_PASSWORD, Cli, Server, USER_PASSWORD, server_bin};
use drawbridge_release::{
    PRODUCT_EDGE, PrivateKey, ReleaseMeta, SigningKeyCert, certify, sign_release, this_target,
};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `drawbridge-server ARGS --data-dir DATA`, which must succeed; its stdout.
fn server_cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .args(args)
        .arg("--data-dir")
        .arg(server.dir.path().join("data"))
        .env_remove("DRAWBRIDGE_DATABASE_URL")
        .env_remove("DRAWBRIDGE_DATA_DIR")
        .env_remove("DRAWBRIDGE_CONFIG")
        .output()
        .expect("run drawbridge-server");
    assert!(
        out.status.success(),
        "drawbridge-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trusts a new root on the server and stores a small fake edge binary of
/// `version`, signed under it; returns the release's id.
fn store_release(server: &Server, version: &str) -> String {
    let dir = server.dir.path();
    let root = PrivateKey::generate();
    let signing = PrivateKey::generate();
    let t = now();
    let cert = certify(
        &root,
        &SigningKeyCert {
            name: "test signing key".into(),
            public_key: signing.public(),
            not_before: t - 60,
            not_after: t + 86_400,
        },
    );
    let binary = format!("#!/bin/sh\necho drawbridge-edge {version}\n").into_bytes();
    let meta = ReleaseMeta {
        product: PRODUCT_EDGE.into(),
        version: version.into(),
        target: this_target(),
        size: binary.len() as u64,
        sha256: sha256_hex(&binary),
        created: t,
        downgrade: false,
    };
    let signed = sign_release(&signing, cert, &meta);
    let bin_path = dir.join("drawbridge-edge.bin");
    let sig_path = dir.join("drawbridge-edge.release.json");
    std::fs::write(&bin_path, &binary).unwrap();
    std::fs::write(&sig_path, signed.to_json()).unwrap();
    server_cli(server, &["release", "root", &root.public().to_string()]);
    let out = server_cli(
        server,
        &[
            "release",
            "add",
            bin_path.to_str().unwrap(),
            "--signature",
            sig_path.to_str().unwrap(),
        ],
    );
    // `release <id> <version> <target>`
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("release"), "{out}");
    words.next().expect("the release's id").to_string()
}

/// Sets the version a device's edge reported, straight in the server's database.
fn set_agent_version(server: &Server, device: &str, version: &str) {
    use sqlx::Connection;
    let db = server.dir.path().join("data").join("drawbridge.db");
    let url = format!("sqlite://{}", db.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = sqlx::sqlite::SqliteConnection::connect(&url)
            .await
            .expect("open the server's database");
        let r = sqlx::query("UPDATE devices SET agent_version = $1 WHERE name = $2")
            .bind(version)
            .bind(device)
            .execute(&mut c)
            .await
            .expect("update device");
        assert_eq!(r.rows_affected(), 1, "no device named {device}");
    });
}

fn show(admin: &Cli, id: &str) -> Value {
    admin.run(&["rollout", "show", id, "--json"], None).json()
}

fn device<'a>(rollout: &'a Value, name: &str) -> &'a Value {
    rollout["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {rollout}"))
}

#[test]
fn a_rollout_is_created_by_names_listed_shown_paused_resumed_and_cancelled() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    let none = admin.run(&["release", "list"], None);
    assert!(none.expect_ok().is_empty());
    assert!(none.stderr.contains("No releases"), "{none:#?}");

    let release = store_release(&server, "1.2.3");
    let listed = admin.ok(&["release", "list"]);
    assert!(listed.contains(&release), "{listed}");
    assert!(listed.contains("1.2.3"), "{listed}");
    assert!(listed.contains(&this_target()), "{listed}");
    let json = admin.run(&["release", "list", "--json"], None).json();
    assert_eq!(json[0]["id"], release.as_str());
    assert_eq!(json[0]["downgrade"], false);

    for d in ["press-1", "press-2", "press-3"] {
        admin.ok(&["device", "create", d]);
    }
    admin.ok(&["pool", "create", "line"]);
    admin.ok(&["pool", "add-device", "line", "press-3"]);

    // The release by version, devices and the pool by name, a canary first.
    let created = admin
        .run(
            &[
                "rollout",
                "create",
                "--release",
                "1.2.3",
                "--device",
                "press-1",
                "--device",
                "PRESS-2",
                "--pool",
                "line",
                "--canary",
                "press-1",
                "--soak-minutes",
                "30",
                "--window",
                "00:00-00:00",
                "--failure-threshold",
                "2",
                "--json",
            ],
            None,
        )
        .json();
    let id = created["id"].as_str().expect("rollout id").to_string();
    assert_eq!(created["release"]["id"], release.as_str());
    assert_eq!(created["state"], "running");
    assert_eq!(created["stage"], "canary");
    assert_eq!(created["soak_minutes"], 30);
    assert_eq!(created["failure_threshold"], 2);
    assert_eq!(created["window"]["start"], "00:00");
    assert_eq!(device(&created, "press-1")["canary"], true);
    assert_eq!(device(&created, "press-3")["canary"], false);
    // Only the canary is offered; the others wait for the soak.
    assert_eq!(device(&created, "press-1")["state"], "offered");
    assert_eq!(device(&created, "press-2")["state"], "pending");
    assert_eq!(device(&created, "press-3")["state"], "pending");

    let list = admin.ok(&["rollout", "list"]);
    for part in [
        id.as_str(),
        "1.2.3",
        "running",
        "canary",
        "2 pending, 1 offered",
    ] {
        assert!(list.contains(part), "{part} in {list}");
    }
    let text = admin.ok(&["rollout", "show", &id]);
    for part in [
        "1.2.3",
        "running",
        "30 min",
        "00:00-00:00 UTC",
        "Failure threshold  2",
        "press-1  canary",
        "offered",
        "pending",
        "FROM",
        "MESSAGE",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }

    let out = admin.run(&["rollout", "pause", &id], None);
    assert!(out.expect_ok().contains("Paused rollout"), "{out:#?}");
    let paused = show(&admin, &id);
    assert_eq!(paused["state"], "paused");
    assert_eq!(
        device(&paused, "press-1")["state"],
        "pending",
        "offer withdrawn"
    );
    let err = admin.run(&["rollout", "pause", &id], None);
    assert!(
        err.expect_err().contains("the rollout is paused"),
        "{err:#?}"
    );

    admin.ok(&["rollout", "resume", &id]);
    let resumed = show(&admin, &id);
    assert_eq!(resumed["state"], "running");
    assert_eq!(device(&resumed, "press-1")["state"], "offered");

    // A device in an unfinished rollout is in no other.
    let busy = admin.run(
        &[
            "rollout",
            "create",
            "--release",
            &release,
            "--device",
            "press-2",
        ],
        None,
    );
    assert!(busy.expect_err().contains("cancel it first"), "{busy:#?}");

    let out = admin.run(&["rollout", "cancel", &id], None);
    assert!(out.expect_ok().contains("Cancelled rollout"), "{out:#?}");
    let cancelled = show(&admin, &id);
    assert_eq!(cancelled["state"], "cancelled");
    for d in ["press-1", "press-2", "press-3"] {
        assert_eq!(device(&cancelled, d)["state"], "cancelled", "{d}");
    }
    let err = admin.run(&["rollout", "resume", &id], None);
    assert!(err.expect_err().contains("cancelled"), "{err:#?}");

    // A user who is no admin sees neither releases nor rollouts.
    let pw = server.dir.path().join("user-password");
    std::fs::write(&pw, format!("{USER_PASSWORD}\n")).unwrap();
    admin.ok(&[
        "user",
        "create",
        "alice",
        "--role",
        "user",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let alice = server.cli();
    alice.login("alice", USER_PASSWORD, &[]).expect_ok();
    for args in [
        &["release", "list"][..],
        &["rollout", "list"],
        &["rollout", "show", &id],
    ] {
        let run = alice.run(args, None);
        run.expect_err();
        assert!(!run.stdout.contains("1.2.3"), "{args:?}: {run:#?}");
    }
}

#[test]
fn a_device_that_runs_the_version_already_succeeds_and_one_with_a_newer_is_skipped() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    store_release(&server, "1.2.3");
    for d in ["same", "newer"] {
        admin.ok(&["device", "create", d]);
    }
    set_agent_version(&server, "same", "1.2.3");
    set_agent_version(&server, "newer", "2.0.0");
    let created = admin
        .run(
            &[
                "rollout",
                "create",
                "--release",
                "1.2.3",
                "--device",
                "same",
                "--device",
                "newer",
                "--json",
            ],
            None,
        )
        .json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["stage"], "all", "no canaries: everyone at once");
    let same = device(&created, "same");
    assert_eq!(same["state"], "succeeded");
    assert_eq!(same["from_version"], "1.2.3");
    assert!(
        same["message"].as_str().unwrap().contains("already"),
        "{same}"
    );
    assert_eq!(device(&created, "newer")["state"], "skipped");

    // A newer version is no failure: with nothing left to do the rollout ends
    // on the server's next pass (every few seconds) instead of pausing.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = show(&admin, &id);
        if r["state"] == "done" {
            break;
        }
        assert_ne!(r["state"], "paused", "{r}");
        assert!(Instant::now() < end, "not done: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = admin.ok(&["rollout", "show", &id]);
    for part in [
        "done",
        "2.0.0",
        "runs a newer version",
        "1 succeeded, 1 skipped",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
}

#[test]
fn bad_rollouts_are_refused_with_clear_errors_and_create_nothing() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    let release = store_release(&server, "1.2.3");
    for d in ["press-1", "press-2"] {
        admin.ok(&["device", "create", d]);
    }
    let create = |extra: &[&str]| {
        let mut args = vec!["rollout", "create", "--release", &release];
        args.extend_from_slice(extra);
        admin.run(&args, None)
    };

    // The server's refusal, as its message.
    let run = create(&["--device", "press-1", "--canary", "press-2"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("a canary must be one of the rollout's devices"),
        "{run:#?}"
    );
    // Refused before asking the server.
    let run = create(&[]);
    assert!(run.expect_err().contains("--device NAME"), "{run:#?}");
    let run = create(&["--device", "lathe"]);
    assert!(run.expect_err().contains("no device \"lathe\""), "{run:#?}");
    let run = create(&["--device", "press-1", "--downgrade"]);
    assert!(run.expect_err().contains("add --yes"), "{run:#?}");
    let run = create(&["--device", "press-1", "--downgrade", "--yes"]);
    assert!(
        run.expect_err()
            .contains("not signed as a downgrade release"),
        "{run:#?}"
    );
    let run = admin.run(
        &[
            "rollout",
            "create",
            "--release",
            "9.9.9",
            "--device",
            "press-1",
        ],
        None,
    );
    assert!(
        run.expect_err().contains("no release \"9.9.9\""),
        "{run:#?}"
    );
    // Malformed numbers and windows are usage errors.
    for (flag, value, says) in [
        ("--window", "7:00-9:00", "HH:MM-HH:MM"),
        ("--window", "22:00", "HH:MM-HH:MM"),
        ("--window", "08:00-24:00", "HH:MM-HH:MM"),
        ("--failure-threshold", "0", "1..=10000"),
        ("--canary-percent", "101", "0..=100"),
        ("--soak-minutes", "43201", "0..=43200"),
    ] {
        let run = create(&["--device", "press-1", flag, value]);
        assert_eq!(run.code, Some(2), "{flag} {value}: {run:#?}");
        assert!(run.stderr.contains(says), "{flag} {value}: {run:#?}");
    }
    let list = admin.run(&["rollout", "list", "--json"], None).json();
    assert_eq!(list, serde_json::json!([]), "nothing was created");
    let run = admin.run(&["rollout", "show", "no-such-rollout"], None);
    assert!(run.expect_err().contains("no such rollout"), "{run:#?}");
}
