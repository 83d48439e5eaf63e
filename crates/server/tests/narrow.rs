//! Narrowing a session's targets on request (`POST /sessions/{id}/narrow`)
//! reaches live tunnels: the edge and the client get the narrowed targets within
//! 5 s through the live revocation path, other sessions are untouched, the
//! change is audited. Only the requester and account admins may narrow, only
//! narrowing is possible, and a refused request changes nothing, also when 30
//! arrive at once. Each runs on SQLite and PostgreSQL. (Real tunnels carrying
//! traffic: `crates/edge/tests/revoke.rs`.)

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_proto::channel::{ServerToClient, ServerToEdge};
use live_harness::*;
use serde_json::{Value, json};
use std::time::Duration;

store_tests!(
    narrowing_reaches_the_edge_and_the_client_and_leaves_other_sessions_alone,
    widening_and_bad_input_are_refused_and_change_nothing,
    concurrent_narrowings_never_add_up_to_a_widening,
    only_the_requester_and_account_admins_may_narrow,
);

const KEEP: &str = "tcp:192.168.1.10:502";
const DROP: &str = "tcp:192.168.1.11:502";
const BOB_TARGET: &str = "tcp:192.168.1.20:80";

fn target(t: &str) -> Value {
    let (proto, rest) = t.split_once(':').unwrap();
    let (addr, port) = rest.split_once(':').unwrap();
    json!({"address": addr, "protocol": proto, "ports": port})
}

struct World {
    l: Live,
    acct: common::Account,
    device: String,
    edge: Ws,
    anna_token: String,
    anna_session: String,
    anna_client: Ws,
    bob_session: String,
    bob_client: Ws,
}

/// A running session prepared by the admin for `user` (who starts it, so is its
/// requester), joined with key `n`; returns (session, client channel).
async fn joined(
    l: &Live,
    acct: &common::Account,
    device: &str,
    user: (&str, &str),
    targets: &[&str],
    n: u8,
) -> (String, Ws) {
    let targets: Vec<Value> = targets.iter().map(|t| target(t)).collect();
    let v = l
        .app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(json!({"name": "fix", "devices": [{"device_id": device, "targets": targets}], "users": [user.0]})),
        )
        .await;
    let s = v["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/sessions/{s}");
    l.app
        .ok(Method::POST, &format!("{path}/start"), user.1, None)
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("{path}/join"),
            user.1,
            Some(json!({"public_key": wg_key(n)})),
        )
        .await;
    let mut c = l
        .ws(
            &format!("{path}/channel?key={}", key_query(n)),
            Some(user.1),
        )
        .await
        .unwrap();
    until(&mut c, |m: &ServerToClient| {
        matches!(m, ServerToClient::Update(_))
    })
    .await;
    (s, c)
}

/// anna's session releases KEEP and DROP, bob's (same edge) BOB_TARGET.
async fn world(app: TestApp) -> World {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut edge = edge(&l, &d, true).await;
    let (anna, anna_token) = l.app.user(&acct, "anna", "user").await;
    let (bob, bob_token) = l.app.user(&acct, "bob", "user").await;
    l.app
        .grant(&acct, &[&anna, &bob], &[&d.id], "full", json!([]))
        .await;
    let (anna_session, anna_client) =
        joined(&l, &acct, &d.id, (&anna, &anna_token), &[KEEP, DROP], 1).await;
    let (bob_session, bob_client) =
        joined(&l, &acct, &d.id, (&bob, &bob_token), &[BOB_TARGET], 2).await;
    until(&mut edge, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.len() == 2 && x.iter().all(|s| s.peers.len() == 1))
    })
    .await;
    World {
        l,
        acct,
        device: d.id,
        edge,
        anna_token,
        anna_session,
        anna_client,
        bob_session,
        bob_client,
    }
}

/// A JSON list of targets in their text form.
fn targets_of(v: &Value) -> Vec<String> {
    let mut t: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            serde_json::from_value::<drawbridge_proto::Target>(t.clone())
                .unwrap()
                .to_string()
        })
        .collect();
    t.sort();
    t
}

/// The targets of `session` as stored.
async fn stored_targets(w: &World, session: &str) -> Vec<String> {
    let (_, v) =
        w.l.app
            .get(&format!("/api/v1/sessions/{session}"), &w.acct.admin)
            .await;
    targets_of(&v["devices"][0]["targets"])
}

/// `session.narrow` entries: the changes (`denied`: the refusals).
async fn narrow_entries_with(w: &World, denied: bool) -> Vec<Value> {
    let (_, v) =
        w.l.app
            .get("/api/v1/audit?action=session.narrow", &w.acct.admin)
            .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| (e["result"] == "denied") == denied)
        .cloned()
        .collect()
}

