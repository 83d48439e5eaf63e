//! Dual control per device, over real edge and client channels: in a session
//! with several devices each device's site (or an approver in the cloud)
//! decides for that device only; approved devices run, waiting ones join when
//! approved, refused or timed-out ones are dropped; a device flagged "always
//! needs on-site approval" cannot be approved from the cloud. Each runs on
//! SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_proto::SessionState;
use drawbridge_proto::channel::{EdgeSession, EdgeToServer, ServerToClient, ServerToEdge};
use live_harness::*;
use serde_json::{Value, json};

store_tests!(
    each_device_runs_once_its_own_site_or_an_approver_approves_it,
    a_refused_or_timed_out_device_is_dropped_while_the_others_keep_running,
    a_device_that_always_needs_on_site_approval_refuses_an_approver,
);

/// A session on devices `a` and `b` for the account's admin; returns its id.
async fn two_device_session(l: &Live, acct: &common::Account, a: &Device, b: &Device) -> String {
    let target = json!([{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]);
    let v = l
        .app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(json!({
                "name": "two sites",
                "devices": [{"device_id": a.id, "targets": target}, {"device_id": b.id, "targets": target}],
                "users": [acct.admin_id],
            })),
        )
        .await;
    v["id"].as_str().unwrap().to_string()
}

async fn start(l: &Live, acct: &common::Account, s: &str) -> Value {
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await
}

/// Each device's approval state in a session record.
fn approval(v: &Value, device: &Device) -> String {
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_id"] == device.id.as_str())
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn session(l: &Live, token: &str, s: &str) -> Value {
    l.app
        .ok(Method::GET, &format!("/api/v1/sessions/{s}"), token, None)
        .await
}

/// Waits for the edge's list to show session `s` in `state` (None: not listed).
async fn edge_sees(ws: &mut Ws, s: &str, state: Option<SessionState>) -> Option<EdgeSession> {
    let m = until(ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| {
            let found = x.iter().find(|e| e.session_id == s);
            found.map(|e| e.state) == state
        })
    })
    .await;
    sessions_of(&m)
        .unwrap()
        .iter()
        .find(|e| e.session_id == s)
        .cloned()
}

fn decision(s: &str, approve: bool) -> EdgeToServer {
    EdgeToServer::Decision {
        session_id: s.to_string(),
        approve,
    }
}

/// The device ids a client's update routes to.
fn routed(u: &ServerToClient) -> Option<Vec<String>> {
    match u {
        ServerToClient::Update(j) => Some(j.devices.iter().map(|d| d.device_id.clone()).collect()),
        _ => None,
    }
}

async fn dual_control_on(l: &Live, acct: &common::Account, on: bool) {
    l.app
        .ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": {"dual_control": on}})),
        )
        .await;
}

