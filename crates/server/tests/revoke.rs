//! Taking rights away reaches running tunnels within seconds (DESIGN §2.10):
//! each kind of change that narrows what a user may reach is applied to the
//! edge's desired state and the client's channel within 5 s, audited, and
//! leaves other sessions alone. The client channel checks the role and refuses
//! read-only API tokens. Each runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_proto::channel::{EdgeSession, ServerToClient, ServerToEdge};
use live_harness::*;
use serde_json::{Value, json};
use std::time::Duration;

store_tests!(
    a_role_without_sessions_cuts_the_users_tunnels,
    removal_from_the_group_cuts_the_users_tunnels,
    a_deleted_grant_cuts_the_users_tunnels,
    a_lower_grant_level_cuts_the_users_tunnels,
    a_pool_losing_the_device_cuts_the_users_tunnels,
    a_narrower_firewall_narrows_the_session_on_the_edge,
    a_nat_change_reaches_the_edge_and_the_clients_at_once,
    a_change_on_one_replica_cuts_a_tunnel_served_by_another,
    the_client_channel_checks_the_role_and_refuses_read_only_tokens,
);

/// The victim's session releases this target; the other session another one.
const ANNA_TARGET: &str = "tcp:192.168.1.10:502";
const BOB_TARGET: &str = "tcp:192.168.1.20:80";

/// Two users with their own grants on one device, each in their own running
/// session with a joined client (anna: key 1, bob: key 2) and the edge connected.
struct World {
    l: Live,
    acct: common::Account,
    d: Device,
    edge: Ws,
    anna: String,
    anna_group: String,
    anna_pool: String,
    anna_session: String,
    anna_client: Ws,
    bob_session: String,
    bob_client: Ws,
}

fn target(t: &str) -> Value {
    let (proto, rest) = t.split_once(':').unwrap();
    let (addr, port) = rest.split_once(':').unwrap();
    json!({"address": addr, "protocol": proto, "ports": port})
}

/// A running session on `device` for `user` (token), joined with key `n`; returns (session, client channel).
async fn joined(
    l: &Live,
    acct: &common::Account,
    device: &str,
    user: (&str, &str),
    t: &str,
    n: u8,
) -> (String, Ws) {
    let v = l
        .app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(json!({"name": "fix", "devices": [{"device_id": device, "targets": [target(t)]}], "users": [user.0]})),
        )
        .await;
    let s = v["id"].as_str().unwrap().to_string();
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            user.1,
            None,
        )
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            user.1,
            Some(json!({"public_key": wg_key(n)})),
        )
        .await;
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={}", key_query(n)),
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

async fn world(app: TestApp) -> World {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut edge = edge(&l, &d, true).await;
    let (anna, anna_token) = l.app.user(&acct, "anna", "user").await;
    let (bob, bob_token) = l.app.user(&acct, "bob", "user").await;
    let (anna_group, anna_pool) = l
        .app
        .grant(&acct, &[&anna], &[&d.id], "full", json!([]))
        .await;
    l.app
        .grant(&acct, &[&bob], &[&d.id], "full", json!([]))
        .await;
    let (anna_session, anna_client) =
        joined(&l, &acct, &d.id, (&anna, &anna_token), ANNA_TARGET, 1).await;
    let (bob_session, bob_client) =
        joined(&l, &acct, &d.id, (&bob, &bob_token), BOB_TARGET, 2).await;
    until(&mut edge, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.len() == 2 && x.iter().all(|s| s.peers.len() == 1))
    })
    .await;
    World {
        l,
        acct,
        d,
        edge,
        anna,
        anna_group,
        anna_pool,
        anna_session,
        anna_client,
        bob_session,
        bob_client,
    }
}

/// Can anna's client still reach her target through what the edge runs?
fn anna_reaches(sessions: &[EdgeSession], w_session: &str) -> bool {
    sessions.iter().any(|s| {
        s.session_id == w_session
            && s.peers.iter().any(|p| p.public_key == wg_key(1))
            && s.targets.iter().any(|t| t.to_string() == ANNA_TARGET)
    })
}

