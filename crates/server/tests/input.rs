//! Hostile input: malformed, oversized, unknown or mistyped requests get a 4xx
//! with a stable code and change nothing. Also: the OpenAPI document and the
//! router describe the same routes.

use crate::common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::TestApp;
use serde_json::{Value, json};

store_tests!(
    bad_json_unknown_fields_wrong_types_and_oversized_bodies_are_refused_without_change,
    every_documented_route_exists_and_unknown_routes_get_json_errors,
    every_route_refuses_a_body_that_is_not_a_json_object_and_changes_nothing,
    approving_or_refusing_a_session_not_waiting_for_approval_is_the_same_conflict,
    a_first_account_setup_link_dies_once_any_account_exists,
    a_setup_link_for_another_account_works_once_and_expires_within_an_hour,
    the_openapi_document_states_the_bounds_the_server_enforces,
);

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(c) = ctype {
        req = req.header("content-type", c);
    }
    app.send(req.body(Body::from(body)).unwrap()).await
}

/// method, path, content type, body, expected status, expected code
type Case = (
    Method,
    String,
    Option<&'static str>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

async fn snapshot(app: &TestApp) -> Vec<i64> {
    let mut v = Vec::new();
    for t in [
        "accounts",
        "users",
        "devices",
        "groups_",
        "pools",
        "grants",
        "sessions",
        "auth_tokens",
        "activation_keys",
    ] {
        v.push(app.count(t).await);
    }
    v
}

async fn bad_json_unknown_fields_wrong_types_and_oversized_bodies_are_refused_without_change(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let before = snapshot(&app).await;
    let json_ct = Some("application/json");
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            None,
            br#"{"name":"x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":"x","evil":1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":42}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":""}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            format!(r#"{{"name":"{}"}}"#, "x".repeat(65)).into_bytes(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":"x","firewall":[{"address":"300.1.1.1","protocol":"tcp"}]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":"x","firewall":[{"address":"10.0.0.1","protocol":"tcp","ports":"0"}]}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            br#"{"name":"x","nat":[{"real":"192.168.1.0/24","virtual_subnet":"10.0.0.0/16"}]}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            format!(
                r#"{{"name":"x","lan_subnets":[{}]}}"#,
                vec!["\"10.0.0.0/24\""; 300].join(",")
            )
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::POST,
            "/api/v1/devices".into(),
            json_ct,
            format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::PATCH,
            format!("/api/v1/devices/{device}"),
            json_ct,
            br#"{"firewall":"all"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::PATCH,
            "/api/v1/account".into(),
            json_ct,
            br#"{"settings":{"lockout_threshold":0}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::PATCH,
            "/api/v1/account".into(),
            json_ct,
            br#"{"settings":{"lockout_threshold":-1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json_ct,
            br#"{"username":"a b","role":"user","password":"Blue-Tractor-42"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json_ct,
            br#"{"username":"ab","role":"root","password":"Blue-Tractor-42"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json_ct,
            format!(
                r#"{{"username":"ab","role":"user","password":"{}Aa1!"}}"#,
                "x".repeat(300)
            )
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "password_policy",
        ),
        (
            Method::POST,
            "/api/v1/sessions".into(),
            json_ct,
            br#"{"name":"s","devices":[],"users":[]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::POST,
            "/api/v1/grants".into(),
            json_ct,
            br#"{"group_id":"g","pool_id":"p","level":"superuser"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/audit?limit=abc".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/audit?from=yesterday".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/audit?bogus=1".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/sessions?state=flying".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (m, path, ct, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        let (s, v) = raw(&app, m.clone(), &path, &acct.admin, ct, body).await;
        assert_eq!(s, status, "{m} {path} {shown}: {v}");
        assert_eq!(v["code"], code, "{m} {path} {shown}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Unauthenticated calls and junk tokens are refused the same way.
    for tok in ["", "x", &"A".repeat(5000), "dbs_forged"] {
        let (s, v) = raw(&app, Method::GET, "/api/v1/devices", tok, None, vec![]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["code"], "unauthenticated");
    }
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"account": "acme", "username": "x".repeat(10_000), "password": "p"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(snapshot(&app).await, before, "nothing changed");
    let v = app
        .ok(Method::GET, "/api/v1/audit/verify", &acct.admin, None)
        .await;
    assert_eq!(v["ok"], true);
}

async fn every_documented_route_exists_and_unknown_routes_get_json_errors(app: TestApp) {
    let (_, doc) = drawbridge_server::api::routes();
    let served = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(served.0, StatusCode::OK);
    assert_eq!(
        served.1,
        serde_json::to_value(&doc).unwrap(),
        "the served document is the router's"
    );
    let mut n = 0;
    for (path, item) in &doc.paths.paths {
        let ops = [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PUT, item.put.is_some()),
            (Method::PATCH, item.patch.is_some()),
            (Method::DELETE, item.delete.is_some()),
        ];
        for (m, present) in ops {
            if !present {
                continue;
            }
            n += 1;
            let concrete = path
                .replace("{id}", "x")
                .replace("{user_id}", "y")
                .replace("{device_id}", "z");
            let (s, v) = app.call(m.clone(), &concrete, None, None).await;
            let fallback = s == StatusCode::NOT_FOUND && v["message"] == "no such route";
            assert!(
                !fallback && s != StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is documented but not routed ({s} {v})"
            );
        }
    }
    assert!(n >= 45, "documented operations: {n}");
    let (s, v) = app
        .call(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let res = tower::ServiceExt::oneshot(
        app.app.clone(),
        Request::builder()
            .uri("/healthz")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for h in [
        "x-content-type-options",
        "cache-control",
        "referrer-policy",
        "x-frame-options",
    ] {
        assert!(res.headers().contains_key(h), "{h}");
    }
}

/// Counts that move when anything is created, ended, revoked, disabled or
/// recorded: a refused request must leave all of them as they were.
async fn fingerprint(app: &TestApp) -> Vec<(String, i64)> {
    let mut v = Vec::new();
    for t in [
        "accounts",
        "users",
        "users WHERE disabled <> 0",
        "devices",
        "devices WHERE pending_approval <> 0",
        "groups_",
        "group_members",
        "pools",
        "pool_devices",
        "grants",
        "sessions",
        "sessions WHERE state = 'ended'",
        "sessions WHERE state = 'active'",
        "session_devices",
        "tunnels",
        "auth_tokens",
        "auth_tokens WHERE revoked_at IS NOT NULL",
        "activation_keys",
        "fleet_keys",
        "logbook",
        "setup_tokens",
        "audit_log",
    ] {
        v.push((t.to_string(), app.count(t).await));
    }
    v
}

async fn every_route_refuses_a_body_that_is_not_a_json_object_and_changes_nothing(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let (user, user_token) = app.user(&acct, "ute", "user").await;
    let (group, pool) = app
        .grant(&acct, &[&user], &[&device], "full", json!([]))
        .await;
    let grant = app
        .ok(Method::GET, "/api/v1/grants", &acct.admin, None)
        .await[0]["id"]
        .as_str()
        .expect("grant id")
        .to_string();
    let session = app.session(&acct.admin, &device, &[&user]).await;
    let api_token = app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "ci", "expires_in_days": 30})),
        )
        .await["info"]["id"]
        .as_str()
        .expect("token id")
        .to_string();
    let fleet_key = app
        .ok(
            Method::POST,
            "/api/v1/fleet-keys",
            &acct.admin,
            Some(json!({"name": "line", "expires_in_days": 30})),
        )
        .await["info"]["id"]
        .as_str()
        .expect("fleet key id")
        .to_string();
    let before = fingerprint(&app).await;

    let (_, doc) = drawbridge_server::api::routes();
    let mut n = 0;
    for (path, item) in &doc.paths.paths {
        // HTTP to a device's web service carries whatever body the device takes
        // (browser access; crates/edge/tests/web_access.rs): not a JSON route.
        if path.contains("/http/{target}/") {
            continue;
        }
        let ops = [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PUT, item.put.is_some()),
            (Method::PATCH, item.patch.is_some()),
            (Method::DELETE, item.delete.is_some()),
        ];
        // Real objects, so a route that ignored the body would act on them.
        let id = [
            ("/api/v1/devices/", &device),
            ("/api/v1/users/", &user),
            ("/api/v1/groups/", &group),
            ("/api/v1/pools/", &pool),
            ("/api/v1/grants/", &grant),
            ("/api/v1/sessions/", &session),
            ("/api/v1/tokens/", &api_token),
            ("/api/v1/fleet-keys/", &fleet_key),
        ]
        .iter()
        .find(|(p, _)| path.starts_with(p))
        .map_or("x", |(_, id)| id.as_str());
        let concrete = path
            .replace("{id}", id)
            .replace("{user_id}", &user)
            .replace("{device_id}", &device)
            .replace("{name}", "speed");
        assert!(
            !concrete.contains('{'),
            "no value for a parameter of {path}"
        );
        for (m, present) in ops {
            if !present {
                continue;
            }
            for body in [
                &br#"["x"]"#[..],
                br#"["press-2", [], [], []]"#,
                b"[]",
                b"\"x\"",
                b"null",
                b"true",
                b"42",
            ] {
                n += 1;
                for token in [&acct.admin, &user_token] {
                    let (s, v) = raw(
                        &app,
                        m.clone(),
                        &concrete,
                        token,
                        Some("application/json"),
                        body.to_vec(),
                    )
                    .await;
                    let shown = String::from_utf8_lossy(body);
                    assert_eq!(s, StatusCode::BAD_REQUEST, "{m} {path} {shown}: {v}");
                    assert_eq!(v["code"], "bad_request", "{m} {path} {shown}: {v}");
                    assert!(
                        v["message"]
                            .as_str()
                            .is_some_and(|t| t.contains("JSON object")),
                        "{m} {path} {shown}: {v}"
                    );
                }
            }
        }
    }
    assert!(n >= 45 * 7, "requests: {n}");
    assert_eq!(fingerprint(&app).await, before, "nothing changed");
    // The same objects still answer to proper requests: both tokens are live.
    for token in [&acct.admin, &user_token] {
        let (s, v) = app.get("/api/v1/me", token).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = app
        .get(&format!("/api/v1/sessions/{session}"), &acct.admin)
        .await;
    assert_eq!(
        (s, v["state"].clone()),
        (StatusCode::OK, json!("prepared")),
        "{v}"
    );
}

