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
    start_with(data, &[])
}

/// `start` with more flags for `run`.
fn start_with(data: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
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
    // The README shows the same link.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README");
    assert!(readme.contains("https://127.0.0.1:8443/portal/setup?token=dbx_"));
    assert!(!readme.contains("8443/setup?token"));
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
    // Accounts by name, as `audit export --account` takes them.
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme: ok (2 entries)"));
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
        String::from_utf8_lossy(&out.stdout).contains("acme: BROKEN at sequence number 2"),
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

/// A TLS connection to the server from `local` (any port), trusting its CA.
async fn tls_from(
    data: &Path,
    url: &str,
    local: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_from(url, local).await?;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(data.join("ca.pem")).expect("CA file");
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.expect("CA")).expect("CA");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// A plain TCP connection to the server from the loopback address `local`.
async fn tcp_from(url: &str, local: &str) -> std::io::Result<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = url.trim_start_matches("https://").parse().expect("address");
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{local}:0").parse().expect("local address"))?;
    sock.connect(addr).await
}

/// Reads until the server closes the stream; true when it did within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slow_and_silent_connections_are_closed_after_the_header_and_idle_timeouts() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init_acme(dir.path(), &data);
    let server = start_with(
        &data,
        &[
            "--no-stun",
            "--no-bridge",
            "--header-read-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "2",
        ],
    );
    // A partial request line, then nothing.
    let mut partial = tls_from(&data, &server.url, "127.0.0.1").await.unwrap();
    partial.write_all(b"GET /healthz HT").await.unwrap();
    partial.flush().await.unwrap();
    // A TLS handshake and not one byte more; and a TCP connection without TLS.
    let mut silent_tls = tls_from(&data, &server.url, "127.0.0.1").await.unwrap();
    let mut silent_tcp = tcp_from(&server.url, "127.0.0.1").await.unwrap();
    // One complete request, then an idle keep-alive connection.
    let mut idle = tls_from(&data, &server.url, "127.0.0.1").await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    idle.flush().await.unwrap();
    let mut answer = Vec::new();
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("\"ok\"") {
            let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "answered before closing");
            answer.extend_from_slice(&buf[..n]);
        }
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let deadline = Duration::from_secs(8);
    assert!(
        closed_within(&mut partial, deadline).await,
        "partial request line"
    );
    assert!(
        closed_within(&mut silent_tls, deadline).await,
        "silent after TLS"
    );
    assert!(closed_within(&mut silent_tcp, deadline).await, "silent TCP");
    assert!(closed_within(&mut idle, deadline).await, "idle keep-alive");
    // The server itself goes on.
    let ok = client(&data)
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_while_another_client_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init_acme(dir.path(), &data);
    let server = start_with(
        &data,
        &[
            "--no-stun",
            "--no-bridge",
            "--max-connections-per-address",
            "3",
            "--header-read-timeout-secs",
            "30",
        ],
    );
    // Three silent connections hold 127.0.0.1's slots (well within the timeout).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_from(&data, &server.url, "127.0.0.1").await.unwrap());
    }
    // A fourth from the same address is closed at once, before TLS.
    for _ in 0..3 {
        let mut extra = tcp_from(&server.url, "127.0.0.1").await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(5)).await,
            "a connection beyond the cap is closed"
        );
        assert!(tls_from(&data, &server.url, "127.0.0.1").await.is_err());
    }
    // Another address logs in meanwhile.
    let other = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(data.join("ca.pem")).unwrap()).unwrap(),
        )
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let login = other
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&serde_json::json!({"account": "acme", "username": "root", "password": "Blue-Tractor-42"}))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success(), "{}", login.status());
    // The held connections were not disturbed, and a slot given back is free again.
    assert!(!closed_within(&mut held[0], Duration::from_millis(300)).await);
    drop(held.pop());
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tls_from(&data, &server.url, "127.0.0.1").await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_https_response_carries_strict_transport_security_with_the_configured_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init_acme(dir.path(), &data);
    let server = start_with(
        &data,
        &["--no-stun", "--no-bridge", "--hsts-max-age-secs", "600"],
    );
    let c = client(&data);
    for path in [
        "/healthz",
        "/api/v1/openapi.json",
        "/api/v1/devices",
        "/no-such-route",
        "/portal/login",
        "/relay/v1",
    ] {
        let res = c.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap().to_string()),
            Some("max-age=600".to_string()),
            "{path} ({})",
            res.status()
        );
    }
    drop(server);
    let server = start_with(&data, &["--no-stun", "--no-bridge"]);
    let res = client(&data)
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000",
        "one year by default"
    );
}

