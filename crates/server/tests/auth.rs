//! Identity: lockout, non-enumeration, TOTP, half-authenticated logins,
//! password policy, token lifetimes. Each runs on SQLite and PostgreSQL.

use crate::common;

use axum::http::{Method, StatusCode};
use common::{PASSWORD, TestApp};
use serde_json::json;

store_tests!(
    first_start_has_no_default_credentials_and_setup_tokens_work_once,
    lockout_after_threshold_blocks_even_the_right_password_and_notifies_admins,
    failures_look_the_same_for_unknown_user_wrong_password_and_locked_user,
    totp_codes_work_once_and_a_half_login_can_call_nothing_else,
    totp_guesses_after_a_correct_password_still_lock_the_user,
    mandatory_totp_forces_enrolment_before_anything_else,
    password_policy_enforces_length_classes_common_list_and_history,
    expired_password_must_be_changed_before_anything_else,
    api_tokens_expire_can_be_revoked_and_read_only_ones_cannot_write,
    login_tokens_end_on_idle_absolute_timeout_logout_disable_and_password_change,
    too_many_attempts_from_one_address_are_refused_while_other_addresses_go_on,
    logins_over_the_address_limit_are_refused_before_any_check_or_write,
    secrets_are_sealed_at_rest_bound_to_their_row_and_need_the_servers_key,
);

async fn first_start_has_no_default_credentials_and_setup_tokens_work_once(app: TestApp) {
    for (u, p) in [("admin", "admin"), ("admin", PASSWORD), ("root", "root")] {
        let (s, v) = app.login("default", u, p).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
    let token = drawbridge_server::bootstrap::new_setup_token(&app.state)
        .await
        .unwrap();
    let body = json!({"token": token, "account": "acme", "admin_username": "root", "admin_password": PASSWORD});
    let (s, _) = app
        .call(Method::POST, "/api/v1/setup", None, Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut again = body.clone();
    again["account"] = json!("other");
    let (s, v) = app
        .call(Method::POST, "/api/v1/setup", None, Some(again))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a setup token works once: {v}");
    assert_eq!(v["code"], "invalid_code");
    assert_eq!(app.count("accounts").await, 1);
    // An expired setup token is refused too.
    let token = drawbridge_server::bootstrap::new_setup_token(&app.state)
        .await
        .unwrap();
    app.clock()
        .advance(drawbridge_server::bootstrap::SETUP_TTL + 1);
    let body = json!({"token": token, "account": "late", "admin_username": "root", "admin_password": PASSWORD});
    let (s, _) = app
        .call(Method::POST, "/api/v1/setup", None, Some(body))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("accounts").await, 1);
}

async fn lockout_after_threshold_blocks_even_the_right_password_and_notifies_admins(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    for _ in 0..5 {
        let (s, _) = app.login("acme", "anna", "Wrong-Password-1").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "locked: {v}");
    let (_, notes) = app.get("/api/v1/notifications", &acct.admin).await;
    let notes = notes.as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n["kind"] == "lockout" && n["message"].as_str().unwrap().contains("anna")),
        "{notes:?}"
    );
    let (_, audit) = app
        .get("/api/v1/audit?action=user.lockout", &acct.admin)
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    let (_, audit) = app
        .get("/api/v1/audit?action=login.locked", &acct.admin)
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 1);
    // The user shows as locked to admins, and the lock ends on its own.
    let (_, users) = app.get("/api/v1/users", &acct.admin).await;
    let anna = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "anna")
        .unwrap()
        .clone();
    assert!(anna["locked_until"].is_string());
    app.clock().advance(15 * 60 + 1);
    let (s, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "lockout expired: {v}");
}

async fn failures_look_the_same_for_unknown_user_wrong_password_and_locked_user(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    let (_, disabled) = app.user(&acct, "bob", "user").await;
    drop(disabled);
    let bob = app
        .get("/api/v1/users", &acct.admin)
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.ok(
        Method::PATCH,
        &format!("/api/v1/users/{bob}"),
        &acct.admin,
        Some(json!({"disabled": true})),
    )
    .await;
    let unknown_user = app.login("acme", "nobody", PASSWORD).await;
    let unknown_account = app.login("nope", "anna", PASSWORD).await;
    let wrong_password = app.login("acme", "anna", "Wrong-Password-1").await;
    let disabled_user = app.login("acme", "bob", PASSWORD).await;
    for _ in 0..5 {
        app.login("acme", "anna", "Wrong-Password-1").await;
    }
    let locked = app.login("acme", "anna", PASSWORD).await;
    for r in [&unknown_account, &wrong_password, &disabled_user, &locked] {
        assert_eq!(r, &unknown_user, "every failure answers identically");
    }
    assert_eq!(unknown_user.0, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_user.1["code"], "login_failed");
    // Failures naming an existing account are on that account's record.
    let (_, audit) = app
        .get("/api/v1/audit?action=login.failed", &acct.admin)
        .await;
    assert!(audit.as_array().unwrap().len() >= 3, "{audit}");
}

