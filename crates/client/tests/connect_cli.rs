//! End-to-end: `drawbridge connect` (the real binary) against the real server
//! on loopback: what it checks before it starts anything, and its exit codes.

use crate::common;

use common::{ADMIN_PASSWORD, Cli, Server, USER_PASSWORD};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An admin, a user `anna` with a full grant on `press-3` (released
/// `tcp:192.168.1.0/24:502`), and a prepared session "Fix press 3" for her
/// with the target `tcp:192.168.1.10:502`; the edge is marked up.
fn setup(server: &Server) -> (Cli, Cli) {
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    admin.ok(&[
        "device",
        "create",
        "press-3",
        "--lan-subnet",
        "192.168.1.0/24",
        "--allow",
        "tcp:192.168.1.0/24:502",
    ]);
    let pw = admin.config.path().join("anna-password");
    std::fs::write(&pw, format!("{USER_PASSWORD}\n")).unwrap();
    admin.ok(&[
        "user",
        "create",
        "anna",
        "--role",
        "user",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    admin.ok(&["group", "create", "service"]);
    admin.ok(&["group", "add-member", "service", "anna"]);
    admin.ok(&["pool", "create", "line-3"]);
    admin.ok(&["pool", "add-device", "line-3", "press-3"]);
    admin.ok(&[
        "grant", "create", "--group", "service", "--pool", "line-3", "--level", "full",
    ]);
    admin.ok(&[
        "session",
        "prepare",
        "Fix press 3",
        "--device",
        "press-3=tcp:192.168.1.10:502",
        "--user",
        "anna",
        "--for",
        "2h",
    ]);
    server.edge_up("press-3");
    let user = server.cli();
    user.login("anna", USER_PASSWORD, &[]).expect_ok();
    (admin, user)
}

/// Rows in the server's `tunnels` table.
fn tunnel_rows(server: &Server) -> i64 {
    use sqlx::Connection;
    let db = server.dir.path().join("data").join("drawbridge.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM tunnels")
            .fetch_one(&mut c)
            .await
            .unwrap()
    })
}

fn state(cli: &Cli, session: &str) -> String {
    cli.run(&["session", "show", session, "--json"], None)
        .json()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_forward_to_a_target_that_is_not_released_starts_nothing_and_records_no_tunnel() {
    let server = Server::start();
    let (_admin, user) = setup(&server);
    // Same host, other port; other host, same port.
    for bad in ["15020:192.168.1.10:503", "15020:192.168.1.11:502"] {
        let run = user.run(
            &["connect", "Fix press 3", "-L", bad, "--for-seconds", "5"],
            None,
        );
        let err = run.expect_err();
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(err.contains("is not a released target"), "{err}");
        assert_eq!(state(&user, "Fix press 3"), "prepared", "{bad}");
        assert_eq!(tunnel_rows(&server), 0, "{bad}: a tunnel was recorded");
    }

    // On an active session the check comes before the join: still no tunnel.
    user.ok(&["session", "start", "Fix press 3"]);
    let run = user.run(
        &[
            "connect",
            "Fix press 3",
            "-L",
            "15020:192.168.1.10:22",
            "--for-seconds",
            "5",
        ],
        None,
    );
    assert!(run.expect_err().contains("is not a released target"));
    assert_eq!(tunnel_rows(&server), 0, "a tunnel was recorded");

    // The released target works (and this run is asked to stop: exit 0).
    let run = user.run(
        &[
            "connect",
            "Fix press 3",
            "-L",
            "127.0.0.1:0:192.168.1.10:502",
            "--for-seconds",
            "1",
        ],
        None,
    );
    run.expect_ok();
    assert!(run.stderr.contains("tunnel down: time is up"), "{run:#?}");
    assert_eq!(tunnel_rows(&server), 1);
}

/// Starts `drawbridge connect` in the background; returns it once it has joined,
/// with the receiver of its further standard error lines.
fn connect_in_background(user: &Cli, session: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = user
        .command()
        .args([
            "connect",
            session,
            "-L",
            "127.0.0.1:0:192.168.1.10:502",
            "--for-seconds",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start drawbridge connect");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("forwarding ") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("connect did not come up: {:?}", child.wait_with_output());
            }
        }
    }
    (child, rx)
}

/// Waits (at most 30 s) for the child's exit code.
fn exit_code(child: &mut Child) -> Option<i32> {
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("connect did not exit");
}

fn rest(rx: &mpsc::Receiver<String>) -> String {
    let mut out = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn connect_exits_with_a_distinct_code_for_each_end_the_user_did_not_ask_for() {
    let server = Server::start();
    let (admin, user) = setup(&server);

    // An administrator ends the session under the running tunnel: exit 4.
    let (mut child, rx) = connect_in_background(&user, "Fix press 3");
    admin.ok(&["session", "end", "Fix press 3"]);
    assert_eq!(exit_code(&mut child), Some(4));
    let said = rest(&rx);
    assert!(said.contains("an administrator ended it"), "{said}");
    assert!(!said.contains("error:"), "{said}");

    // A user of the session ends it (from elsewhere): exit 3.
    admin.ok(&[
        "session",
        "prepare",
        "Second",
        "--device",
        "press-3=tcp:192.168.1.10:502",
        "--user",
        "anna",
        "--for",
        "2h",
    ]);
    let (mut child, rx) = connect_in_background(&user, "Second");
    user.ok(&["session", "end", "Second"]);
    assert_eq!(exit_code(&mut child), Some(3));
    assert!(rest(&rx).contains("a user of the session ended it"));

    // Connecting to a session that has already ended says so with the same code
    // as its end (administrator: 4), not 1.
    let run = user.run(&["connect", "Fix press 3", "--for-seconds", "5"], None);
    assert_eq!(run.code, Some(4), "{run:#?}");

    // SIGTERM (a service manager's stop) is a stop the user asked for: exit 0.
    admin.ok(&[
        "session",
        "prepare",
        "Third",
        "--device",
        "press-3=tcp:192.168.1.10:502",
        "--user",
        "anna",
        "--for",
        "2h",
    ]);
    let (mut child, rx) = connect_in_background(&user, "Third");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(exit_code(&mut child), Some(0));
    assert!(rest(&rx).contains("tunnel down: interrupted"));

    // The codes are in the help.
    let help = user.ok(&["connect", "--help"]);
    assert!(
        help.contains("Exit codes:") && help.contains("4   an administrator ended it"),
        "{help}"
    );
}
