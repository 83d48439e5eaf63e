//! Tunnel figures on the record come from the edge (what it forwarded), never
//! from what a client reports, and a client's reports cannot keep a session
//! from its idle timeout. Each runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::Method;
use common::TestApp;
use drawbridge_proto::channel::{ClientToServer, EdgeToServer, TunnelReport};
use live_harness::*;
use serde_json::json;
use std::time::Duration;

store_tests!(
    client_reports_neither_set_the_figures_nor_keep_a_session_alive,
    an_exported_standard_client_gets_tunnel_up_and_down_with_the_edges_figures,
    a_standard_client_cut_by_revocation_gets_tunnel_down_with_the_edges_figures,
);

async fn figures(l: &Live, s: &str) -> (i64, i64, Option<i64>) {
    let b: (i64, i64) = sqlx::query_as(
        "SELECT bytes_to_device, bytes_from_device FROM tunnels WHERE session_id = $1",
    )
    .bind(s)
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap();
    let a: Option<i64> = sqlx::query_scalar("SELECT last_activity FROM sessions WHERE id = $1")
        .bind(s)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    (b.0, b.1, a)
}

fn report(s: &str, bytes: u64) -> TunnelReport {
    TunnelReport {
        session_id: s.to_string(),
        peer: wg_key(1),
        path: "direct".into(),
        reason: "direct ok".into(),
        bytes_to_device: bytes,
        bytes_from_device: bytes,
    }
}

async fn client_reports_neither_set_the_figures_nor_keep_a_session_alive(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let mut ws = edge(&l, &d, true).await;
    let (s, mut c) = running(&l, &acct, &d, 1).await;
    let (_, _, before) = figures(&l, &s).await;
    l.app.clock().advance(60);
    send(&mut c, &ClientToServer::Tunnel(report(&s, 1_000_000))).await;
    // The path shows up (the report was processed) ...
    for _ in 0..100 {
        let p: Option<String> =
            sqlx::query_scalar("SELECT path FROM tunnels WHERE session_id = $1")
                .bind(&s)
                .fetch_one(&l.app.state.store.pool)
                .await
                .unwrap();
        if p.as_deref() == Some("direct") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... but neither the figures nor the activity moved.
    assert_eq!(figures(&l, &s).await, (0, 0, before));
    // The edge's report sets both.
    send(&mut ws, &EdgeToServer::Tunnel(report(&s, 4096))).await;
    for _ in 0..100 {
        if figures(&l, &s).await.0 == 4096 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (to, from, after) = figures(&l, &s).await;
    assert_eq!((to, from), (4096, 4096));
    assert_ne!(after, before, "the edge's traffic counts as activity");
}

/// A running session of `acct` on `d` for `user` (token `user_token`), joined by
/// a standard WireGuard client (key 1) for which the edge reported 2048 bytes
/// each way; 90 s later. Returns the session id and the edge channel.
async fn standard_client_with_traffic(
    l: &Live,
    acct: &common::Account,
    d: &Device,
    user: &str,
    user_token: &str,
) -> (String, Ws) {
    let mut ws = edge(l, d, true).await;
    // The relay's UDP bridge standard clients are pointed at (no packet goes there here).
    *l.app.state.bridge.write().unwrap() = Some("127.0.0.1:51820".into());
    let s = l.app.session(&acct.admin, &d.id, &[user]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            user_token,
            None,
        )
        .await;
    // The edge announces its session key; a standard client (wg-quick) joins.
    send(
        &mut ws,
        &EdgeToServer::SessionKey {
            session_id: s.clone(),
            public_key: wg_key(9),
        },
    )
    .await;
    let mut joined = None;
    let mut last = None;
    for _ in 0..100 {
        let (st, v) = l
            .app
            .post(
                &format!("/api/v1/sessions/{s}/join"),
                user_token,
                json!({"public_key": wg_key(1), "standard_client": true}),
            )
            .await;
        if st.is_success() {
            joined = Some(v);
            break;
        }
        last = Some((st, v));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        joined.is_some(),
        "the standard client joins once the edge's key is known: {last:?}"
    );
    // The edge forwards for it and reports what it forwarded.
    send(&mut ws, &EdgeToServer::Tunnel(report(&s, 2048))).await;
    for _ in 0..100 {
        if figures(l, &s).await.0 == 2048 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    l.app.clock().advance(90);
    (s, ws)
}

/// The session's `tunnel.*` entries, oldest first.
async fn tunnel_entries(l: &Live, acct: &common::Account, s: &str) -> Vec<serde_json::Value> {
    let entries = l
        .app
        .ok(
            Method::GET,
            "/api/v1/audit?action=tunnel.",
            &acct.admin,
            None,
        )
        .await;
    entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object"] == format!("session:{s}"))
        .cloned()
        .collect()
}

/// `tunnel.down` of the standard client: the edge's figures, the duration, the reason.
fn assert_down_with_figures(down: &serde_json::Value, reason: &str) {
    assert_eq!(down["standard_client"], true, "{down}");
    assert_eq!(down["bytes_to_device"], 2048, "{down}");
    assert_eq!(down["bytes_from_device"], 2048, "{down}");
    assert_eq!(down["reason"], reason, "{down}");
    assert!(down["seconds"].as_i64().unwrap() >= 90, "{down}");
}

async fn an_exported_standard_client_gets_tunnel_up_and_down_with_the_edges_figures(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let (s, _ws) = standard_client_with_traffic(&l, &acct, &d, &acct.admin_id, &acct.admin).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            &acct.admin,
            None,
        )
        .await;
    let ours = tunnel_entries(&l, &acct, &s).await;
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["tunnel.up", "tunnel.down"], "{ours:?}");
    // The session's own user ended it.
    assert_down_with_figures(&ours[1]["details"], "user");
}

async fn a_standard_client_cut_by_revocation_gets_tunnel_down_with_the_edges_figures(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let (anna, anna_token) = l.app.user(&acct, "anna", "user").await;
    l.app
        .grant(&acct, &[&anna], &[&d.id], "full", json!([]))
        .await;
    let (s, _ws) = standard_client_with_traffic(&l, &acct, &d, &anna, &anna_token).await;
    // Anna becomes an auditor: her tunnel is cut, the session goes on.
    let (st, v) = l
        .app
        .patch(
            &format!("/api/v1/users/{anna}"),
            &acct.admin,
            json!({"role": "auditor"}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let ours = tunnel_entries(&l, &acct, &s).await;
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec!["tunnel.up", "tunnel.down", "tunnel.cut"],
        "{ours:?}"
    );
    assert_eq!(ours[1]["actor"], format!("user:{anna}"));
    assert_down_with_figures(&ours[1]["details"], "access_revoked");
    // The session's end later writes no second record for the same tunnel.
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/end"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(tunnel_entries(&l, &acct, &s).await.len(), 3);
}
