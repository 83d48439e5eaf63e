//! The portal over real HTTPS, without a browser: cookies, CSRF, headers,
//! escaping, and that every rule is the API's.

use crate::common;

use common::{Browser, PASSWORD, TestServer, between};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_the_security_headers_and_the_login_cookie_is_strict() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    let login = b.get("/portal/login").await;
    assert_eq!(login.status, 200);
    let csp = login.header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(login.header("x-frame-options"), "DENY");
    assert_eq!(login.header("referrer-policy"), "same-origin");
    assert_eq!(login.header("x-content-type-options"), "nosniff");
    assert!(!login.body.contains("<script"), "no script at all");
    assert!(!login.body.contains("style=\""), "no inline styles");

    b.setup(&server.setup_token().await, "Plant").await;
    let form = b.get("/portal/login").await;
    let r = b
        .post(
            "/portal/login",
            &[
                ("csrf", &form.csrf()),
                ("account", "Plant"),
                ("username", "admin"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("db_session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let dash = b.follow(&r).await;
    assert_eq!(dash.status, 200, "{}", dash.body);
    assert!(dash.body.contains("Dashboard"));
    // The static files come from the binary.
    let css = b.get("/portal/assets/style.css").await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));

    // Logout ends the login in the API too.
    let token = b.cookies.get("db_session").cloned().expect("cookie");
    let out = b.post("/portal/logout", &[("csrf", &dash.csrf())]).await;
    assert_eq!(out.status, 303);
    assert!(!b.cookies.contains_key("db_session"));
    let me = reqwest_me(&b, &token).await;
    assert_eq!(me, 401, "the token no longer works");
}

async fn reqwest_me(b: &Browser, token: &str) -> u16 {
    b.http
        .get(format!("{}/api/v1/me", b.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("me")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_needs_the_csrf_token_and_a_same_origin() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    b.setup(&server.setup_token().await, "Plant").await;
    let dash = b.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let users_before = server.count("users").await;
    let form = [
        ("username", "mallory"),
        ("role", "admin"),
        ("password", PASSWORD),
    ];

    // No token.
    let r = b.post("/portal/users", &form).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A wrong token.
    let mut with_bad = form.to_vec();
    with_bad.push(("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    assert_eq!(b.post("/portal/users", &with_bad).await.status, 403);
    // The right token, but the browser says the form came from another site.
    let mut with_good = form.to_vec();
    with_good.push(("csrf", &csrf));
    let cross = b
        .post_with(
            "/portal/users",
            &with_good,
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status, 403);
    let evil = b
        .post_with(
            "/portal/users",
            &with_good,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(evil.status, 403);
    assert_eq!(
        server.count("users").await,
        users_before,
        "nothing was created"
    );
    // Another login's token does not fit this login.
    let mut other = Browser::new(&server);
    let other_dash = other.login("Plant", "admin", PASSWORD).await;
    let mut with_other = form.to_vec();
    let other_csrf = other_dash.csrf();
    with_other.push(("csrf", &other_csrf));
    assert_eq!(b.post("/portal/users", &with_other).await.status, 403);
    assert_eq!(server.count("users").await, users_before);

    // Same origin with the token works.
    let ok = b.post("/portal/users", &with_good).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(server.count("users").await, users_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_decides_what_a_role_may_do_and_the_audit_keeps_the_real_source() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let r = admin
        .post(
            "/portal/users",
            &[
                ("csrf", &dash.csrf()),
                ("username", "uma"),
                ("role", "user"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    // Escaping: a hostile device name is shown as text.
    let devices = admin.get("/portal/devices").await;
    let created = admin
        .post(
            "/portal/devices",
            &[
                ("csrf", &devices.csrf()),
                ("name", "<script>alert(1)</script>"),
                ("lan_subnets", "192.168.1.0/24"),
                ("firewall", "tcp:192.168.1.10:502"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(
        created
            .body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        created.body
    );
    assert!(!created.body.contains("<script>alert"));
    assert!(created.body.contains("id=\"activation-key\""));
    // The config file for USB/SD.
    let key_start =
        created.body.find("id=\"activation-key\">").unwrap() + "id=\"activation-key\">".len();
    let key: String = created.body[key_start..]
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let action_start = created.body.find("/config\"").unwrap();
    let action = created.body[..action_start]
        .rsplit('"')
        .next()
        .unwrap()
        .to_string()
        + "/config";
    let file = admin
        .post(
            &action,
            &[("csrf", &created.csrf()), ("activation_key", &key)],
        )
        .await;
    assert_eq!(file.status, 200);
    assert!(
        file.header("content-disposition")
            .contains("drawbridge-edge.toml")
    );
    let parsed: toml::Value = toml::from_str(&file.body).expect("TOML");
    assert_eq!(parsed["activation_key"].as_str(), Some(key.as_str()));
    assert_eq!(parsed["server"].as_str(), Some(server.url.as_str()));
    // The server's CA rides along, so that the file is all an edge needs.
    let ca = std::fs::read_to_string(&server.ca_pem).unwrap();
    assert_eq!(parsed["ca_certificate"].as_str(), Some(ca.as_str()));
    assert_eq!(parsed["ca_sha256"].as_str().map(str::len), Some(64));

    // A user sees no admin pages in the menu, and a forged admin form is the API's refusal.
    let mut uma = Browser::new(&server);
    let udash = uma.login("Plant", "uma", PASSWORD).await;
    assert!(!udash.body.contains("href=\"/portal/users\""));
    assert!(!udash.body.contains("href=\"/portal/audit\""));
    let r = uma
        .post(
            "/portal/users",
            &[
                ("csrf", &udash.csrf()),
                ("username", "eve"),
                ("role", "admin"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let back = uma.follow(&r).await;
    assert!(
        back.body.contains("your role or grants do not allow this"),
        "{}",
        back.body
    );
    assert_eq!(server.count("users").await, 2);
    let audit = uma.get("/portal/audit").await;
    assert_eq!(audit.status, 403, "the API refuses the audit log to users");

    let actions = server.audit_actions().await;
    let denied = actions
        .iter()
        .find(|(a, r, _)| a == "user.create" && r == "denied")
        .expect("the refusal is on the record");
    assert_eq!(
        denied.2, "127.0.0.1",
        "the real source address reached the API"
    );
    assert!(
        actions.iter().all(|(_, _, s)| s != "unknown"),
        "{actions:?}"
    );
}

/// The admin's settings form with every field, as the account page sends it.
fn settings_form<'a>(csrf: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        ("csrf", csrf),
        ("name", "Plant"),
        ("min_length", "10"),
        ("min_classes", "3"),
        ("expiry_days", "0"),
        ("history", "5"),
        ("deny_common", "on"),
        ("lockout_threshold", "3"),
        ("lockout_minutes", "15"),
        ("login_idle_minutes", "30"),
        ("login_absolute_hours", "12"),
        ("max_session_minutes", "480"),
        ("session_idle_minutes", "60"),
        ("data_retention_days", "10"),
    ];
    for (k, v) in extra {
        f.retain(|(fk, _)| fk != k);
        f.push((k, v));
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_is_reported_to_admins_and_lifted_from_the_users_page() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let r = admin
        .post("/portal/account", &settings_form(&csrf, &[]))
        .await;
    assert_eq!(admin.follow(&r).await.status, 200);
    admin
        .post(
            "/portal/users",
            &[
                ("csrf", &csrf),
                ("username", "lena"),
                ("role", "user"),
                ("password", PASSWORD),
            ],
        )
        .await;

    let mut lena = Browser::new(&server);
    for _ in 0..3 {
        let form = lena.get("/portal/login").await;
        let r = lena
            .post(
                "/portal/login",
                &[
                    ("csrf", &form.csrf()),
                    ("account", "Plant"),
                    ("username", "lena"),
                    ("password", "wrong-Password-1"),
                ],
            )
            .await;
        assert_eq!(r.status, 401);
        assert!(r.body.contains("Login failed"), "{}", r.body);
        assert!(r.body.contains("lock"), "the lockout rule is explained");
    }
    // Now even the right password fails, with the same message.
    let form = lena.get("/portal/login").await;
    let r = lena
        .post(
            "/portal/login",
            &[
                ("csrf", &form.csrf()),
                ("account", "Plant"),
                ("username", "lena"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 401);

    let dash = admin.get("/portal/").await;
    assert!(
        dash.body.contains("lockout") && dash.body.contains("User lena was locked"),
        "{}",
        dash.body
    );
    let users = admin.get("/portal/users").await;
    assert!(users.body.contains("locked until"));
    // Only lena is locked: her row has the one unlock button.
    let unlock_at = users
        .body
        .find("value=\"unlock\"")
        .expect("an unlock button");
    let action = between(
        users.body[..unlock_at].rsplit_once("<form").unwrap().1,
        "action=\"",
        "\"",
    )
    .to_string();
    assert!(action.starts_with("/portal/users/"));
    let r = admin
        .post(&action, &[("csrf", &users.csrf()), ("action", "unlock")])
        .await;
    assert!(
        admin
            .follow(&r)
            .await
            .body
            .contains("User lena was updated")
    );
    let page = lena.login("Plant", "lena", PASSWORD).await;
    assert!(page.body.contains("Dashboard"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_totp_and_an_expired_password_are_finished_in_the_portal() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    admin
        .post(
            "/portal/users",
            &[
                ("csrf", &csrf),
                ("username", "tom"),
                ("role", "user"),
                ("password", PASSWORD),
            ],
        )
        .await;
    let r = admin
        .post(
            "/portal/account",
            &settings_form(&csrf, &[("require_totp", "on"), ("expiry_days", "30")]),
        )
        .await;
    assert!(admin.follow(&r).await.body.contains("saved"));

    // TOTP is mandatory: the login goes to the enrolment page first.
    let mut tom = Browser::new(&server);
    let form = tom.get("/portal/login").await;
    let r = tom
        .post(
            "/portal/login",
            &[
                ("csrf", &form.csrf()),
                ("account", "Plant"),
                ("username", "tom"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.location(), "/portal/login/enroll");
    // Until then, no page of the portal.
    let blocked = tom.get("/portal/devices").await;
    assert_eq!(blocked.location(), "/portal/login/enroll");
    let start = tom.follow(&r).await;
    let qr = tom
        .post("/portal/totp/enroll", &[("csrf", &start.csrf())])
        .await;
    assert_eq!(qr.status, 200, "{}", qr.body);
    assert!(qr.body.contains("data:image/svg+xml;base64,"));
    let secret = between(&qr.body, "id=\"totp-secret\">", "<").to_string();
    let wrong = tom
        .post(
            "/portal/totp/confirm",
            &[
                ("csrf", &qr.csrf()),
                ("secret", &secret),
                ("uri", "otpauth://x"),
                ("code", "000000"),
            ],
        )
        .await;
    assert!(
        wrong.body.contains("wrong"),
        "a wrong code shows the QR again"
    );
    let code = drawbridge_server::totp::code_at(&secret, server.state.clock.unix()).unwrap();
    let ok = tom
        .post(
            "/portal/totp/confirm",
            &[
                ("csrf", &wrong.csrf()),
                ("secret", &secret),
                ("uri", "otpauth://x"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(ok.location(), "/portal/", "{}", ok.body);
    assert!(
        tom.follow(&ok)
            .await
            .body
            .contains("Two-factor login is on")
    );

    // 31 days later the password has expired: password, code, then a new password.
    server.state.clock.advance(31 * 86_400);
    let form = tom.get("/portal/login").await;
    let r = tom
        .post(
            "/portal/login",
            &[
                ("csrf", &form.csrf()),
                ("account", "Plant"),
                ("username", "tom"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.location(), "/portal/login/totp");
    let totp = tom.follow(&r).await;
    let code = drawbridge_server::totp::code_at(&secret, server.state.clock.unix()).unwrap();
    let r = tom
        .post(
            "/portal/login/totp",
            &[("csrf", &totp.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.location(), "/portal/login/password");
    let pw = tom.follow(&r).await;
    let weak = tom
        .post(
            "/portal/login/password",
            &[
                ("csrf", &pw.csrf()),
                ("current_password", PASSWORD),
                ("new_password", "short"),
                ("new_password2", "short"),
            ],
        )
        .await;
    assert_eq!(weak.status, 400);
    assert!(
        weak.body.contains("flash error"),
        "the policy's message is shown"
    );
    let new_pw = "Green-Harvester-77";
    let r = tom
        .post(
            "/portal/login/password",
            &[
                ("csrf", &weak.csrf()),
                ("current_password", PASSWORD),
                ("new_password", new_pw),
                ("new_password2", new_pw),
            ],
        )
        .await;
    assert_eq!(r.location(), "/portal/", "{}", r.body);
    let dash = tom.follow(&r).await;
    assert!(dash.body.contains("password was changed"), "{}", dash.body);
    // My account shows the policy in words.
    let me = tom.get("/portal/me").await;
    assert!(me.body.contains("expires after 30 days"), "{}", me.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_someone_else_is_not_found_and_an_idle_login_ends() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    for u in ["ann", "bob"] {
        admin.create_user(&csrf, u, "user").await;
    }
    // The admin prepares a session for themself only.
    let devices = admin.get("/portal/devices").await;
    admin
        .post(
            "/portal/devices",
            &[
                ("csrf", &devices.csrf()),
                ("name", "Mixer"),
                ("firewall", "tcp:10.0.0.5:502"),
            ],
        )
        .await;
    let new = admin.get("/portal/sessions/new").await;
    let device_id = between(&new.body, "name=\"device\" value=\"", "\"").to_string();
    let admin_id = between(&new.body, "name=\"user\" value=\"", "\"").to_string();
    let to = admin
        .prepare_session(
            &csrf,
            "Admin only",
            (&device_id, "tcp:10.0.0.5:502"),
            &admin_id,
        )
        .await;

    // The history's filters.
    let hit = admin.get("/portal/sessions?state=prepared&q=admin").await;
    assert!(hit.body.contains("Admin only"));
    for miss in [
        "/portal/sessions?state=ended",
        "/portal/sessions?q=nothing-like-it",
        "/portal/sessions?to=2000-01-01T00%3A00",
    ] {
        assert!(!admin.get(miss).await.body.contains("Admin only"), "{miss}");
    }

    let mut ann = Browser::new(&server);
    ann.login("Plant", "ann", PASSWORD).await;
    let page = ann.get(&to).await;
    assert_eq!(
        page.status, 404,
        "not found, not forbidden: no hint it exists"
    );
    assert!(
        page.body.contains("id=\"logout\""),
        "the error is inside the portal's frame"
    );
    let list = ann.get("/portal/sessions").await;
    assert!(!list.body.contains("Admin only"));

    // After the account's idle timeout the login ends, with the API's message.
    server.state.clock.advance(31 * 60);
    let r = ann.get("/portal/").await;
    assert_eq!(r.location(), "/portal/login");
    let login = ann.follow(&r).await;
    assert!(login.body.contains("timed out"), "{}", login.body);
    assert!(!ann.cookies.contains_key("db_session"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_network_edits_dual_control_and_csv_export() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let id = admin
        .create_device(&csrf, "Press", "tcp:192.168.1.10:502")
        .await;
    // Firewall, LAN subnets and 1:1 NAT from the edit form.
    let r = admin
        .post(
            &format!("/portal/devices/{id}"),
            &[
                ("csrf", &csrf),
                ("name", "Press 1"),
                ("lan_subnets", "192.168.1.0/24"),
                ("firewall", "tcp:192.168.1.10:502\nicmp:192.168.1.0/24"),
                ("nat", "192.168.1.0/24 -> 10.77.1.0/24"),
            ],
        )
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("The device was saved"), "{}", page.body);
    assert!(page.body.contains("192.168.1.0/24 ↔ 10.77.1.0/24"));
    assert!(page.body.contains("icmp:192.168.1.0/24"));
    assert!(
        page.body.contains("id=\"onsite-approval\">"),
        "the on-site approval flag stays off unless ticked"
    );
    // The machine's region (relay choice): set, refused when malformed, cleared.
    let form = |region: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("name", "Press 1".to_string()),
            ("lan_subnets", "192.168.1.0/24".to_string()),
            (
                "firewall",
                "tcp:192.168.1.10:502\nicmp:192.168.1.0/24".to_string(),
            ),
            ("nat", "192.168.1.0/24 -> 10.77.1.0/24".to_string()),
            ("region", region.to_string()),
        ]
    };
    let r = admin
        .post(
            &format!("/portal/devices/{id}"),
            &form("us-east")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    let page = admin.follow(&r).await;
    assert!(
        page.body.contains("Region: <code>us-east</code>"),
        "{}",
        page.body
    );
    let r = admin
        .post(
            &format!("/portal/devices/{id}"),
            &form("US East")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("flash error"), "{}", page.body);
    assert!(
        page.body.contains("Region: <code>us-east</code>"),
        "unchanged"
    );
    let r = admin
        .post(
            &format!("/portal/devices/{id}"),
            &form("")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    let page = admin.follow(&r).await;
    assert!(!page.body.contains("Region: <code>"), "cleared");
    // A bad NAT line is the API's error, and nothing changes.
    let r = admin
        .post(
            &format!("/portal/devices/{id}"),
            &[
                ("csrf", &csrf),
                ("name", "Press 1"),
                ("firewall", "tcp:192.168.1.10:502"),
                ("nat", "192.168.1.0/24 -> 10.77.0.0/16"),
            ],
        )
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("flash error"), "{}", page.body);
    assert!(page.body.contains("192.168.1.0/24 ↔ 10.77.1.0/24"));

    // Dual control: a started session waits for approval.
    let r = admin
        .post(
            "/portal/account",
            &settings_form(&csrf, &[("dual_control", "on")]),
        )
        .await;
    assert!(admin.follow(&r).await.body.contains("saved"));
    let new = admin.get("/portal/sessions/new").await;
    let admin_id = between(&new.body, "name=\"user\" value=\"", "\"").to_string();
    let session = admin
        .prepare_session(
            &csrf,
            "Needs consent",
            (&id, "tcp:192.168.1.10:502"),
            &admin_id,
        )
        .await;
    server.edge_online("Press 1").await;
    let r = admin
        .post(&format!("{session}/start"), &[("csrf", &csrf)])
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("pending_approval"), "{}", page.body);
    assert!(page.body.contains("waits for approval"));
    assert!(page.body.contains("id=\"connect-command\""));
    assert!(
        !page.body.contains("value=\"approve\""),
        "whoever started it cannot approve it"
    );
    // Another admin approves it in the portal (four eyes).
    let r = admin
        .post(
            "/portal/users",
            &[
                ("csrf", &csrf),
                ("username", "ada"),
                ("role", "admin"),
                ("password", PASSWORD),
            ],
        )
        .await;
    admin.follow(&r).await;
    let mut ada = Browser::new(&server);
    let ada_dash = ada.login("Plant", "ada", PASSWORD).await;
    let ada_csrf = ada_dash.csrf();
    let pending = ada.get(&session).await;
    assert!(
        pending.body.contains("value=\"approve\""),
        "{}",
        pending.body
    );
    assert!(
        pending
            .body
            .contains(&format!("name=\"device_id\" value=\"{id}\"")),
        "one decision per waiting device: {}",
        pending.body
    );
    let r = ada
        .post(
            &format!("{session}/approve"),
            &[("csrf", &ada_csrf), ("decision", "approve")],
        )
        .await;
    let page = ada.follow(&r).await;
    assert!(page.body.contains("Approved"), "{}", page.body);
    assert!(page.body.contains("active"));
    assert!(page.body.contains("No client has joined this session yet."));

    // The audit export as CSV, filtered by device.
    let csv = admin
        .get(&format!("/portal/audit/export?format=csv&device={id}"))
        .await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-disposition")
            .contains("drawbridge-audit.csv")
    );
    assert!(csv.body.lines().count() >= 2, "{}", csv.body);
    assert!(csv.body.contains("device.update"), "{}", csv.body);
    assert!(!csv.body.contains("user.create"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_admin_prepares_within_their_grants_and_manages_nothing_else() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    for (u, role) in [("sam", "session_admin"), ("uwe", "user")] {
        admin
            .post(
                "/portal/users",
                &[
                    ("csrf", &csrf),
                    ("username", u),
                    ("role", role),
                    ("password", PASSWORD),
                ],
            )
            .await;
    }
    let mut ids = Vec::new();
    for name in ["Granted", "Elsewhere"] {
        let created = admin
            .post(
                "/portal/devices",
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("firewall", "tcp:10.1.0.0/24"),
                ],
            )
            .await;
        ids.push(between(&created.body, "action=\"/portal/devices/", "/config\"").to_string());
    }
    admin
        .post(
            "/portal/access/groups",
            &[("csrf", &csrf), ("name", "Crew")],
        )
        .await;
    admin
        .post("/portal/access/pools", &[("csrf", &csrf), ("name", "Hall")])
        .await;
    let access = admin.get("/portal/access").await;
    let group = between(&access.body, "action=\"/portal/access/groups/", "/").to_string();
    let pool = between(&access.body, "action=\"/portal/access/pools/", "/").to_string();
    let users = admin.get("/portal/users").await;
    let user_ids: Vec<String> = users
        .body
        .match_indices("action=\"/portal/users/")
        .map(|(i, m)| {
            users.body[i + m.len()..]
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for u in &user_ids {
        admin
            .post(
                &format!("/portal/access/groups/{group}/members"),
                &[("csrf", &csrf), ("user_id", u)],
            )
            .await;
    }
    admin
        .post(
            &format!("/portal/access/pools/{pool}/devices"),
            &[("csrf", &csrf), ("device_id", &ids[0])],
        )
        .await;
    let r = admin
        .post(
            "/portal/access/grants",
            &[
                ("csrf", &csrf),
                ("group_id", &group),
                ("pool_id", &pool),
                ("level", "full"),
                ("targets", ""),
            ],
        )
        .await;
    assert!(admin.follow(&r).await.body.contains("grant was created"));

    let mut sam = Browser::new(&server);
    let dash = sam.login("Plant", "sam", PASSWORD).await;
    assert!(dash.body.contains("id=\"prepare-link\""));
    let users = sam.get("/portal/users").await;
    assert!(users.body.contains("uwe") && !users.body.contains("Add a user"));
    let access = sam.get("/portal/access").await;
    assert!(access.body.contains("Crew") && !access.body.contains("Create group"));
    let account = sam.get("/portal/account").await;
    assert!(
        !account.body.contains("Save settings"),
        "settings are read-only"
    );
    let new = sam.get("/portal/sessions/new").await;
    let before = &new.body[..new.body.find("id=\"user-uwe\"").expect("uwe can be chosen")];
    let uwe = before
        .rsplit_once("value=\"")
        .unwrap()
        .1
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let scsrf = new.csrf();
    let prepare = |device: &str| {
        let field = format!("targets_{device}");
        vec![
            ("csrf".to_string(), scsrf.clone()),
            ("name".to_string(), "Job".to_string()),
            ("device".to_string(), device.to_string()),
            (field, "tcp:10.1.0.7:80".to_string()),
            ("user".to_string(), uwe.clone()),
        ]
    };
    let f = prepare(&ids[0]);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = sam.post("/portal/sessions", &f).await;
    assert!(
        r.location().starts_with("/portal/sessions/") && r.location() != "/portal/sessions/new"
    );
    assert!(sam.follow(&r).await.body.contains("is prepared"));
    // The device outside sam's grants: the API says no, the portal shows it.
    let f = prepare(&ids[1]);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = sam.post("/portal/sessions", &f).await;
    assert_eq!(r.location(), "/portal/sessions/new");
    let back = sam.follow(&r).await;
    assert!(back.body.contains("flash error"), "{}", back.body);
    assert_eq!(server.count("sessions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_page_disables_enables_replaces_and_archives_with_csrf() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let id = admin
        .create_device(&csrf, "Press", "tcp:192.168.1.10:502")
        .await;
    let page = admin.get(&format!("/portal/devices/{id}")).await;
    assert!(page.body.contains("id=\"device-disable\""), "{}", page.body);
    // Without the CSRF token nothing changes.
    let r = admin
        .post(
            &format!("/portal/devices/{id}/disable"),
            &[("csrf", "forged")],
        )
        .await;
    assert_ne!(r.status, 303);
    let page = admin.get(&format!("/portal/devices/{id}")).await;
    assert!(!page.body.contains("id=\"device-enable\""));
    // Disable, then enable.
    let r = admin
        .post(&format!("/portal/devices/{id}/disable"), &[("csrf", &csrf)])
        .await;
    let page = admin.follow(&r).await;
    assert!(
        page.body.contains("The device is disabled"),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"device-enable\""));
    let r = admin
        .post(&format!("/portal/devices/{id}/enable"), &[("csrf", &csrf)])
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("enabled again"), "{}", page.body);
    // Replace shows a key for the replacement gateway once.
    let r = admin
        .post(&format!("/portal/devices/{id}/replace"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("replacement gateway"), "{}", r.body);
    assert!(r.body.contains("dba_"), "the key is shown");
    // Archive hides it from the list; the archived list and its page still show it.
    let r = admin
        .post(&format!("/portal/devices/{id}/archive"), &[("csrf", &csrf)])
        .await;
    let page = admin.follow(&r).await;
    assert!(page.body.contains("archived"), "{}", page.body);
    assert!(!page.body.contains("id=\"device-disable\""));
    let list = admin.get("/portal/devices").await;
    assert!(!list.body.contains(&format!("/portal/devices/{id}\"")));
    let list = admin.get("/portal/devices?archived=true").await;
    assert!(
        list.body.contains(&format!("/portal/devices/{id}\"")),
        "{}",
        list.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_shows_the_newest_first_in_pages_with_names_and_labelled_details() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let mut ids = Vec::new();
    for name in ["Press", "Lathe", "Mill"] {
        let created = admin
            .post(
                "/portal/devices",
                &[
                    ("csrf", &dash.csrf()),
                    ("name", name),
                    ("firewall", "tcp:192.168.1.10:502"),
                ],
            )
            .await;
        assert_eq!(created.status, 200, "{}", created.body);
        ids.push(between(&created.body, "action=\"/portal/devices/", "/config\"").to_string());
    }
    let seqs = |body: &str| -> Vec<i64> {
        body.split("<tr class=\"")
            .skip(1)
            .filter_map(|r| r.split("<td>").nth(1)?.split('<').next()?.parse().ok())
            .collect()
    };
    let page = admin.get("/portal/audit?per_page=2").await;
    assert_eq!(page.status, 200);
    let first = seqs(&page.body);
    assert_eq!(first.len(), 2, "{}", page.body);
    assert!(first[0] > first[1], "newest first: {first:?}");
    // The newest entry is the last device's creation: by name, its id on hover,
    // its details as labelled fields rather than JSON.
    let top = page.body.split("<tr class=\"").nth(1).unwrap();
    assert!(top.contains(">Mill<"), "{top}");
    assert!(
        top.contains(&format!("title=\"device:{}\"", ids[2])),
        "{top}"
    );
    assert!(top.contains("<b>"), "labelled details: {top}");
    assert!(!top.contains("{&#34;"), "raw JSON: {top}");
    // The older page continues where this one stopped, and the pages end.
    let mut all = first.clone();
    let mut body = page.body.clone();
    while let Some(end) = body.find("\" id=\"audit-older\"") {
        let link = body[..end]
            .rsplit("href=\"")
            .next()
            .unwrap()
            .replace("&#38;", "&")
            .replace("&amp;", "&");
        let next = admin.get(&link).await;
        assert_eq!(next.status, 200);
        let s = seqs(&next.body);
        assert!(
            !s.is_empty() && s[0] < *all.last().unwrap(),
            "{s:?} after {all:?}"
        );
        all.extend(s);
        body = next.body;
        assert!(all.len() < 100);
    }
    let n = *all.first().unwrap();
    assert_eq!(all, (1..=n).rev().collect::<Vec<_>>(), "every entry once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_names_groups_pools_grants_and_linked_devices() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let created = admin
        .post(
            "/portal/devices",
            &[
                ("csrf", &csrf),
                ("name", "Press"),
                ("firewall", "tcp:192.168.1.10:502"),
            ],
        )
        .await;
    let device = between(&created.body, "action=\"/portal/devices/", "/config\"").to_string();
    admin
        .post(
            "/portal/access/groups",
            &[("csrf", &csrf), ("name", "Crew")],
        )
        .await;
    admin
        .post("/portal/access/pools", &[("csrf", &csrf), ("name", "Hall")])
        .await;
    let access = admin.get("/portal/access").await;
    let group = between(&access.body, "action=\"/portal/access/groups/", "/").to_string();
    let pool = between(&access.body, "action=\"/portal/access/pools/", "/").to_string();
    admin
        .post(
            &format!("/portal/access/pools/{pool}/devices"),
            &[("csrf", &csrf), ("device_id", &device)],
        )
        .await;
    let r = admin
        .post(
            "/portal/access/grants",
            &[
                ("csrf", &csrf),
                ("group_id", &group),
                ("pool_id", &pool),
                ("level", "full"),
                ("targets", ""),
            ],
        )
        .await;
    assert!(admin.follow(&r).await.body.contains("grant was created"));

    let page = admin.get("/portal/audit").await;
    assert_eq!(page.status, 200);
    let row = |action: &str| -> String {
        page.body
            .split("<tr class=\"")
            .find(|r| r.contains(&format!(">{action}<")))
            .unwrap_or_else(|| panic!("no {action} row: {}", page.body))
            .split("</tr>")
            .next()
            .unwrap()
            .to_string()
    };
    // Objects by name, the raw reference on hover.
    let g = row("group.create");
    assert!(g.contains(">group Crew<"), "{g}");
    assert!(g.contains(&format!("title=\"group:{group}\"")), "{g}");
    let p = row("pool.add");
    assert!(p.contains(">pool Hall<"), "{p}");
    // The linked device in the details is named, not an id.
    assert!(p.contains("Press"), "{p}");
    assert!(!p.contains(&format!("> {device}<")), "raw device id: {p}");
    let grant = row("grant.create");
    assert!(grant.contains("grant group id:</b> Crew"), "{grant}");
    assert!(grant.contains("grant pool id:</b> Hall"), "{grant}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_only_token_made_on_the_account_page_reads_data_and_nothing_else() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    b.setup(&server.setup_token().await, "Plant").await;
    b.login("Plant", "admin", PASSWORD).await;
    let me = b.get("/portal/me").await;
    assert!(me.body.contains("data only"), "the form offers the scope");
    let r = b
        .post(
            "/portal/me/tokens",
            &[
                ("csrf", &me.csrf()),
                ("name", "historian"),
                ("days", "30"),
                ("data_only", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = between(&r.body, "<pre id=\"new-token\">", "</pre>").to_string();
    assert!(token.starts_with("dbt_"), "{token}");
    assert!(
        r.body.contains("data, read-only"),
        "the list names the scope"
    );
    let get = |path: &'static str| {
        let req = b.http.get(format!("{}{path}", b.base)).bearer_auth(&token);
        async move { req.send().await.expect("get").status().as_u16() }
    };
    assert_eq!(get("/api/v1/devices").await, 200);
    assert_eq!(get("/api/v1/data/sync").await, 200);
    assert_eq!(get("/api/v1/users").await, 403);
    assert_eq!(get("/api/v1/audit").await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_recording_settings_are_saved_from_the_account_page_and_bad_ones_change_nothing() {
    let server = TestServer::start().await;
    let mut admin = Browser::new(&server);
    admin.setup(&server.setup_token().await, "Plant").await;
    let dash = admin.login("Plant", "admin", PASSWORD).await;
    let csrf = dash.csrf();
    let page = admin.get("/portal/account").await;
    assert!(
        page.body.contains("id=\"desktop-recording\""),
        "the form offers it"
    );
    let r = admin
        .post(
            "/portal/account",
            &settings_form(
                &csrf,
                &[
                    ("desktop_recording", "best_effort"),
                    ("recording_retention_days", "30"),
                    ("recording_max_mb", "64"),
                ],
            ),
        )
        .await;
    assert!(admin.follow(&r).await.body.contains("saved"));
    let token = admin.cookies.get("db_session").cloned().expect("cookie");
    let settings = |b: &Browser| {
        let req = b
            .http
            .get(format!("{}/api/v1/account", b.base))
            .bearer_auth(&token);
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["settings"]
                .clone()
        }
    };
    let s = settings(&admin).await;
    assert_eq!(s["desktop_recording"], "best_effort");
    assert_eq!(s["recording_retention_days"], 30);
    assert_eq!(s["recording_max_mb"], 64);
    for bad in [
        ("desktop_recording", "sometimes"),
        ("recording_max_mb", "0"),
        ("recording_retention_days", "x"),
    ] {
        let r = admin
            .post("/portal/account", &settings_form(&csrf, &[bad]))
            .await;
        assert!(!admin.follow(&r).await.body.contains("saved"), "{bad:?}");
    }
    assert_eq!(settings(&admin).await, s, "nothing changed");
}
