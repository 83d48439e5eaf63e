//! Notifications by e-mail and webhook, with real receivers on loopback: mails
//! through a real SMTP server (aiosmtpd: STARTTLS or implicit TLS, AUTH), webhooks
//! to a real HTTP server that checks their signatures itself; retries, backoff and
//! the disabling of a dead endpoint with the clock advanced; nothing lost across a
//! restart or a dead replica's lease; two replicas never sending one delivery.

use crate::common;
use crate::outbox_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_server::outbox::mail::Security;
use drawbridge_server::outbox::queue::{self, Channel};
use drawbridge_server::outbox::{self, EventKind, Message};
use drawbridge_server::state::AppState;
use outbox_harness::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn a_lockout_is_mailed_to_the_admins_and_the_listed_recipients_over_starttls_with_auth(
    app: TestApp,
) {
    let Some(smtp) = Smtp::start("127.0.0.3", Security::Starttls, "lockout mail") else {
        return;
    };
    configure(&app.state, Some(&smtp), false);
    let acct = app.account("acme").await;
    set_email(&app, &acct, &acct.admin_id, "admin@acme.test").await;
    app.user(&acct, "operator", "user").await;
    let v = app
        .ok(
            Method::PUT,
            "/api/v1/account/notifications",
            &acct.admin,
            Some(json!({"recipients": {"user_lockout": ["Security@Acme.test", "security@acme.test", "bounce@acme.test"]}})),
        )
        .await;
    assert_eq!(
        v["recipients"]["user_lockout"],
        json!(["Security@Acme.test", "bounce@acme.test"]),
        "repeats dropped: {v}"
    );
    assert_eq!(v["email_configured"], true);
    lock_out(&app, &acct, "operator").await;
    assert_eq!(drain(&app.state).await, 3);
    let mut mails = smtp.received();
    assert_eq!(mails.len(), 2, "{mails:?}");
    mails.sort_by_key(|m| m["rcpt_tos"].to_string());
    let rcpts: Vec<&Value> = mails.iter().map(|m| &m["rcpt_tos"][0]).collect();
    assert_eq!(
        rcpts,
        [&json!("Security@Acme.test"), &json!("admin@acme.test")]
    );
    for m in &mails {
        assert_eq!(
            m["rcpt_tos"].as_array().unwrap().len(),
            1,
            "one address each"
        );
        assert_eq!(m["mail_from"], "noreply@drawbridge.test");
        assert_eq!(m["tls"], true, "STARTTLS was used");
        assert_eq!(m["authenticated"], true, "AUTH was used");
        assert_eq!(m["subject"], "Drawbridge: user operator was locked");
        let text = m["text"].as_str().unwrap();
        assert!(
            text.contains("User operator was locked for 15 minutes after 5 failed logins"),
            "{text}"
        );
        assert!(
            m["message_id"]
                .as_str()
                .unwrap()
                .contains("@drawbridge.test>")
        );
        assert!(m["attachments"].as_array().unwrap().is_empty());
    }
    // Sent once: nothing is due any more, and the rows say so.
    assert_eq!(drain(&app.state).await, 0);
    assert_eq!(smtp.received().len(), 2);
    // The refused address is given up at once (a permanent error), the others sent.
    let d = deliveries(&app, "user_lockout").await;
    let states: Vec<(&str, i64)> = d.iter().map(|(_, t, a)| (t.as_str(), *a)).collect();
    assert_eq!(
        states,
        [
            ("Security@Acme.test sent", 1),
            ("admin@acme.test sent", 1),
            ("bounce@acme.test failed", 1)
        ],
        "{d:?}"
    );
    // The settings change is on the audit chain; the deliveries are not.
    let audit = app
        .get("/api/v1/audit?action=notifications.update", &acct.admin)
        .await
        .1;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
}