async fn each_device_runs_once_its_own_site_or_an_approver_approves_it(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let (approver_id, approver) = l.app.user(&acct, "approver", "admin").await;
    dual_control_on(&l, &acct, true).await;
    let a = enrolled(&l, &acct, "press-a").await;
    let b = enrolled(&l, &acct, "press-b").await;
    let mut wa = edge(&l, &a, true).await;
    let mut wb = edge(&l, &b, true).await;
    let s = two_device_session(&l, &acct, &a, &b).await;
    let v = start(&l, &acct, &s).await;
    assert_eq!(v["state"], "pending_approval");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("pending".into(), "pending".into())
    );
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            json!({"public_key": wg_key(1)}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "no device approved: nothing to join"
    );
    let ea = edge_sees(&mut wa, &s, Some(SessionState::PendingApproval))
        .await
        .unwrap();
    assert_eq!(
        ea.requested_by.as_deref(),
        Some("admin"),
        "the site sees who asks"
    );
    edge_sees(&mut wb, &s, Some(SessionState::PendingApproval)).await;
    for (ws, n) in [(&mut wa, 10), (&mut wb, 11)] {
        send(
            ws,
            &EdgeToServer::SessionKey {
                session_id: s.clone(),
                public_key: wg_key(n),
            },
        )
        .await;
    }

    // Site A approves: A runs, the session is active, B still waits.
    send(&mut wa, &decision(&s, true)).await;
    let ea = edge_sees(&mut wa, &s, Some(SessionState::Active))
        .await
        .unwrap();
    assert!(
        ea.relay_token.is_some(),
        "an approved edge gets its relay grant"
    );
    let v = session(&l, &acct.admin, &s).await;
    assert_eq!(v["state"], "active");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("approved".into(), "pending".into())
    );
    let join = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(1)})),
        )
        .await;
    let devices: Vec<&str> = join["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [a.id.as_str()],
        "routes and keys for the approved device only"
    );
    let vk = l.app.state.relay_key.verifying_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let grant =
        drawbridge_relay::token::verify(&vk, join["relay_token"].as_str().unwrap(), now).unwrap();
    assert_eq!(
        grant.allowed_peers,
        vec![[10; 32]],
        "the relay lets the client reach A only"
    );
    // B, still waiting, runs nothing: no relay grant for its key.
    let eb = edge_sees(&mut wb, &s, Some(SessionState::PendingApproval))
        .await
        .unwrap();
    assert!(eb.relay_token.is_none());
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={}", key_query(1)),
            Some(&acct.admin),
        )
        .await
        .unwrap();
    let first: ServerToClient = recv(&mut c).await.unwrap();
    assert_eq!(routed(&first).unwrap(), std::slice::from_ref(&a.id));

    // Approving again (A) is a conflict, for approve and refuse alike.
    send(&mut wa, &decision(&s, false)).await;
    let err = until(&mut wa, |m: &ServerToEdge| {
        matches!(m, ServerToEdge::Error { .. })
    })
    .await;
    assert!(matches!(err, ServerToEdge::Error { code, .. } if code == "conflict"));

    // An approver in the cloud approves B: the client gets B's routes and key.
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/approve"),
            &acct.admin,
            json!({"approve": true, "device_id": b.id}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "four eyes");
    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/approve"),
            &approver,
            Some(json!({"approve": true, "device_id": b.id})),
        )
        .await;
    assert_eq!(approval(&v, &b), "approved");
    let eb = edge_sees(&mut wb, &s, Some(SessionState::Active))
        .await
        .unwrap();
    assert!(eb.relay_token.is_some());
    assert_eq!(
        eb.peers[0].public_key,
        wg_key(1),
        "B learns the client that joined before"
    );
    let u = until(&mut c, |m: &ServerToClient| {
        routed(m).is_some_and(|d| d.len() == 2)
    })
    .await;
    let ServerToClient::Update(j) = u else {
        unreachable!()
    };
    let grant =
        drawbridge_relay::token::verify(&vk, j.relay_token.as_deref().unwrap(), now).unwrap();
    let mut peers = grant.allowed_peers.clone();
    peers.sort();
    assert_eq!(peers, vec![[10; 32], [11; 32]]);
    // Each decision is on the record, with its device and who made it.
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=session.approve", &approver)
        .await;
    let who: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["details"]["devices"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        who.contains(&(format!("device:{}", a.id), a.id.clone())),
        "{who:?}"
    );
    assert!(
        who.contains(&(format!("user:{approver_id}"), b.id.clone())),
        "{who:?}"
    );
}

async fn a_refused_or_timed_out_device_is_dropped_while_the_others_keep_running(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    dual_control_on(&l, &acct, true).await;
    let a = enrolled(&l, &acct, "press-a").await;
    let b = enrolled(&l, &acct, "press-b").await;
    let mut wa = edge(&l, &a, true).await;
    let mut wb = edge(&l, &b, true).await;

    // A approves, the client joins, then B's site refuses.
    let s = two_device_session(&l, &acct, &a, &b).await;
    start(&l, &acct, &s).await;
    send(&mut wa, &decision(&s, true)).await;
    edge_sees(&mut wa, &s, Some(SessionState::Active)).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(1)})),
        )
        .await;
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={}", key_query(1)),
            Some(&acct.admin),
        )
        .await
        .unwrap();
    let first: ServerToClient = recv(&mut c).await.unwrap();
    assert_eq!(routed(&first).unwrap(), std::slice::from_ref(&a.id));
    edge_sees(&mut wb, &s, Some(SessionState::PendingApproval)).await;
    send(&mut wb, &decision(&s, false)).await;
    edge_sees(&mut wb, &s, None).await;
    let next: ServerToClient = recv(&mut c).await.unwrap();
    assert_eq!(
        routed(&next),
        Some(vec![a.id.clone()]),
        "the client keeps its tunnel to A: {next:?}"
    );
    let v = session(&l, &acct.admin, &s).await;
    assert_eq!(v["state"], "active", "A goes on");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("approved".into(), "refused".into())
    );
    // A's queue may still hold updates from before the client joined (the
    // decision pokes it more than once): the first one naming a client counts.
    // Had A lost the client, none would, and the wait fails.
    let m = until(&mut wa, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| {
            x.iter().any(|e| {
                e.session_id == s && e.state == SessionState::Active && !e.peers.is_empty()
            })
        })
    })
    .await;
    let ea = sessions_of(&m)
        .unwrap()
        .iter()
        .find(|e| e.session_id == s)
        .cloned()
        .unwrap();
    assert_eq!(ea.peers.len(), 1, "A keeps its client");
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM tunnels WHERE session_id = $1 AND ended_at IS NULL",
    )
    .bind(&s)
    .fetch_all(&l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(
        open,
        std::slice::from_ref(&a.id),
        "B's tunnel record ended with its refusal"
    );
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s}/approve"),
            &l.app.user(&acct, "approver", "admin").await.1,
            json!({"approve": true, "device_id": b.id}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "a refusal is final");
    let join = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(2)})),
        )
        .await;
    assert_eq!(join["devices"].as_array().unwrap().len(), 1);

    // A second session: A approves, nobody decides for B, B times out.
    let s2 = two_device_session(&l, &acct, &a, &b).await;
    start(&l, &acct, &s2).await;
    send(&mut wa, &decision(&s2, true)).await;
    edge_sees(&mut wa, &s2, Some(SessionState::Active)).await;
    // A third: nobody decides at all.
    let s3 = two_device_session(&l, &acct, &a, &b).await;
    start(&l, &acct, &s3).await;
    edge_sees(&mut wb, &s3, Some(SessionState::PendingApproval)).await;
    l.app
        .clock()
        .advance(drawbridge_server::sessions::APPROVAL_WINDOW_SECS + 1);
    // The edges' heartbeats keep them heard from; the test's clock jumped.
    sqlx::query("UPDATE devices SET last_seen = $1")
        .bind(l.app.state.now())
        .execute(&l.app.state.store.pool)
        .await
        .unwrap();
    drawbridge_server::background::sweep(&l.app.state)
        .await
        .unwrap();
    edge_sees(&mut wb, &s2, None).await;
    let v = session(&l, &acct.admin, &s2).await;
    assert_eq!(v["state"], "active");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("approved".into(), "timed_out".into())
    );
    let v = session(&l, &acct.admin, &s3).await;
    assert_eq!(v["state"], "ended");
    assert_eq!(v["end_reason"], "approval_timeout");
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=session.", &acct.admin)
        .await;
    let entries = audit.as_array().unwrap();
    let has = |action: &str, session: &str, device: &Device| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["object"] == format!("session:{session}").as_str()
                && (e["details"]["devices"][0] == device.id.as_str()
                    || e["details"]["device_id"] == device.id.as_str())
        })
    };
    assert!(
        has("session.refuse", &s, &b),
        "the refusal, with its device"
    );
    assert!(has("session.approval_timeout", &s2, &b));
    assert!(has("session.approval_timeout", &s3, &a));
    assert!(has("session.approval_timeout", &s3, &b));
    let notes = l
        .app
        .ok(Method::GET, "/api/v1/notifications", &acct.admin, None)
        .await;
    let msgs: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Device press-b") && m.ends_with("was refused.")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.ends_with("was not approved in time.")),
        "{msgs:?}"
    );
}

