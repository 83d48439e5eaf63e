//! Devices taken out of service and back: disable (channel refused and closed,
//! sessions ended, relay connections closed and their tokens refused), enable,
//! replace (the old identity key stops working when the replacement enrols),
//! archive (hidden, kept out of sessions, history kept; delete points to it).
//! Only admins, only in their own account. Each runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::TestApp;
use drawbridge_proto::api::ENROLL_CONTEXT;
use drawbridge_proto::channel::{EDGE_AUTH_CONTEXT, EdgeToServer, ServerToClient, ServerToEdge};
use live_harness::{
    Device, Live, Ws, closed, edge, edge_relay_token, enrolled, recv, running, send, until,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use std::time::Duration;

store_tests!(
    a_disabled_edge_loses_its_channel_sessions_and_relay_within_seconds,
    enable_lets_a_disabled_edge_back_in,
    a_replaced_edge_s_old_key_is_refused_at_once,
    archive_hides_the_device_keeps_it_out_of_sessions_and_keeps_its_history,
    delete_of_a_device_with_sessions_points_to_archive,
    a_disabled_device_cannot_be_put_in_or_start_a_session,
    only_admins_take_devices_out_of_service,
    another_account_s_device_is_not_found,
);

/// Authenticates with `key` as device `id`; the server's first answer after the auth message.
async fn auth_answer(l: &Live, id: &str, key: &Ed25519KeyPair) -> ServerToEdge {
    let mut ws = l.ws("/api/v1/edge/channel", None).await.unwrap();
    let ServerToEdge::Challenge { nonce } = recv(&mut ws).await.unwrap() else {
        panic!("challenge first")
    };
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(id.as_bytes());
    send(
        &mut ws,
        &EdgeToServer::Auth {
            device_id: id.to_string(),
            signature: STANDARD.encode(key.sign(&msg).as_ref()),
        },
    )
    .await;
    recv(&mut ws).await.expect("an answer")
}

fn refused_with(m: &ServerToEdge, want: &str) -> bool {
    matches!(m, ServerToEdge::Error { code, .. } if code == want)
}

/// Waits (at most 5 s) for the edge channel to get an error with `code` and close.
async fn cut_off(ws: &mut Ws, code: &str) {
    let m: ServerToEdge = until(ws, |m: &ServerToEdge| {
        matches!(m, ServerToEdge::Error { .. })
    })
    .await;
    assert!(refused_with(&m, code), "{m:?}");
    assert!(closed(ws).await, "the channel closes");
}

fn new_key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap()
}

/// Enrols `key` with an activation key; the status code.
async fn enrol(l: &Live, activation: &str, key: &Ed25519KeyPair) -> StatusCode {
    let mut msg = ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(activation.as_bytes());
    let body = json!({
        "activation_key": activation,
        "public_key": STANDARD.encode(key.public_key().as_ref()),
        "signature": STANDARD.encode(key.sign(&msg).as_ref()),
    });
    l.app
        .call(Method::POST, "/api/v1/enroll", None, Some(body))
        .await
        .0
}

async fn device_json(l: &Live, acct: &common::Account, id: &str) -> serde_json::Value {
    l.app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{id}"),
            &acct.admin,
            None,
        )
        .await
}

async fn audit_count(app: &TestApp, token: &str, action: &str) -> usize {
    let (s, v) = app
        .get(&format!("/api/v1/audit?action={action}"), token)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().len()
}

async fn session_end_reason(app: &TestApp, token: &str, s: &str) -> serde_json::Value {
    let v = app
        .ok(Method::GET, &format!("/api/v1/sessions/{s}"), token, None)
        .await;
    assert_eq!(v["state"], "ended", "{v}");
    v["end_reason"].clone()
}

