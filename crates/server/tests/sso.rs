//! Single sign-on against a real OpenID provider: `oidc-provider` from npm
//! (tests/oidc-op, installed by `scripts/test` with `npm ci`) on loopback,
//! started by each test and driven headless the way a browser would be (its
//! login and device pages, cookies kept by hand). Without node or the npm
//! install each test prints a visible SKIPPED line, unless
//! `DRAWBRIDGE_REQUIRE_NODE=1` makes that a failure.

use crate::common;

use axum::http::{Method, StatusCode};
use common::{PASSWORD, TestApp};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use drawbridge_testnet::oidc::{CLIENT_ID, CLIENT_SECRET, Op, OpConfig};

/// What `TestApp`'s public URL makes the redirect URI.
const REDIRECT_URI: &str = "https://127.0.0.1:8443/portal/sso/callback";

/// The provider for `test` (`code_ttl`: seconds an authorization code lives),
/// or None with a SKIPPED line when node or its npm install is missing.
fn start_op(test: &str, code_ttl: u32) -> Option<Op> {
    let cfg = OpConfig {
        redirect_uris: vec![REDIRECT_URI.into()],
        code_ttl,
        ..OpConfig::default()
    };
    Op::start(test, &cfg)
}

/// Signs in at the provider from `authorize_url`; returns the URL the provider
/// sends the browser back to (our redirect URI with code, state, iss).
async fn sign_in_at_provider(op: &Op, authorize_url: &str, login: &str, otp: &str) -> url::Url {
    let back = op.sign_in(authorize_url, login, otp).await;
    assert!(back.starts_with(REDIRECT_URI), "sent back to {back}");
    url::Url::parse(&back).expect("callback URL")
}

fn settings(op: &Op, extra: Value) -> Value {
    let mut s = json!({
        "issuer": op.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["email", "profile", "groups"],
        "mode": "optional",
        "jit": true,
        "jit_role": "user",
    });
    for (k, v) in extra.as_object().expect("object") {
        s[k] = v.clone();
    }
    s
}

async fn set_provider(app: &TestApp, acct: &common::Account, body: Value) -> Value {
    app.ok(Method::PUT, "/api/v1/account/sso", &acct.admin, Some(body))
        .await
}

/// A browser login's first half: the authorize URL and the binding cookie.
async fn start(app: &TestApp, account: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/api/v1/sso/start",
        None,
        Some(json!({ "account": account })),
    )
    .await
}

fn callback_body(binding: &str, back: &url::Url) -> Value {
    let q: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    let mut b = json!({ "binding": binding, "state": q["state"] });
    for k in ["code", "iss", "error", "error_description"] {
        if let Some(v) = q.get(k) {
            b[k] = v.clone().into();
        }
    }
    b
}

async fn complete(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/api/v1/sso/complete", None, Some(body))
        .await
}

/// A whole browser login as `login` (password `<login>-pw`, `otp` "123456" or "").
async fn sso_login(
    app: &TestApp,
    op: &Op,
    account: &str,
    login: &str,
    otp: &str,
) -> (StatusCode, Value) {
    let (s, started) = start(app, account).await;
    assert_eq!(s, StatusCode::OK, "start: {started}");
    let back = sign_in_at_provider(
        op,
        started["authorize_url"].as_str().expect("url"),
        login,
        otp,
    )
    .await;
    complete(
        app,
        callback_body(started["binding"].as_str().expect("binding"), &back),
    )
    .await
}

/// The reasons of the account's `sso.refused` entries, oldest first.
async fn refusals(app: &TestApp, acct: &common::Account) -> Vec<String> {
    let v = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=sso.refused",
            &acct.admin,
            None,
        )
        .await;
    let mut out: Vec<(i64, String)> = v
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            assert_eq!(e["result"], "denied", "{e}");
            (
                e["seq"].as_i64().expect("seq"),
                e["details"]["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, r)| r).collect()
}

async fn actions(app: &TestApp, acct: &common::Account, prefix: &str) -> Vec<Value> {
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/audit?action={prefix}"),
            &acct.admin,
            None,
        )
        .await;
    v.as_array().expect("entries").clone()
}

async fn login_tokens(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM auth_tokens WHERE kind = 'login'")
        .fetch_one(&app.state.store.pool)
        .await
        .expect("count")
}

