//! End-to-end: the real `drawbridge` binary against the real `drawbridge-server`
//! on loopback.

use crate::common;

use common::{ADMIN_PASSWORD, Server, USER_PASSWORD};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use totp_rs::{Algorithm, Secret, TOTP};

#[test]
fn login_with_the_ca_file_stores_private_credentials_and_logout_ends_the_login() {
    let server = Server::start();
    let cli = server.cli();
    let run = cli.login("root", ADMIN_PASSWORD, &[]);
    run.expect_ok();
    assert!(run.stderr.contains("Logged in"), "{run:#?}");

    let path = cli.credentials();
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(stored["server"], server.url.as_str());
    assert_eq!(stored["account"], "acme");
    assert_eq!(stored["user"], "root");
    let token = stored["token"].as_str().unwrap().to_string();
    assert!(token.len() > 20);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "credentials must be private");
    }
    assert!(
        !run.stdout.contains(&token) && !run.stderr.contains(&token),
        "token printed"
    );

    // Later commands use the stored login, CA included.
    let me = cli.run(&["whoami", "--json"], None).json();
    assert_eq!(me["user"]["username"], "root");
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["account"]["name"], "acme");
    assert!(cli.ok(&["whoami"]).contains("root (admin)"));

    let out = cli.run(&["logout"], None);
    out.expect_ok();
    assert!(!path.exists(), "logout removes the credentials");
    let err = cli.run(&["whoami"], None).expect_err().to_string();
    assert!(err.contains("not logged in"), "{err}");

    // The token was ended on the server too.
    let mut stale = server.cli();
    stale.env = vec![
        ("DRAWBRIDGE_TOKEN".into(), token),
        ("DRAWBRIDGE_SERVER".into(), server.url.clone()),
        (
            "DRAWBRIDGE_CA_FILE".into(),
            server.ca.to_string_lossy().into(),
        ),
    ];
    let err = stale.run(&["whoami"], None).expect_err().to_string();
    assert!(err.contains("log in again"), "{err}");
    assert!(!err.contains("unauthenticated"), "a raw code: {err}");
    assert!(err.contains("drawbridge login"), "hint missing: {err}");
}

