//! Single sign-on in a real browser: Debian's Chromium (chromedriver,
//! fantoccini) against the portal over TLS and a real OpenID provider (npm's
//! `oidc-provider`, `drawbridge_testnet::oidc`) on another site (`localhost`
//! while the portal is 127.0.0.1), so the provider's redirect back is a
//! cross-site navigation as in production.
//!
//! The admin sets the provider and a group rule on the settings page and
//! tests discovery; a person then signs in with "Sign in with …" at the
//! provider's login form and lands in the portal logged in as the user made
//! for them, with the rule's role. A refused sign-in (unknown subject without
//! just-in-time users) shows the reason and leaves no session. With SSO
//! required, the login page says the password form is for the break-glass
//! admin only.
//!
//! Without Chromium or node the test prints a visible SKIPPED line.

use crate::browser_ui;
use crate::common;

use browser_ui::Ui;
use common::{Browser, PASSWORD, TestServer};
use drawbridge_testnet::browser::{Driver, chrome_caps, have_browser, spki_hash};
use drawbridge_testnet::oidc::{CLIENT_ID, CLIENT_SECRET, Op, OpConfig};
use fantoccini::ClientBuilder;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "Plant";

/// The admin's API calls (setup and checks), with their bearer token.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    async fn login(b: &Browser) -> Admin {
        let r: Value = b
            .http
            .post(format!("{}/api/v1/auth/login", b.base))
            .json(&json!({"account": ACCOUNT, "username": "admin", "password": PASSWORD}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login JSON");
        Admin {
            http: b.http.clone(),
            base: b.base.clone(),
            token: r["token"].as_str().expect("token").to_string(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("API call");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_with_the_accounts_provider_in_chromium() {
    const TEST: &str = "people_sign_in_with_the_accounts_provider_in_chromium";
    if !have_browser(TEST) {
        return;
    }
    let server = TestServer::start().await;
    let cfg = OpConfig {
        redirect_uris: vec![format!("{}/portal/sso/callback", server.url)],
        host: "localhost",
        ..OpConfig::default()
    };
    let Some(op) = Op::start(TEST, &cfg) else {
        return;
    };
    let mut b = Browser::new(&server);
    b.setup(&server.setup_token().await, ACCOUNT).await;
    let admin = Admin::login(&b).await;
    let group = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/groups",
            Some(json!({"name": "operators"})),
        )
        .await;
    assert!(group["id"].is_string(), "{group}");

    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver::start();
    let caps = chrome_caps(profile.path(), &spki_hash(&server.cert_pem), None);
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("WebDriver session");
    let ui = Ui {
        c,
        base: server.url.clone(),
        shots: None,
    };
    story(&ui, &server, &op, &admin).await;
    let _ = ui.c.clone().close().await;
    drop(driver);
}

/// Waits until the browser's URL starts with `prefix`.
async fn wait_url(ui: &Ui, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let u = ui.url().await;
        if u.starts_with(prefix) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still at {u}, not {prefix}…:\n{}",
            ui.source().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From the login page: "Sign in with …", then the provider's login form.
async fn sign_in(ui: &Ui, op: &Op, login: &str, otp: &str) {
    ui.go("/portal/login").await;
    ui.fill("#sso-account-name", ACCOUNT).await;
    ui.submit("#sso-account-go").await;
    assert_eq!(ui.text("#sso-login").await, "Sign in with Plant IdP");
    ui.click("#sso-login").await;
    wait_url(ui, &format!("{}/interaction/", op.issuer)).await;
    ui.fill("#login-name", login).await;
    ui.fill("#login-password", &format!("{login}-pw")).await;
    ui.fill("#login-otp", otp).await;
    ui.click("#login-submit").await;
}

async fn story(ui: &Ui, server: &TestServer, op: &Op, admin: &Admin) {
    // ---- the admin sets the provider on the settings page.
    ui.login(ACCOUNT, "admin").await;
    ui.find("#me-link").await;
    ui.go("/portal/account").await;
    ui.submit("#sso-settings-link").await;
    assert_eq!(
        ui.text("#sso-redirect-uri").await,
        format!("{}/portal/sso/callback", server.url)
    );
    ui.fill("#sso-issuer", &op.issuer).await;
    ui.fill("#sso-client-id", CLIENT_ID).await;
    ui.fill("#sso-client-secret", CLIENT_SECRET).await;
    ui.fill("#sso-label", "Plant IdP").await;
    ui.fill("#sso-scopes", "email profile groups").await;
    ui.select("#sso-mode", "optional: next to passwords").await;
    ui.click("#sso-jit").await;
    ui.submit("#sso-save").await;
    assert!(ui.flash().await.contains("saved"), "{}", ui.flash().await);
    // The secret is never shown again.
    assert!(!ui.source().await.contains(CLIENT_SECRET));
    ui.submit("#sso-test").await;
    assert_eq!(
        ui.text("#sso-test-device").await,
        format!("yes: {}/device/auth", op.issuer)
    );
    // Members of the provider's plant-ops get the group and the session admin role.
    ui.fill("#sso-rule-claim", "plant-ops").await;
    ui.select("#sso-rule-group", "operators").await;
    ui.select("#sso-rule-role", "session_admin").await;
    ui.submit("#sso-rule-add").await;
    assert!(ui.text("#sso-rules").await.contains("plant-ops"));
    ui.logout().await;

    // ---- alice signs in at the provider and lands in the portal.
    sign_in(ui, op, "alice", "123456").await;
    wait_url(ui, &format!("{}/portal/", server.url)).await;
    assert_eq!(ui.text("#me-link").await, "alice");
    assert!(ui.url().await.ends_with("/portal/"), "{}", ui.url().await);
    let me = ui.source().await;
    assert!(me.contains("session_admin"), "the rule's role: {me}");
    let users = admin
        .call(reqwest::Method::GET, "/api/v1/users", None)
        .await;
    let alice = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "alice")
        .unwrap_or_else(|| panic!("no alice in {users}"))
        .clone();
    assert_eq!(alice["role"], "session_admin");
    ui.logout().await;

    // ---- without just-in-time users, an unknown person is refused.
    let mut s = admin
        .call(reqwest::Method::GET, "/api/v1/account/sso", None)
        .await;
    let o = s.as_object_mut().expect("settings");
    for k in [
        "client_secret_set",
        "redirect_uri",
        "updated_at",
        "break_glass_user_id",
    ] {
        o.remove(k);
    }
    o.insert("jit".into(), false.into());
    admin
        .call(reqwest::Method::PUT, "/api/v1/account/sso", Some(s.clone()))
        .await;
    // A new person at the provider (its session cookie from alice gone).
    ui.c.goto(&op.issuer).await.expect("the provider's origin");
    ui.c.delete_all_cookies().await.expect("delete cookies");
    sign_in(ui, op, "bob", "").await;
    wait_url(ui, &format!("{}/portal/sso/callback", server.url)).await;
    let e = ui.text("#login-error").await;
    assert!(
        e.contains("Single sign-on refused") && e.contains("not linked"),
        "{e}"
    );
    ui.go("/portal/").await;
    ui.find("#login").await;
    assert!(ui.url().await.contains("/portal/login"), "no session");
    let refused: Vec<(String, String, String)> = server
        .audit_actions()
        .await
        .into_iter()
        .filter(|(a, _, _)| a == "sso.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let bobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'bob'")
        .fetch_one(&server.state.store.pool)
        .await
        .expect("count");
    assert_eq!(bobs, 0);

    // ---- SSO required: the password form is the break-glass admin's.
    let admin_id = admin.call(reqwest::Method::GET, "/api/v1/me", None).await["user"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    s["mode"] = "required".into();
    s["break_glass_user_id"] = admin_id.into();
    admin
        .call(reqwest::Method::PUT, "/api/v1/account/sso", Some(s))
        .await;
    ui.go(&format!("/portal/login?account={ACCOUNT}")).await;
    assert!(
        ui.text("#sso-required")
            .await
            .contains("only for its break-glass admin"),
    );
}