async fn a_disabled_edge_loses_its_channel_sessions_and_relay_within_seconds(app: TestApp) {
    let l = live_harness::live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let other = enrolled(&l, &acct, "press-2").await;
    let mut ws = edge(&l, &d, true).await;
    let mut ws_other = edge(&l, &other, true).await;
    let (s, mut client) = running(&l, &acct, &d, 1).await;
    let (s_other, _client_other) = running(&l, &acct, &other, 2).await;
    let token = edge_relay_token(&mut ws, &s, 200).await;
    let mut relayed = l.relay(&token).await.expect("admitted before");

    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/devices/{}/disable", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["status"]["disabled"], true);
    // Within 5 s: the channel is told and closed, the client learns the session
    // ended, the relay connection is closed.
    cut_off(&mut ws, "device_disabled").await;
    let ended = until(&mut client, |m: &ServerToClient| {
        matches!(m, ServerToClient::Ended { .. })
    })
    .await;
    assert!(
        matches!(&ended, ServerToClient::Ended { reason } if reason == "device_disabled"),
        "{ended:?}"
    );
    assert!(closed(&mut relayed).await, "the relay connection is closed");
    // Still within its validity, the token is refused now; so is the channel.
    assert_eq!(l.relay(&token).await.err(), Some(401));
    let m = auth_answer(&l, &d.id, &d.key).await;
    assert!(refused_with(&m, "device_disabled"), "{m:?}");
    assert_eq!(
        session_end_reason(&l.app, &acct.admin, &s).await,
        "device_disabled"
    );
    for _ in 0..250 {
        if device_json(&l, &acct, &d.id).await["status"]["online"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        device_json(&l, &acct, &d.id).await["status"]["online"],
        false
    );
    // The other device and its session are untouched.
    send(
        &mut ws_other,
        &EdgeToServer::Status(drawbridge_proto::channel::EdgeStatus {
            switch_on: true,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }),
    )
    .await;
    let v = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s_other}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "active");
    assert_eq!(
        device_json(&l, &acct, &other.id).await["status"]["online"],
        true
    );
    // On the record: the disable, the ended session, the refused reconnection.
    assert_eq!(audit_count(&l.app, &acct.admin, "device.disable").await, 1);
    let (_, entries) = l
        .app
        .get("/api/v1/audit?action=device.auth", &acct.admin)
        .await;
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["result"] == "refused"),
        "{entries}"
    );
    // Disabling twice is a clear conflict, not a second record.
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/devices/{}/disable", d.id),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
}

async fn enable_lets_a_disabled_edge_back_in(app: TestApp) {
    let l = live_harness::live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let path = format!("/api/v1/devices/{}", d.id);
    l.app
        .ok(Method::POST, &format!("{path}/disable"), &acct.admin, None)
        .await;
    let m = auth_answer(&l, &d.id, &d.key).await;
    assert!(refused_with(&m, "device_disabled"), "{m:?}");
    let v = l
        .app
        .ok(Method::POST, &format!("{path}/enable"), &acct.admin, None)
        .await;
    assert_eq!(v["status"]["disabled"], false);
    // The same enrolled key is welcome again and the device can be used.
    let _ws = edge(&l, &d, true).await;
    assert_eq!(
        device_json(&l, &acct, &d.id).await["status"]["online"],
        true
    );
    let (_s, _c) = running(&l, &acct, &d, 1).await;
    assert_eq!(audit_count(&l.app, &acct.admin, "device.enable").await, 1);
    let (st, _) = l
        .app
        .call(
            Method::POST,
            &format!("{path}/enable"),
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "enabling an enabled device");
}