async fn approving_or_refusing_a_session_not_waiting_for_approval_is_the_same_conflict(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let (_, approver) = app.user(&acct, "approver", "admin").await;
    let prepared = app.session(&acct.admin, &device, &[&acct.admin_id]).await;
    let active = app.session(&acct.admin, &device, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{active}/start"),
        &acct.admin,
        None,
    )
    .await;
    let before = fingerprint(&app).await;
    for (id, state) in [(&prepared, "prepared"), (&active, "active")] {
        for approve in [false, true] {
            let (s, v) = app
                .post(
                    &format!("/api/v1/sessions/{id}/approve"),
                    &approver,
                    json!({ "approve": approve }),
                )
                .await;
            assert_eq!(
                (s, v["code"].clone()),
                (StatusCode::CONFLICT, json!("conflict")),
                "approve={approve} on a {state} session: {v}"
            );
            assert_eq!(
                v["message"], "the session is not waiting for approval",
                "{v}"
            );
        }
        let (_, v) = app
            .get(&format!("/api/v1/sessions/{id}"), &acct.admin)
            .await;
        assert_eq!(v["state"], state, "{v}");
    }
    assert_eq!(fingerprint(&app).await, before, "nothing changed");
}

async fn setup(app: &TestApp, token: &str, account: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/api/v1/setup",
        None,
        Some(json!({"token": token, "account": account, "admin_username": "admin", "admin_password": common::PASSWORD})),
    )
    .await
}

