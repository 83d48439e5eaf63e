//! Real receivers for the outbox tests, on loopback: an SMTP server (Debian's
//! python3-aiosmtpd, STARTTLS or implicit TLS, AUTH required, a throwaway CA and
//! certificate made here with rcgen) and an HTTP server (axum) that takes webhooks
//! and checks their signatures itself.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_server::outbox::mail::{Security, SmtpConfig};
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCRIPT: &str = include_str!("smtp_server.py");

// ---------------------------------------------------------------- helpers the tests share

use crate::common::{Account, TestApp};
use axum::http::{Method, StatusCode};
use drawbridge_server::outbox::{self, NotifyConfig};
use drawbridge_server::state::AppState;
use serde_json::json;

pub fn configure(state: &AppState, smtp: Option<&Smtp>, allow_private: bool) {
    state
        .notify
        .configure(&NotifyConfig {
            smtp: smtp.map(Smtp::config),
            webhook_allow_private: allow_private,
            webhook_failure_days: 5,
        })
        .expect("notification settings");
}

/// Delivery rounds until nothing is due; returns how many deliveries were claimed.
pub async fn drain(state: &AppState) -> usize {
    let mut n = 0;
    for _ in 0..50 {
        match outbox::worker::deliver_due(state).await.expect("deliver") {
            0 => return n,
            k => n += k,
        }
    }
    panic!("the outbox never ran dry");
}

pub async fn set_email(app: &TestApp, acct: &Account, user: &str, email: &str) {
    app.ok(
        Method::PUT,
        &format!("/api/v1/users/{user}/email"),
        &acct.admin,
        Some(json!({ "email": email })),
    )
    .await;
}