async fn enable_totp(app: &TestApp, token: &str) -> (String, String) {
    let v = app
        .ok(Method::POST, "/api/v1/me/totp/enroll", token, None)
        .await;
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(
        v["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let v = app
        .ok(
            Method::POST,
            "/api/v1/me/totp/confirm",
            token,
            Some(json!({"code": code})),
        )
        .await;
    (secret, v["token"].as_str().unwrap().to_string())
}

async fn totp_codes_work_once_and_a_half_login_can_call_nothing_else(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, token) = app.user(&acct, "anna", "user").await;
    let (secret, _) = enable_totp(&app, &token).await;
    // The confirming code is used up; move to the next step for a fresh one.
    app.clock().advance(30);
    let (s, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["stage"], "totp_required");
    let pending = v["token"].as_str().unwrap().to_string();
    for (m, p) in [
        (Method::GET, "/api/v1/me"),
        (Method::GET, "/api/v1/devices"),
        (Method::GET, "/api/v1/sessions"),
        (Method::POST, "/api/v1/me/totp/enroll"),
    ] {
        let (s, v) = app.call(m.clone(), p, Some(&pending), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {v}");
        assert_eq!(v["code"], "login_incomplete", "{m} {p}");
    }
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let v = app
        .ok(
            Method::POST,
            "/api/v1/auth/totp",
            &pending,
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(v["stage"], "complete");
    let full = v["token"].as_str().unwrap().to_string();
    app.ok(Method::GET, "/api/v1/me", &full, None).await;
    // The pending token is spent, and so is the code.
    let (s, _) = app
        .post("/api/v1/auth/totp", &pending, json!({"code": code}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(
                json!({"account": "acme", "username": "anna", "password": PASSWORD, "totp": code}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a code works once: {v}");
    // One-step login with a fresh code works.
    app.clock().advance(30);
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(
                json!({"account": "acme", "username": "anna", "password": PASSWORD, "totp": code}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "complete");
}

async fn totp_guesses_after_a_correct_password_still_lock_the_user(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, token) = app.user(&acct, "anna", "user").await;
    let (secret, _) = enable_totp(&app, &token).await;
    app.clock().advance(30);
    for _ in 0..5 {
        let (_, v) = app.login("acme", "anna", PASSWORD).await;
        let pending = v["token"].as_str().unwrap().to_string();
        let (s, _) = app
            .post("/api/v1/auth/totp", &pending, json!({"code": "000000"}))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Now locked: even the right password and code fail.
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(
                json!({"account": "acme", "username": "anna", "password": PASSWORD, "totp": code}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

async fn mandatory_totp_forces_enrolment_before_anything_else(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    let (_, acc) = app.get("/api/v1/account", &acct.admin).await;
    let mut settings = acc["settings"].clone();
    settings["require_totp"] = json!(true);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings})),
    )
    .await;
    let (_, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(v["stage"], "totp_enrollment_required");
    let t = v["token"].as_str().unwrap().to_string();
    let (s, _) = app.get("/api/v1/devices", &t).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, full) = enable_totp(&app, &t).await;
    app.ok(Method::GET, "/api/v1/devices", &full, None).await;
    let (s, _) = app.get("/api/v1/me", &t).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the enrolment token was rotated away"
    );
}

async fn password_policy_enforces_length_classes_common_list_and_history(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, _) = app.user(&acct, "anna", "user").await;
    for bad in ["Sh0rt!", "alllowercaseletters", "Password123!", "Qwerty123"] {
        let (s, v) = app
            .post(
                "/api/v1/users",
                &acct.admin,
                json!({"username": "zed", "role": "user", "password": bad}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["code"], "password_policy");
    }
    let (s, v) = app
        .post(
            "/api/v1/users",
            &acct.admin,
            json!({"username": "anna2", "role": "user", "password": "anna2-Is-Here-1"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "password containing the user name: {v}"
    );
    let mut token = app.token("acme", "anna").await;
    let mut current = PASSWORD.to_string();
    for next in ["Green-Barn-77", "Red-Silo-88", "Grey-Mill-99"] {
        let v = app
            .ok(
                Method::POST,
                "/api/v1/me/password",
                &token,
                Some(json!({"current_password": current, "new_password": next})),
            )
            .await;
        token = v["token"].as_str().unwrap().to_string();
        current = next.to_string();
    }
    for old in [PASSWORD, "Green-Barn-77", "Grey-Mill-99"] {
        let (s, v) = app
            .post(
                "/api/v1/me/password",
                &token,
                json!({"current_password": current, "new_password": old}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "reuse of {old}: {v}");
        assert_eq!(v["code"], "password_policy");
    }
    let (s, _) = app
        .post(
            "/api/v1/me/password",
            &token,
            json!({"current_password": "wrong-Current-1", "new_password": "Fresh-Field-11"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let _ = id;
}

async fn expired_password_must_be_changed_before_anything_else(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    let (_, acc) = app.get("/api/v1/account", &acct.admin).await;
    let mut settings = acc["settings"].clone();
    settings["password_policy"]["expiry_days"] = json!(90);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings})),
    )
    .await;
    app.clock().advance(91 * 86_400);
    let (_, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(v["stage"], "password_change_required", "{v}");
    let t = v["token"].as_str().unwrap().to_string();
    let (s, v) = app.get("/api/v1/sessions", &t).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::FORBIDDEN, json!("login_incomplete"))
    );
    let v = app
        .ok(
            Method::POST,
            "/api/v1/me/password",
            &t,
            Some(json!({"current_password": PASSWORD, "new_password": "Fresh-Field-11"})),
        )
        .await;
    assert_eq!(v["stage"], "complete");
    app.ok(
        Method::GET,
        "/api/v1/sessions",
        v["token"].as_str().unwrap(),
        None,
    )
    .await;
}

async fn api_tokens_expire_can_be_revoked_and_read_only_ones_cannot_write(app: TestApp) {
    let acct = app.account("acme").await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "ci", "expires_in_days": 1})),
        )
        .await;
    let api = v["token"].as_str().unwrap().to_string();
    let api_id = v["info"]["id"].as_str().unwrap().to_string();
    let me = app.ok(Method::GET, "/api/v1/me", &api, None).await;
    assert_eq!(me["via"], "api_token");
    // An API token acts with its owner's rights but cannot mint more tokens.
    app.ok(
        Method::POST,
        "/api/v1/devices",
        &api,
        Some(json!({"name": "press-1"})),
    )
    .await;
    let (s, _) = app
        .post(
            "/api/v1/tokens",
            &api,
            json!({"name": "x", "expires_in_days": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let v = app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "ro", "expires_in_days": 1, "read_only": true})),
        )
        .await;
    let ro = v["token"].as_str().unwrap().to_string();
    app.ok(Method::GET, "/api/v1/devices", &ro, None).await;
    let (s, _) = app
        .post("/api/v1/devices", &ro, json!({"name": "press-2"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(app.count("devices").await, 1);
    app.ok(
        Method::DELETE,
        &format!("/api/v1/tokens/{api_id}"),
        &acct.admin,
        None,
    )
    .await;
    let (s, _) = app.get("/api/v1/me", &api).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked");
    app.clock().advance(86_400 + 1);
    let (s, _) = app.get("/api/v1/me", &ro).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "expired");
    let (s, _) = app
        .post(
            "/api/v1/tokens",
            &acct.admin,
            json!({"name": "forever", "expires_in_days": 0}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the admin's login also timed out after a day idle"
    );
}

async fn login_tokens_end_on_idle_absolute_timeout_logout_disable_and_password_change(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (id, t) = app.user(&acct, "anna", "user").await;
    // Idle: 30 minutes by default.
    app.clock().advance(29 * 60);
    app.ok(Method::GET, "/api/v1/me", &t, None).await;
    app.clock().advance(29 * 60);
    app.ok(Method::GET, "/api/v1/me", &t, None).await;
    app.clock().advance(31 * 60);
    let (s, _) = app.get("/api/v1/me", &t).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "idle timeout");
    // Absolute: 12 hours by default, however busy.
    let t = app.token("acme", "anna").await;
    for _ in 0..(12 * 60 / 20) {
        app.clock().advance(20 * 60);
        let (s, _) = app.get("/api/v1/me", &t).await;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
    }
    let (s, _) = app.get("/api/v1/me", &t).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "absolute timeout");
    // Logout.
    let admin = app.token("acme", "admin").await;
    let t = app.token("acme", "anna").await;
    app.ok(Method::POST, "/api/v1/auth/logout", &t, None).await;
    let (s, _) = app.get("/api/v1/me", &t).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "logged out");
    // Password change ends the other logins.
    let a = app.token("acme", "anna").await;
    let b = app.token("acme", "anna").await;
    assert_ne!(a, b, "each login gets a new token");
    let v = app
        .ok(
            Method::POST,
            "/api/v1/me/password",
            &a,
            Some(json!({"current_password": PASSWORD, "new_password": "Fresh-Field-11"})),
        )
        .await;
    for old in [&a, &b] {
        let (s, _) = app.get("/api/v1/me", old).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let fresh = v["token"].as_str().unwrap().to_string();
    app.ok(Method::GET, "/api/v1/me", &fresh, None).await;
    // Disabling ends everything.
    app.ok(
        Method::PATCH,
        &format!("/api/v1/users/{id}"),
        &admin,
        Some(json!({"disabled": true})),
    )
    .await;
    let (s, _) = app.get("/api/v1/me", &fresh).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "disabled");
}

async fn login_from(
    app: &TestApp,
    from: [u8; 4],
    password: &str,
) -> (StatusCode, serde_json::Value) {
    let body = json!({"account": "acme", "username": "anna", "password": password});
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    // The listener puts the peer's address here; a loopback alias stands for a remote host.
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            from, 40000,
        ))));
    app.send(req).await
}

