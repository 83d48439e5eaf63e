//! A real OpenID provider in tests: npm's `oidc-provider` running
//! `crates/server/tests/oidc-op/op.mjs` on loopback (installed there by
//! `scripts/test` with `npm ci`), and a headless person at its pages (login
//! form, device pages; cookies kept by hand, redirects read, not followed).
//! The server's, the portal's and the CLI's SSO tests share it. Without node
//! or the npm install, [`Op::start`] prints a visible SKIPPED line, unless
//! `DRAWBRIDGE_REQUIRE_NODE=1` makes that a failure.
//!
//! Accounts at the provider: `alice`, `bob`, `carol`, each with the password
//! `<login>-pw`; the one-time code `123456` makes the login's `amr`
//! `pwd, otp, mfa` (empty: `pwd`).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The confidential client the provider knows.
pub const CLIENT_ID: &str = "drawbridge";
pub const CLIENT_SECRET: &str = "drawbridge-test-secret-0123456789";

/// Where op.mjs and its npm install live.
pub fn op_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/tests/oidc-op")
}

/// How to start the provider.
#[derive(Debug, Clone)]
pub struct OpConfig {
    /// The redirect URIs registered for [`CLIENT_ID`].
    pub redirect_uris: Vec<String>,
    /// Seconds an authorization code lives.
    pub code_ttl: u32,
    /// The issuer's host: `127.0.0.1`, or `localhost` for a provider on
    /// another site than a server on 127.0.0.1 (as a browser sees sites).
    pub host: &'static str,
}

impl Default for OpConfig {
    fn default() -> Self {
        OpConfig {
            redirect_uris: vec!["https://127.0.0.1:8443/portal/sso/callback".into()],
            code_ttl: 60,
            host: "127.0.0.1",
        }
    }
}

/// How long the provider may take to say READY, and how often it is tried.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
const READY_ATTEMPTS: u32 = 3;