async fn a_first_account_setup_link_dies_once_any_account_exists(app: TestApp) {
    use drawbridge_server::bootstrap::{SetupKind, new_setup_link};
    // Two links printed while no account exists (two starts, or two replicas).
    let first = new_setup_link(&app.state).await.unwrap();
    let second = new_setup_link(&app.state).await.unwrap();
    assert_eq!(first.kind, SetupKind::FirstAccount);
    assert_eq!(second.kind, SetupKind::FirstAccount);
    let (s, v) = setup(&app, &first.token, "acme").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = setup(&app, &second.token, "intruder").await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("invalid_code")),
        "{v}"
    );
    // A first-account link left unused while an account exists (as a server
    // of an earlier version left them): refused.
    let third = {
        let token = drawbridge_server::secret::new_token("dbx_");
        sqlx::query(
            "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(drawbridge_server::secret::token_hash(&token))
        .bind(app.state.now())
        .bind(app.state.now() + 3600)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
        token
    };
    let (s, v) = setup(&app, &third, "intruder").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "an account exists: {v}");
    let name = drawbridge_proto::Name::try_from("other".to_string()).unwrap();
    let user = drawbridge_proto::Username::try_from("root".to_string()).unwrap();
    // `init` (create_account) uses up the first-account links made before it.
    let fourth = drawbridge_server::secret::new_token("dbx_");
    sqlx::query(
        "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(drawbridge_server::secret::token_hash(&fourth))
    .bind(app.state.now())
    .bind(app.state.now() + 3600)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
    let policy = drawbridge_proto::AccountSettings::default().password_policy;
    let password = drawbridge_server::bootstrap::new_password(&policy, &user, common::PASSWORD)
        .await
        .unwrap();
    let mut tx = app.state.store.begin().await.unwrap();
    drawbridge_server::bootstrap::create_account(
        &mut tx,
        app.state.now(),
        &name,
        &user,
        &password,
        "local",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let unused: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM setup_tokens WHERE used_at IS NULL")
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(
        unused, 0,
        "creating an account used up every first-account link"
    );
    let (s, _) = setup(&app, &fourth, "intruder").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.count("accounts").await,
        2,
        "acme and other, no intruder"
    );
}