fn bob_reaches(sessions: &[EdgeSession], w_session: &str) -> bool {
    sessions.iter().any(|s| {
        s.session_id == w_session
            && s.peers.iter().any(|p| p.public_key == wg_key(2))
            && s.targets.iter().any(|t| t.to_string() == BOB_TARGET)
    })
}

/// A change that narrows anna's rights.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// She becomes an auditor.
    Role,
    /// She leaves the group holding her grant.
    GroupMember,
    /// Her group's grant is deleted.
    Grant,
    /// Her full grant goes, a restricted one for another target stays.
    LowerLevel,
    /// Her pool loses the device.
    Pool,
    /// The device's firewall no longer covers her target.
    Firewall,
}

impl Change {
    /// Makes the change as the admin; returns the status of the call that narrows.
    async fn apply(self, w: &World) -> (StatusCode, Value) {
        let (app, admin) = (&w.l.app, w.acct.admin.as_str());
        match self {
            Change::Role => {
                app.patch(
                    &format!("/api/v1/users/{}", w.anna),
                    admin,
                    json!({"role": "auditor"}),
                )
                .await
            }
            Change::GroupMember => {
                app.delete(
                    &format!("/api/v1/groups/{}/members/{}", w.anna_group, w.anna),
                    admin,
                )
                .await
            }
            Change::Grant => {
                let id = grant_id(w).await;
                app.delete(&format!("/api/v1/grants/{id}"), admin).await
            }
            Change::LowerLevel => {
                app.grant(
                    &w.acct,
                    &[&w.anna],
                    &[&w.d.id],
                    "restricted",
                    json!([target(BOB_TARGET)]),
                )
                .await;
                let id = grant_id(w).await;
                app.delete(&format!("/api/v1/grants/{id}"), admin).await
            }
            Change::Pool => {
                app.delete(
                    &format!("/api/v1/pools/{}/devices/{}", w.anna_pool, w.d.id),
                    admin,
                )
                .await
            }
            Change::Firewall => {
                app.patch(
                    &format!("/api/v1/devices/{}", w.d.id),
                    admin,
                    json!({"firewall": [target(BOB_TARGET)]}),
                )
                .await
            }
        }
    }

    /// The audit action the change causes on anna's session, and its `cause`.
    fn audited(self) -> (&'static str, &'static str) {
        match self {
            Change::Role => ("tunnel.cut", "user.update"),
            Change::GroupMember => ("tunnel.cut", "group.remove"),
            Change::Grant | Change::LowerLevel => ("tunnel.cut", "grant.delete"),
            Change::Pool => ("tunnel.cut", "pool.remove"),
            Change::Firewall => ("session.narrow", "device.update"),
        }
    }
}

