//! `drawbridge login --sso` end to end: the real `drawbridge` binary against
//! the real server binary and a real OpenID provider (npm's `oidc-provider`,
//! `drawbridge_testnet::oidc`) on loopback. The test reads the page and code
//! the command prints, approves the code at the provider's device pages as a
//! person would (headless), and the command then stores a login that works:
//! `whoami` names the user the provider's subject was made into. A subject the
//! account does not know (no just-in-time users) is refused with the reason,
//! and Ctrl-C stops a waiting login cleanly, the stored login untouched.
//!
//! Without node or the npm install the test prints a visible SKIPPED line.

use crate::common;

use common::{ADMIN_PASSWORD, Cli, Server};
use drawbridge_testnet::oidc::{CLIENT_ID, CLIENT_SECRET, Op, OpConfig};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `drawbridge login --sso`: its process and its stderr lines.
struct Waiting {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Waiting {
    fn start(cli: &Cli) -> Waiting {
        let ca = cli.ca.to_string_lossy().into_owned();
        let mut child = cli
            .command()
            .args([
                "login",
                "--sso",
                "--server",
                &cli.url,
                "--ca-file",
                &ca,
                "--account",
                "acme",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start drawbridge login --sso");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Waiting {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The page and code the command asks the person to use.
    fn prompt(&mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no code printed: {:?}", self.seen));
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix("To sign in, open ") {
                let (url, code) = rest
                    .split_once(" and enter the code ")
                    .unwrap_or_else(|| panic!("{line}"));
                return (url.to_string(), code.trim().to_string());
            }
        }
    }

    /// Waits for the command to end; its exit code and everything it printed.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s.code();
            }
            assert!(
                Instant::now() < deadline,
                "login --sso still waits: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread ends with the pipe.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (code, self.seen.join("\n"))
    }
}

fn credentials(cli: &Cli) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(cli.credentials()).expect("credentials"))
        .expect("credentials JSON")
}

/// The admin's client, from their stored login.
fn admin_client(cli: &Cli) -> drawbridge::Client {
    let c = credentials(cli);
    drawbridge::Client::new(&cli.url, Some(&cli.ca))
        .expect("client")
        .with_token(c["token"].as_str().expect("token").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sso_uses_the_device_grant_and_stores_a_working_login() {
    const TEST: &str = "login_sso_uses_the_device_grant_and_stores_a_working_login";
    let Some(op) = Op::start(TEST, &OpConfig::default()) else {
        return;
    };
    let server = Server::start();
    let admin = server.cli();
    admin.login("root", ADMIN_PASSWORD, &[]).expect_ok();
    let api = admin_client(&admin);
    let mut settings = json!({
        "issuer": op.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "scopes": ["email", "profile", "groups"], "mode": "optional",
        "jit": true, "jit_role": "user",
    });
    api.set_sso_settings(&settings).await.expect("set SSO");

    // ---- alice approves the code at the provider; the command logs her in.
    let alice = server.cli();
    let mut w = Waiting::start(&alice);
    let (url, code) = w.prompt();
    assert_eq!(url, format!("{}/device", op.issuer));
    op.approve_device(&code, "alice", "123456").await;
    let (exit, out) = w.finish();
    assert_eq!(exit, Some(0), "{out}");
    assert!(out.contains("Logged in to"), "{out}");
    let who = alice.ok(&["whoami"]);
    assert!(who.contains("alice (user)"), "{who}");
    assert!(who.contains("acme"), "{who}");
    assert_eq!(credentials(&alice)["user"], "alice");
    // The stored login works for other commands too.
    alice.ok(&["devices"]);

    // ---- without just-in-time users, bob's subject is unknown: refused.
    settings["jit"] = false.into();
    settings
        .as_object_mut()
        .expect("object")
        .remove("client_secret");
    api.set_sso_settings(&settings).await.expect("JIT off");
    let bob = server.cli();
    let mut w = Waiting::start(&bob);
    let (_, code) = w.prompt();
    op.approve_device(&code, "bob", "").await;
    let (exit, out) = w.finish();
    assert_eq!(exit, Some(1), "{out}");
    assert!(out.contains("not linked to a user"), "{out}");
    assert!(!bob.credentials().exists(), "no login stored");

    // ---- Ctrl-C while waiting: stopped, alice's stored login untouched.
    let before = std::fs::read_to_string(alice.credentials()).expect("credentials");
    let mut w = Waiting::start(&alice);
    w.prompt();
    let pid = w.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let (exit, out) = w.finish();
    assert_eq!(exit, Some(1), "{out}");
    assert!(out.contains("stopped; not logged in"), "{out}");
    assert_eq!(
        std::fs::read_to_string(alice.credentials()).expect("credentials"),
        before
    );
    alice.ok(&["whoami"]);
}