#[test]
fn an_untrusted_server_certificate_is_refused_with_a_clear_message() {
    let server = Server::start();
    let cli = server.cli();
    let run = cli.run(
        &[
            "login",
            "--server",
            &server.url,
            "--account",
            "acme",
            "--user",
            "root",
            "--password-stdin",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    let err = run.expect_err();
    assert!(
        err.contains(
            "the server's certificate is not trusted: pass --ca-file with the server's CA"
        ),
        "{err}"
    );
    assert!(!cli.credentials().exists());

    // Without a password too (the certificate is checked before asking).
    let run = cli.run(
        &["login", "--server", &server.url, "-a", "acme", "-u", "root"],
        None,
    );
    assert!(run.expect_err().contains("not trusted"), "{run:#?}");

    // A CA file that is not a certificate is a clear error too.
    let bogus = server.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let run = cli.run(
        &[
            "login",
            "--server",
            &server.url,
            "--ca-file",
            bogus.to_str().unwrap(),
            "-a",
            "acme",
            "-u",
            "root",
            "--password-stdin",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert!(run.expect_err().contains("no PEM certificate"), "{run:#?}");
}

#[test]
fn a_wrong_password_shows_the_servers_error_and_fails() {
    let server = Server::start();
    let cli = server.cli();
    let run = cli.login("root", "Not-The-Password-1", &[]);
    let err = run.expect_err();
    assert_eq!(run.code, Some(1));
    assert!(
        err.starts_with("error: login failed: wrong account"),
        "{err}"
    );
    assert!(!cli.credentials().exists());
    // Nor does an unknown user get any other answer.
    let run = cli.login("nobody", "Not-The-Password-1", &[]);
    assert!(run.expect_err().contains("error: login failed"), "{run:#?}");
}

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

#[test]
fn totp_enable_then_logins_need_the_code() {
    let server = Server::start();
    let cli = server.cli();
    cli.login("root", ADMIN_PASSWORD, &[]).expect_ok();

    // `totp enable` prints the secret, then reads a code from the app.
    let mut child = cli
        .command()
        .args(["totp", "enable"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut secret = None;
    let mut seen = String::new();
    while secret.is_none() {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no secret printed: {seen}"
        );
        seen.push_str(&line);
        secret = line
            .trim()
            .strip_prefix("secret:")
            .map(|s| s.trim().to_string());
    }
    assert!(
        seen.contains("otpauth://totp/") || {
            let mut l = String::new();
            stdout.read_line(&mut l).unwrap();
            l.contains("otpauth://totp/")
        }
    );
    let t = totp(secret.as_deref().unwrap());
    let (code, confirmed_step) = fresh_code(&t, 0);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{code}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "totp enable failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The stored login was replaced by the fresh one the server handed out.
    let me = cli.run(&["whoami", "--json"], None).json();
    assert_eq!(me["user"]["totp_enabled"], true);
    cli.run(&["logout"], None).expect_ok();

    // Password alone no longer logs in: the code is asked for, and none comes.
    let run = cli.login("root", ADMIN_PASSWORD, &[]);
    assert!(run.expect_err().contains("TOTP code"), "{run:#?}");
    assert!(!cli.credentials().exists());

    // A wrong code is refused.
    let (good, _) = fresh_code(&t, confirmed_step);
    let wrong = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    let run = cli.login("root", ADMIN_PASSWORD, &["--totp", &wrong]);
    assert!(run.expect_err().contains("error: login failed"), "{run:#?}");

    // The right one with --totp works.
    let (code, used) = fresh_code(&t, confirmed_step);
    cli.login("root", ADMIN_PASSWORD, &["--totp", &code])
        .expect_ok();
    assert_eq!(
        cli.run(&["whoami", "--json"], None).json()["user"]["username"],
        "root"
    );

    // And so does answering the prompt (second line of standard input).
    let (code, _) = fresh_code(&t, used);
    let ca = server.ca.to_string_lossy().into_owned();
    let run = cli.run(
        &[
            "login",
            "--server",
            &server.url,
            "--ca-file",
            &ca,
            "-a",
            "acme",
            "-u",
            "root",
            "--password-stdin",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n{code}\n")),
    );
    run.expect_ok();
    assert!(
        run.stderr.contains("Code from your authenticator app"),
        "{run:#?}"
    );
}

#[test]
fn admin_prepares_a_session_and_the_user_sees_starts_and_ends_only_theirs() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();

    // Devices: the activation key is printed once at creation.
    let out = admin.ok(&[
        "device",
        "create",
        "press-3",
        "--serial",
        "SN-1",
        "--lan-subnet",
        "192.168.1.0/24",
        "--allow",
        "tcp:192.168.1.0/24:502",
        "--allow",
        "icmp:192.168.1.0/24",
    ]);
    assert!(
        out.contains("Activation key") && out.contains("dba_"),
        "{out}"
    );
    let lathe = admin
        .run(
            &[
                "device",
                "create",
                "lathe",
                "--allow",
                "tcp:10.0.0.5:80",
                "--json",
            ],
            None,
        )
        .json();
    assert!(
        lathe["activation"]["key"]
            .as_str()
            .unwrap()
            .starts_with("dba_")
    );
    let devices = admin.run(&["devices", "--json"], None).json();
    assert_eq!(devices.as_array().unwrap().len(), 2);
    let table = admin.ok(&["devices"]);
    assert!(
        table.starts_with("NAME") && table.contains("press-3") && table.contains("not enrolled"),
        "{table}"
    );

    // User, group, pool, grant, all by name.
    let pw = admin.config.path().join("anna-password");
    std::fs::write(&pw, format!("{USER_PASSWORD}\n")).unwrap();
    let anna = admin
        .run(
            &[
                "user",
                "create",
                "anna",
                "--role",
                "user",
                "--password-file",
                pw.to_str().unwrap(),
                "--json",
            ],
            None,
        )
        .json();
    let anna_id = anna["id"].as_str().unwrap().to_string();
    admin.ok(&["group", "create", "service"]);
    admin.ok(&["group", "add-member", "service", "anna"]);
    admin.ok(&["pool", "create", "line-3"]);
    admin.ok(&["pool", "add-device", "line-3", "press-3"]);
    admin.ok(&[
        "grant", "create", "--group", "service", "--pool", "line-3", "--level", "full",
    ]);
    let groups = admin.run(&["groups", "--json"], None).json();
    assert_eq!(groups[0]["members"][0], anna_id.as_str());
    let grants = admin.ok(&["grants"]);
    assert!(
        grants.contains("service") && grants.contains("line-3") && grants.contains("full"),
        "{grants}"
    );
    // (A second pool and grant, removed again by group and pool name.)
    admin.ok(&["pool", "create", "spare-pool"]);
    admin.ok(&[
        "grant",
        "create",
        "--group",
        "service",
        "--pool",
        "spare-pool",
        "--level",
        "monitor",
    ]);
    assert_eq!(
        admin
            .run(&["grants", "--json"], None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    admin.ok(&[
        "grant",
        "delete",
        "--group",
        "service",
        "--pool",
        "spare-pool",
    ]);
    admin.ok(&["pool", "delete", "spare-pool"]);
    assert_eq!(
        admin
            .run(&["grants", "--json"], None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A session for anna, and one she is not part of.
    let s = admin
        .run(
            &[
                "session",
                "prepare",
                "Fix press 3",
                "--device",
                "press-3=tcp:192.168.1.10:502,icmp:192.168.1.10",
                "--user",
                "anna",
                "--for",
                "2h",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(s["state"], "prepared");
    assert_eq!(s["users"][0], anna_id.as_str());
    assert_eq!(s["devices"][0]["targets"].as_array().unwrap().len(), 2);
    admin.ok(&[
        "session",
        "prepare",
        "Admin only",
        "--device",
        "lathe",
        "--for",
        "1h",
    ]);
    assert_eq!(
        admin
            .run(&["sessions", "--json"], None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A session for targets outside the firewall is refused by the server.
    let run = admin.run(
        &[
            "session",
            "prepare",
            "Too wide",
            "--device",
            "press-3=tcp:192.168.1.10:22",
            "--user",
            "anna",
        ],
        None,
    );
    assert!(
        run.expect_err()
            .contains("is outside the device firewall or the grants"),
        "{run:#?}"
    );

    // anna, in her own config directory.
    let user = server.cli();
    user.login("anna", USER_PASSWORD, &[]).expect_ok();
    let list = user.ok(&["sessions"]);
    assert!(
        list.contains("Fix press 3") && !list.contains("Admin only"),
        "{list}"
    );
    let mine = user.run(&["sessions", "--json"], None).json();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["name"], "Fix press 3");
    let seen = user.run(&["devices", "--json"], None).json();
    assert_eq!(
        seen.as_array().unwrap().len(),
        1,
        "only the granted device: {seen}"
    );

    server.edge_up("press-3");
    let out = user.ok(&["session", "start", "Fix press 3"]);
    assert!(out.contains("is active"), "{out}");
    let shown = user
        .run(&["session", "show", "Fix press 3", "--json"], None)
        .json();
    assert_eq!(shown["state"], "active");
    assert_eq!(
        user.run(&["sessions", "--state", "active", "--json"], None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let out = user.ok(&["session", "end", "Fix press 3"]);
    assert!(out.contains("ended"), "{out}");
    let shown = user
        .run(&["session", "show", "Fix press 3", "--json"], None)
        .json();
    assert_eq!(shown["state"], "ended");
    assert_eq!(shown["end_reason"], "user");

    // A user may not add devices, nor start a session that is not theirs.
    let run = user.run(&["device", "create", "rogue"], None);
    let err = run.expect_err();
    assert!(
        err.contains("error: your role or grants do not allow this"),
        "{err}"
    );
    let admin_only = admin.run(&["sessions", "--json"], None).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = user.run(&["session", "start", &admin_only], None);
    assert!(run.expect_err().contains("no session"), "{run:#?}");

    // The audit log has it all.
    let csv = admin.ok(&["audit", "export", "--format", "csv"]);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("account_id,seq,time,actor,action,object,result"),
        "{csv}"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() > 10, "{csv}");
    for action in [
        "device.create",
        "session.prepare",
        "session.start",
        "session.end",
        "device.create",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(action)),
            "no {action} in {csv}"
        );
    }
    assert!(
        rows.iter().any(|r| r.contains("denied")),
        "the refusal is on the record: {csv}"
    );
    let jsonl = admin.ok(&["audit", "export", "--action", "session.", "--actor", "anna"]);
    assert!(jsonl.lines().count() >= 2, "{jsonl}");
    for l in jsonl.lines() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(e["action"].as_str().unwrap().starts_with("session."));
        assert_eq!(e["actor"], format!("user:{anna_id}"));
    }
    // Read in pages of 3 (the server names each next page's cursor), every
    // format comes out whole: the same entries as from one request, one CSV header.
    for format in ["csv", "jsonl", "json"] {
        let whole = admin.ok(&[
            "audit", "export", "--format", format, "--action", "session.",
        ]);
        let paged = admin.ok(&[
            "audit",
            "export",
            "--format",
            format,
            "--action",
            "session.",
            "--page-size",
            "3",
        ]);
        assert_eq!(paged, whole, "{format} read in pages of 3");
    }
    let session_entries: Vec<serde_json::Value> = serde_json::from_str(&admin.ok(&[
        "audit",
        "export",
        "--format",
        "json",
        "--action",
        "session.",
        "--page-size",
        "2",
    ]))
    .unwrap();
    assert!(
        session_entries.len() > 4,
        "several pages: {session_entries:?}"
    );
    let one_page = admin.ok(&["audit", "export", "--format", "jsonl", "--limit", "2"]);
    assert_eq!(one_page.lines().count(), 2, "--limit is one request");
    assert!(admin.ok(&["audit", "verify"]).contains("intact"));
    let err = user
        .run(&["audit", "export"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("do not allow this"), "{err}");
}

#[test]
fn api_tokens_from_the_environment_read_only_tokens_auditors_and_relogin() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    let created = admin
        .run(
            &[
                "token",
                "create",
                "ci",
                "--read-only",
                "--days",
                "7",
                "--json",
            ],
            None,
        )
        .json();
    let token = created["token"].as_str().unwrap().to_string();
    let list = admin.ok(&["token", "list"]);
    assert!(
        list.contains("ci") && list.contains("read-only") && !list.contains(&token),
        "{list}"
    );

    let mut bot = server.cli();
    bot.env = vec![
        ("DRAWBRIDGE_TOKEN".into(), token),
        ("DRAWBRIDGE_SERVER".into(), server.url.clone()),
        (
            "DRAWBRIDGE_CA_FILE".into(),
            server.ca.to_string_lossy().into(),
        ),
    ];
    let me = bot.run(&["whoami", "--json"], None).json();
    assert_eq!(me["via"], "api_token");
    bot.run(&["devices", "--json"], None).json();
    let err = bot
        .run(&["device", "create", "x"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("error: this API token is read-only"), "{err}");

    // A data-only token reads the device list and data, and nothing else.
    let data = admin
        .run(
            &["token", "create", "historian", "--data-only", "--json"],
            None,
        )
        .json();
    assert_eq!(data["info"]["data_only"], true, "{data}");
    assert!(
        admin.ok(&["token", "list"]).contains("data read-only"),
        "the list names the scope"
    );
    let mut databot = server.cli();
    databot.env = bot.env.clone();
    databot.env[0].1 = data["token"].as_str().unwrap().to_string();
    databot.run(&["devices", "--json"], None).json();
    let err = databot.run(&["sessions"], None).expect_err().to_string();
    assert!(err.contains("may only read data"), "{err}");

    // An auditor reads sessions and the audit log, and changes nothing.
    let pw = admin.config.path().join("pw");
    std::fs::write(&pw, format!("{USER_PASSWORD}\n")).unwrap();
    admin.ok(&[
        "user",
        "create",
        "audra",
        "--role",
        "auditor",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let auditor = server.cli();
    auditor.login("audra", USER_PASSWORD, &[]).expect_ok();
    auditor.run(&["sessions", "--json"], None).json();
    assert!(auditor.ok(&["audit", "verify"]).contains("intact"));
    let jsonl = auditor.ok(&["audit", "export", "--action", "token."]);
    assert!(jsonl.contains("token.create"), "{jsonl}");
    let err = auditor.run(
        &[
            "user",
            "create",
            "eve",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("Whatever-Pass-99\n"),
    );
    assert!(err.expect_err().contains("do not allow this"), "{err:#?}");

    // Logging in again ends the login it replaces.
    let old = std::fs::read_to_string(auditor.credentials()).unwrap();
    auditor.login("audra", USER_PASSWORD, &[]).expect_ok();
    let old: serde_json::Value = serde_json::from_str(&old).unwrap();
    let mut stale = server.cli();
    stale.env = vec![
        (
            "DRAWBRIDGE_TOKEN".into(),
            old["token"].as_str().unwrap().into(),
        ),
        ("DRAWBRIDGE_SERVER".into(), server.url.clone()),
        (
            "DRAWBRIDGE_CA_FILE".into(),
            server.ca.to_string_lossy().into(),
        ),
    ];
    assert!(
        stale
            .run(&["whoami"], None)
            .expect_err()
            .contains("log in again")
    );
    auditor.ok(&["whoami"]);

    admin.ok(&["token", "revoke", "ci"]);
    let err = bot.run(&["devices"], None).expect_err().to_string();
    assert!(err.contains("log in again"), "{err}");
}

#[test]
fn required_totp_is_enrolled_during_login_and_users_can_be_managed() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    let pw = admin.config.path().join("pw");
    std::fs::write(&pw, format!("{USER_PASSWORD}\n")).unwrap();
    admin.ok(&[
        "user",
        "create",
        "ben",
        "--role",
        "session_admin",
        "--password-file",
        pw.to_str().unwrap(),
    ]);

    // Settings by dotted name; a typo is refused before anything is sent.
    let err = admin
        .run(&["account", "set", "require_totpp=true"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("unknown setting"), "{err}");
    let acct = admin
        .run(
            &[
                "account",
                "set",
                "require_totp=true",
                "password_policy.min_length=12",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(acct["settings"]["require_totp"], true);
    assert_eq!(acct["settings"]["password_policy"]["min_length"], 12);
    assert_eq!(
        acct["settings"]["lockout_threshold"], 5,
        "other settings kept"
    );

    // ben must set up a second factor while logging in.
    let ben = server.cli();
    let ca = server.ca.to_string_lossy().into_owned();
    let mut child = ben
        .command()
        .args([
            "login",
            "--server",
            &server.url,
            "--ca-file",
            &ca,
            "-a",
            "acme",
            "-u",
            "ben",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{USER_PASSWORD}\n").as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let secret = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no secret printed"
        );
        if let Some(s) = line.trim().strip_prefix("secret:") {
            break s.trim().to_string();
        }
    };
    let (code, _) = fresh_code(&totp(&secret), 0);
    stdin.write_all(format!("{code}\n").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "login with enrolment failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me = ben.run(&["whoami", "--json"], None).json();
    assert_eq!(me["user"]["totp_enabled"], true);
    assert_eq!(me["user"]["role"], "session_admin");

    // Own password change, from files; the stored login is replaced and keeps working.
    let new_pw = ben.config.path().join("new");
    std::fs::write(&new_pw, "Green-Valley-99-x\n").unwrap();
    ben.ok(&[
        "password",
        "--current-password-file",
        pw.to_str().unwrap(),
        "--new-password-file",
        new_pw.to_str().unwrap(),
    ]);
    assert_eq!(
        ben.run(&["whoami", "--json"], None).json()["user"]["username"],
        "ben"
    );

    // Admin disables ben: his login ends at once; enabling lets him log in again.
    let out = admin
        .run(&["user", "update", "ben", "--disable", "--json"], None)
        .json();
    assert_eq!(out["disabled"], true);
    assert!(
        ben.run(&["whoami"], None)
            .expect_err()
            .contains("log in again")
    );
    assert!(admin.ok(&["users"]).contains("disabled"));
    admin.ok(&[
        "user",
        "update",
        "ben",
        "--enable",
        "--reset-totp",
        "--unlock",
    ]);
    let shown = admin.run(&["user", "show", "ben", "--json"], None).json();
    assert_eq!(shown["disabled"], false);
    assert_eq!(shown["totp_enabled"], false);
    let err = admin
        .run(&["user", "update", "ben"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("nothing to change"), "{err}");
}

#[test]
fn devices_logbook_fleet_keys_added_devices_and_adhoc_sessions() {
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin.ok(&[
        "device",
        "create",
        "press",
        "--allow",
        "tcp:192.168.1.0/24:502",
    ]);
    admin.ok(&["device", "create", "hmi", "--allow", "tcp:192.168.2.20:80"]);
    admin.ok(&["device", "create", "spare"]);

    // Update replaces lists; show prints the CLI's own target syntax.
    let d = admin
        .run(
            &[
                "device",
                "update",
                "press",
                "--name",
                "press-1",
                "--allow",
                "tcp:192.168.1.0/24",
                "--allow",
                "icmp:192.168.1.10",
                "--nat",
                "192.168.1.0/24=10.77.1.0/24",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(d["name"], "press-1");
    assert_eq!(d["firewall"].as_array().unwrap().len(), 2);
    let shown = admin.ok(&["device", "show", "press-1"]);
    assert!(
        shown.contains("tcp:192.168.1.0/24") && shown.contains("icmp:192.168.1.10"),
        "{shown}"
    );
    assert!(shown.contains("192.168.1.0/24 = 10.77.1.0/24"), "{shown}");
    let key = admin
        .run(&["device", "activation-key", "spare", "--json"], None)
        .json();
    assert!(key["key"].as_str().unwrap().starts_with("dba_"));
    admin.ok(&["device", "delete", "spare"]);
    assert_eq!(
        admin
            .run(&["devices", "--json"], None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let err = admin
        .run(&["device", "show", "spare"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("no device \"spare\""), "{err}");
    let err = admin
        .run(&["device", "approve", "hmi"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("not waiting for approval"), "{err}");

    // Logbook, also from standard input.
    admin.ok(&["device", "log", "press-1", "replaced fuse F3"]);
    admin
        .run(
            &["device", "log", "press-1", "-"],
            Some("checked\nthe drive\n"),
        )
        .expect_ok();
    let book = admin
        .run(&["device", "logbook", "press-1", "--json"], None)
        .json();
    assert_eq!(book.as_array().unwrap().len(), 2);
    assert_eq!(book[0]["text"], "checked\nthe drive");
    assert!(
        admin
            .ok(&["device", "logbook", "press-1"])
            .contains("replaced fuse F3")
    );

    // Fleet keys: shown once, listed without the key, revoked by name.
    let fk = admin
        .run(
            &["fleet-key", "create", "line-3", "--days", "5", "--json"],
            None,
        )
        .json();
    let secret = fk["key"].as_str().unwrap().to_string();
    let list = admin.ok(&["fleet-key", "list"]);
    assert!(
        list.contains("line-3") && list.contains("active") && !list.contains(&secret),
        "{list}"
    );
    admin.ok(&["fleet-key", "revoke", "line-3"]);
    assert!(admin.ok(&["fleet-key", "list"]).contains("revoked"));

    // A device added to a prepared session; a device alone releases its whole firewall.
    let s = admin
        .run(
            &[
                "session",
                "prepare",
                "Commissioning",
                "--device",
                "press-1",
                "--for",
                "30m",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(s["devices"][0]["targets"].as_array().unwrap().len(), 2);
    let s = admin
        .run(
            &[
                "session",
                "add-device",
                "Commissioning",
                "--device",
                "hmi=tcp:192.168.2.20:80",
                "--json",
            ],
            None,
        )
        .json();
    assert_eq!(s["devices"].as_array().unwrap().len(), 2);
    let shown = admin.ok(&["session", "show", "Commissioning"]);
    assert!(shown.contains("hmi: tcp:192.168.2.20:80"), "{shown}");

    // Ad-hoc connect only where the account allows it.
    let err = admin
        .run(&["session", "adhoc", "hmi"], None)
        .expect_err()
        .to_string();
    assert!(err.contains("do not allow this"), "{err}");
    admin.ok(&["account", "set", "adhoc_allowed=true"]);
    server.edge_up("hmi");
    let s = admin
        .run(&["session", "adhoc", "hmi", "--json"], None)
        .json();
    assert_eq!(s["state"], "active");
    assert_eq!(s["adhoc"], true);
    let active = admin
        .run(&["sessions", "--state", "active", "--json"], None)
        .json();
    assert_eq!(active.as_array().unwrap().len(), 1);
    admin.ok(&["session", "end", s["id"].as_str().unwrap()]);
    assert!(admin.ok(&["sessions", "--state", "active"]).is_empty());
}