/// Five wrong passwords: the account's default threshold locks the user.
pub async fn lock_out(app: &TestApp, acct: &Account, user: &str) {
    for _ in 0..5 {
        let (s, _) = app.login(&acct.name, user, "Wrong-Password-1").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

pub async fn webhook(app: &TestApp, acct: &Account, url: &str, events: Value) -> (String, String) {
    let (s, v) = app
        .post(
            "/api/v1/account/webhooks",
            &acct.admin,
            json!({ "url": url, "events": events }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["webhook"]["id"].as_str().expect("id").to_string(),
        v["secret"].as_str().expect("secret").to_string(),
    )
}

pub async fn rows(app: &TestApp, sql: &str, bind: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(sql)
        .bind(bind)
        .fetch_all(&app.state.store.pool)
        .await
        .expect(sql)
}

/// Deliveries of the events of one kind: (channel, target, attempts) with state.
pub async fn deliveries(app: &TestApp, kind: &str) -> Vec<(String, String, i64)> {
    // Sorted here: the databases' collations differ.
    let mut v = rows(
        app,
        "SELECT d.channel, d.target || ' ' || d.state, d.attempts FROM outbox_deliveries d
         JOIN outbox_events e ON e.id = d.event_id WHERE e.kind = $1 ORDER BY d.channel, d.target",
        kind,
    )
    .await;
    v.sort();
    v
}

pub const SMTP_USER: &str = "drawbridge";
pub const SMTP_PASSWORD: &str = "Smtp-Secret-7";

/// A running SMTP server, ended (by its PID) when dropped.
pub struct Smtp {
    child: std::process::Child,
    pub host: String,
    pub port: u16,
    pub security: Security,
    dir: tempfile::TempDir,
}

fn python() -> &'static str {
    // Debian's interpreter, where python3-aiosmtpd is installed (another python3
    // may come first on PATH).
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

impl Smtp {
    /// Starts one on `host` (127.0.0.x); None, with a visible SKIPPED line, when
    /// aiosmtpd is missing — unless DRAWBRIDGE_REQUIRE_SMTP=1 (CI) makes that a failure.
    pub fn start(host: &str, security: Security, test: &str) -> Option<Smtp> {
        let has = std::process::Command::new(python())
            .args(["-c", "import aiosmtpd"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            if std::env::var("DRAWBRIDGE_REQUIRE_SMTP").as_deref() == Ok("1") {
                panic!("DRAWBRIDGE_REQUIRE_SMTP=1 but python3-aiosmtpd is not installed");
            }
            eprintln!(
                "SKIPPED {test}: python3-aiosmtpd is not installed (scripts/test installs it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = drawbridge_server::pki::ensure_self_signed(dir.path(), &[host.to_string()])
            .expect("test certificate");
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SCRIPT).expect("script");
        let out = dir.path().join("mail");
        std::fs::create_dir(&out).expect("mail dir");
        let mode = match security {
            Security::Starttls => "starttls",
            Security::Tls => "tls",
            Security::None => panic!("the test server speaks TLS"),
        };
        let mut child = std::process::Command::new(python())
            .arg(&script)
            .arg(host)
            .arg(&out)
            .arg(&tls.cert)
            .arg(&tls.key)
            .args([SMTP_USER, SMTP_PASSWORD, mode])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the SMTP server");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the SMTP server's port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the SMTP server did not start: {line:?}")
        });
        Some(Smtp {
            child,
            host: host.into(),
            port,
            security,
            dir,
        })
    }

    /// The server's settings for this SMTP server (its CA, user and password file).
    pub fn config(&self) -> SmtpConfig {
        let password_file = self.dir.path().join("smtp-password");
        std::fs::write(&password_file, format!("{SMTP_PASSWORD}\n")).expect("password file");
        SmtpConfig {
            host: self.host.clone(),
            port: self.port,
            security: self.security,
            username: Some(SMTP_USER.into()),
            password_file: Some(password_file),
            from: "Drawbridge <noreply@drawbridge.test>".into(),
            ca_file: Some(self.dir.path().join("ca.pem")),
        }
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .expect("mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).expect("mail")).expect("json"))
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One webhook call as received.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Checks the signature as a receiver would, with its own HMAC: the key is the
    /// base64 after `whsec_`, the content `id.timestamp.body`.
    pub fn verify(&self, secret: &str) -> bool {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .expect("base64");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
        mac.update(format!("{}.{}.", self.id, self.timestamp).as_bytes());
        mac.update(&self.body);
        self.signature.split(' ').any(|s| {
            s.strip_prefix("v1,")
                .and_then(|b| STANDARD.decode(b).ok())
                .is_some_and(|sig| mac.clone().verify_slice(&sig).is_ok())
        })
    }
}

/// An HTTP server taking webhooks on 127.0.0.x.
#[derive(Clone)]
pub struct Hooks {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    /// The status it answers with.
    pub status: Arc<AtomicU16>,
    /// Milliseconds it takes to answer.
    pub delay_ms: Arc<AtomicU64>,
    /// Bodies containing this are answered 400.
    pub reject: Arc<Mutex<Option<String>>>,
}

impl Hooks {
    pub async fn start(host: &str) -> Hooks {
        let listener = tokio::net::TcpListener::bind((host, 0))
            .await
            .expect("bind the webhook receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let hooks = Hooks {
            url,
            calls: Default::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            reject: Default::default(),
        };
        let h = hooks.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let h = h.clone();
                    async move {
                        let get = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        h.calls.lock().unwrap().push(Call {
                            id: get("webhook-id"),
                            timestamp: get("webhook-timestamp"),
                            signature: get("webhook-signature"),
                            body: body.to_vec(),
                        });
                        let delay = h.delay_ms.load(Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let rejected =
                            h.reject.lock().unwrap().as_ref().is_some_and(|r| {
                                String::from_utf8_lossy(&body).contains(r.as_str())
                            });
                        if rejected {
                            return axum::http::StatusCode::BAD_REQUEST;
                        }
                        axum::http::StatusCode::from_u16(h.status.load(Ordering::Relaxed))
                            .expect("status")
                    }
                },
            ),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        hooks
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

/// A URL where nothing listens (connection refused).
pub async fn dead_url(host: &str) -> String {
    let l = std::net::TcpListener::bind((host, 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}/hook")
}