async fn group(app: &TestApp, acct: &common::Account, name: &str) -> String {
    let g = app
        .ok(
            Method::POST,
            "/api/v1/groups",
            &acct.admin,
            Some(json!({"name": name})),
        )
        .await;
    g["id"].as_str().expect("id").to_string()
}

async fn members(app: &TestApp, acct: &common::Account, group: &str) -> Vec<String> {
    let g = app
        .ok(
            Method::GET,
            &format!("/api/v1/groups/{group}"),
            &acct.admin,
            None,
        )
        .await;
    g["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("id").to_string())
        .collect()
}

async fn code_flow_creates_and_matches_users_with_mapped_groups_and_role(app: TestApp) {
    let Some(op) = start_op("code_flow_creates_and_matches_users", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    let ops = group(&app, &acct, "plant-ops").await;
    let manual = group(&app, &acct, "manual").await;
    let got = set_provider(&app, &acct, settings(&op, json!({"label": "Plant IdP"}))).await;
    assert_eq!(got["client_secret_set"], true);
    assert_eq!(got["redirect_uri"], REDIRECT_URI);
    assert!(
        !got.to_string().contains(CLIENT_SECRET),
        "the secret is never shown: {got}"
    );
    let stored: String = sqlx::query_scalar("SELECT client_secret FROM sso_providers")
        .fetch_one(&app.state.store.pool)
        .await
        .expect("stored");
    assert!(stored.starts_with("sealed:v1:"), "sealed at rest");
    let shown = app
        .ok(Method::GET, "/api/v1/account/sso", &acct.admin, None)
        .await;
    assert!(!shown.to_string().contains(CLIENT_SECRET));
    for rule in [
        json!({"claim_value": "plant-ops", "group_id": ops}),
        json!({"claim_value": "drawbridge-admins", "role": "session_admin"}),
    ] {
        app.ok(
            Method::POST,
            "/api/v1/account/sso/rules",
            &acct.admin,
            Some(rule),
        )
        .await;
    }
    let (s, info) = app
        .call(Method::GET, "/api/v1/sso/provider?account=acme", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        info,
        json!({"enabled": true, "required": false, "label": "Plant IdP"})
    );

    let (s, login) = sso_login(&app, &op, "acme", "alice", "").await;
    assert_eq!(s, StatusCode::OK, "{login}");
    assert_eq!(login["stage"], "complete");
    let token = login["token"].as_str().expect("token").to_string();
    let me = app.ok(Method::GET, "/api/v1/me", &token, None).await;
    assert_eq!(me["user"]["username"], "alice");
    assert_eq!(me["user"]["role"], "session_admin");
    let alice = me["user"]["id"].as_str().expect("id").to_string();
    assert_eq!(members(&app, &acct, &ops).await, vec![alice.clone()]);
    let created = actions(&app, &acct, "sso.user_created").await;
    assert_eq!(created.len(), 1);
    let logins = actions(&app, &acct, "sso.login").await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["details"]["subject"], "alice-0001");
    assert_eq!(logins[0]["details"]["jit"], true);
    let stored: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
            .bind(&alice)
            .fetch_optional(&app.state.store.pool)
            .await
            .expect("user");
    assert!(
        !stored.expect("hash").starts_with("$argon2"),
        "an SSO user has no password"
    );
    // A manual membership is the admin's, not the rules'.
    app.ok(
        Method::PUT,
        &format!("/api/v1/groups/{manual}/members/{alice}"),
        &acct.admin,
        None,
    )
    .await;

    // The same subject again: the same user, no new one.
    let (s, again) = sso_login(&app, &op, "acme", "alice", "").await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let me = app
        .ok(
            Method::GET,
            "/api/v1/me",
            again["token"].as_str().expect("t"),
            None,
        )
        .await;
    assert_eq!(me["user"]["id"], alice.as_str());
    assert_eq!(actions(&app, &acct, "sso.user_created").await.len(), 1);

    // Taken out of the provider's groups: the mapped group and role go at the next login.
    op.set_groups("alice", &["viewers"]).await;
    let (s, third) = sso_login(&app, &op, "acme", "alice", "").await;
    assert_eq!(s, StatusCode::OK, "{third}");
    let me = app
        .ok(
            Method::GET,
            "/api/v1/me",
            third["token"].as_str().expect("t"),
            None,
        )
        .await;
    assert_eq!(
        me["user"]["role"], "user",
        "back to the role from before the rule"
    );
    assert!(members(&app, &acct, &ops).await.is_empty());
    assert_eq!(members(&app, &acct, &manual).await, vec![alice.clone()]);
    let changes = actions(&app, &acct, "sso.mapping_changed").await;
    assert!(
        changes
            .iter()
            .any(|c| c["details"]["removed"] == json!([ops])
                && c["details"]["role_from"] == "session_admin"
                && c["details"]["role_to"] == "user"),
        "{changes:?}"
    );
    // Logins made under the old role ended with it.
    let (s, _) = app.get("/api/v1/me", &token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Every change of the settings and rules is on the record, without the secret.
    let changed = actions(&app, &acct, "sso.").await;
    assert!(
        changed
            .iter()
            .any(|e| e["action"] == "sso.provider_changed")
    );
    assert_eq!(
        changed
            .iter()
            .filter(|e| e["action"] == "sso.rules_changed")
            .count(),
        2
    );
    assert!(
        !changed
            .iter()
            .any(|e| e.to_string().contains(CLIENT_SECRET))
    );
}

async fn jit_off_refuses_unknown_subjects_and_linked_users_get_in(app: TestApp) {
    let Some(op) = start_op("jit_off_refuses_unknown_subjects", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({"jit": false}))).await;
    let before = login_tokens(&app).await;
    let (s, v) = sso_login(&app, &op, "acme", "carol", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["code"], "login_failed");
    assert_eq!(login_tokens(&app).await, before, "no token");
    assert_eq!(refusals(&app, &acct).await, vec!["not_provisioned"]);
    assert_eq!(app.count("users").await, 1, "no user was made");

    // An admin links an existing user to the subject: then it signs in as that user.
    let (carol, _) = app.user(&acct, "carol-local", "user").await;
    app.ok(
        Method::POST,
        "/api/v1/account/sso/identities",
        &acct.admin,
        Some(json!({"user_id": carol, "subject": "carol-0003"})),
    )
    .await;
    let (s, v) = sso_login(&app, &op, "acme", "carol", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let me = app
        .ok(
            Method::GET,
            "/api/v1/me",
            v["token"].as_str().expect("t"),
            None,
        )
        .await;
    assert_eq!(me["user"]["id"], carol.as_str());
    assert!(
        actions(&app, &acct, "sso.mapping_changed")
            .await
            .iter()
            .any(|e| e["details"]["linked"]["subject"] == "carol-0003")
    );
}

async fn disabled_users_stay_refused(app: TestApp) {
    let Some(op) = start_op("disabled_users_stay_refused", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let (s, v) = sso_login(&app, &op, "acme", "bob", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let me = app
        .ok(
            Method::GET,
            "/api/v1/me",
            v["token"].as_str().expect("t"),
            None,
        )
        .await;
    let bob = me["user"]["id"].as_str().expect("id").to_string();
    // A password lockout (anyone can cause one) does not stop SSO.
    for _ in 0..6 {
        let (s, _) = app.login("acme", "bob", "Wrong-Password-1").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let u = app
        .ok(
            Method::GET,
            &format!("/api/v1/users/{bob}"),
            &acct.admin,
            None,
        )
        .await;
    assert!(u["locked_until"].is_string(), "locked: {u}");
    let (s, v) = sso_login(&app, &op, "acme", "bob", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.ok(
        Method::PATCH,
        &format!("/api/v1/users/{bob}"),
        &acct.admin,
        Some(json!({"disabled": true})),
    )
    .await;
    let before = login_tokens(&app).await;
    let (s, v) = sso_login(&app, &op, "acme", "bob", "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(login_tokens(&app).await, before);
    assert_eq!(refusals(&app, &acct).await, vec!["user_disabled"]);
}

async fn required_mode_refuses_passwords_except_the_break_glass_admin(app: TestApp) {
    let Some(op) = start_op("required_mode_refuses_passwords", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    app.user(&acct, "anna", "user").await;
    // Required without a break-glass admin is refused.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/account/sso",
            Some(&acct.admin),
            Some(settings(&op, json!({"mode": "required"}))),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (anna_id, _) = (
        app.ok(Method::GET, "/api/v1/users", &acct.admin, None)
            .await,
        (),
    );
    let anna_id = anna_id
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "anna")
        .expect("anna")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Only an enabled admin can be the break-glass user.
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/account/sso",
            Some(&acct.admin),
            Some(settings(
                &op,
                json!({"mode": "required", "break_glass_user_id": anna_id}),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    set_provider(
        &app,
        &acct,
        settings(
            &op,
            json!({"mode": "required", "break_glass_user_id": acct.admin_id}),
        ),
    )
    .await;

    // The right password looks like a wrong one (no oracle); the record says why.
    let (s, right) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{right}");
    let (_, wrong) = app.login("acme", "anna", "Wrong-Password-1").await;
    assert_eq!(right, wrong);
    let failed = actions(&app, &acct, "login.failed").await;
    assert!(
        failed
            .iter()
            .any(|e| e["details"]["reason"] == "single sign-on required")
    );

    // The break-glass admin gets in, loudly.
    let (s, v) = app.login("acme", "admin", PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let loud = actions(&app, &acct, "auth.break_glass").await;
    assert_eq!(loud.len(), 1);
    assert_eq!(loud[0]["actor"], format!("user:{}", acct.admin_id));
    let notes = app
        .ok(Method::GET, "/api/v1/notifications", &acct.admin, None)
        .await;
    assert!(
        notes
            .as_array()
            .expect("notes")
            .iter()
            .any(|n| n["kind"] == "break_glass"),
        "{notes}"
    );
    // SSO still works for everyone else.
    let (s, v) = sso_login(&app, &op, "acme", "bob", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, info) = app
        .call(Method::GET, "/api/v1/sso/provider?account=acme", None, None)
        .await;
    assert_eq!(info["required"], true);
}

async fn the_providers_amr_stands_in_for_totp_only_when_allowed(app: TestApp) {
    let Some(op) = start_op("amr_stands_in_for_totp", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": {"require_totp": true}})),
    )
    .await;
    set_provider(&app, &acct, settings(&op, json!({"amr_mfa": true}))).await;
    // A second factor at the provider: complete.
    let (s, v) = sso_login(&app, &op, "acme", "alice", "123456").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "complete");
    // Password only at the provider: the account's TOTP is still asked for.
    let (s, v) = sso_login(&app, &op, "acme", "bob", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "totp_enrollment_required");
    let logins = actions(&app, &acct, "sso.login").await;
    assert!(logins.iter().any(|e| e["details"]["mfa_by_amr"] == true
        && e["details"]["amr"] == json!(["pwd", "otp", "mfa"])));
    // Not allowed by the account: the provider's amr does not count.
    set_provider(&app, &acct, settings(&op, json!({"amr_mfa": false}))).await;
    let (s, v) = sso_login(&app, &op, "acme", "alice", "123456").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "totp_enrollment_required");
}

async fn the_device_grant_logs_the_cli_in(app: TestApp) {
    let Some(op) = start_op("the_device_grant_logs_the_cli_in", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let (s, d) = app
        .call(
            Method::POST,
            "/api/v1/sso/device/start",
            None,
            Some(json!({"account": "acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let poll = json!({"poll_token": d["poll_token"]});
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/sso/device/poll",
            None,
            Some(poll.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "pending");
    op.approve_device(d["user_code"].as_str().expect("code"), "bob", "")
        .await;
    let mut login = Value::Null;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/sso/device/poll",
                None,
                Some(poll.clone()),
            )
            .await;
        if s == StatusCode::OK {
            login = v;
            break;
        }
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    assert_eq!(login["stage"], "complete", "{login}");
    let me = app
        .ok(
            Method::GET,
            "/api/v1/me",
            login["token"].as_str().expect("t"),
            None,
        )
        .await;
    assert_eq!(me["user"]["username"], "bob");
    let logins = actions(&app, &acct, "sso.login").await;
    assert_eq!(logins[0]["details"]["kind"], "device");
    // The poll token is spent.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = login_tokens(&app).await;
    let (s, v) = app
        .call(Method::POST, "/api/v1/sso/device/poll", None, Some(poll))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(login_tokens(&app).await, before);
    assert_eq!(refusals(&app, &acct).await, vec!["state_replayed"]);
}

/// Each bad answer is refused with its reason on the record, and makes no token.
async fn bad_answers_are_refused_audited_and_make_no_token(app: TestApp) {
    let Some(op) = start_op("bad_answers_are_refused", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let mut expected = Vec::new();
    let before = login_tokens(&app).await;

    // Tampered ID tokens, through the real provider's token endpoint.
    for (mode, reason) in [
        ("aud", "wrong_audience"),
        ("iss", "wrong_issuer"),
        ("expired", "token_expired"),
        ("nonce", "nonce_mismatch"),
        ("none", "unsigned_token"),
        ("badsig", "bad_signature"),
    ] {
        let (_, started) = start(&app, "acme").await;
        let back = sign_in_at_provider(
            &op,
            started["authorize_url"].as_str().expect("u"),
            "alice",
            "",
        )
        .await;
        op.tamper(mode).await;
        let (s, v) = complete(
            &app,
            callback_body(started["binding"].as_str().expect("b"), &back),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{mode}: {v}");
        assert_eq!(v["code"], "login_failed", "{mode}: {v}");
        expected.push(reason.to_string());
    }

    // Another browser's binding, an answer naming another issuer, a provider's error.
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    let (s, _) = complete(&app, callback_body("dbb_someone-else", &back)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    expected.push("browser_mismatch".into());
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    let mut body = callback_body(started["binding"].as_str().expect("b"), &back);
    body["iss"] = "https://evil.example".into();
    let (s, _) = complete(&app, body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    expected.push("issuer_mismatch".into());
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    let mut body = callback_body(started["binding"].as_str().expect("b"), &back);
    body.as_object_mut().expect("o").remove("code");
    body["error"] = "access_denied".into();
    let (s, _) = complete(&app, body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    expected.push("idp_error".into());
    assert_eq!(login_tokens(&app).await, before, "no refusal made a token");

    // A good login; its callback replayed is refused by us; its code replayed
    // in another flow is refused by the provider.
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    let good = callback_body(started["binding"].as_str().expect("b"), &back);
    let (s, v) = complete(&app, good.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let after_good = login_tokens(&app).await;
    let (s, _) = complete(&app, good.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    expected.push("state_replayed".into());
    let (_, other) = start(&app, "acme").await;
    let other_url = url::Url::parse(other["authorize_url"].as_str().expect("u")).expect("url");
    let other_state: String = other_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    let mut replay = good.clone();
    replay["state"] = other_state.into();
    replay["binding"] = other["binding"].clone();
    let (s, v) = complete(&app, replay).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    expected.push("token_error:invalid_grant".into());
    // A state nobody made.
    let mut unknown = good.clone();
    unknown["state"] = "made-up".into();
    let (s, _) = complete(&app, unknown).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(login_tokens(&app).await, after_good);

    assert_eq!(refusals(&app, &acct).await, expected);

    // The configured issuer is not the one the provider states: refused at discovery.
    let localhost = op.issuer.replace("127.0.0.1", "localhost");
    set_provider(
        &app,
        &acct,
        json!({
            "issuer": localhost, "client_id": CLIENT_ID, "mode": "optional", "jit": true,
        }),
    )
    .await;
    let (s, v) = start(&app, "acme").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/account/sso/test",
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    expected.push("discovery_failed".into());
    assert_eq!(refusals(&app, &acct).await, expected);

    // Back to the right issuer: the test call describes the provider.
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let t = app
        .ok(Method::POST, "/api/v1/account/sso/test", &acct.admin, None)
        .await;
    assert_eq!(t["issuer"], op.issuer.as_str());
    assert_eq!(t["device_grant"], true);
    assert_eq!(t["signing_algs"], json!(["RS256"]));

    // A flow older than ten minutes is refused (last: the clock moves on for good).
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    app.clock().advance(11 * 60);
    let (s, _) = complete(
        &app,
        callback_body(started["binding"].as_str().expect("b"), &back),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    expected.push("flow_expired".into());
    assert_eq!(refusals(&app, &acct).await, expected);
    assert_eq!(login_tokens(&app).await, after_good);
}

async fn an_expired_code_is_refused(app: TestApp) {
    let Some(op) = start_op("an_expired_code_is_refused", 1) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let before = login_tokens(&app).await;
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (s, v) = complete(
        &app,
        callback_body(started["binding"].as_str().expect("b"), &back),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        refusals(&app, &acct).await,
        vec!["token_error:invalid_grant"]
    );
    assert_eq!(login_tokens(&app).await, before);
}

async fn concurrent_callbacks_with_one_state_make_exactly_one_token(app: TestApp) {
    let Some(op) = start_op("concurrent_callbacks_with_one_state", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    let before = login_tokens(&app).await;
    let (_, started) = start(&app, "acme").await;
    let back = sign_in_at_provider(
        &op,
        started["authorize_url"].as_str().expect("u"),
        "alice",
        "",
    )
    .await;
    let body = callback_body(started["binding"].as_str().expect("b"), &back);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let router = app.app.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::builder()
                .method(Method::POST)
                .uri("/api/v1/sso/complete")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .expect("request");
            router.oneshot(req).await.expect("infallible").status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let s = t.await.expect("task");
        if s == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(ok, 1, "exactly one callback wins");
    assert_eq!(login_tokens(&app).await, before + 1);
    let refused = refusals(&app, &acct).await;
    assert_eq!(refused.len(), 29);
    assert!(refused.iter().all(|r| r == "state_replayed"), "{refused:?}");
}

async fn settings_are_bounded_and_for_admins(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, user) = app.user(&acct, "anna", "user").await;
    let base = json!({
        "issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s", "mode": "optional",
    });
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/account/sso",
            Some(&user),
            Some(base.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (k, v) in [
        ("issuer", json!("http://idp.example.com")),
        ("issuer", json!("https://idp.example.com/?a=b")),
        ("client_id", json!("x".repeat(300))),
        ("client_id", json!("")),
        ("mode", json!("sometimes")),
        ("scopes", json!(vec!["a"; 17])),
        ("unknown_field", json!(1)),
    ] {
        let mut b = base.clone();
        b[k] = v;
        let (s, r) = app
            .call(
                Method::PUT,
                "/api/v1/account/sso",
                Some(&acct.admin),
                Some(b),
            )
            .await;
        assert!(s == StatusCode::BAD_REQUEST, "{k}: {s} {r}");
    }
    // The first time needs a secret.
    let mut b = base.clone();
    b.as_object_mut().expect("o").remove("client_secret");
    let (s, _) = app
        .call(
            Method::PUT,
            "/api/v1/account/sso",
            Some(&acct.admin),
            Some(b.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.ok(Method::PUT, "/api/v1/account/sso", &acct.admin, Some(base))
        .await;
    // Later it is kept when omitted.
    let v = app
        .ok(Method::PUT, "/api/v1/account/sso", &acct.admin, Some(b))
        .await;
    assert_eq!(v["client_secret_set"], true);
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/account/sso/rules",
            Some(&acct.admin),
            Some(json!({"claim_value": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a rule gives something");
    let r = app
        .ok(
            Method::POST,
            "/api/v1/account/sso/rules",
            &acct.admin,
            Some(json!({"claim_value": "x", "role": "auditor"})),
        )
        .await;
    let rules = app
        .ok(Method::GET, "/api/v1/account/sso/rules", &acct.admin, None)
        .await;
    assert_eq!(rules.as_array().expect("rules").len(), 1);
    app.ok(
        Method::DELETE,
        &format!(
            "/api/v1/account/sso/rules/{}",
            r["id"].as_str().expect("id")
        ),
        &acct.admin,
        None,
    )
    .await;
    // A rule to a group goes with the group; another account's group is not found.
    let g = group(&app, &acct, "ops").await;
    app.ok(
        Method::POST,
        "/api/v1/account/sso/rules",
        &acct.admin,
        Some(json!({"claim_value": "ops", "group_id": g})),
    )
    .await;
    app.ok(
        Method::DELETE,
        &format!("/api/v1/groups/{g}"),
        &acct.admin,
        None,
    )
    .await;
    let rules = app
        .ok(Method::GET, "/api/v1/account/sso/rules", &acct.admin, None)
        .await;
    assert_eq!(rules, json!([]));
    let other = app.account("other").await;
    let theirs = group(&app, &other, "theirs").await;
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/account/sso/rules",
            Some(&acct.admin),
            Some(json!({"claim_value": "ops", "group_id": theirs})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.ok(Method::DELETE, "/api/v1/account/sso", &acct.admin, None)
        .await;
    let (s, _) = app.get("/api/v1/account/sso", &acct.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Without a provider, an SSO start is refused (and an unknown account looks the same).
    let (s, _) = start(&app, "acme").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = start(&app, "nobody").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, info) = app
        .call(
            Method::GET,
            "/api/v1/sso/provider?account=nobody",
            None,
            None,
        )
        .await;
    assert_eq!(info["enabled"], false);
}

async fn rights_follow_the_provider_at_each_refresh_and_a_refused_refresh_ends_the_login(
    app: TestApp,
) {
    let Some(op) = start_op("rights_follow_the_provider_at_each_refresh", 60) else {
        return;
    };
    let acct = app.account("acme").await;
    let ops = group(&app, &acct, "plant-ops").await;
    set_provider(&app, &acct, settings(&op, json!({}))).await;
    app.ok(
        Method::POST,
        "/api/v1/account/sso/rules",
        &acct.admin,
        Some(json!({"claim_value": "plant-ops", "group_id": ops})),
    )
    .await;
    let (s, v) = sso_login(&app, &op, "acme", "alice", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    let me = app.ok(Method::GET, "/api/v1/me", &token, None).await;
    let alice = me["user"]["id"].as_str().expect("id").to_string();
    assert_eq!(members(&app, &acct, &ops).await, vec![alice.clone()]);
    assert_eq!(
        app.count("sso_sessions").await,
        1,
        "the refresh token is kept"
    );
    let stored: String = sqlx::query_scalar("SELECT refresh_token FROM sso_sessions")
        .fetch_one(&app.state.store.pool)
        .await
        .expect("stored");
    assert!(stored.starts_with("sealed:v1:"), "sealed at rest");

    // Nothing is due yet.
    let now = app.state.now();
    assert_eq!(
        drawbridge_server::sso::refresh::refresh_due(&app.state, now)
            .await
            .expect("refresh"),
        0
    );
    // Taken out of the provider group: the next refresh takes the group away.
    op.set_groups("alice", &[]).await;
    let due = now + drawbridge_server::sso::refresh::REFRESH_SECS;
    assert_eq!(
        drawbridge_server::sso::refresh::refresh_due(&app.state, due)
            .await
            .expect("refresh"),
        1
    );
    assert!(members(&app, &acct, &ops).await.is_empty());
    let changes = actions(&app, &acct, "sso.mapping_changed").await;
    assert!(
        changes
            .iter()
            .any(|c| c["details"]["removed"] == json!([ops])),
        "{changes:?}"
    );
    app.ok(Method::GET, "/api/v1/me", &token, None).await;

    // The provider refuses the refresh token (revoked there): the login ends.
    let token_id: String = sqlx::query_scalar("SELECT token_id FROM sso_sessions")
        .fetch_one(&app.state.store.pool)
        .await
        .expect("session");
    let rt = app
        .state
        .store
        .unseal(
            &drawbridge_server::sso::refresh::context(&token_id),
            &stored,
        )
        .expect("unseal");
    let r = reqwest::Client::new()
        .post(format!("{}/token/revocation", op.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", rt.as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .expect("revoke at the provider");
    assert!(r.status().is_success(), "{}", r.status());
    let due = app.state.now() + 2 * drawbridge_server::sso::refresh::REFRESH_SECS;
    drawbridge_server::sso::refresh::refresh_due(&app.state, due)
        .await
        .expect("refresh");
    let (s, _) = app.get("/api/v1/me", &token).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the login ended with the provider's refusal"
    );
    let ended = actions(&app, &acct, "sso.refresh_revoked").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["details"]["reason"], "token_error:invalid_grant");
    assert_eq!(app.count("sso_sessions").await, 0);
}

store_tests!(
    code_flow_creates_and_matches_users_with_mapped_groups_and_role,
    jit_off_refuses_unknown_subjects_and_linked_users_get_in,
    disabled_users_stay_refused,
    required_mode_refuses_passwords_except_the_break_glass_admin,
    the_providers_amr_stands_in_for_totp_only_when_allowed,
    the_device_grant_logs_the_cli_in,
    bad_answers_are_refused_audited_and_make_no_token,
    an_expired_code_is_refused,
    concurrent_callbacks_with_one_state_make_exactly_one_token,
    settings_are_bounded_and_for_admins,
    rights_follow_the_provider_at_each_refresh_and_a_refused_refresh_ends_the_login,
);