/// The one scenario every kind of change runs: anna's tunnel reaches her target,
/// `change` narrows her rights, and within 5 s the edge no longer lets her reach
/// it and her client is told (its tunnel ends with `access_revoked`, or, when the
/// firewall narrowed the session, it gets the narrowed targets); bob's session is
/// untouched; the audit log names what was cut and why.
async fn revocation_case(app: TestApp, change: Change) {
    let mut w = world(app).await;
    let (st, v) = change.apply(&w).await;
    assert!(st.is_success(), "{change:?}: {st} {v}");
    let anna_session = w.anna_session.clone();
    let bob_session = w.bob_session.clone();
    let deadline = Duration::from_secs(5);
    let seen = tokio::time::timeout(
        deadline,
        until(&mut w.edge, |m: &ServerToEdge| {
            sessions_of(m).is_some_and(|x| !anna_reaches(x, &anna_session))
        }),
    )
    .await
    .expect("the edge stops releasing anna's target within 5 s");
    assert!(
        bob_reaches(sessions_of(&seen).unwrap(), &bob_session),
        "the other session is untouched: {seen:?}"
    );
    let narrowed = matches!(change, Change::Firewall);
    let m = tokio::time::timeout(
        deadline,
        until(&mut w.anna_client, |m: &ServerToClient| match m {
            ServerToClient::Ended { .. } => true,
            ServerToClient::Update(j) => narrowed && j.devices[0].targets.is_empty(),
            _ => false,
        }),
    )
    .await
    .expect("anna's client is told within 5 s");
    match (narrowed, m) {
        (false, ServerToClient::Ended { reason }) => assert_eq!(reason, "access_revoked"),
        (true, ServerToClient::Update(_)) => {}
        (_, got) => panic!("{change:?}: unexpected {got:?}"),
    }
    // Bob's tunnel is still open and his client was told nothing but updates.
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tunnels WHERE session_id = $1 AND ended_at IS NULL",
    )
    .bind(&w.bob_session)
    .fetch_one(&w.l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(open, 1);
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
    let (audit, cause) = change.audited();
    let (_, entries) =
        w.l.app
            .get(&format!("/api/v1/audit?action={audit}"), &w.acct.admin)
            .await;
    let entries = entries.as_array().unwrap();
    let e = entries
        .iter()
        .find(|e| e["object"] == format!("session:{}", w.anna_session))
        .unwrap_or_else(|| panic!("no {audit} entry: {entries:?}"));
    assert_eq!(e["details"]["cause"], cause, "{e}");
    assert!(
        !entries
            .iter()
            .any(|e| e["object"] == format!("session:{}", w.bob_session)),
        "nothing was cut from bob's session: {entries:?}"
    );
}

/// The id of anna's group's grant.
async fn grant_id(w: &World) -> String {
    let (_, grants) = w.l.app.get("/api/v1/grants", &w.acct.admin).await;
    grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group_id"] == w.anna_group.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn a_role_without_sessions_cuts_the_users_tunnels(app: TestApp) {
    revocation_case(app, Change::Role).await;
}

async fn removal_from_the_group_cuts_the_users_tunnels(app: TestApp) {
    revocation_case(app, Change::GroupMember).await;
}

async fn a_deleted_grant_cuts_the_users_tunnels(app: TestApp) {
    revocation_case(app, Change::Grant).await;
}

async fn a_lower_grant_level_cuts_the_users_tunnels(app: TestApp) {
    revocation_case(app, Change::LowerLevel).await;
}

async fn a_pool_losing_the_device_cuts_the_users_tunnels(app: TestApp) {
    revocation_case(app, Change::Pool).await;
}

async fn a_narrower_firewall_narrows_the_session_on_the_edge(app: TestApp) {
    revocation_case(app, Change::Firewall).await;
}

async fn a_nat_change_reaches_the_edge_and_the_clients_at_once(app: TestApp) {
    let mut w = world(app).await;
    let nat = json!([{"real": "192.168.1.0/24", "virtual_subnet": "10.77.1.0/24"}]);
    let (st, v) =
        w.l.app
            .patch(
                &format!("/api/v1/devices/{}", w.d.id),
                &w.acct.admin,
                json!({ "nat": nat }),
            )
            .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.edge, |m: &ServerToEdge| {
            sessions_of(m).is_some_and(|x| x.len() == 2 && x.iter().all(|s| s.nat.len() == 1))
        }),
    )
    .await
    .expect("the edge gets the new NAT within 5 s");
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.anna_client, |m: &ServerToClient| {
            matches!(m, ServerToClient::Update(_))
        }),
    )
    .await
    .unwrap();
    let ServerToClient::Update(j) = m else {
        unreachable!()
    };
    assert_eq!(j.devices[0].targets[0].to_string(), "tcp:10.77.1.10:502");
    // Taking the mapping away again: the edge runs without it (its forwarder cuts
    // flows to the virtual addresses).
    let (st, _) =
        w.l.app
            .patch(
                &format!("/api/v1/devices/{}", w.d.id),
                &w.acct.admin,
                json!({ "nat": [] }),
            )
            .await;
    assert_eq!(st, StatusCode::OK);
    tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.edge, |m: &ServerToEdge| {
            sessions_of(m).is_some_and(|x| x.len() == 2 && x.iter().all(|s| s.nat.is_empty()))
        }),
    )
    .await
    .expect("the edge loses the NAT within 5 s");
}

