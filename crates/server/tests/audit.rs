//! The audit log: hash chain verification detects edits, deletions and
//! truncation; exports filter and format; every change is on the record.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use serde_json::json;

store_tests!(
    the_database_itself_refuses_to_edit_or_delete_audit_entries,
    an_intact_chain_verifies_and_every_tampering_is_found_at_its_sequence_number,
    exports_filter_by_time_actor_device_and_action_in_json_lines_and_csv,
    chains_are_per_account_and_concurrent_appends_keep_them_intact,
    refused_enrolments_are_audited_in_the_keys_account_coalesced_per_device,
    audit_pages_with_a_cursor_both_ways_and_says_when_more_entries_match,
    an_incremental_check_reads_only_new_entries_and_still_finds_their_tampering,
);

async fn verify(app: &TestApp, account: &str) -> (bool, Option<i64>) {
    let v = drawbridge_server::audit::verify(&app.state.store, account)
        .await
        .unwrap();
    (v.ok, v.first_broken_seq)
}

async fn the_database_itself_refuses_to_edit_or_delete_audit_entries(app: TestApp) {
    let acct = app.account("acme").await;
    app.device(&acct, "press").await;
    let pool = &app.state.store.pool;
    let before = app.count("audit_log").await;
    assert!(before >= 2);
    let update = sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE account_id = $1")
        .bind(&acct.id)
        .execute(pool)
        .await;
    assert!(update.is_err(), "an audit entry was edited");
    let delete = sqlx::query("DELETE FROM audit_log WHERE account_id = $1")
        .bind(&acct.id)
        .execute(pool)
        .await;
    assert!(delete.is_err(), "audit entries were deleted");
    if app.state.store.backend == drawbridge_server::db::Backend::Postgres {
        let truncate = sqlx::query("TRUNCATE audit_log").execute(pool).await;
        assert!(truncate.is_err(), "the audit log was truncated");
    }
    assert_eq!(app.count("audit_log").await, before);
    assert_eq!(verify(&app, &acct.id).await, (true, None));
    // Appending goes on, and opening the store again keeps the guard (no error either).
    app.device(&acct, "press-2").await;
    assert!(app.count("audit_log").await > before);
    app.reopen_store().await;
    let again = sqlx::query("DELETE FROM audit_log").execute(pool).await;
    assert!(again.is_err());
}