async fn a_device_that_always_needs_on_site_approval_refuses_an_approver(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let (_, approver) = l.app.user(&acct, "approver", "admin").await;
    let a = enrolled(&l, &acct, "press-a").await;
    let b = enrolled(&l, &acct, "press-b").await;
    let v = l
        .app
        .ok(
            Method::PATCH,
            &format!("/api/v1/devices/{}", a.id),
            &acct.admin,
            Some(json!({"onsite_approval": true})),
        )
        .await;
    assert_eq!(v["onsite_approval"], true);
    let mut wa = edge(&l, &a, true).await;
    let _wb = edge(&l, &b, true).await;

    // Without dual control on the account, only A waits, and for its site only.
    let s = two_device_session(&l, &acct, &a, &b).await;
    let v = start(&l, &acct, &s).await;
    assert_eq!(v["state"], "active");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("pending".into(), "approved".into())
    );
    for body in [
        json!({"approve": true, "device_id": a.id}),
        json!({"approve": true}),
    ] {
        let (st, e) = l
            .app
            .post(&format!("/api/v1/sessions/{s}/approve"), &approver, body)
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    }
    let v = session(&l, &acct.admin, &s).await;
    assert_eq!(approval(&v, &a), "pending", "the approver changed nothing");
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=session.approve", &approver)
        .await;
    assert_eq!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["result"] == "denied")
            .count(),
        2,
        "refused cloud approvals are on the record"
    );
    send(&mut wa, &decision(&s, true)).await;
    edge_sees(&mut wa, &s, Some(SessionState::Active)).await;
    let v = session(&l, &acct.admin, &s).await;
    assert_eq!(approval(&v, &a), "approved");
    let by = v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device_id"] == a.id.as_str())
        .map(|x| x["decided_by"].clone());
    assert_eq!(by, Some(json!(format!("device:{}", a.id))));

    // Under dual control, an approval without a device takes every device an
    // approver may decide (B) and leaves A to its site.
    dual_control_on(&l, &acct, true).await;
    let s2 = two_device_session(&l, &acct, &a, &b).await;
    start(&l, &acct, &s2).await;
    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/approve"),
            &approver,
            Some(json!({"approve": true})),
        )
        .await;
    assert_eq!(v["state"], "active");
    assert_eq!(
        (approval(&v, &a), approval(&v, &b)),
        ("pending".into(), "approved".into())
    );
    // A cloud refusal of A is allowed (it only takes access away).
    let v = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/approve"),
            &approver,
            Some(json!({"approve": false, "device_id": a.id})),
        )
        .await;
    assert_eq!(approval(&v, &a), "refused");
    assert_eq!(v["state"], "active");
}
