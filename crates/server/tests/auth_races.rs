//! Identity under concurrency and load: lockout and single-use TOTP codes hold
//! when attempts arrive at once, mandatory TOTP ends password-only access,
//! argon2 runs in a bounded pool. Each runs on SQLite and PostgreSQL.

use crate::common;

use axum::http::{Method, StatusCode};
use common::{PASSWORD, TestApp};
use serde_json::{Value, json};
use std::sync::Arc;

store_tests!(
    thirty_concurrent_wrong_passwords_lock_the_user_once_and_notify_the_admins,
    password_change_counts_wrong_passwords_and_respects_lockout_and_address_limit,
    two_concurrent_logins_with_the_same_totp_code_give_exactly_one_token,
    mandatory_totp_ends_password_only_logins_and_suspends_their_api_tokens,
    resetting_a_second_factor_that_is_not_there_is_refused_and_changes_nothing,
    a_burst_of_logins_completes_and_hashing_stays_within_its_limit,
);

/// Runs `n` requests at once, each on its own task; returns their answers.
async fn at_once<F, Fut>(app: &Arc<TestApp>, n: usize, f: F) -> Vec<(StatusCode, Value)>
where
    F: Fn(Arc<TestApp>) -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f(Arc::clone(app)))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

async fn audit_count(app: &TestApp, admin: &str, action: &str) -> usize {
    let (s, v) = app
        .get(&format!("/api/v1/audit?action={action}"), admin)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().len()
}

async fn lockout_notes(app: &TestApp, admin: &str, user: &str) -> usize {
    let (_, notes) = app.get("/api/v1/notifications", admin).await;
    notes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "lockout" && n["message"].as_str().unwrap().contains(user))
        .count()
}

/// A refusal of a guess: the failure itself, or (when the password pool was
/// full for too long) a busy answer that counted nothing.
fn assert_refused(r: &(StatusCode, Value), code: &str) {
    match r.0 {
        StatusCode::TOO_MANY_REQUESTS => assert_eq!(r.1["code"], "rate_limited", "{r:?}"),
        _ => {
            assert_eq!(r.1["code"], code, "{r:?}");
        }
    }
}

async fn thirty_concurrent_wrong_passwords_lock_the_user_once_and_notify_the_admins(app: TestApp) {
    let app = Arc::new(app);
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    let answers = at_once(&app, 30, |app| async move {
        app.login("acme", "anna", "Wrong-Password-1").await
    })
    .await;
    for r in &answers {
        assert_refused(r, "login_failed");
    }
    let failed = answers
        .iter()
        .filter(|r| r.0 == StatusCode::UNAUTHORIZED)
        .count();
    assert!(failed >= 5, "only {failed} of 30 guesses were checked");
    // Threshold 5: the burst locked the user, so even the right password fails.
    let (s, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "locked after the burst: {v}");
    assert_eq!(
        audit_count(&app, &acct.admin, "user.lockout").await,
        1,
        "one lockout, however many failures arrived at once"
    );
    assert_eq!(lockout_notes(&app, &acct.admin, "anna").await, 1);
    // Every guess is on the record, as a failure or as a refusal while locked.
    let recorded = audit_count(&app, &acct.admin, "login.failed").await
        + audit_count(&app, &acct.admin, "login.locked").await;
    assert_eq!(recorded, failed + 1);
}

/// `POST /me/password` from a given remote address.
async fn change_password_from(
    app: &TestApp,
    from: [u8; 4],
    token: &str,
    current: &str,
    new: &str,
) -> (StatusCode, Value) {
    let body = json!({"current_password": current, "new_password": new});
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/me/password")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            from, 40000,
        ))));
    app.send(req).await
}