async fn the_monthly_activity_report_is_mailed_once_over_implicit_tls_with_its_csv(app: TestApp) {
    let Some(smtp) = Smtp::start("127.0.0.4", Security::Tls, "activity report") else {
        return;
    };
    configure(&app.state, Some(&smtp), false);
    let acct = app.account("acme").await;
    set_email(&app, &acct, &acct.admin_id, "admin@acme.test").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let s = app.session(&acct.admin, &device, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/start"),
        &acct.admin,
        None,
    )
    .await;
    // A stand-in for the edge's session key (this test is not about the edge).
    sqlx::query("UPDATE session_devices SET edge_public_key = $1 WHERE session_id = $2")
        .bind(key(9))
        .bind(&s)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/join"),
        &acct.admin,
        Some(json!({ "public_key": key(1) })),
    )
    .await;
    app.clock().advance(2 * 3600);
    let admin = app.token(&acct.name, "admin").await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/end"),
        &admin,
        None,
    )
    .await;
    // Into the next month.
    let now = app.clock().now();
    let (_, this_month) = outbox::sweeps::month_bounds(now);
    let next = outbox::sweeps::month_bounds(this_month + time::Duration::days(40)).1;
    app.clock().advance((next - now).whole_seconds() + 3600);
    let t = app.state.now();
    assert_eq!(
        outbox::sweeps::monthly_reports(&app.state.store, t)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        outbox::sweeps::monthly_reports(&app.state.store, t)
            .await
            .unwrap(),
        0
    );
    let other = app.reopen_store().await;
    assert_eq!(
        outbox::sweeps::monthly_reports(&other, t + 60)
            .await
            .unwrap(),
        0,
        "another replica does not send it again"
    );
    assert_eq!(drain(&app.state).await, 1);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    assert_eq!(m["rcpt_tos"], json!(["admin@acme.test"]));
    assert_eq!(m["tls"], true);
    let label = format!("{}-{:02}", now.year(), u8::from(now.month()));
    assert_eq!(m["subject"], format!("Drawbridge: activity report {label}"));
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains("1 connections by 1 users to 1 devices, 2 h 00 min in all"),
        "{text}"
    );
    let a = &m["attachments"][0];
    assert_eq!(a["filename"], format!("drawbridge-activity-{label}.csv"));
    assert_eq!(a["content_type"], "text/csv");
    let csv = a["content"].as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("user,device,session,started_at,ended_at,duration_seconds"));
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&cells[..3], ["admin", "press-1", "maintenance"], "{csv}");
    let secs: i64 = cells[5].parse().unwrap();
    assert!((7200..7210).contains(&secs), "two hours: {secs}");
}

fn key(n: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

async fn webhooks_are_signed_and_the_receiver_verifies_them_and_approvers_are_told(app: TestApp) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.5").await;
    let acct = app.account("acme").await;
    let (approver, _) = app.user(&acct, "approver", "session_admin").await;
    set_email(&app, &acct, &acct.admin_id, "admin@acme.test").await;
    set_email(&app, &acct, &approver, "approver@acme.test").await;
    app.user(&acct, "operator", "user").await;
    let (id, secret) = webhook(
        &app,
        &acct,
        &hooks.url,
        json!(["user_lockout", "approval_waiting", "user_lockout"]),
    )
    .await;
    assert!(secret.starts_with("whsec_"));
    let list = app.get("/api/v1/account/webhooks", &acct.admin).await.1;
    assert_eq!(
        list[0]["events"],
        json!(["user_lockout", "approval_waiting"])
    );
    assert!(
        !list.to_string().contains(&secret[6..]),
        "the secret is shown once"
    );
    // A session waiting for approval (dual control) and a lockout.
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": {"dual_control": true}})),
    )
    .await;
    let (device, _) = app.device(&acct, "press-1").await;
    let s = app.session(&acct.admin, &device, &[&acct.admin_id]).await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "pending_approval");
    lock_out(&app, &acct, "operator").await;
    // The approvers are mailed, except whoever started the session.
    let d = deliveries(&app, "approval_waiting").await;
    assert_eq!(
        d.iter()
            .map(|(c, t, _)| format!("{c} {t}"))
            .collect::<Vec<_>>(),
        [
            "email approver@acme.test pending".to_string(),
            format!("webhook {id} pending")
        ]
    );
    // The server's own worker sends them.
    outbox::worker::spawn(app.state.clone());
    let mut calls = Vec::new();
    for _ in 0..200 {
        calls = hooks.calls();
        if calls.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls.len(), 2, "{calls:?}");
    let mut types = Vec::new();
    for c in &calls {
        assert!(c.verify(&secret), "signature checks out: {c:?}");
        assert!(
            !c.verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "not with another secret"
        );
        let mut tampered = c.clone();
        tampered.body.push(b' ');
        assert!(!tampered.verify(&secret), "not for another body");
        assert!(c.id.starts_with("msg_"));
        let ts: i64 = c.timestamp.parse().expect("unix seconds");
        assert!((ts - app.state.now()).abs() < 300);
        let body = c.json();
        assert_eq!(body["data"]["event_id"], c.id, "the id names the event");
        assert_eq!(body["data"]["account_id"], acct.id);
        types.push(body["type"].as_str().unwrap().to_string());
        if body["type"] == "approval_waiting" {
            assert_eq!(body["data"]["details"]["session_id"], s);
            assert_eq!(body["data"]["details"]["devices"], json!(["press-1"]));
        } else {
            assert_eq!(body["data"]["details"]["username"], "operator");
            assert_eq!(body["data"]["details"]["failures"], 5);
        }
    }
    types.sort();
    assert_eq!(types, ["approval_waiting", "user_lockout"]);
    let w = app
        .get(&format!("/api/v1/account/webhooks/{id}"), &acct.admin)
        .await
        .1;
    assert!(w["last_success_at"].is_string(), "{w}");
    assert!(w["failing_since"].is_null());
}