async fn too_many_attempts_from_one_address_are_refused_while_other_addresses_go_on(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    // Unlock between guesses so only the address limit can refuse. The
    // allowance is 30 a minute in bursts of 60: however slow this machine is,
    // the first refusal comes after at most 60 attempts plus one for every 2 s
    // the attempts took, and the attempt right after it is refused too.
    let t0 = std::time::Instant::now();
    let mut allowed = 0u64;
    let mut refused = false;
    for i in 0..400u64 {
        let (s, v) = login_from(&app, [127, 0, 0, 2], "Wrong-Password-1").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["code"], "rate_limited");
            refused = true;
            break;
        }
        allowed += 1;
        if i % 4 == 3 {
            let users = app.get("/api/v1/users", &acct.admin).await.1;
            let anna = users
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["username"] == "anna")
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            app.ok(
                Method::PATCH,
                &format!("/api/v1/users/{anna}"),
                &acct.admin,
                Some(json!({"unlock": true})),
            )
            .await;
        }
    }
    let refill = t0.elapsed().as_secs() / 2 + 1;
    assert!(
        refused && allowed <= 60 + refill,
        "{allowed} attempts went through before a refusal (refused: {refused}; at most 60 + {refill} may)"
    );
    // Right after it, at most one more can have been earned back.
    let mut again = 0;
    for _ in 0..3 {
        let (s, _) = login_from(&app, [127, 0, 0, 2], "Wrong-Password-1").await;
        again += u32::from(s == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(again >= 2, "{again} of the next 3 refused");
    let (s, v) = login_from(&app, [127, 0, 0, 3], PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "another address is not affected: {v}");
}

async fn logins_over_the_address_limit_are_refused_before_any_check_or_write(app: TestApp) {
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    // Use up the address's allowance (wrong passwords: anna ends up locked).
    let mut tries = 0;
    loop {
        let (s, _) = login_from(&app, [127, 0, 0, 4], "Wrong-Password-1").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tries += 1;
        assert!(tries < 1000, "the address limit never refused");
    }
    let pool = &app.state.store.pool;
    let audit = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let state = || async {
        sqlx::query_as::<_, (i64, Option<i64>)>(
            "SELECT CAST(failed_logins AS BIGINT), CAST(locked_until AS BIGINT) FROM users WHERE username = 'anna'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let (before, user_before) = (audit().await, state().await);
    // Further attempts from it, right or wrong, for a known or unknown user:
    // refused at the door, nothing checked, nothing written.
    for password in ["Wrong-Password-1", PASSWORD, "x"] {
        for _ in 0..5 {
            let (s, v) = login_from(&app, [127, 0, 0, 4], password).await;
            assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
            assert_eq!(v["code"], "rate_limited");
        }
    }
    assert_eq!(
        audit().await,
        before,
        "no audit entry for a refused attempt"
    );
    assert_eq!(state().await, user_before, "no failure counted");
}

/// Second step of a login with the current code of `secret`: the final stage.
async fn totp_login(app: &TestApp, user: &str, secret: &str) -> String {
    app.clock().advance(30);
    let (s, v) = app.login("acme", user, PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "totp_required");
    let pending = v["token"].as_str().unwrap().to_string();
    let code = drawbridge_server::totp::code_at(secret, app.state.now()).unwrap();
    let (_, v) = app
        .post("/api/v1/auth/totp", &pending, json!({"code": code}))
        .await;
    v["stage"].as_str().unwrap_or("refused").to_string()
}

async fn secrets_are_sealed_at_rest_bound_to_their_row_and_need_the_servers_key(app: TestApp) {
    use drawbridge_server::sealed::is_sealed;
    let pool = &app.state.store.pool;
    let acct = app.account("acme").await;
    let (anna_id, anna) = app.user(&acct, "anna", "user").await;
    let (bert_id, bert) = app.user(&acct, "bert", "user").await;
    let (anna_secret, _) = enable_totp(&app, &anna).await;
    let (bert_secret, _) = enable_totp(&app, &bert).await;
    // Nothing secret is in the database in the clear.
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, value FROM server_secrets WHERE name IN ('device_ca_key', 'relay_signing_key', 'portal_csrf_key')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 3);
    for (name, value) in &stored {
        assert!(is_sealed(value), "{name} is stored in the clear");
        assert!(!value.contains("PRIVATE KEY"), "{name}");
    }
    let anna_stored: String = sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1")
        .bind(&anna_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(is_sealed(&anna_stored) && !anna_stored.contains(&anna_secret));
    assert_eq!(totp_login(&app, "anna", &anna_secret).await, "complete");
    // Bert's sealed secret copied into anna's row does not open there: codes of
    // neither secret let anyone in as anna.
    let bert_stored: String = sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1")
        .bind(&bert_id)
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET totp_secret = $1 WHERE id = $2")
        .bind(&bert_stored)
        .bind(&anna_id)
        .execute(pool)
        .await
        .unwrap();
    assert_ne!(totp_login(&app, "anna", &bert_secret).await, "complete");
    assert_ne!(totp_login(&app, "anna", &anna_secret).await, "complete");
    // A secret stored before sealing existed (in the clear) is sealed at the next start
    // and keeps working.
    sqlx::query("UPDATE users SET totp_secret = $1 WHERE id = $2")
        .bind(&anna_secret)
        .bind(&anna_id)
        .execute(pool)
        .await
        .unwrap();
    app.reopen_store().await;
    let resealed: String = sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1")
        .bind(&anna_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(is_sealed(&resealed));
    assert_eq!(totp_login(&app, "anna", &anna_secret).await, "complete");
    // A replica (same database, same key file) signs and checks with the same keys:
    // the portal's forms and the relay's tokens work across replicas.
    let replica = drawbridge_server::state::AppState::new(
        app.reopen_store().await,
        drawbridge_server::clock::Clock::default(),
        "https://127.0.0.1".into(),
    )
    .await
    .unwrap();
    assert_eq!(replica.portal_key, app.state.portal_key);
    assert_eq!(replica.portal_key.len(), 32);
    assert_eq!(
        replica.relay_key.verifying_key().as_bytes(),
        app.state.relay_key.verifying_key().as_bytes()
    );
    // Another key (a replica or a restored backup given the wrong file) is refused
    // at the start, with a message that says why.
    let other = drawbridge_server::sealed::SecretsKey::from_bytes(&[9; 32]);
    let err = drawbridge_server::db::Store::open_sealed(&app.state.store.url, other)
        .await
        .expect_err("another secrets key must be refused");
    assert!(err.to_string().contains("another secrets key"), "{err}");
    // Rotation: everything is sealed again with a new key, in one transaction; then
    // the new key opens the database and the old one no longer does.
    use drawbridge_server::sealed::SecretsKey;
    let n = app
        .state
        .store
        .reseal(&SecretsKey::from_bytes(&[5; 32]))
        .await
        .unwrap();
    assert!(
        n >= 6,
        "check value, three server keys, two TOTP secrets: {n}"
    );
    let old_key = SecretsKey::load_or_create(&app.secrets_key_file).unwrap();
    assert!(
        drawbridge_server::db::Store::open_sealed(&app.state.store.url, old_key)
            .await
            .is_err()
    );
    let rotated = drawbridge_server::db::Store::open_sealed(
        &app.state.store.url,
        SecretsKey::from_bytes(&[5; 32]),
    )
    .await
    .unwrap();
    let stored: String = sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1")
        .bind(&anna_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        rotated
            .unseal(
                &drawbridge_server::sealed::totp_context(&anna_id, false),
                &stored
            )
            .unwrap(),
        anna_secret
    );
    drawbridge_server::state::AppState::new(
        rotated,
        drawbridge_server::clock::Clock::default(),
        "https://127.0.0.1".into(),
    )
    .await
    .expect("a server with the new key starts");
}
