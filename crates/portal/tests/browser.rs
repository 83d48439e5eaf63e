//! The portal in a real browser: Debian's Chromium driven over WebDriver
//! (chromedriver) through fantoccini.
//!
//! One story, end to end: first-run setup → the admin creates users, a pool, a
//! group, a grant and a device → prepares a session → a user turns on TOTP,
//! logs in with it, sees only their session, starts it, gets a config for the
//! official WireGuard app (text, QR code, download), ends it → the auditor sees
//! the trail, checks the chain and exports it. A form posted from another site
//! is refused. The pages are checked at phone width too.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the test prints a
//! visible SKIPPED line, unless `DRAWBRIDGE_REQUIRE_BROWSER=1`. With
//! `DRAWBRIDGE_SCREENSHOTS=1` it writes the main pages to `docs/screenshots/`.

use crate::browser_ui;
use crate::common;

use browser_ui::{Ui, downloaded};
use common::{PASSWORD, TestServer};
use fantoccini::{ClientBuilder, Locator};
use serde_json::Value;
use std::path::{Path, PathBuf};

use drawbridge_testnet::browser::{Driver, chrome_caps, have_browser, spki_hash};

/// A page on another origin with a form aimed at the portal (no CSRF token).
async fn evil_site(target: &str) -> String {
    let html = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{target}/portal/users\">\
         <input name=\"username\" value=\"mallory\"><input name=\"role\" value=\"admin\">\
         <input name=\"password\" value=\"{PASSWORD}\"><button type=\"submit\" id=\"go\">Win a prize</button>\
         </form></body></html>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://127.0.0.1:{}/",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_user_and_auditor_do_their_whole_job_in_the_browser() {
    if !have_browser("admin_user_and_auditor_do_their_whole_job_in_the_browser") {
        return;
    }
    let server = TestServer::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let downloads = tempfile::tempdir().expect("download dir");
    let driver = Driver::start();
    let spki = spki_hash(&server.cert_pem);
    let caps = chrome_caps(profile.path(), &spki, Some(downloads.path()));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("WebDriver session");
    let shots = (std::env::var("DRAWBRIDGE_SCREENSHOTS").as_deref() == Ok("1")).then(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        dir
    });
    let ui = Ui {
        c,
        base: server.url.clone(),
        shots,
    };
    let result = story(&ui, &server, downloads.path()).await;
    let _ = ui.c.clone().close().await;
    drop(driver);
    result
}

