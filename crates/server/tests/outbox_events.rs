//! Event webhooks from the audit record: a session started and ended, a site's
//! switch turned, reach the webhooks subscribed to them (signed, with the audit
//! record's sequence number, through the real worker to a real receiver); kinds
//! nobody subscribed to queue nothing; a refused action is no event. Both stores.

use crate::common;
use crate::live_harness;
use crate::outbox_harness;

use axum::http::Method;
use common::TestApp;
use drawbridge_proto::channel::{EdgeStatus, EdgeToServer};
use drawbridge_server::outbox;
use live_harness::*;
use outbox_harness::*;
use serde_json::{Value, json};
use std::time::Duration;

store_tests!(
    sessions_and_the_sites_switch_reach_the_webhooks_subscribed_to_them,
    a_device_told_offline_is_told_back_online_once_when_its_edge_connects,
);

async fn a_device_told_offline_is_told_back_online_once_when_its_edge_connects(app: TestApp) {
    let l = live(app).await;
    configure(&l.app.state, None, true);
    let hooks = Hooks::start("127.0.0.11").await;
    let acct = l.app.account("acme").await;
    let (_, secret) = webhook(
        &l.app,
        &acct,
        &hooks.url,
        json!(["device_offline", "device_online"]),
    )
    .await;
    l.app
        .ok(
            Method::PUT,
            "/api/v1/account/notifications",
            &acct.admin,
            Some(json!({"device_offline_minutes": 10})),
        )
        .await;
    let d = enrolled(&l, &acct, "press").await;
    let offline = |l: &Live| {
        let state = l.app.state.clone();
        async move {
            // The edge's channel is gone once the device is recorded offline.
            for _ in 0..100 {
                let on: i64 = sqlx::query_scalar("SELECT online FROM devices WHERE name = 'press'")
                    .fetch_one(&state.store.pool)
                    .await
                    .unwrap();
                if on == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the device stays online");
        }
    };
    // A short absence (under the setting) tells nothing, coming back neither.
    let ws = edge(&l, &d, true).await;
    drop(ws);
    offline(&l).await;
    l.app.clock().advance(60);
    let ws = edge(&l, &d, true).await;
    drop(ws);
    offline(&l).await;
    let sweep = || {
        outbox::sweeps::devices_offline(
            &l.app.state.store,
            l.app.state.started_at,
            l.app.state.now(),
        )
    };
    assert_eq!(sweep().await.unwrap(), 0);
    assert!(deliveries(&l.app, "device_online").await.is_empty());
    // Away longer than the setting: told offline; back: told online, once.
    l.app.clock().advance(11 * 60);
    assert_eq!(sweep().await.unwrap(), 1);
    let ws = edge(&l, &d, true).await;
    drop(ws);
    offline(&l).await;
    let ws = edge(&l, &d, true).await;
    assert_eq!(deliveries(&l.app, "device_online").await.len(), 1);
    drop(ws);
    assert_eq!(drain(&l.app.state).await, 2);
    let calls = hooks.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.verify(&secret)));
    // Both were queued at the same second: their delivery order is not fixed.
    let mut kinds: Vec<String> = calls
        .iter()
        .map(|c| c.json()["type"].as_str().unwrap_or_default().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["device_offline", "device_online"]);
    let back = calls
        .iter()
        .map(|c| c.json())
        .find(|j| j["type"] == "device_online")
        .unwrap();
    assert_eq!(back["data"]["details"]["device"], "press");
    assert_eq!(back["data"]["details"]["device_id"], d.id.as_str());
    assert!(back["data"]["details"]["offline_since"].is_string());
}

async fn sessions_and_the_sites_switch_reach_the_webhooks_subscribed_to_them(app: TestApp) {
    let l = live(app).await;
    configure(&l.app.state, None, true);
    let hooks = Hooks::start("127.0.0.6").await;
    let acct = l.app.account("acme").await;
    let (_, secret) = webhook(
        &l.app,
        &acct,
        &hooks.url,
        json!(["session_started", "session_ended", "switch_changed"]),
    )
    .await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    // The site turns its switch off and on.
    for on in [false, true] {
        send(
            &mut ws,
            &EdgeToServer::Status(EdgeStatus {
                switch_on: on,
                agent_version: "test".into(),
                endpoints: vec![],
                relay_rtt: vec![],
            }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    // A user without the right to end it: refused, no event.
    let (_, user) = l.app.user(&acct, "ursula", "user").await;
    let (st, _) = l
        .app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            Some(&user),
            None,
        )
        .await;
    assert!(st.is_client_error());
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            &acct.admin,
            None,
        )
        .await;
    // Kinds nobody subscribed to (tunnels, desktops) queue nothing.
    for kind in ["tunnel_up", "tunnel_down", "desktop_opened", "user_lockout"] {
        assert!(deliveries(&l.app, kind).await.is_empty(), "{kind}");
    }

    outbox::worker::spawn(l.app.state.clone());
    let mut calls = Vec::new();
    for _ in 0..300 {
        calls = hooks.calls();
        if calls.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bodies: Vec<Value> = calls
        .iter()
        .map(|c| {
            assert!(c.verify(&secret), "signed: {c:?}");
            c.json()
        })
        .collect();
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    // On when the edge first reported, then off, then on.
    let switches: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "switch_changed")
        .map(|b| &b["data"]["details"]["details"]["on"])
        .collect();
    assert_eq!(switches.len(), 3, "{bodies:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "session_started").count(),
        1,
        "{bodies:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "session_ended").count(),
        1,
        "{bodies:?}"
    );
    let started = bodies
        .iter()
        .find(|b| b["type"] == "session_started")
        .unwrap();
    assert_eq!(
        started["data"]["details"]["object"],
        format!("session:{s}"),
        "{started}"
    );
    assert_eq!(started["data"]["details"]["action"], "session.start");
    assert!(started["data"]["details"]["audit_seq"].as_i64().unwrap() > 0);
    // The audit log has the same record under that number.
    let audit = l
        .app
        .ok(Method::GET, "/api/v1/audit?limit=500", &acct.admin, None)
        .await;
    let seq = started["data"]["details"]["audit_seq"].as_i64().unwrap();
    let entries = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["seq"] == seq && e["action"] == "session.start"),
        "audit record {seq}: {audit}"
    );
}