/// The provider process; stopped (by its own handle) when dropped.
pub struct Op {
    child: Child,
    pub issuer: String,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Op {
    /// Starts the provider, or None with a SKIPPED line for `test` when node
    /// or the npm install is missing.
    pub fn start(test: &str, cfg: &OpConfig) -> Option<Op> {
        let dir = op_dir();
        let node_ok = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        let installed = dir.join("node_modules/oidc-provider/package.json").exists();
        if !node_ok || !installed {
            let why = if !node_ok {
                "node is not installed"
            } else {
                "crates/server/tests/oidc-op has no node_modules (run `npm ci` there; scripts/test does)"
            };
            if std::env::var("DRAWBRIDGE_REQUIRE_NODE").as_deref() == Ok("1") {
                panic!("DRAWBRIDGE_REQUIRE_NODE=1 but {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let mut cmd = Command::new("node");
        cmd.arg("op.mjs")
            .current_dir(&dir)
            .env("OP_CLIENT_ID", CLIENT_ID)
            .env("OP_CLIENT_SECRET", CLIENT_SECRET)
            .env("OP_REDIRECT_URIS", cfg.redirect_uris.join(","))
            .env("OP_CODE_TTL", cfg.code_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if cfg.host == "127.0.0.1" {
            cmd.env("OP_PORT", "0");
        } else {
            // The issuer names the host, so the port is chosen here.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            cmd.env("OP_PORT", port.to_string())
                .env("OP_ISSUER", format!("http://{}:{port}", cfg.host));
        }
        // A node that hangs while starting (seen once: its main thread stuck
        // on a lock before listening, on a loaded machine) is ended and
        // started again, rather than holding the test forever.
        for attempt in 1..=READY_ATTEMPTS {
            let mut child = cmd.spawn().expect("start node op.mjs");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(READY_WITHIN) {
                Ok(line) => {
                    let Some(issuer) = line.trim().strip_prefix("READY ").map(str::to_string)
                    else {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("the provider did not start: {line:?}");
                    };
                    return Some(Op { child, issuer });
                }
                Err(_) => {
                    eprintln!(
                        "{test}: the provider did not say READY within {} s (attempt {attempt}); starting it again",
                        READY_WITHIN.as_secs()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the provider did not start in {READY_ATTEMPTS} attempts");
    }

    /// Rewrites the ID token of the provider's next `/token` answer
    /// (`aud`, `iss`, `expired`, `nonce`, `none`, `badsig`).
    pub async fn tamper(&self, mode: &str) {
        let r = http()
            .post(format!("{}/__test/tamper", self.issuer))
            .form(&[("mode", mode)])
            .send()
            .await
            .expect("tamper");
        assert!(r.status().is_success());
    }

    /// Changes the groups the provider says `login` is in.
    pub async fn set_groups(&self, login: &str, groups: &[&str]) {
        let g = groups.join(",");
        let r = http()
            .post(format!("{}/__test/account", self.issuer))
            .form(&[("login", login), ("groups", g.as_str())])
            .send()
            .await
            .expect("set groups");
        assert!(r.status().is_success());
    }

    /// Signs in at the provider from `authorize_url` as `login` (`otp`:
    /// "123456" or ""); returns the URL the provider sends the browser back
    /// to (the redirect URI with code, state and iss).
    pub async fn sign_in(&self, authorize_url: &str, login: &str, otp: &str) -> String {
        let mut b = OpBrowser::default();
        let (s, interaction, body) = b
            .go(&self.issuer, reqwest::Method::GET, authorize_url, None)
            .await;
        let interaction = interaction.unwrap_or_else(|| panic!("/auth → {s}: {body}"));
        let password = format!("{login}-pw");
        let (s, resume, body) = b
            .go(
                &self.issuer,
                reqwest::Method::POST,
                &interaction,
                Some(&[("login", login), ("password", &password), ("otp", otp)]),
            )
            .await;
        let resume = resume.unwrap_or_else(|| panic!("login → {s}: {body}"));
        let (s, back, body) = b
            .go(&self.issuer, reqwest::Method::GET, &resume, None)
            .await;
        back.unwrap_or_else(|| panic!("resume → {s}: {body}"))
    }

    /// Approves a device login with `user_code` at the provider's device
    /// pages, as a person would.
    pub async fn approve_device(&self, user_code: &str, login: &str, otp: &str) {
        let mut b = OpBrowser::default();
        let issuer = self.issuer.as_str();
        let (_, _, page) = b.go(issuer, reqwest::Method::GET, "/device", None).await;
        let xsrf = field(&page, "xsrf");
        let (s, _, confirm) = b
            .go(
                issuer,
                reqwest::Method::POST,
                "/device",
                Some(&[("xsrf", &xsrf), ("user_code", user_code)]),
            )
            .await;
        assert!(
            confirm.contains("device-confirm"),
            "confirm page ({s}): {confirm}"
        );
        let xsrf = field(&confirm, "xsrf");
        let (s, login_page, body) = b
            .go(
                issuer,
                reqwest::Method::POST,
                "/device",
                Some(&[
                    ("xsrf", &xsrf),
                    ("user_code", user_code),
                    ("confirm", "yes"),
                ]),
            )
            .await;
        let login_page = login_page.unwrap_or_else(|| panic!("confirm → {s}: {body}"));
        let password = format!("{login}-pw");
        let (s, done, body) = b
            .go(
                issuer,
                reqwest::Method::POST,
                &login_page,
                Some(&[("login", login), ("password", &password), ("otp", otp)]),
            )
            .await;
        let done = done.unwrap_or_else(|| panic!("device login → {s}: {body}"));
        let (_, _, page) = b.go(issuer, reqwest::Method::GET, &done, None).await;
        assert!(
            page.contains("id=\"done\""),
            "device sign-in did not finish: {page}"
        );
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A person's browser at the provider: cookies kept by hand, redirects read, not followed.
#[derive(Default)]
pub struct OpBrowser {
    cookies: BTreeMap<String, String>,
}

impl OpBrowser {
    fn keep(&mut self, res: &reqwest::Response) {
        for h in res.headers().get_all(reqwest::header::SET_COOKIE) {
            let s = h.to_str().unwrap_or("");
            let first = s.split(';').next().unwrap_or("");
            let Some((k, v)) = first.split_once('=') else {
                continue;
            };
            let lower = s.to_ascii_lowercase();
            if v.is_empty()
                || lower.contains("expires=thu, 01 jan 1970")
                || lower.contains("max-age=0")
            {
                self.cookies.remove(k.trim());
            } else {
                self.cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One request; returns status, Location (absolute) and body.
    pub async fn go(
        &mut self,
        base: &str,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> (u16, Option<String>, String) {
        let url = absolute(base, url);
        let mut req = http().request(method, &url).header("cookie", self.header());
        if let Some(f) = form {
            req = req.form(f);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        self.keep(&res);
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .map(|l| absolute(&url, l.to_str().expect("location")));
        let body = res.text().await.unwrap_or_default();
        (status, location, body)
    }
}

fn absolute(base: &str, url: &str) -> String {
    url::Url::parse(base)
        .expect("base")
        .join(url)
        .expect("url")
        .to_string()
}

/// The value of a hidden form field.
pub fn field(page: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = page
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + key.len();
    page[at..].split('"').next().expect("value").to_string()
}