async fn story(ui: &Ui, server: &TestServer, downloads: &Path) {
    // ---- first run: the one-time setup link.
    let token = server.setup_token().await;
    ui.go(&format!("/portal/setup?token={token}")).await;
    ui.fill("input[name=account]", "Plant").await;
    ui.fill("input[name=admin_username]", "admin").await;
    ui.fill("input[name=admin_password]", PASSWORD).await;
    ui.submit("button[type=submit]").await;
    assert!(ui.text("#setup-done").await.contains("was created"));
    ui.submit("#to-login").await;
    assert_eq!(
        ui.find("input[name=account]")
            .await
            .prop("value")
            .await
            .unwrap(),
        Some("Plant".into())
    );
    // The stylesheet loaded under the CSP (it is our own file, no inline styles).
    let bg = ui
        .find("header.top")
        .await
        .css_value("background-color")
        .await
        .unwrap();
    assert!(bg.contains("29, 78, 137"), "header colour {bg}");
    ui.fill("input[name=username]", "admin").await;
    ui.shot("login").await;
    ui.fill("input[name=password]", PASSWORD).await;
    ui.submit("#login").await;
    ui.find("#me-link").await;
    assert!(ui.url().await.ends_with("/portal/"));

    // ---- the admin: users.
    for (name, role) in [("ursula", "user"), ("otto", "user"), ("audrey", "auditor")] {
        ui.go("/portal/users").await;
        ui.fill("#new-username", name).await;
        ui.select("#new-role", role).await;
        ui.fill("#new-password", PASSWORD).await;
        ui.submit("#create-user").await;
        assert!(
            ui.flash()
                .await
                .contains(&format!("User {name} was created"))
        );
    }
    // A devices with its one-time key.
    let mut keys = Vec::new();
    for (name, fw) in [
        ("Press line 3", "tcp:192.168.1.0/24\nicmp:192.168.1.0/24"),
        ("Packaging cell", "tcp:192.168.2.0/24:80-443"),
    ] {
        ui.go("/portal/devices").await;
        ui.fill("#device-name", name).await;
        ui.fill("#device-subnets", "192.168.1.0/24").await;
        ui.fill("#device-firewall", fw).await;
        ui.submit("#create-device").await;
        let key = ui.text("#activation-key").await;
        assert!(key.len() >= 20, "activation key {key:?}");
        keys.push(key);
    }
    ui.shot("device-created").await;
    ui.go("/portal/devices").await;
    let table = ui.text("#device-table").await;
    assert!(table.contains("Press line 3") && table.contains("Packaging cell"));
    assert!(table.contains("not enrolled"), "{table}");
    ui.shot("devices").await;

    // Pool, group, grant.
    ui.go("/portal/access").await;
    ui.fill("#group-name", "Service team").await;
    ui.submit("#create-group").await;
    assert!(ui.flash().await.contains("group was created"));
    ui.fill("#pool-name", "Line 3").await;
    ui.submit("#create-pool").await;
    for member in ["ursula", "otto"] {
        ui.select("select[name=user_id]", member).await;
        ui.submit("form[action$='/members'] button").await;
        assert!(ui.flash().await.contains("in the group"));
    }
    ui.select("select[name=device_id]", "Press line 3").await;
    ui.submit("form[action$='/devices'] button").await;
    assert!(ui.flash().await.contains("in the pool"));
    ui.select("#grant-group", "Service team").await;
    ui.select("#grant-pool", "Line 3").await;
    ui.select("#grant-level", "full").await;
    ui.submit("#create-grant").await;
    assert!(ui.flash().await.contains("grant was created"));
    let access = ui.source().await;
    assert!(access.contains("Service team") && access.contains("ursula"));
    ui.shot("access").await;

    // Account settings: allow ad-hoc connect.
    ui.go("/portal/account").await;
    ui.click("#adhoc-allowed").await;
    ui.submit("#save-settings").await;
    assert!(ui.flash().await.contains("saved"));
    assert!(ui.find("#adhoc-allowed").await.is_selected().await.unwrap());

    // A cross-site form POST (no CSRF token) is refused, and changes nothing.
    let users_before = server.count("users").await;
    let evil = evil_site(&server.url).await;
    ui.c.goto(&evil).await.expect("evil page");
    ui.submit("#go").await;
    let refused = ui.text("#error").await;
    assert!(refused.contains("refused"), "{refused}");
    assert_eq!(server.count("users").await, users_before);

    // ---- the admin prepares a session for ursula, and one she must not see.
    let prepare = |name: &'static str, user: &'static str, targets: &'static str| async move {
        ui.go("/portal/sessions/new").await;
        ui.fill("#session-name", name).await;
        let dev =
            ui.c.find(Locator::XPath(
                "//label[contains(., 'Press line 3')]/input[@name='device']",
            ))
            .await
            .expect("the device's checkbox");
        dev.click().await.unwrap();
        let id = dev.attr("value").await.unwrap().unwrap();
        ui.fill(&format!("textarea[name='targets_{id}']"), targets)
            .await;
        ui.click(&format!("#user-{user}")).await;
        if name == "PLC maintenance" {
            ui.shot("session-prepare").await;
        }
        ui.submit("#prepare").await;
        assert!(
            ui.flash().await.contains("is prepared"),
            "{}",
            ui.source().await
        );
        assert_eq!(ui.text("#session-state").await, "prepared");
    };
    prepare("PLC maintenance", "ursula", "tcp:192.168.1.10:502").await;
    prepare("Other job", "otto", "icmp:192.168.1.10").await;
    ui.go("/portal/").await;
    ui.shot("dashboard-admin").await;
    ui.logout().await;

    // ---- ursula: first login with her password, then she turns on TOTP.
    ui.login("Plant", "ursula").await;
    ui.find("#me-link").await;
    let nav = ui.text("header.top").await;
    assert!(
        !nav.contains("Users") && !nav.contains("Audit") && !nav.contains("Access"),
        "{nav}"
    );
    ui.go("/portal/me").await;
    ui.submit("#totp-begin").await;
    let qr = ui
        .find("#totp-qr")
        .await
        .attr("src")
        .await
        .unwrap()
        .unwrap();
    assert!(
        qr.starts_with("data:image/svg+xml;base64,"),
        "QR rendered by us"
    );
    let secret = ui.text("#totp-secret").await;
    ui.shot("totp-enrol").await;
    let code = drawbridge_server::totp::code_at(&secret, server.state.clock.unix()).unwrap();
    ui.fill("input[name=code]", &code).await;
    ui.submit("#totp-confirm").await;
    assert!(ui.flash().await.contains("Two-factor login is on"));
    ui.logout().await;

    // A second login asks for the code. (The server clock moves to the next
    // 30 s step: each code works once.)
    server.state.clock.advance(30);
    ui.login("Plant", "ursula").await;
    ui.find("#totp-submit").await;
    let code = drawbridge_server::totp::code_at(&secret, server.state.clock.unix()).unwrap();
    ui.fill("input[name=code]", &code).await;
    ui.submit("#totp-submit").await;
    ui.find("#me-link").await;

    // She sees only her session.
    let dash = ui.source().await;
    assert!(
        dash.contains("PLC maintenance"),
        "her session is on the dashboard"
    );
    assert!(!dash.contains("Other job"), "not someone else's");
    ui.go("/portal/sessions").await;
    let list = ui.source().await;
    assert!(list.contains("PLC maintenance") && !list.contains("Other job"));
    ui.submit("a.session-link").await;
    // The site has not consented yet: the API's refusal is shown as it is.
    ui.submit("#start").await;
    assert!(
        ui.flash().await.contains("offline"),
        "{}",
        ui.source().await
    );
    assert_eq!(ui.text("#session-state").await, "prepared");
    // The edge comes online with its switch on (the edge agent is simulated
    // in the database until it exists), and she tries again.
    server.edge_online("Press line 3").await;
    ui.submit("#start").await;
    assert_eq!(ui.text("#session-state").await, "active");
    let cmd = ui.text("#connect-command").await;
    let sid = ui.url().await.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        cmd,
        format!("drawbridge connect {sid} --server {}", server.url)
    );
    ui.shot("session-active").await;
    // The official WireGuard app: a key made for her on one page, the config as
    // text, a QR code and a download that is the same text.
    server
        .state
        .set_bridge_endpoint(Some("127.0.0.1:51820".into()));
    assert!(common::announce_edge_key(&server.state.store.pool, &sid, [9; 32]).await);
    ui.submit("#wireguard-generate").await;
    let config = ui.text("#wireguard-config").await;
    assert!(
        config.contains("PrivateKey = ") && config.contains("[Peer]"),
        "{config}"
    );
    ui.find("#wireguard-qr svg").await;
    ui.shot("wireguard-app").await;
    ui.click("#wireguard-download").await;
    assert_eq!(
        downloaded(downloads, "drawbridge-PLC-maintenance.conf")
            .await
            .trim(),
        config.trim()
    );
    ui.go("/portal/").await;
    let dash = ui.text("main").await;
    assert!(
        dash.contains("PLC maintenance") && dash.contains("1 of 1 online"),
        "{dash}"
    );
    ui.shot("dashboard").await;
    ui.go(&format!("/portal/sessions/{sid}")).await;
    ui.submit("#end").await;
    assert_eq!(ui.text("#session-state").await, "ended");
    assert!(ui.flash().await.contains("ended"));

    // On the device's page she writes into the logbook and connects ad hoc
    // (the account allows it).
    ui.submit("a[href^='/portal/devices/']").await;
    ui.fill(
        "textarea[name=text]",
        "Replaced the pressure sensor on axis 2.",
    )
    .await;
    ui.submit("form[action$='/logbook'] button").await;
    assert!(ui.flash().await.contains("logbook"));
    assert!(ui.text("ul.log").await.contains("pressure sensor"));
    ui.submit("#adhoc").await;
    assert_eq!(ui.text("#session-state").await, "active");
    assert!(
        ui.text("#connect-command")
            .await
            .starts_with("drawbridge connect ")
    );
    ui.submit("#end").await;
    assert_eq!(ui.text("#session-state").await, "ended");
    ui.logout().await;

    // ---- the auditor: the trail, the chain, the export.
    ui.login("Plant", "audrey").await;
    ui.find("#me-link").await;
    ui.go("/portal/audit").await;
    assert!(ui.text("#chain-status").await.contains("chain intact"));
    let table = ui.text("#audit-table").await;
    for action in [
        "session.adhoc",
        "logbook.write",
        "session.prepare",
        "session.start",
        "session.end",
        "login.totp_ok",
        "user.totp_enable",
        "grant.create",
    ] {
        assert!(table.contains(action), "{action} in the audit view");
    }
    ui.shot("audit").await;
    ui.fill("#audit-action", "session.").await;
    ui.submit("#audit-filter").await;
    let filtered = ui.text("#audit-table").await;
    assert!(filtered.contains("session.start") && !filtered.contains("login.ok"));
    ui.click("#export-jsonl").await;
    let lines: Vec<Value> = downloaded(downloads, "drawbridge-audit.jsonl")
        .await
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.iter().any(|e| e["action"] == "session.end"));
    assert!(
        lines
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("session."))
    );
    // The auditor can read but not act.
    ui.go(&format!("/portal/sessions/{sid}")).await;
    assert!(ui.c.find(Locator::Css("#start")).await.is_err());
    assert!(ui.c.find(Locator::Css("#end")).await.is_err());

    // ---- phone width.
    ui.c.set_window_size(390, 844).await.expect("resize");
    for page in [
        "/portal/",
        "/portal/audit",
        "/portal/sessions",
        "/portal/devices",
    ] {
        ui.go(page).await;
        assert!(ui.fits_width().await, "{page} fits a phone's width");
    }
    ui.go("/portal/").await;
    ui.shot("dashboard-phone").await;
    let _ = keys;
}