#[tokio::test]
async fn the_first_start_setup_link_dies_after_init_and_setup_link_makes_a_short_lived_one_for_another_account()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_with(&data, &["--no-stun", "--no-bridge"]);
    let printed = server
        .lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{}/portal/setup?token=", server.url))
        })
        .expect("setup link in the banner")
        .to_string();
    // The operator creates the first account on the command line instead.
    init_acme(dir.path(), &data);
    let http = client(&data);
    let setup = |token: String, account: &str| {
        http.post(format!("{}/api/v1/setup", server.url))
            .json(&serde_json::json!({"token": token, "account": account, "admin_username": "admin", "admin_password": "Blue-Tractor-42"}))
            .send()
    };
    let res = setup(printed.clone(), "intruder").await.unwrap();
    assert_eq!(res.status().as_u16(), 401, "the start log's link is dead");
    // A link for another account is made on purpose, says so and names the
    // running server's real address (it listens on a port chosen at start).
    let out = cli(&data, &["setup-link"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("ANOTHER account"), "{text}");
    assert!(text.contains("expires in 60 minutes"), "{text}");
    let token = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{}/portal/setup?token=", server.url))
        })
        .unwrap_or_else(|| panic!("a link to {}: {text}", server.url))
        .to_string();
    assert!(token.starts_with("dbxa_"));
    let res = setup(token.clone(), "second").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = setup(token, "third").await.unwrap();
    assert_eq!(res.status().as_u16(), 401, "works once");
}

/// `drawbridge-server relay ARGS`: the banner's first two lines while it runs, or
/// its output when it stops at once.
fn relay_start(args: &[&str]) -> Result<Vec<String>, String> {
    let mut child = Command::new(BIN)
        .arg("relay")
        .args(["--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..2)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(10)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let running = child.try_wait().expect("relay status").is_none();
    let _ = child.kill();
    let out = child.wait_with_output().expect("relay output");
    if running {
        Ok(lines)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_standalone_relay_checks_its_feed_credential_at_start_and_says_when_it_has_no_feed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stdout = |args: &[&str], data: &Path| {
        let out = cli(data, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = stdout(&["relay-key"], &data);
    let cred = stdout(
        &["relay-credential", "--name", "eu-1", "--days", "2"],
        &data,
    );
    assert!(cred.starts_with("drf1."), "{cred}");
    let foreign = stdout(
        &["relay-credential", "--name", "x"],
        &dir.path().join("other"),
    );
    let good_file = dir.path().join("relay.cred");
    let foreign_file = dir.path().join("foreign.cred");
    std::fs::write(&good_file, format!("{cred}\n")).unwrap();
    std::fs::write(&foreign_file, &foreign).unwrap();
    let with_feed = |file: &Path| {
        relay_start(&[
            "--verifying-key",
            &key,
            "--control-url",
            "https://127.0.0.1:1",
            "--credential-file",
            file.to_str().unwrap(),
        ])
    };

    let lines = with_feed(&good_file).expect("starts with its own credential");
    assert!(
        lines[1].contains("revocation feed: https://127.0.0.1:1/relay/v1/revoked every 2 s"),
        "{lines:?}"
    );
    let err = with_feed(&foreign_file).expect_err("another control plane's credential");
    assert!(
        err.contains("not a relay credential of this control plane"),
        "{err}"
    );
    let err = relay_start(&[
        "--verifying-key",
        &key,
        "--control-url",
        "https://127.0.0.1:1",
    ])
    .expect_err("a control URL needs a credential");
    assert!(err.contains("--credential-file"), "{err}");

    let lines = relay_start(&["--verifying-key", &key]).expect("starts without a feed");
    assert!(lines[1].contains("revocation feed: off"), "{lines:?}");
}