async fn a_setup_link_for_another_account_works_once_and_expires_within_an_hour(app: TestApp) {
    use drawbridge_server::bootstrap::{MORE_SETUP_TTL, SetupKind, new_setup_link};
    app.account("acme").await;
    let link = new_setup_link(&app.state).await.unwrap();
    assert_eq!(link.kind, SetupKind::AnotherAccount);
    let left = link.expires_at - app.state.now();
    assert!(
        (MORE_SETUP_TTL - 2..=MORE_SETUP_TTL).contains(&left),
        "{left}"
    );
    const { assert!(MORE_SETUP_TTL <= 3600) };
    let (s, v) = setup(&app, &link.token, "second").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = setup(&app, &link.token, "third").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "once");
    // Such a link is no first-account link: no first-account form of it works.
    let forged = link.token.replacen("dbxa_", "dbx_", 1);
    let (s, _) = setup(&app, &forged, "third").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let late = new_setup_link(&app.state).await.unwrap();
    app.clock().advance(MORE_SETUP_TTL + 1);
    let (s, _) = setup(&app, &late.token, "late").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "expired");
    assert_eq!(app.count("accounts").await, 2);
}

async fn the_openapi_document_states_the_bounds_the_server_enforces(app: TestApp) {
    let acct = app.account("acme").await;
    let (s, doc) = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    let prop = |schema: &str, field: &str| schemas[schema]["properties"][field].clone();
    // An audit entry that stands for repeats says how many, first and last.
    assert!(
        prop("AuditEntry", "repeated").is_object(),
        "{}",
        schemas["AuditEntry"]
    );
    assert!(prop("AuditRepeated", "count").is_object());
    // Names: 1 to 64 characters; user names with their pattern.
    assert_eq!(schemas["Name"]["minLength"], 1, "{}", schemas["Name"]);
    assert_eq!(schemas["Name"]["maxLength"], 64);
    assert_eq!(schemas["LongText"]["maxLength"], 4096);
    assert_eq!(schemas["Username"]["maxLength"], 64);
    assert_eq!(
        schemas["Username"]["pattern"],
        drawbridge_proto::text::USERNAME_PATTERN
    );
    assert!(schemas["PortRange"]["pattern"].is_string());
    // Lists are bounded.
    for (schema, field) in [
        ("CreateDevice", "lan_subnets"),
        ("CreateDevice", "nat"),
        ("CreateDevice", "firewall"),
        ("CreateGrant", "targets"),
        ("PrepareSession", "devices"),
        ("PrepareSession", "users"),
        ("SessionDevice", "targets"),
    ] {
        assert_eq!(
            prop(schema, field)["maxItems"],
            256,
            "{schema}.{field}: {}",
            prop(schema, field)
        );
    }
    assert_eq!(prop("PrepareSession", "devices")["minItems"], 1);
    // Enums, password policy minimums, codes.
    assert_eq!(
        schemas["Role"]["enum"],
        json!(["admin", "session_admin", "user", "auditor"])
    );
    assert_eq!(
        schemas["GrantLevel"]["enum"],
        json!(["full", "restricted", "monitor"])
    );
    assert_eq!(prop("PasswordPolicy", "min_length")["minimum"], 8);
    assert_eq!(prop("PasswordPolicy", "min_classes")["maximum"], 4);
    assert_eq!(prop("AccountSettings", "lockout_threshold")["minimum"], 1);
    assert_eq!(prop("CreateUser", "password")["minLength"], 8);
    assert_eq!(prop("CreateUser", "password")["maxLength"], 256);
    assert_eq!(prop("TotpCode", "code")["pattern"], "^[0-9]{6}$");
    assert_eq!(prop("CreateApiToken", "expires_in_days")["maximum"], 365);

    // The stated bounds are the server's: at the bound accepted, past it refused.
    let max_name = schemas["Name"]["maxLength"].as_u64().unwrap() as usize;
    let (s, v) = app
        .post(
            "/api/v1/devices",
            &acct.admin,
            json!({"name": "n".repeat(max_name)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = app
        .post(
            "/api/v1/devices",
            &acct.admin,
            json!({"name": "n".repeat(max_name + 1)}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let max_items = prop("CreateDevice", "lan_subnets")["maxItems"]
        .as_u64()
        .unwrap() as usize;
    let nets = |n: usize| {
        (0..n)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect::<Vec<_>>()
    };
    let (s, v) = app
        .post(
            "/api/v1/devices",
            &acct.admin,
            json!({"name": "many", "lan_subnets": nets(max_items)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = app
        .post(
            "/api/v1/devices",
            &acct.admin,
            json!({"name": "too-many", "lan_subnets": nets(max_items + 1)}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let min_pw = prop("CreateUser", "password")["minLength"]
        .as_u64()
        .unwrap() as usize;
    assert!(min_pw <= 8, "no policy allows shorter ones");
    let (s, _) = app
        .post(
            "/api/v1/users",
            &acct.admin,
            json!({"username": "not a match", "role": "user", "password": common::PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "outside the pattern");
}