async fn a_replaced_edge_s_old_key_is_refused_at_once(app: TestApp) {
    let l = live_harness::live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let path = format!("/api/v1/devices/{}", d.id);
    l.app
        .ok(
            Method::POST,
            &format!("{path}/logbook"),
            &acct.admin,
            Some(json!({"text": "gateway fan noisy"})),
        )
        .await;
    let mut old = edge(&l, &d, true).await;
    let (s, mut client) = running(&l, &acct, &d, 1).await;
    let first = l
        .app
        .ok(Method::POST, &format!("{path}/replace"), &acct.admin, None)
        .await;
    let second = l
        .app
        .ok(Method::POST, &format!("{path}/replace"), &acct.admin, None)
        .await;
    let (first, second) = (
        first["key"].as_str().unwrap().to_string(),
        second["key"].as_str().unwrap().to_string(),
    );
    // Until the replacement enrols, the old gateway works (its session too).
    let v = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "active");
    let new = new_key();
    assert_eq!(
        enrol(&l, &first, &new).await,
        StatusCode::UNAUTHORIZED,
        "a newer replace withdrew the older key"
    );
    assert_eq!(enrol(&l, &second, &new).await, StatusCode::OK);
    // At once: the old key's live channel closes, its session ends, the old key is refused.
    cut_off(&mut old, "unauthenticated").await;
    let ended = until(&mut client, |m: &ServerToClient| {
        matches!(m, ServerToClient::Ended { .. })
    })
    .await;
    assert!(
        matches!(&ended, ServerToClient::Ended { reason } if reason == "device_replaced"),
        "{ended:?}"
    );
    assert_eq!(
        session_end_reason(&l.app, &acct.admin, &s).await,
        "device_replaced"
    );
    let m = auth_answer(&l, &d.id, &d.key).await;
    assert!(refused_with(&m, "unauthenticated"), "{m:?}");
    assert_eq!(
        enrol(&l, &second, &new_key()).await,
        StatusCode::UNAUTHORIZED
    );
    // The new gateway is the same device, with its history and logbook.
    let replacement = Device {
        id: d.id.clone(),
        key: new,
    };
    let _ws = edge(&l, &replacement, true).await;
    let v = device_json(&l, &acct, &d.id).await;
    assert_eq!(v["name"], "press-1");
    assert_eq!(v["status"]["online"], true);
    let log = l
        .app
        .ok(Method::GET, &format!("{path}/logbook"), &acct.admin, None)
        .await;
    assert_eq!(log[0]["text"], "gateway fan noisy");
    let v = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["devices"][0]["device_id"], d.id.as_str());
    assert_eq!(audit_count(&l.app, &acct.admin, "device.replace").await, 2);
    let (_, enrols) = l
        .app
        .get("/api/v1/audit?action=device.enroll", &acct.admin)
        .await;
    assert!(
        enrols
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["replaced"] == true),
        "{enrols}"
    );
}