async fn an_intact_chain_verifies_and_every_tampering_is_found_at_its_sequence_number(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    for i in 0..5 {
        app.device(&acct, &format!("press-{i}")).await;
    }
    let v = app
        .ok(Method::GET, "/api/v1/audit/verify", &acct.admin, None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
    let n = v["entries"].as_i64().unwrap();
    assert!(n >= 8);
    let pool = &app.state.store.pool;
    // Someone with the database owner's rights lifts the guard first.
    app.lift_audit_guard().await;
    // Edit an entry in the middle.
    sqlx::query("UPDATE audit_log SET result = 'failed' WHERE account_id = $1 AND seq = 4")
        .bind(&acct.id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(verify(&app, &acct.id).await, (false, Some(4)));
    let v = app
        .ok(Method::GET, "/api/v1/audit/verify", &acct.admin, None)
        .await;
    assert_eq!(v["first_broken_seq"], 4);
    sqlx::query("UPDATE audit_log SET result = 'ok' WHERE account_id = $1 AND seq = 4")
        .bind(&acct.id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(verify(&app, &acct.id).await, (true, None));
    // Delete one in the middle.
    sqlx::query("DELETE FROM audit_log WHERE account_id = $1 AND seq = 3")
        .bind(&acct.id)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(verify(&app, &acct.id).await, (false, Some(3)));
    // A recomputed hash cannot hide an edit either: the next link breaks.
    let app2 = TestApp::sqlite().await;
    let acct2 = app2.account("acme").await;
    app2.device(&acct2, "press").await;
    app2.device(&acct2, "press-2").await;
    app2.lift_audit_guard().await;
    let pool2 = &app2.state.store.pool;
    sqlx::query("UPDATE audit_log SET hash = '00' WHERE account_id = $1 AND seq = 2")
        .bind(&acct2.id)
        .execute(pool2)
        .await
        .unwrap();
    assert_eq!(verify(&app2, &acct2.id).await, (false, Some(2)));
    // Truncation: removing the newest entries is found through the chain head.
    let app3 = TestApp::sqlite().await;
    let acct3 = app3.account("acme").await;
    app3.device(&acct3, "press").await;
    app3.lift_audit_guard().await;
    let last: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE account_id = $1")
        .bind(&acct3.id)
        .fetch_one(&app3.state.store.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE account_id = $1 AND seq = $2")
        .bind(&acct3.id)
        .bind(last)
        .execute(&app3.state.store.pool)
        .await
        .unwrap();
    assert_eq!(verify(&app3, &acct3.id).await, (false, Some(last)));
}

async fn exports_filter_by_time_actor_device_and_action_in_json_lines_and_csv(app: TestApp) {
    let acct = app.account("acme").await;
    let (anna, anna_token) = app.user(&acct, "anna", "user").await;
    let (d1, _) = app.device(&acct, "press-1").await;
    app.clock().advance(20 * 60);
    let cut = app.clock().now() - time::Duration::seconds(1);
    let (d2, _) = app.device(&acct, "press-2").await;
    let all = app
        .ok(Method::GET, "/api/v1/audit", &acct.admin, None)
        .await;
    let all = all.as_array().unwrap();
    assert!(all.iter().all(|e| e["account_id"] == acct.id.as_str()));
    let by_device = app
        .ok(
            Method::GET,
            &format!("/api/v1/audit?device={d2}"),
            &acct.admin,
            None,
        )
        .await;
    let by_device = by_device.as_array().unwrap();
    assert_eq!(by_device.len(), 1);
    assert_eq!(by_device[0]["action"], "device.create");
    assert!(!by_device[0]["details"].to_string().contains(&d1));
    let by_actor = app
        .ok(
            Method::GET,
            &format!("/api/v1/audit?actor=user:{anna}"),
            &acct.admin,
            None,
        )
        .await;
    assert!(
        by_actor
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == format!("user:{anna}"))
    );
    assert!(
        !by_actor.as_array().unwrap().is_empty(),
        "anna's login is there"
    );
    let from = cut
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = app
        .ok(
            Method::GET,
            &format!("/api/v1/audit?action=device.&from={from}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(
        later.as_array().unwrap().len(),
        1,
        "only the device created after the clock moved"
    );
    let (s, body) = app
        .get(
            "/api/v1/audit?format=jsonl&action=device.create",
            &acct.admin,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = body
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in lines {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(e["action"], "device.create");
    }
    // The action is a literal prefix: `_` and `%` are not wildcards (actions
    // such as `web.certificate_changed` hold an underscore of their own).
    for (pattern, want) in [
        ("device.creat_", 0),
        ("device.cr%", 0),
        ("%25", 0),
        ("device.create", 2),
    ] {
        let v = app
            .ok(
                Method::GET,
                &format!("/api/v1/audit?action={pattern}"),
                &acct.admin,
                None,
            )
            .await;
        assert_eq!(v.as_array().unwrap().len(), want, "{pattern}");
    }
    let (s, body) = app
        .get("/api/v1/audit?format=csv&action=device.create", &acct.admin)
        .await;
    assert_eq!(s, StatusCode::OK);
    let csv = body.as_str().unwrap();
    assert!(
        csv.starts_with("account_id,seq,time,actor,action,object,result,source,details,hash,repeated,repeated_last\n")
    );
    assert_eq!(csv.lines().count(), 3);
    let (s, v) = app.get("/api/v1/audit?format=xml", &acct.admin).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid"))
    );
    let (s, _) = app.get("/api/v1/audit", &anna_token).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Exports are themselves recorded.
    let v = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=audit.export",
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2);
}

async fn chains_are_per_account_and_concurrent_appends_keep_them_intact(app: TestApp) {
    let a = app.account("acme").await;
    let b = app.account("globex").await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let (tok, name) = if i % 2 == 0 {
            (a.admin.clone(), format!("a-{i}"))
        } else {
            (b.admin.clone(), format!("b-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            app.post("/api/v1/devices", &tok, json!({"name": name}))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    for acct in [&a, &b] {
        let v = app
            .ok(Method::GET, "/api/v1/audit/verify", &acct.admin, None)
            .await;
        assert_eq!(v["ok"], true, "{v}");
        let seqs: Vec<i64> = app
            .ok(Method::GET, "/api/v1/audit", &acct.admin, None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "gapless per account"
        );
    }
}

fn keypair() -> ring::signature::Ed25519KeyPair {
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// An enrolment request with `key`, signed by `signer`, presenting `shown`'s public key.
fn enroll_body(
    key: &str,
    signer: &ring::signature::Ed25519KeyPair,
    shown: &ring::signature::Ed25519KeyPair,
) -> serde_json::Value {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::KeyPair;
    let mut msg = drawbridge_proto::api::ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(key.as_bytes());
    json!({
        "activation_key": key,
        "public_key": STANDARD.encode(shown.public_key().as_ref()),
        "signature": STANDARD.encode(signer.sign(&msg).as_ref()),
    })
}

async fn refusals(app: &TestApp, admin: &str) -> Vec<serde_json::Value> {
    let all = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=device.enroll",
            admin,
            None,
        )
        .await;
    all.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "denied")
        .cloned()
        .collect()
}

async fn refused_enrolments_are_audited_in_the_keys_account_coalesced_per_device(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, key) = app.device(&acct, "press-1").await;
    let enroll = |body| app.call(Method::POST, "/api/v1/enroll", None, Some(body));

    // The right key with a signature that does not match the presented identity key.
    let (s, _) = enroll(enroll_body(&key, &keypair(), &keypair())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = refusals(&app, &acct.admin).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["object"], format!("device:{device}"));
    assert_eq!(r[0]["details"]["reason"], "signature");

    // Enrolled; then the used key again: within the window nothing more is written,
    // however many attempts arrive at once.
    let kp = keypair();
    let (s, v) = enroll(enroll_body(&key, &kp, &kp)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let app = app.clone();
        let kp = keypair();
        let body = enroll_body(&key, &kp, &kp);
        tasks.push(tokio::spawn(async move {
            app.call(Method::POST, "/api/v1/enroll", None, Some(body))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(refusals(&app, &acct.admin).await.len(), 1);

    // After the window, a used key is recorded again (once), with its reason.
    app.clock()
        .advance(drawbridge_server::audit::ENROLL_REFUSAL_WINDOW + 1);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let app = app.clone();
        let kp = keypair();
        let body = enroll_body(&key, &kp, &kp);
        tasks.push(tokio::spawn(async move {
            app.call(Method::POST, "/api/v1/enroll", None, Some(body))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let r = refusals(&app, &acct.admin).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1]["details"]["reason"], "used");
    assert_eq!(r[1]["actor"], "anonymous");

    // A key nobody issued belongs to no account: no log anywhere grows.
    let before = app.count("audit_log").await;
    let kp = keypair();
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/enroll",
            None,
            Some(enroll_body("dba_not-a-key-anyone-made", &kp, &kp)),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("audit_log").await, before);
    assert_eq!(verify(&app, &acct.id).await, (true, None));
}

/// Pages of the API's audit answer: (sequence numbers, the next cursor).
async fn audit_page(app: &TestApp, admin: &str, q: &str) -> (Vec<i64>, Option<i64>) {
    let req = axum::http::Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/audit?{q}"))
        .header("authorization", format!("Bearer {admin}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(app.app.clone(), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let next = res
        .headers()
        .get("x-next-after-seq")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let seqs = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    (seqs, next)
}

async fn audit_pages_with_a_cursor_both_ways_and_says_when_more_entries_match(app: TestApp) {
    let acct = app.account("acme").await;
    for i in 0..12 {
        app.device(&acct, &format!("press-{i}")).await;
    }
    let (all, next) = audit_page(&app, &acct.admin, "").await;
    assert_eq!(next, None, "everything fits: no cursor");
    let n = all.len() as i64;
    assert!(n >= 13, "{n}");
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "oldest first by default");

    // Oldest first, 5 at a time: every entry once, in order, and the last page says so.
    let mut seen = Vec::new();
    let mut q = "limit=5".to_string();
    loop {
        let (page, next) = audit_page(&app, &acct.admin, &q).await;
        assert!(page.len() <= 5);
        seen.extend(page);
        match next {
            Some(c) => q = format!("limit=5&after_seq={c}"),
            None => break,
        }
    }
    assert_eq!(seen, all);

    // Newest first, 7 at a time.
    let mut seen = Vec::new();
    let mut q = "limit=7&order=desc".to_string();
    loop {
        let (page, next) = audit_page(&app, &acct.admin, &q).await;
        seen.extend(page);
        match next {
            Some(c) => q = format!("limit=7&order=desc&after_seq={c}"),
            None => break,
        }
    }
    let mut newest_first = all.clone();
    newest_first.reverse();
    // (Reading the audit log as JSON is not itself audited, so nothing was added.)
    assert_eq!(seen, newest_first);

    // The server's complete export takes every page.
    let q = drawbridge_proto::api::AuditQuery {
        limit: Some(3),
        ..Default::default()
    };
    let page = drawbridge_server::audit::query_page(&app.state.store, &acct.id, &q)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.next_after_seq, Some(3));
    let every =
        drawbridge_server::audit::query_all(&app.state.store, &acct.id, &Default::default())
            .await
            .unwrap();
    assert_eq!(every.len() as i64, n);

    let (s, _) = app.get("/api/v1/audit?order=sideways", &acct.admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn an_incremental_check_reads_only_new_entries_and_still_finds_their_tampering(app: TestApp) {
    let acct = app.account("acme").await;
    app.device(&acct, "press-1").await;
    let incremental = "/api/v1/audit/verify?incremental=true";
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["ok"], true, "{v}");
    let checked = v["entries"].as_i64().unwrap();
    app.device(&acct, "press-2").await;
    app.device(&acct, "press-3").await;
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["entries"].as_i64().unwrap() > checked,
        "counts the whole chain: {v}"
    );
    let pool = &app.state.store.pool;
    app.lift_audit_guard().await;
    // An entry written after the last check is edited: the incremental check finds it.
    app.device(&acct, "press-4").await;
    let newest: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE account_id = $1")
        .bind(&acct.id)
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET result = 'failed' WHERE account_id = $1 AND seq = $2")
        .bind(&acct.id)
        .bind(newest)
        .execute(pool)
        .await
        .unwrap();
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_seq"], newest);
    sqlx::query("UPDATE audit_log SET result = 'ok' WHERE account_id = $1 AND seq = $2")
        .bind(&acct.id)
        .bind(newest)
        .execute(pool)
        .await
        .unwrap();
    // An old entry is edited: pages check only what is new, a full check (the
    // default, the CLI's `audit verify`) reads the whole chain and finds it.
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["ok"], true, "{v}");
    sqlx::query("UPDATE audit_log SET result = 'failed' WHERE account_id = $1 AND seq = 2")
        .bind(&acct.id)
        .execute(pool)
        .await
        .unwrap();
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["ok"], true, "the page view reads only new entries: {v}");
    let v = app
        .ok(Method::GET, "/api/v1/audit/verify", &acct.admin, None)
        .await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_seq"], 2);
    // After a broken result nothing is cached: the next page view checks in full.
    let v = app.ok(Method::GET, incremental, &acct.admin, None).await;
    assert_eq!(v["first_broken_seq"], 2, "{v}");
}