async fn a_dead_endpoint_is_retried_with_backoff_then_disabled_and_the_admins_told(app: TestApp) {
    configure(&app.state, None, true);
    let acct = app.account("acme").await;
    set_email(&app, &acct, &acct.admin_id, "admin@acme.test").await;
    app.user(&acct, "operator", "user").await;
    let (id, _) = webhook(
        &app,
        &acct,
        &dead_url("127.0.0.6").await,
        json!(["user_lockout"]),
    )
    .await;
    lock_out(&app, &acct, "operator").await;
    let next_at = || async {
        sqlx::query_as::<_, (i64, i64, String, Option<String>)>(
            "SELECT next_at, attempts, state, last_error FROM outbox_deliveries WHERE channel = 'webhook' AND target = $1",
        )
        .bind(&id)
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap()
    };
    let first_failure = app.state.now();
    let mut attempts = 0;
    loop {
        let now = app.state.now();
        assert_eq!(outbox::worker::deliver_due(&app.state).await.unwrap(), 1);
        attempts += 1;
        let enabled: i64 = sqlx::query_scalar("SELECT enabled FROM webhooks WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
        if enabled == 0 {
            break;
        }
        let (due, n, state, err) = next_at().await;
        assert_eq!((n, state.as_str()), (attempts, "pending"));
        assert!(err.unwrap().contains("connect"), "the reason is kept");
        let wait = due - now;
        let backoff = queue::backoff(attempts);
        assert!(
            (backoff..=backoff + backoff / 10).contains(&wait),
            "retry {attempts} after {wait} s"
        );
        assert_eq!(
            outbox::worker::deliver_due(&app.state).await.unwrap(),
            0,
            "not due before its time"
        );
        app.clock().advance(wait);
        assert!(attempts < 200, "never disabled");
    }
    // Disabled once it had failed for five days, not before.
    let failed_for = app.state.now() - first_failure;
    assert!(
        (5 * 86400..5 * 86400 + 4000).contains(&failed_for),
        "{failed_for}"
    );
    assert!(attempts > 100, "retried all along: {attempts}");
    let admin = app.token(&acct.name, "admin").await;
    let w = app
        .get(&format!("/api/v1/account/webhooks/{id}"), &admin)
        .await
        .1;
    assert_eq!(w["disabled_reason"], "failing for 5 days");
    let (_, _, state, _) = next_at().await;
    assert_eq!(state, "dropped");
    let notes = app.get("/api/v1/notifications", &admin).await.1;
    assert!(
        notes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "webhook"),
        "{notes}"
    );
    let d = deliveries(&app, "webhook_disabled").await;
    assert_eq!(d.len(), 1, "the admin is mailed: {d:?}");
    assert_eq!(d[0].1, "admin@acme.test pending");
    let audit = app
        .get("/api/v1/audit?action=webhook.disable", &admin)
        .await
        .1;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    // No more calls; enabling again clears the record.
    assert_eq!(drain(&app.state).await, 0);
    let w = app
        .ok(
            Method::PATCH,
            &format!("/api/v1/account/webhooks/{id}"),
            &admin,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(
        (w["enabled"].clone(), w["failing_since"].clone()),
        (json!(true), Value::Null)
    );
}

async fn nothing_is_lost_across_a_restart_and_a_dead_replicas_lease_runs_out(app: TestApp) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.7").await;
    let acct = app.account("acme").await;
    app.user(&acct, "operator", "user").await;
    let (_, secret) = webhook(
        &app,
        &acct,
        &hooks.url,
        json!(["user_lockout", "alarm_raised"]),
    )
    .await;
    lock_out(&app, &acct, "operator").await;
    // A replica claims the delivery and dies before sending it.
    let claimed = queue::claim(
        &app.state.store,
        "dead-replica",
        &[Channel::Webhook],
        app.state.now(),
        10,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    // Another event is queued, then the server restarts before any worker ran.
    let mut tx = app.state.store.begin().await.unwrap();
    let msg = Message::new(EventKind::AlarmRaised, "High pressure", "Press 1: 231 bar")
        .data(json!({"tag": "pressure"}));
    let queued = outbox::enqueue(&mut tx, &acct.id, &msg, app.state.now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let restarted = AppState::new(
        app.reopen_store().await,
        app.clock().clone(),
        "https://127.0.0.1:8443".into(),
    )
    .await
    .unwrap();
    configure(&restarted, None, true);
    assert_eq!(drain(&restarted).await, 1, "the unclaimed one goes at once");
    assert_eq!(hooks.calls().len(), 1);
    assert_eq!(hooks.calls()[0].id, queued.unwrap());
    // The dead replica's lease runs out; then its delivery is sent, once.
    app.clock().advance(queue::LEASE_SECS - 5);
    assert_eq!(drain(&restarted).await, 0, "still leased");
    app.clock().advance(10);
    assert_eq!(drain(&restarted).await, 1);
    assert_eq!(drain(&restarted).await, 0);
    let calls = hooks.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].id, claimed[0].event.id);
    assert!(calls.iter().all(|c| c.verify(&secret)));
    assert_eq!(calls[1].json()["type"], "user_lockout");
}

