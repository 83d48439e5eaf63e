//! A session's life on the server's clock: a start only inside the validity
//! window; the end at `valid_until` (expiry), after the account's idle timeout
//! (idle_timeout) and when the edge stays offline past the grace period
//! (edge_offline) — each with its reason on the session and on the record.
//! Each runs on SQLite and PostgreSQL.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_server::background::sweep;
use drawbridge_server::sessions::EDGE_OFFLINE_GRACE_SECS;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

store_tests!(
    a_start_before_valid_from_or_after_valid_until_is_refused_and_changes_nothing,
    an_active_session_ends_at_valid_until_with_reason_expiry,
    an_idle_session_ends_with_reason_idle_timeout_and_activity_keeps_it,
    an_edge_offline_past_the_grace_period_ends_its_sessions_with_reason_edge_offline,
    a_control_plane_back_from_its_own_outage_gives_edges_the_grace_period_first,
);

fn at(app: &TestApp, offset_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(app.state.now() + offset_secs)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// Prepares a session on `device` for the account's admin, valid in the given window.
async fn prepare(
    app: &TestApp,
    acct: &common::Account,
    device: &str,
    from: Option<i64>,
    until: Option<i64>,
) -> String {
    let mut body = json!({
        "name": "maintenance",
        "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
        "users": [acct.admin_id],
    });
    if let Some(f) = from {
        body["valid_from"] = json!(at(app, f));
    }
    if let Some(u) = until {
        body["valid_until"] = json!(at(app, u));
    }
    let v = app
        .ok(Method::POST, "/api/v1/sessions", &acct.admin, Some(body))
        .await;
    v["id"].as_str().expect("id").to_string()
}

/// The same account with a fresh admin login (after the clock passed its idle timeout).
async fn relogin(app: &TestApp, acct: common::Account) -> common::Account {
    let admin = app.token(&acct.name, "admin").await;
    common::Account { admin, ..acct }
}

async fn start(app: &TestApp, acct: &common::Account, id: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/sessions/{id}/start"),
        &acct.admin,
        json!({}),
    )
    .await
}

async fn session(app: &TestApp, acct: &common::Account, id: &str) -> Value {
    app.ok(
        Method::GET,
        &format!("/api/v1/sessions/{id}"),
        &acct.admin,
        None,
    )
    .await
}

/// The reasons recorded by `session.end` entries for the session.
async fn end_reasons(app: &TestApp, acct: &common::Account, id: &str) -> Vec<String> {
    let v = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=session.end",
            &acct.admin,
            None,
        )
        .await;
    let entries = v
        .as_array()
        .cloned()
        .or_else(|| v["entries"].as_array().cloned())
        .expect("audit entries");
    entries
        .iter()
        .filter(|e| e["object"] == format!("session:{id}"))
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn a_start_before_valid_from_or_after_valid_until_is_refused_and_changes_nothing(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;

    let later = prepare(&app, &acct, &device, Some(600), Some(7200)).await;
    let (s, v) = start(&app, &acct, &later).await;
    assert_eq!(s, StatusCode::CONFLICT, "before valid_from: {v}");
    assert_eq!(session(&app, &acct, &later).await["state"], "prepared");

    let short = prepare(&app, &acct, &device, None, Some(120)).await;
    app.clock().advance(121);
    // The device is still heard from; only the window is wrong.
    app.edge_state(&device, true, true).await;
    let (s, v) = start(&app, &acct, &short).await;
    assert_eq!(s, StatusCode::CONFLICT, "after valid_until: {v}");
    let v = session(&app, &acct, &short).await;
    assert_ne!(v["state"], "active", "{v}");
    assert!(v["started_at"].is_null(), "never started: {v}");

    // Inside its window the first one starts.
    app.clock().advance(600 - 121 + 1);
    app.edge_state(&device, true, true).await;
    let (s, v) = start(&app, &acct, &later).await;
    assert_eq!(s, StatusCode::OK, "inside the window: {v}");
}