async fn a_change_on_one_replica_cuts_a_tunnel_served_by_another(app: TestApp) {
    if app.backend != "postgres" {
        eprintln!("replicas share PostgreSQL; SQLite serves one node: nothing to test here");
        return;
    }
    let store_b = app.reopen_store().await;
    let mut w = world(app).await; // replica A holds the edge and both clients
    let state_b = drawbridge_server::state::AppState::new(
        store_b,
        drawbridge_server::clock::Clock::default(),
        "https://127.0.0.1".into(),
    )
    .await
    .unwrap();
    let app_b = drawbridge_server::app(state_b);
    let req = axum::http::Request::builder()
        .method(Method::DELETE)
        .uri(format!(
            "/api/v1/groups/{}/members/{}",
            w.anna_group, w.anna
        ))
        .header("authorization", format!("Bearer {}", w.acct.admin))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(app_b, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let anna_session = w.anna_session.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.edge, |m: &ServerToEdge| {
            sessions_of(m).is_some_and(|x| !anna_reaches(x, &anna_session))
        }),
    )
    .await
    .expect("the edge on replica A hears of the cut made on replica B within 5 s");
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        until(&mut w.anna_client, |m: &ServerToClient| {
            matches!(m, ServerToClient::Ended { .. })
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        m,
        ServerToClient::Ended {
            reason: "access_revoked".into()
        }
    );
}

async fn the_client_channel_checks_the_role_and_refuses_read_only_tokens(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let _edge = edge(&l, &d, true).await;
    let (s, _c) = running(&l, &acct, &d, 1).await;
    let path = format!("/api/v1/sessions/{s}/channel?key={}", key_query(1));
    // A read-only API token of the very user who joined: refused, and on the record.
    let v = l
        .app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "ro", "expires_in_days": 1, "read_only": true})),
        )
        .await;
    let ro = v["token"].as_str().unwrap();
    assert!(
        l.ws(&path, Some(ro)).await.is_err(),
        "read-only token opened the channel"
    );
    let (_, audit) = l
        .app
        .get("/api/v1/audit?action=session.channel", &acct.admin)
        .await;
    assert_eq!(audit[0]["result"], "denied", "{audit}");
    // A writable token of the same user opens it.
    let v = l
        .app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "rw", "expires_in_days": 1})),
        )
        .await;
    let rw = v["token"].as_str().unwrap().to_string();
    let mut c = l.ws(&path, Some(&rw)).await.expect("writable token");
    until(&mut c, |m: &ServerToClient| {
        matches!(m, ServerToClient::Update(_))
    })
    .await;
    drop(c);
    // A role that may not use sessions (here set behind the API's back, as a
    // race with a role change would): neither the channel nor join.
    let (anna, anna_token) = l.app.user(&acct, "anna", "user").await;
    l.app
        .grant(&acct, &[&anna], &[&d.id], "full", json!([]))
        .await;
    let s2 = l.app.session(&acct.admin, &d.id, &[&anna]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/start"),
            &anna_token,
            None,
        )
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s2}/join"),
            &anna_token,
            Some(json!({"public_key": wg_key(5)})),
        )
        .await;
    sqlx::query("UPDATE users SET role = 'auditor' WHERE id = $1")
        .bind(&anna)
        .execute(&l.app.state.store.pool)
        .await
        .unwrap();
    let p2 = format!("/api/v1/sessions/{s2}/channel?key={}", key_query(5));
    assert!(
        l.ws(&p2, Some(&anna_token)).await.is_err(),
        "an auditor opened a channel"
    );
    let (st, _) = l
        .app
        .post(
            &format!("/api/v1/sessions/{s2}/join"),
            &anna_token,
            json!({"public_key": wg_key(6)}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "an auditor joined");
}