async fn archive_hides_the_device_keeps_it_out_of_sessions_and_keeps_its_history(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, _) = app.device(&acct, "press-1").await;
    let (kept, _) = app.device(&acct, "press-2").await;
    let path = format!("/api/v1/devices/{id}");
    app.ok(
        Method::POST,
        &format!("{path}/logbook"),
        &acct.admin,
        Some(json!({"text": "decommissioned"})),
    )
    .await;
    let s = app.session(&acct.admin, &id, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{s}/start"),
        &acct.admin,
        None,
    )
    .await;
    let prepared = app.session(&acct.admin, &id, &[&acct.admin_id]).await;
    let v = app
        .ok(Method::POST, &format!("{path}/archive"), &acct.admin, None)
        .await;
    assert_eq!(v["status"]["archived"], true);
    // Its running session ended; the one prepared earlier can no longer start.
    assert_eq!(
        session_end_reason(&app, &acct.admin, &s).await,
        "device_disabled"
    );
    let (st, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{prepared}/start"),
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // Hidden from the list, listed on request, still readable with its history.
    let list = app
        .ok(Method::GET, "/api/v1/devices", &acct.admin, None)
        .await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![kept.as_str()]);
    let list = app
        .ok(
            Method::GET,
            "/api/v1/devices?archived=true",
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(
        app.ok(Method::GET, &path, &acct.admin, None).await["name"],
        "press-1"
    );
    let log = app
        .ok(Method::GET, &format!("{path}/logbook"), &acct.admin, None)
        .await;
    assert_eq!(log[0]["text"], "decommissioned");
    assert_eq!(audit_count(&app, &acct.admin, "device.archive").await, 1);
    // It cannot be put in a session, enabled, replaced or archived again.
    let (st, v) = app
        .post(
            "/api/v1/sessions",
            &acct.admin,
            json!({
                "name": "again",
                "devices": [{"device_id": id, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
                "users": [acct.admin_id]
            }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("archived"), "{v}");
    for verb in ["enable", "replace", "archive", "disable", "activation-key"] {
        let (st, v) = app
            .call(
                Method::POST,
                &format!("{path}/{verb}"),
                Some(&acct.admin),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{verb}: {v}");
    }
    // Its sessions stay readable.
    assert_eq!(
        app.ok(
            Method::GET,
            &format!("/api/v1/sessions/{s}"),
            &acct.admin,
            None
        )
        .await["devices"][0]["device_id"],
        id.as_str()
    );
}

async fn delete_of_a_device_with_sessions_points_to_archive(app: TestApp) {
    let acct = app.account("acme").await;
    let (used, _) = app.device(&acct, "press-1").await;
    let (unused, _) = app.device(&acct, "press-2").await;
    app.session(&acct.admin, &used, &[&acct.admin_id]).await;
    let (st, v) = app
        .delete(&format!("/api/v1/devices/{used}"), &acct.admin)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(v["message"].as_str().unwrap().contains("archive"), "{v}");
    assert_eq!(
        app.ok(
            Method::GET,
            &format!("/api/v1/devices/{used}"),
            &acct.admin,
            None
        )
        .await["name"],
        "press-1"
    );
    let (st, _) = app
        .delete(&format!("/api/v1/devices/{unused}"), &acct.admin)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "never used: deleted");
}

async fn a_disabled_device_cannot_be_put_in_or_start_a_session(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, _) = app.device(&acct, "press-1").await;
    let prepared = app.session(&acct.admin, &id, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/devices/{id}/disable"),
        &acct.admin,
        None,
    )
    .await;
    // Even with a stale "online" (the edge's last status), a disabled device does not start.
    app.edge_state(&id, true, true).await;
    let (st, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{prepared}/start"),
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("disabled"), "{v}");
    let (st, v) = app
        .post(
            "/api/v1/sessions",
            &acct.admin,
            json!({
                "name": "again",
                "devices": [{"device_id": id, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
                "users": [acct.admin_id]
            }),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    // Enabled again, the prepared session starts.
    app.ok(
        Method::POST,
        &format!("/api/v1/devices/{id}/enable"),
        &acct.admin,
        None,
    )
    .await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{prepared}/start"),
        &acct.admin,
        None,
    )
    .await;
}

const VERBS: [&str; 4] = ["disable", "enable", "replace", "archive"];

async fn only_admins_take_devices_out_of_service(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, _) = app.device(&acct, "press-1").await;
    for role in ["session_admin", "user", "auditor"] {
        let (_, token) = app.user(&acct, &format!("u-{role}"), role).await;
        for verb in VERBS {
            let (st, v) = app
                .call(
                    Method::POST,
                    &format!("/api/v1/devices/{id}/{verb}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{role} {verb}: {v}");
        }
    }
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{id}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["status"]["disabled"], false);
    assert_eq!(v["status"]["archived"], false);
    for verb in VERBS {
        assert_eq!(
            audit_count(&app, &acct.admin, &format!("device.{verb}")).await,
            3,
            "{verb}: each refusal on the record"
        );
    }
}

async fn another_account_s_device_is_not_found(app: TestApp) {
    let acme = app.account("acme").await;
    let other = app.account("globex").await;
    let (id, _) = app.device(&acme, "press-1").await;
    for verb in VERBS {
        let (st, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/devices/{id}/{verb}"),
                Some(&other.admin),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{verb}: {v}");
    }
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{id}"),
            &acme.admin,
            None,
        )
        .await;
    assert_eq!(v["status"]["disabled"], false);
    assert_eq!(v["status"]["archived"], false);
    let (s, _) = app.get("/api/v1/devices?archived=true", &other.admin).await;
    assert_eq!(s, StatusCode::OK);
}
