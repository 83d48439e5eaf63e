//! The real `drawbridge-server` binary: first start, setup link, TLS with the
//! generated CA, `init`, and `audit verify` / `audit export` on the command line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_drawbridge-server");

/// A started server process, killed (by its own handle) when dropped.
struct Server {
    child: Child,
    url: String,
    lines: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start drawbridge-server");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut server = Server {
        child,
        url: String::new(),
        lines: Vec::new(),
    };
    // The banner ends with "Ready." once the server accepts requests.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line == "Ready." {
            break;
        }
        lines.push(line);
    }
    let first = lines.first().cloned().unwrap_or_default();
    server.url = first.rsplit(' ').next().unwrap_or_default().to_string();
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "banner: {lines:?}"
    );
    server.lines = lines;
    server
}

fn client(data: &Path) -> reqwest::Client {
    let ca = std::fs::read(data.join("ca.pem")).expect("CA file");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .build()
        .expect("client")
}

#[tokio::test]
async fn first_start_prints_ca_fingerprint_and_a_one_time_setup_link_that_creates_the_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let text = server.lines.join("\n");
    assert!(text.contains("CA fingerprint (SHA-256): "), "{text}");
    assert!(text.contains(&dir.path().join("ca.pem").display().to_string()));
    let link = server
        .lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{}/portal/setup?token=", server.url))
        })
        .expect("setup link")
        .to_string();
    let http = client(dir.path());
    let page = http
        .get(format!("{}/portal/setup?token={link}", server.url))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success());
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("name=\"admin_password\"")
    );
    // The page's form posts to the portal, which calls this API; the token works once.
    let body = serde_json::json!({"token": link, "account": "acme", "admin_username": "root", "admin_password": "Blue-Tractor-42"});
    let done = http
        .post(format!("{}/api/v1/setup", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success());
    let again = http
        .post(format!("{}/api/v1/setup", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 401, "the link works once");
    let login = http
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&serde_json::json!({"account": "acme", "username": "root", "password": "Blue-Tractor-42"}))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success());
    // A client that does not trust the CA is refused by TLS itself.
    let untrusted = reqwest::Client::builder()
        .tls_built_in_root_certs(true)
        .build()
        .unwrap();
    assert!(
        untrusted
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .is_err()
    );
    // The certificate survives a restart; no new setup link once an account exists.
    let fp = text
        .lines()
        .find(|l| l.contains("fingerprint"))
        .unwrap()
        .to_string();
    drop(server);
    let again = start(dir.path());
    assert!(again.lines.contains(&fp), "same CA after restart");
    assert!(!again.lines.join("\n").contains("setup?token="));
}

/// Runs a subcommand of the binary on the data directory `data`.
fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "error")
        .output()
        .expect("run")
}

/// `init` of the account acme with its admin root (password file in `dir`).
fn init_acme(dir: &Path, data: &Path) {
    let pw = dir.join("pw");
    std::fs::write(&pw, "Blue-Tractor-42\n").unwrap();
    let out = cli(
        data,
        &[
            "init",
            "--account",
            "acme",
            "--admin-user",
            "root",
            "--admin-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn init_creates_the_admin_and_audit_verify_exits_nonzero_on_a_tampered_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| cli(&data, args);
    init_acme(dir.path(), &data);
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "password\n").unwrap();
    let out = run(&[
        "init",
        "--account",
        "other",
        "--admin-user",
        "root",
        "--admin-password-file",
        weak.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "the password policy applies to init too"
    );
    let out = run(&["audit", "verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (2 entries)"));
    let out = run(&["audit", "export", "--account", "acme", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(csv.starts_with("account_id,seq,time,actor,action"), "{csv}");
    assert!(csv.contains("account.create"));
    let out = run(&[
        "audit",
        "export",
        "--account",
        "acme",
        "--format",
        "jsonl",
        "--action",
        "user.",
    ]);
    let jsonl = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(jsonl.lines().count(), 1);
    // Tamper with the database directly.
    let url = format!("sqlite://{}", data.join("drawbridge.db").display());
    {
        use sqlx::Connection;
        let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
        // The database refuses the edit until its owner drops the guard.
        assert!(
            sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
                .execute(&mut c)
                .await
                .is_err()
        );
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let out = run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BROKEN at sequence number 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "Blue-Tractor-42\n").unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args([
            "init",
            "--account",
            "acme",
            "--admin-user",
            "root",
            "--admin-password-file",
        ])
        .arg(&pw)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--no-stun",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|l| l != "Ready.")
        .collect();
    let server = Server {
        child,
        url: lines[0].rsplit(' ').next().unwrap().to_string(),
        lines: lines.clone(),
    };
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("metrics: http://127.0.0.1:{metrics_port}/metrics"))),
        "{lines:?}"
    );
    let http = client(&data);
    for pw in ["wrong-password-1", "Blue-Tractor-42"] {
        http.post(format!("{}/api/v1/auth/login", server.url))
            .json(&serde_json::json!({"account": "acme", "username": "root", "password": pw}))
            .send()
            .await
            .unwrap();
    }
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("logins_total{result=\"ok\"} 1"), "{text}");
    assert!(text.contains("logins_total{result=\"failed\"} 1"), "{text}");
    // The API port does not serve them.
    let api = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404);
}

#[test]
fn rotating_the_secrets_key_leaves_the_old_key_useless_and_the_new_one_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| cli(&data, args);
    init_acme(dir.path(), &data);
    assert!(
        data.join("secrets.key").exists(),
        "the first start made the key"
    );
    let new_key = dir.path().join("new.key");
    let new = new_key.to_str().unwrap();
    let out = run(&["rotate-secrets-key", "--new-key-file", new]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed with the new key"));
    // The old key file (still the default) no longer opens the database...
    let out = run(&["relay-key"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another secrets key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...the new one does.
    let out = run(&["relay-key", "--secrets-key-file", new]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The audit tools read no secret: they need no key and make none (run on a
    // backup host they can never seal the database with a stray key).
    let nowhere = dir.path().join("no-such.key");
    let out = run(&[
        "audit",
        "verify",
        "--secrets-key-file",
        nowhere.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!nowhere.exists());
    // A rotation never overwrites an existing key file.
    let out = run(&[
        "rotate-secrets-key",
        "--secrets-key-file",
        new,
        "--new-key-file",
        new,
    ]);
    assert!(!out.status.success());
}