async fn two_replicas_never_send_one_delivery_twice(app: TestApp) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.8").await;
    hooks
        .delay_ms
        .store(20, std::sync::atomic::Ordering::Relaxed);
    let acct = app.account("acme").await;
    webhook(&app, &acct, &hooks.url, json!(["alarm_raised"])).await;
    let mut tx = app.state.store.begin().await.unwrap();
    for i in 0..60 {
        let msg = Message::new(EventKind::AlarmRaised, format!("alarm {i}"), "text");
        outbox::enqueue(&mut tx, &acct.id, &msg, app.state.now())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let other = AppState::new(
        app.reopen_store().await,
        app.clock().clone(),
        "https://127.0.0.1:8443".into(),
    )
    .await
    .unwrap();
    configure(&other, None, true);
    let run = |state: AppState| async move {
        let mut n = 0;
        for _ in 0..100 {
            let k = outbox::worker::deliver_due(&state).await.unwrap();
            n += k;
            if k == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if outbox::worker::deliver_due(&state).await.unwrap() == 0 {
                    break;
                }
            }
        }
        n
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run(app.state.clone())),
        tokio::spawn(run(other.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 60, "claimed once in all ({a} + {b})");
    let calls = hooks.calls();
    let ids: std::collections::BTreeSet<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!((calls.len(), ids.len()), (60, 60), "each sent once");
    let d = deliveries(&app, "alarm_raised").await;
    assert!(
        d.iter().all(|(_, t, n)| t.ends_with(" sent") && *n == 1),
        "{d:?}"
    );
}