async fn narrow_entries(w: &World) -> Vec<Value> {
    narrow_entries_with(w, false).await
}

/// A POST on the app from another task (for requests at the same moment).
async fn post_on(
    app: axum::Router,
    path: String,
    token: String,
    body: Value,
) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let st = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn narrow_path(session: &str) -> String {
    format!("/api/v1/sessions/{session}/narrow")
}

fn keep(device: &str, targets: &[&str]) -> Value {
    let targets: Vec<Value> = targets.iter().map(|t| target(t)).collect();
    json!({"devices": [{"device_id": device, "targets": targets}]})
}

async fn narrowing_reaches_the_edge_and_the_client_and_leaves_other_sessions_alone(app: TestApp) {
    let mut w = world(app).await;
    let (st, v) =
        w.l.app
            .post(
                &narrow_path(&w.anna_session),
                &w.anna_token,
                keep(&w.device, &[KEEP]),
            )
            .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (anna_session, bob_session) = (w.anna_session.clone(), w.bob_session.clone());
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.edge, |m: &ServerToEdge| {
            sessions_of(m).is_some_and(|x| {
                x.iter().any(|s| {
                    s.session_id == anna_session
                        && s.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>() == [KEEP]
                })
            })
        }),
    )
    .await
    .expect("the edge runs anna's session with the narrowed targets within 5 s");
    let sessions = sessions_of(&seen).unwrap();
    let anna = sessions
        .iter()
        .find(|s| s.session_id == anna_session)
        .unwrap();
    assert!(
        anna.peers.iter().any(|p| p.public_key == wg_key(1)),
        "anna's tunnel stays for the target she keeps: {anna:?}"
    );
    let bob = sessions
        .iter()
        .find(|s| s.session_id == bob_session)
        .expect("bob's session still runs");
    assert!(bob.peers.iter().any(|p| p.public_key == wg_key(2)));
    assert_eq!(
        bob.targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>(),
        [BOB_TARGET]
    );
    // anna's client loses the route to the removed target.
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.anna_client, |m: &ServerToClient| match m {
            ServerToClient::Update(j) => j.devices[0].targets.len() == 1,
            ServerToClient::Ended { .. } => true,
            _ => false,
        }),
    )
    .await
    .expect("anna's client is told within 5 s");
    let ServerToClient::Update(j) = m else {
        panic!("anna's tunnel was ended: {m:?}")
    };
    assert_eq!(j.devices[0].targets[0].to_string(), KEEP);
    // bob's client hears nothing but (unchanged) updates.
    while let Ok(Some(m)) = tokio::time::timeout(
        Duration::from_millis(200),
        recv::<ServerToClient>(&mut w.bob_client),
    )
    .await
    {
        assert!(
            !matches!(m, ServerToClient::Ended { .. }),
            "bob's tunnel was ended"
        );
    }
    assert_eq!(stored_targets(&w, &w.bob_session).await, [BOB_TARGET]);
    // On the record: who, what was removed, what is kept.
    let entries = narrow_entries(&w).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["object"], format!("session:{}", w.anna_session));
    assert_eq!(e["details"]["username"], "anna");
    assert_eq!(e["details"]["cause"], "session.narrow");
    assert_eq!(targets_of(&e["details"]["removed_targets"]), [DROP]);
    assert_eq!(targets_of(&e["details"]["targets"]), [KEEP]);
}

