//! A WireGuard public key is unique among peers, across accounts: `join`
//! refuses an edge's session key, and an edge's session-key announcement
//! refuses a client's key or another edge's, so nobody can knock a peer off the
//! relay (one connection per key) by reusing its key. Each runs on SQLite and
//! PostgreSQL.

mod common;
mod live_harness;

use axum::http::StatusCode;
use common::TestApp;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use live_harness::*;
use serde_json::json;

store_tests!(a_wireguard_key_in_use_by_one_peer_is_refused_to_every_other,);

/// The edge key stored for (session, device).
async fn edge_key(l: &Live, s: &str, d: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT edge_public_key FROM session_devices WHERE session_id = $1 AND device_id = $2",
    )
    .bind(s)
    .bind(d)
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap()
}

/// Announces `key` for session `s`; returns the server's error code, if any, once it is processed.
async fn announce(l: &Live, ws: &mut Ws, s: &str, d: &str, key: &str) -> Option<String> {
    send(
        ws,
        &EdgeToServer::SessionKey {
            session_id: s.to_string(),
            public_key: key.to_string(),
        },
    )
    .await;
    // Either an error comes back, or the key is stored.
    for _ in 0..100 {
        if edge_key(l, s, d).await.as_deref() == Some(key) {
            return None;
        }
        if let Ok(Some(m)) = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            recv::<ServerToEdge>(ws),
        )
        .await
            && let ServerToEdge::Error { code, .. } = m
        {
            return Some(code);
        }
    }
    panic!("the announcement was neither stored nor refused");
}

async fn a_wireguard_key_in_use_by_one_peer_is_refused_to_every_other(app: TestApp) {
    let l = live(app).await;
    let acme = l.app.account("acme").await;
    let rival = l.app.account("rival").await;
    let d = enrolled(&l, &acme, "press-1").await;
    let r = enrolled(&l, &rival, "press-9").await;
    let mut wd = edge(&l, &d, true).await;
    let mut wr = edge(&l, &r, true).await;
    // acme: a running session, its client joined with key 1, its edge announces key 7.
    let (s, _c) = running(&l, &acme, &d, 1).await;
    assert_eq!(announce(&l, &mut wd, &s, &d.id, &wg_key(7)).await, None);
    // Announcing the same key again for the same session is fine (an edge restart).
    assert_eq!(announce(&l, &mut wd, &s, &d.id, &wg_key(7)).await, None);
    // rival: a running session on its own edge.
    let (s2, _c2) = running(&l, &rival, &r, 2).await;
    // Its edge may not take acme's client key nor acme's edge key.
    for taken in [wg_key(1), wg_key(7)] {
        assert_eq!(
            announce(&l, &mut wr, &s2, &r.id, &taken).await.as_deref(),
            Some("conflict"),
            "an edge took another peer's key"
        );
        assert_eq!(edge_key(&l, &s2, &r.id).await, None, "nothing stored");
    }
    // Its users may not join with acme's edge key either (nor with a client key in use).
    let (s3, _c3) = running(&l, &rival, &r, 3).await;
    for taken in [wg_key(7), wg_key(1)] {
        let (st, v) = l
            .app
            .post(
                &format!("/api/v1/sessions/{s3}/join"),
                &rival.admin,
                json!({"public_key": taken}),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
    }
    // A fresh key works.
    assert_eq!(announce(&l, &mut wr, &s2, &r.id, &wg_key(8)).await, None);
}