async fn an_active_session_ends_at_valid_until_with_reason_expiry(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let id = prepare(&app, &acct, &device, None, Some(600)).await;
    let (s, v) = start(&app, &acct, &id).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The clock is wall time plus an offset: stay well clear of the boundary.
    app.clock().advance(570);
    app.edge_state(&device, true, true).await;
    assert!(!sweep(&app.state).await.unwrap().contains(&id));
    assert_eq!(session(&app, &acct, &id).await["state"], "active");

    app.clock().advance(30);
    assert!(sweep(&app.state).await.unwrap().contains(&id));
    let v = session(&app, &acct, &id).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "expiry");
    assert_eq!(end_reasons(&app, &acct, &id).await, vec!["expiry"]);
}

async fn an_idle_session_ends_with_reason_idle_timeout_and_activity_keeps_it(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let idle_secs =
        i64::from(drawbridge_proto::AccountSettings::default().session_idle_minutes) * 60;
    let id = prepare(&app, &acct, &device, None, Some(2 * idle_secs)).await;
    let (s, v) = start(&app, &acct, &id).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    app.clock().advance(idle_secs - 30);
    app.edge_state(&device, true, true).await;
    // The admin's own login timed out meanwhile.
    let acct = relogin(&app, acct).await;
    assert!(!sweep(&app.state).await.unwrap().contains(&id));
    assert_eq!(session(&app, &acct, &id).await["state"], "active");

    app.clock().advance(30);
    assert!(sweep(&app.state).await.unwrap().contains(&id));
    let v = session(&app, &acct, &id).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "idle_timeout");
    assert_eq!(end_reasons(&app, &acct, &id).await, vec!["idle_timeout"]);
}

async fn an_edge_offline_past_the_grace_period_ends_its_sessions_with_reason_edge_offline(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (gone, _) = app.device(&acct, "press-1").await;
    let (fine, _) = app.device(&acct, "press-2").await;
    // This replica has been up for longer than the grace period.
    app.clock().advance(EDGE_OFFLINE_GRACE_SECS + 1);
    app.edge_state(&gone, true, true).await;
    app.edge_state(&fine, true, true).await;
    let lost = prepare(&app, &acct, &gone, None, Some(7200)).await;
    let kept = prepare(&app, &acct, &fine, None, Some(7200)).await;
    for id in [&lost, &kept] {
        let (s, v) = start(&app, &acct, id).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // press-1's edge goes silent; press-2's keeps reporting.
    app.edge_state(&gone, false, true).await;
    app.clock().advance(EDGE_OFFLINE_GRACE_SECS - 30);
    app.edge_state(&fine, true, true).await;
    assert!(sweep(&app.state).await.unwrap().is_empty(), "within grace");
    assert_eq!(session(&app, &acct, &lost).await["state"], "active");

    app.clock().advance(31);
    app.edge_state(&fine, true, true).await;
    let ended = sweep(&app.state).await.unwrap();
    assert_eq!(ended, vec![lost.clone()], "only the silent edge's session");
    let v = session(&app, &acct, &lost).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "edge_offline");
    assert_eq!(end_reasons(&app, &acct, &lost).await, vec!["edge_offline"]);
    assert_eq!(session(&app, &acct, &kept).await["state"], "active");
}

async fn a_control_plane_back_from_its_own_outage_gives_edges_the_grace_period_first(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, _) = app.device(&acct, "press-1").await;
    let id = prepare(&app, &acct, &device, None, Some(7200)).await;
    let (s, v) = start(&app, &acct, &id).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The whole control plane was down for half an hour: nobody heard from the edge.
    app.clock().advance(1800);
    let acct = relogin(&app, acct).await;
    let restarted = drawbridge_server::state::AppState::new(
        app.reopen_store().await,
        app.state.clock.clone(),
        app.state.public_url.clone(),
    )
    .await
    .unwrap();
    assert!(
        sweep(&restarted).await.unwrap().is_empty(),
        "a fresh replica waits for the edge to come back"
    );
    assert_eq!(session(&app, &acct, &id).await["state"], "active");
    // The edge never comes back: after the grace period on the new replica the session ends.
    app.clock().advance(EDGE_OFFLINE_GRACE_SECS);
    assert_eq!(sweep(&restarted).await.unwrap(), vec![id.clone()]);
    assert_eq!(
        session(&app, &acct, &id).await["end_reason"],
        "edge_offline"
    );
}