async fn widening_and_bad_input_are_refused_and_change_nothing(app: TestApp) {
    let w = world(app).await;
    let path = narrow_path(&w.anna_session);
    let d = w.device.clone();
    let wider = json!({"devices": [{"device_id": d, "targets": [
        {"address": "192.168.1.0/24", "protocol": "tcp", "ports": "502"}]}]});
    let other_port = keep(&d, &[KEEP, "tcp:192.168.1.10:503"]);
    let other_protocol = keep(&d, &["udp:192.168.1.10:502"]);
    let many: Vec<Value> = (0..300).map(|_| target(KEEP)).collect();
    let bodies = [
        (wider, StatusCode::BAD_REQUEST),
        (other_port, StatusCode::BAD_REQUEST),
        (other_protocol, StatusCode::BAD_REQUEST),
        (keep("no-such-device", &[KEEP]), StatusCode::BAD_REQUEST),
        (
            json!({"devices": [{"device_id": d, "targets": [target(KEEP)]}, {"device_id": d, "targets": [target(KEEP)]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (keep(&d, &[]), StatusCode::BAD_REQUEST),
        (json!({"devices": []}), StatusCode::BAD_REQUEST),
        (
            json!({"devices": [{"device_id": d, "targets": many}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([[{"device_id": d, "targets": [target(KEEP)]}]]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"devices": [{"device_id": d, "targets": [target(KEEP)]}], "x": 1}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, want) in &bodies {
        let (st, v) = w.l.app.post(&path, &w.anna_token, body.clone()).await;
        assert_eq!(st, *want, "{body}: {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }
    // The same, 30 at once.
    let mut calls = Vec::new();
    for i in 0..30 {
        let (app, path, token) = (w.l.app.app.clone(), path.clone(), w.anna_token.clone());
        let body = bodies[i % 4].0.clone();
        calls.push(tokio::spawn(post_on(app, path, token, body)));
    }
    for c in calls {
        let (st, v) = c.await.unwrap();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
    let mut both = vec![KEEP.to_string(), DROP.to_string()];
    both.sort();
    assert_eq!(stored_targets(&w, &w.anna_session).await, both);
    assert!(narrow_entries(&w).await.is_empty());
    // An ended session cannot be narrowed.
    w.l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{}/end", w.bob_session),
            &w.acct.admin,
            None,
        )
        .await;
    let (st, v) =
        w.l.app
            .post(
                &narrow_path(&w.bob_session),
                &w.acct.admin,
                keep(&d, &[BOB_TARGET]),
            )
            .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(narrow_entries(&w).await.is_empty());
}

/// 30 narrowings at once, half keeping one target and half the other: exactly
/// one wins; no later one may turn the result into the other target (a widening
/// relative to what was stored), so the session ends with one target and one entry.
async fn concurrent_narrowings_never_add_up_to_a_widening(app: TestApp) {
    let w = world(app).await;
    let path = narrow_path(&w.anna_session);
    let mut calls = Vec::new();
    for i in 0..30 {
        let (app, path, token) = (w.l.app.app.clone(), path.clone(), w.anna_token.clone());
        let body = keep(&w.device, &[if i % 2 == 0 { KEEP } else { DROP }]);
        calls.push(tokio::spawn(post_on(app, path, token, body)));
    }
    let mut ok = 0;
    for c in calls {
        let (st, v) = c.await.unwrap();
        assert!(
            st == StatusCode::OK || st == StatusCode::BAD_REQUEST || st == StatusCode::CONFLICT,
            "{st} {v}"
        );
        if st == StatusCode::OK {
            ok += 1;
        }
    }
    assert!(ok >= 1);
    let after = stored_targets(&w, &w.anna_session).await;
    assert_eq!(after.len(), 1, "{after:?}");
    let entries = narrow_entries(&w).await;
    assert_eq!(
        entries.len(),
        1,
        "exactly one narrowing happened: {entries:?}"
    );
    assert_eq!(
        targets_of(&entries[0]["details"]["targets"]),
        after,
        "the record names what is stored"
    );
}

async fn only_the_requester_and_account_admins_may_narrow(app: TestApp) {
    let w = world(app).await;
    let acct = &w.acct;
    let path = narrow_path(&w.anna_session);
    let body = keep(&w.device, &[KEEP]);
    // carl is in anna's session but did not ask for it.
    let (carl, carl_token) = w.l.app.user(acct, "carl", "user").await;
    sqlx::query("INSERT INTO session_users (session_id, user_id) VALUES ($1, $2)")
        .bind(&w.anna_session)
        .bind(&carl)
        .execute(&w.l.app.state.store.pool)
        .await
        .unwrap();
    let (_, dora) = w.l.app.user(acct, "dora", "user").await;
    let (_, sam) = w.l.app.user(acct, "sam", "session_admin").await;
    let (_, audrey) = w.l.app.user(acct, "audrey", "auditor").await;
    let other = w.l.app.account("other").await;
    for (who, token, want) in [
        (
            "an assigned user who is not the requester",
            &carl_token,
            StatusCode::FORBIDDEN,
        ),
        ("a user outside the session", &dora, StatusCode::NOT_FOUND),
        (
            "a session admin who did not ask for it",
            &sam,
            StatusCode::FORBIDDEN,
        ),
        ("an auditor", &audrey, StatusCode::FORBIDDEN),
        (
            "another account's admin",
            &other.admin,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (st, v) = w.l.app.post(&path, token, body.clone()).await;
        assert_eq!(st, want, "{who}: {v}");
    }
    let mut both = vec![KEEP.to_string(), DROP.to_string()];
    both.sort();
    assert_eq!(stored_targets(&w, &w.anna_session).await, both);
    assert!(narrow_entries(&w).await.is_empty());
    let denied = narrow_entries_with(&w, true).await;
    assert!(!denied.is_empty(), "refusals are on the record");
    // The account's admin may (the requester may too: the first test).
    let (st, v) = w.l.app.post(&path, &acct.admin, body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(stored_targets(&w, &w.anna_session).await, [KEEP]);
}
