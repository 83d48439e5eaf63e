//! The portal over real HTTPS, without a browser: cookies, CSRF, headers,
//! escaping, and that every rule is the API's.

mod common;

use common::{Browser, PASSWORD, TestServer};

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