async fn password_change_counts_wrong_passwords_and_respects_lockout_and_address_limit(
    app: TestApp,
) {
    const NEW: &str = "Green-Valley-99-x";
    let app = Arc::new(app);
    let acct = app.account("acme").await;
    let (_, anna) = app.user(&acct, "anna", "user").await;
    let answers = at_once(&app, 30, |app| {
        let anna = anna.clone();
        async move {
            app.post(
                "/api/v1/me/password",
                &anna,
                json!({"current_password": "Wrong-Password-1", "new_password": NEW}),
            )
            .await
        }
    })
    .await;
    for r in &answers {
        assert_refused(r, "invalid_code");
    }
    assert_eq!(audit_count(&app, &acct.admin, "user.lockout").await, 1);
    assert_eq!(lockout_notes(&app, &acct.admin, "anna").await, 1);
    // Locked: the right current password changes nothing, and logins fail too.
    let (s, v) = app
        .post(
            "/api/v1/me/password",
            &anna,
            json!({"current_password": PASSWORD, "new_password": NEW}),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["code"], "rate_limited");
    assert!(v["message"].as_str().unwrap().contains("locked"), "{v}");
    assert_eq!(
        app.login("acme", "anna", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );

    // After the lock: an address over its attempt limit is refused before any
    // password is checked; another address goes on.
    app.clock().advance(16 * 60);
    while app.state.attempt("127.0.0.7").is_ok() {}
    let (s, v) = change_password_from(&app, [127, 0, 0, 7], &anna, PASSWORD, NEW).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["code"], "rate_limited");
    assert!(v["message"].as_str().unwrap().contains("address"), "{v}");
    let (s, v) = change_password_from(&app, [127, 0, 0, 8], &anna, PASSWORD, NEW).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(app.login("acme", "anna", NEW).await.0, StatusCode::OK);
    assert_eq!(
        app.login("acme", "anna", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Sets up TOTP for the token's user; returns (secret, the fresh token).
async fn enable_totp(app: &TestApp, token: &str) -> (String, String) {
    let v = app
        .ok(Method::POST, "/api/v1/me/totp/enroll", token, None)
        .await;
    let secret = v["secret"].as_str().unwrap().to_string();
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

async fn two_concurrent_logins_with_the_same_totp_code_give_exactly_one_token(app: TestApp) {
    let app = Arc::new(app);
    let acct = app.account("acme").await;
    let (_, anna) = app.user(&acct, "anna", "user").await;
    let (secret, _) = enable_totp(&app, &anna).await;

    // Password and code in one request, twice at once.
    app.clock().advance(30);
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let answers = at_once(&app, 2, |app| {
        let code = code.clone();
        async move {
            app.call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"account": "acme", "username": "anna", "password": PASSWORD, "totp": code})),
            )
            .await
        }
    })
    .await;
    let ok: Vec<_> = answers.iter().filter(|r| r.0 == StatusCode::OK).collect();
    assert_eq!(ok.len(), 1, "one code, one token: {answers:?}");
    assert_eq!(ok[0].1["stage"], "complete");

    // The second step with the same code on two half-finished logins at once.
    app.clock().advance(30);
    let mut pending = Vec::new();
    for _ in 0..2 {
        let (s, v) = app.login("acme", "anna", PASSWORD).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["stage"], "totp_required");
        pending.push(v["token"].as_str().unwrap().to_string());
    }
    let code = drawbridge_server::totp::code_at(&secret, app.state.now()).unwrap();
    let tasks: Vec<_> = pending
        .into_iter()
        .map(|t| {
            let app = Arc::clone(&app);
            let code = code.clone();
            tokio::spawn(async move {
                app.post("/api/v1/auth/totp", &t, json!({"code": code}))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let ok = answers.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(ok, 1, "one code, one token: {answers:?}");
}

async fn create_api_token(app: &TestApp, login: &str) -> String {
    let v = app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            login,
            Some(json!({"name": "ci", "expires_in_days": 30, "read_only": false})),
        )
        .await;
    v["token"].as_str().unwrap().to_string()
}

async fn mandatory_totp_ends_password_only_logins_and_suspends_their_api_tokens(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, anna) = app.user(&acct, "anna", "user").await;
    let anna_api = create_api_token(&app, &anna).await;
    let (_, bert) = app.user(&acct, "bert", "user").await;
    let (_, bert) = enable_totp(&app, &bert).await;
    let bert_api = create_api_token(&app, &bert).await;
    let other_admin_login = app.token("acme", "admin").await;

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

    // Password-only logins ended; API tokens of users without TOTP are refused.
    for t in [&anna, &other_admin_login] {
        let (s, v) = app.get("/api/v1/me", t).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
    let (s, v) = app.get("/api/v1/me", &anna_api).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("second factor"),
        "{v}"
    );
    // Users with TOTP go on, and so does the admin's own login that made the change.
    for t in [&bert, &bert_api, &acct.admin] {
        app.ok(Method::GET, "/api/v1/me", t, None).await;
    }
    let (_, audit) = app
        .get("/api/v1/audit?action=account.update", &acct.admin)
        .await;
    assert_eq!(audit[0]["details"]["logins_revoked"], 2, "{audit}");

    // Once anna enrols, her API token works again.
    let (_, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(v["stage"], "totp_enrollment_required");
    let (_, full) = enable_totp(&app, v["token"].as_str().unwrap()).await;
    app.ok(Method::GET, "/api/v1/me", &full, None).await;
    app.ok(Method::GET, "/api/v1/me", &anna_api, None).await;
}

async fn resetting_a_second_factor_that_is_not_there_is_refused_and_changes_nothing(app: TestApp) {
    let acct = app.account("acme").await;
    let (anna_id, anna) = app.user(&acct, "anna", "user").await;
    let anna_api = create_api_token(&app, &anna).await;
    let before = app.count("audit_log").await;
    for (id, body) in [
        (&acct.admin_id, json!({"reset_totp": true})),
        (&anna_id, json!({"reset_totp": true})),
        (
            &anna_id,
            json!({"reset_totp": true, "disabled": true, "role": "auditor"}),
        ),
    ] {
        let (s, v) = app
            .patch(&format!("/api/v1/users/{id}"), &acct.admin, body.clone())
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}: {v}");
        assert_eq!(v["code"], "conflict");
        assert!(
            v["message"].as_str().unwrap().contains("no second factor"),
            "{v}"
        );
    }
    // Nobody was logged out and nothing changed or was recorded.
    for t in [&acct.admin, &anna, &anna_api] {
        app.ok(Method::GET, "/api/v1/me", t, None).await;
    }
    let me = app.ok(Method::GET, "/api/v1/me", &anna, None).await;
    assert_eq!(me["user"]["role"], "user");
    assert_eq!(me["user"]["disabled"], false);
    assert_eq!(app.count("audit_log").await, before);

    // With a second factor, the reset works (and ends the user's logins).
    let (_, anna) = enable_totp(&app, &anna).await;
    let v = app
        .ok(
            Method::PATCH,
            &format!("/api/v1/users/{anna_id}"),
            &acct.admin,
            Some(json!({"reset_totp": true})),
        )
        .await;
    assert_eq!(v["totp_enabled"], false);
    assert_eq!(
        app.get("/api/v1/me", &anna).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_burst_of_logins_completes_and_hashing_stays_within_its_limit(app: TestApp) {
    let app = Arc::new(app);
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    let answers = at_once(&app, 20, |app| async move {
        app.login("acme", "anna", PASSWORD).await
    })
    .await;
    for (s, v) in &answers {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert_eq!(v["stage"], "complete");
    }
    let pool = drawbridge_server::password::Hashing::global();
    assert!(pool.peak() >= 1 && pool.peak() <= pool.limit());
    // The API answers after the burst as before.
    app.ok(Method::GET, "/api/v1/me", &acct.admin, None).await;
}