async fn hostile_webhook_and_recipient_input_is_refused_and_changes_nothing(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, user) = app.user(&acct, "operator", "user").await;
    let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "http://hooks.example.com/hook",
        "https://user:pw@hooks.example.com/hook",
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "not a url",
        "",
        long.as_str(),
    ] {
        let (s, v) = app
            .post(
                "/api/v1/account/webhooks",
                &acct.admin,
                json!({"url": url, "events": ["alarm_raised"]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {v}");
    }
    for body in [
        json!({"url": "https://hooks.example.com/", "events": []}),
        json!({"url": "https://hooks.example.com/", "events": ["alarm"]}),
        json!({"url": "https://hooks.example.com/", "events": ["alarm_raised"], "secret": "mine"}),
        json!({"url": "https://hooks.example.com/"}),
    ] {
        let (s, v) = app
            .post("/api/v1/account/webhooks", &acct.admin, body.clone())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let many: Vec<String> = (0..51).map(|i| format!("u{i}@acme.test")).collect();
    for body in [
        json!({"recipients": {"alarm_raised": many}}),
        json!({"recipients": {"alarm_raised": ["nobody"]}}),
        json!({"recipients": {"alarm_raised": ["a@b.c\r\nBcc: x@y.z"]}}),
        json!({"recipients": {"alarm": ["a@b.c"]}}),
        json!({"device_offline_minutes": 50000}),
        json!({"device_offline_minutes": -1}),
    ] {
        let (s, v) = app
            .call(
                Method::PUT,
                "/api/v1/account/notifications",
                Some(&acct.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (s, _) = app
        .call(
            Method::PUT,
            &format!("/api/v1/users/{}/email", acct.admin_id),
            Some(&acct.admin),
            Some(json!({"email": "not an address"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Nothing changed, nothing on the record.
    assert_eq!(app.count("webhooks").await, 0);
    assert_eq!(app.count("notification_settings").await, 0);
    let v = app
        .get("/api/v1/account/notifications", &acct.admin)
        .await
        .1;
    assert_eq!(
        (v["recipients"].clone(), v["device_offline_minutes"].clone()),
        (json!({}), json!(0))
    );
    // Admins only.
    for (m, p, b) in [
        (
            Method::GET,
            "/api/v1/account/notifications".to_string(),
            None,
        ),
        (
            Method::PUT,
            "/api/v1/account/notifications".into(),
            Some(json!({})),
        ),
        (Method::GET, "/api/v1/account/webhooks".into(), None),
        (
            Method::POST,
            "/api/v1/account/webhooks".into(),
            Some(json!({"url": "https://hooks.example.com/", "events": ["alarm_raised"]})),
        ),
        (
            Method::PUT,
            format!("/api/v1/users/{}/email", acct.admin_id),
            Some(json!({"email": "x@acme.test"})),
        ),
    ] {
        let (s, _) = app.call(m.clone(), &p, Some(&user), b).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}");
    }
    // Thirty creations at once: exactly the limit of twenty is created.
    let results = futures_util::future::join_all((0..30).map(|i| {
        app.post(
            "/api/v1/account/webhooks",
            &acct.admin,
            json!({"url": format!("https://hooks.example.com/{i}"), "events": ["alarm_raised"]}),
        )
    }))
    .await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let refused = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, refused), (20, 10), "{results:?}");
    assert_eq!(app.count("webhooks").await, 20);
    let audit = app
        .get("/api/v1/audit?action=webhook.create&limit=100", &acct.admin)
        .await
        .1;
    let ok = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok")
        .count();
    assert_eq!(ok, 20, "{audit}");
    // The OpenAPI document lists the routes and every event kind.
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .1;
    for p in [
        "/api/v1/account/notifications",
        "/api/v1/account/webhooks",
        "/api/v1/account/webhooks/{id}",
        "/api/v1/users/{id}/email",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} documented");
    }
    let kinds: Vec<&str> = doc["components"]["schemas"]["EventKind"]["enum"]
        .as_array()
        .expect("EventKind enumerated")
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "alarm_raised",
            "alarm_returned",
            "user_lockout",
            "approval_waiting",
            "device_offline",
            "device_online",
            "activity_report",
            "webhook_disabled",
            "session_started",
            "session_ended",
            "tunnel_up",
            "tunnel_down",
            "switch_changed",
            "desktop_opened",
            "desktop_ended",
        ]
    );
    // Another account can neither see nor touch them.
    let other = app.account("other").await;
    let id = app.get("/api/v1/account/webhooks", &acct.admin).await.1[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/account/webhooks/{id}");
    assert_eq!(app.get(&path, &other.admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&path, &other.admin).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _) = app
        .patch(&path, &other.admin, json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/api/v1/account/webhooks", &other.admin).await.1,
        json!([])
    );
    let (s, _) = app
        .call(
            Method::PUT,
            &format!("/api/v1/users/{}/email", acct.admin_id),
            Some(&other.admin),
            Some(json!({"email": "x@other.test"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn rotating_the_secrets_key_keeps_webhooks_working(app: TestApp) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.9").await;
    let acct = app.account("acme").await;
    let (id, secret) = webhook(&app, &acct, &hooks.url, json!(["alarm_raised"])).await;
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT secret FROM webhooks WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap()
    };
    let before = stored().await;
    assert!(
        before.starts_with("sealed:v1:") && !before.contains(&secret[6..]),
        "sealed at rest"
    );
    let new = drawbridge_server::sealed::SecretsKey::from_bytes(&[9; 32]);
    assert!(
        app.state.store.reseal(&new).await.unwrap() >= 4,
        "CA, relay, portal and the webhook"
    );
    let after = stored().await;
    assert!(after.starts_with("sealed:v1:") && after != before);
    // Restarted with the new key: the webhook is still signed with its secret.
    let store = drawbridge_server::db::Store::open_sealed(
        &app.state.store.url,
        drawbridge_server::sealed::SecretsKey::from_bytes(&[9; 32]),
    )
    .await
    .unwrap();
    let state = AppState::new(store, app.clock().clone(), "https://127.0.0.1:8443".into())
        .await
        .unwrap();
    configure(&state, None, true);
    let mut tx = state.store.begin().await.unwrap();
    outbox::enqueue(
        &mut tx,
        &acct.id,
        &Message::new(EventKind::AlarmRaised, "a", "b"),
        state.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(drain(&state).await, 1);
    let calls = hooks.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].verify(&secret));
}

async fn a_device_offline_longer_than_the_setting_is_reported_once_per_offline_period(
    app: TestApp,
) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.10").await;
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    app.ok(
        Method::PUT,
        "/api/v1/account/notifications",
        &acct.admin,
        Some(json!({"device_offline_minutes": 10, "recipients": {"device_offline": ["ops@acme.test"]}})),
    )
    .await;
    webhook(&app, &acct, &hooks.url, json!(["device_offline"])).await;
    let sweep =
        || outbox::sweeps::devices_offline(&app.state.store, app.state.started_at, app.state.now());
    assert_eq!(sweep().await.unwrap(), 0);
    app.clock().advance(9 * 60);
    assert_eq!(sweep().await.unwrap(), 0, "not yet ten minutes");
    app.clock().advance(2 * 60);
    assert_eq!(sweep().await.unwrap(), 1);
    assert_eq!(sweep().await.unwrap(), 0, "once per offline period");
    app.clock().advance(3600);
    assert_eq!(sweep().await.unwrap(), 0, "still the same period");
    // Back, then offline again: a new period.
    app.edge_state(&device, true, true).await;
    app.clock().advance(5 * 60);
    assert_eq!(sweep().await.unwrap(), 0);
    app.clock().advance(6 * 60);
    assert_eq!(sweep().await.unwrap(), 1);
    assert_eq!(
        drain(&app.state).await,
        2,
        "the webhook calls (no SMTP here)"
    );
    let calls = hooks.calls();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        let body = c.json();
        assert_eq!(body["type"], "device_offline");
        assert_eq!(body["data"]["details"]["device"], "press-1");
        assert_eq!(body["data"]["details"]["minutes"], 10);
    }
    let d = deliveries(&app, "device_offline").await;
    let mails: Vec<_> = d.iter().filter(|(c, _, _)| c == "email").collect();
    assert_eq!(mails.len(), 2, "mails wait for a server with SMTP: {d:?}");
    assert!(
        mails
            .iter()
            .all(|(_, t, n)| t == "ops@acme.test pending" && *n == 0)
    );
    // Off: nothing more.
    let admin = app.token(&acct.name, "admin").await;
    app.ok(
        Method::PUT,
        "/api/v1/account/notifications",
        &admin,
        Some(json!({})),
    )
    .await;
    app.edge_state(&device, true, true).await;
    app.clock().advance(3600);
    assert_eq!(sweep().await.unwrap(), 0);
}

async fn unsent_mail_is_given_up_after_three_days_and_old_deliveries_are_purged(app: TestApp) {
    // No SMTP server here: mails wait for a replica that has one.
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.13").await;
    let acct = app.account("acme").await;
    set_email(&app, &acct, &acct.admin_id, "admin@acme.test").await;
    app.user(&acct, "operator", "user").await;
    webhook(&app, &acct, &hooks.url, json!(["user_lockout"])).await;
    lock_out(&app, &acct, "operator").await;
    assert_eq!(drain(&app.state).await, 1, "the webhook only");
    let state = |app: &TestApp| {
        let app_state = app.state.clone();
        async move {
            let mut v: Vec<(String, String)> =
                sqlx::query_as("SELECT channel, state FROM outbox_deliveries")
                    .fetch_all(&app_state.store.pool)
                    .await
                    .unwrap();
            v.sort();
            v
        }
    };
    let pair = |c: &str, s: &str| (c.to_string(), s.to_string());
    assert_eq!(
        state(&app).await,
        [pair("email", "pending"), pair("webhook", "sent")]
    );
    app.clock().advance(3 * 86400 - 60);
    queue::purge(&app.state.store, app.state.now())
        .await
        .unwrap();
    assert_eq!(
        state(&app).await[0],
        pair("email", "pending"),
        "still in time"
    );
    app.clock().advance(120);
    queue::purge(&app.state.store, app.state.now())
        .await
        .unwrap();
    assert_eq!(
        state(&app).await,
        [pair("email", "failed"), pair("webhook", "sent")]
    );
    assert_eq!(app.count("outbox_events").await, 1);
    app.clock().advance(queue::KEEP_SECS);
    queue::purge(&app.state.store, app.state.now())
        .await
        .unwrap();
    assert_eq!(app.count("outbox_deliveries").await, 0);
    assert_eq!(app.count("outbox_events").await, 0);
}

/// The real binary with its flags: SMTP settings, private webhooks, the worker
/// started with the server (SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binary_mails_and_calls_webhooks_with_its_flags() {
    let Some(smtp) = Smtp::start("127.0.0.11", Security::Starttls, "server binary") else {
        return;
    };
    let hooks = Hooks::start("127.0.0.12").await;
    let bin = env!("CARGO_BIN_EXE_drawbridge-server");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pw = dir.path().join("admin-password");
    std::fs::write(&pw, format!("{}\n", common::PASSWORD)).unwrap();
    let init = std::process::Command::new(bin)
        .args([
            "init",
            "--account",
            "acme",
            "--admin-user",
            "admin",
            "--admin-password-file",
        ])
        .arg(&pw)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let cfg = smtp.config();
    let mut child = std::process::Command::new(bin)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-stun",
            "--no-bridge",
            "--webhook-allow-private",
        ])
        .args([
            "--smtp-host",
            &cfg.host,
            "--smtp-port",
            &cfg.port.to_string(),
        ])
        .args([
            "--smtp-security",
            "starttls",
            "--smtp-username",
            outbox_harness::SMTP_USER,
        ])
        .arg("--smtp-password-file")
        .arg(cfg.password_file.as_ref().unwrap())
        .arg("--smtp-ca-file")
        .arg(cfg.ca_file.as_ref().unwrap())
        .args(["--smtp-from", "Drawbridge <noreply@drawbridge.test>"])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = child.stdout.take().unwrap();
    let _server = Kill(child);
    let mut lines = Vec::new();
    use std::io::BufRead;
    for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
        if line == "Ready." {
            break;
        }
        lines.push(line);
    }
    let url = lines[0].rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{lines:?}");
    let banner = lines.join("\n");
    assert!(
        banner.contains(&format!("e-mail: smtp 127.0.0.11:{} (starttls)", cfg.port)),
        "{banner}"
    );
    assert!(
        banner.contains("webhooks: loopback and private addresses allowed"),
        "{banner}"
    );
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let call = |m: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut r = http.request(m, format!("{url}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let res = r.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let login = |user: &'static str, password: &'static str| {
        call(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"account": "acme", "username": user, "password": password})),
        )
    };
    let (s, v) = login("admin", common::PASSWORD).await;
    assert_eq!(s, 200, "{v}");
    let admin = v["token"].as_str().unwrap().to_string();
    let (_, me) = call(reqwest::Method::GET, "/api/v1/me", Some(&admin), None).await;
    let admin_id = me["id"]
        .as_str()
        .or(me["user"]["id"].as_str())
        .unwrap()
        .to_string();
    let put = call(
        reqwest::Method::PUT,
        &format!("/api/v1/users/{admin_id}/email"),
        Some(&admin),
        Some(json!({"email": "admin@acme.test"})),
    )
    .await;
    assert_eq!(put.0, 200, "{put:?}");
    let (s, v) = call(
        reqwest::Method::POST,
        "/api/v1/account/webhooks",
        Some(&admin),
        Some(json!({"url": hooks.url, "events": ["user_lockout"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    let (s, v) = call(
        reqwest::Method::POST,
        "/api/v1/users",
        Some(&admin),
        Some(json!({"username": "operator", "role": "user", "password": common::PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..5 {
        assert_eq!(login("operator", "Wrong-Password-1").await.0, 401);
    }
    // The server's own worker sends both within seconds.
    let mut done = false;
    for _ in 0..300 {
        if !smtp.received().is_empty() && !hooks.calls().is_empty() {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        done,
        "mail {:?}, webhook calls {:?}",
        smtp.received(),
        hooks.calls()
    );
    let mail = &smtp.received()[0];
    assert_eq!(mail["rcpt_tos"], json!(["admin@acme.test"]));
    assert_eq!(mail["subject"], "Drawbridge: user operator was locked");
    assert_eq!(mail["authenticated"], true);
    let c = &hooks.calls()[0];
    assert!(c.verify(&secret));
    assert_eq!(c.json()["type"], "user_lockout");
}

async fn a_call_the_endpoint_keeps_refusing_is_given_up_while_the_webhook_stays_enabled(
    app: TestApp,
) {
    configure(&app.state, None, true);
    let hooks = Hooks::start("127.0.0.14").await;
    *hooks.reject.lock().unwrap() = Some("poison".into());
    let acct = app.account("acme").await;
    let (id, _) = webhook(&app, &acct, &hooks.url, json!(["alarm_raised"])).await;
    let enqueue = |subject: &'static str| {
        let state = app.state.clone();
        let account = acct.id.clone();
        async move {
            let mut tx = state.store.begin().await.unwrap();
            let msg = Message::new(EventKind::AlarmRaised, subject, "text");
            outbox::enqueue(&mut tx, &account, &msg, state.now())
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    enqueue("poison").await;
    let start = app.state.now();
    let poison = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT d.state, d.attempts FROM outbox_deliveries d JOIN outbox_events e ON e.id = d.event_id WHERE e.subject = 'poison'",
        )
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap()
    };
    let mut hours = 0;
    while poison().await.0 == "pending" {
        // Other events keep getting through, so the webhook is never judged dead.
        if hours % 48 == 0 {
            enqueue("fine").await;
        }
        drain(&app.state).await;
        app.clock().advance(3600);
        hours += 1;
        assert!(hours < 24 * 8, "never given up");
    }
    let (state, attempts) = poison().await;
    assert_eq!(state, "failed");
    assert!(attempts > 50, "retried hourly: {attempts}");
    let given_up_after = app.state.now() - start;
    assert!(
        (6 * 86400..6 * 86400 + 2 * 3600 + 400).contains(&given_up_after),
        "{given_up_after}"
    );
    let enabled: i64 = sqlx::query_scalar("SELECT enabled FROM webhooks WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(enabled, 1);
    let fine = hooks
        .calls()
        .iter()
        .filter(|c| {
            !c.json()["data"]["subject"]
                .as_str()
                .unwrap()
                .contains("poison")
        })
        .count();
    assert_eq!(fine, 4, "every other event went through");
}

store_tests!(
    a_lockout_is_mailed_to_the_admins_and_the_listed_recipients_over_starttls_with_auth,
    the_monthly_activity_report_is_mailed_once_over_implicit_tls_with_its_csv,
    webhooks_are_signed_and_the_receiver_verifies_them_and_approvers_are_told,
    a_dead_endpoint_is_retried_with_backoff_then_disabled_and_the_admins_told,
    nothing_is_lost_across_a_restart_and_a_dead_replicas_lease_runs_out,
    two_replicas_never_send_one_delivery_twice,
    hostile_webhook_and_recipient_input_is_refused_and_changes_nothing,
    rotating_the_secrets_key_keeps_webhooks_working,
    a_device_offline_longer_than_the_setting_is_reported_once_per_offline_period,
    unsent_mail_is_given_up_after_three_days_and_old_deliveries_are_purged,
    a_call_the_endpoint_keeps_refusing_is_given_up_while_the_webhook_stays_enabled,
    an_alarm_raised_and_returned_on_the_edge_is_mailed_and_webhooked,
);

/// An alarm as the edge reports it (a historian record on the edge channel's
/// ingestion path) reaches the account's recipients by mail over STARTTLS and
/// its webhook, signed, when raised and again when back to normal.
async fn an_alarm_raised_and_returned_on_the_edge_is_mailed_and_webhooked(app: TestApp) {
    use drawbridge_proto::data::{AlarmTransition, BufferStatus, Record, RecordBody};
    let Some(smtp) = Smtp::start("127.0.0.15", Security::Starttls, "alarm mail") else {
        return;
    };
    configure(&app.state, Some(&smtp), true);
    let hooks = Hooks::start("127.0.0.16").await;
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "oven-2").await;
    app.ok(
        Method::PUT,
        "/api/v1/account/notifications",
        &acct.admin,
        Some(json!({"recipients": {
            "alarm_raised": ["shift@acme.test"],
            "alarm_returned": ["shift@acme.test"],
        }})),
    )
    .await;
    let (_, secret) = webhook(
        &app,
        &acct,
        &hooks.url,
        json!(["alarm_raised", "alarm_returned"]),
    )
    .await;
    let alarm = |seq: u64, transition, value: f64| Record {
        seq,
        time_ms: 1_800_000_000_000 + seq as i64 * 1000,
        tag: drawbridge_proto::TagName::try_from("zone1.temp").unwrap(),
        body: RecordBody::Alarm {
            transition,
            value: Some(value),
        },
    };
    let buffer = BufferStatus {
        stream: "s".into(),
        pending: 0,
        dropped: 0,
    };
    let records = vec![
        alarm(1, AlarmTransition::Raised, 251.5),
        alarm(2, AlarmTransition::Returned, 236.0),
    ];
    let done =
        drawbridge_server::data::ingest::records(&app.state, &acct.id, &device, buffer, records)
            .await
            .expect("ingest");
    assert_eq!(done.alarms.len(), 2);
    // One mail and one webhook call per transition.
    assert_eq!(drain(&app.state).await, 4);
    let mut mails = smtp.received();
    assert_eq!(mails.len(), 2, "{mails:?}");
    mails.sort_by_key(|m| m["subject"].to_string());
    for m in &mails {
        assert_eq!(m["rcpt_tos"], json!(["shift@acme.test"]));
        assert_eq!(m["tls"], true, "STARTTLS was used");
        let text = m["text"].as_str().unwrap();
        assert!(
            text.contains("oven-2") && text.contains("zone1.temp"),
            "{text}"
        );
    }
    let texts: Vec<&str> = mails.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert!(
        texts.iter().any(|t| t.contains("in alarm (251.5)")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("back to normal (236)")),
        "{texts:?}"
    );
    let calls = hooks.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let mut kinds = Vec::new();
    for c in &calls {
        assert!(c.verify(&secret), "signature checks out: {c:?}");
        let body = c.json();
        kinds.push(body["type"].as_str().unwrap().to_string());
        let details = &body["data"]["details"];
        assert_eq!(details["device_id"], device.as_str(), "{body}");
        assert_eq!(details["device"], "oven-2");
        assert_eq!(details["tag"], "zone1.temp");
        assert_eq!(details["alarm_id"], done.alarms[0].alarm_id.as_str());
    }
    kinds.sort();
    assert_eq!(kinds, ["alarm_raised", "alarm_returned"]);
}
