//! The server's own peer for browser access (web::peer) on the live harness:
//! a browser tunnel nobody uses closes after the session's idle timeout, one
//! in use stays.

use crate::common;
use crate::live_harness;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use drawbridge_proto::channel::ServerToEdge;
use live_harness::*;
use std::time::Duration;
use tower::ServiceExt;

store_tests!(an_unused_browser_tunnel_closes_after_the_session_idle_timeout_and_a_used_one_stays);

/// Open browser tunnels of `session` on the record.
async fn open_tunnels(l: &Live, session: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT client_public_key, user_id FROM tunnels WHERE session_id = $1 AND ended_at IS NULL",
    )
    .bind(session)
    .fetch_all(&l.app.state.store.pool)
    .await
    .unwrap()
}

/// Waits (at most `secs`) until `f` holds.
async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn an_unused_browser_tunnel_closes_after_the_session_idle_timeout_and_a_used_one_stays(
    app: common::TestApp,
) {
    let l = live(app).await;
    // Browser access needs the TLS trust for the server's own relay.
    l.app.state.web.set_tls(l.tls.clone());
    let acct = l.app.account("idle").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut edge_ws = edge(&l, &d, true).await;
    // The admin's own client (key 1) is in the session; it is not the browser's.
    let (s, _client) = running(&l, &acct, &d, 1).await;
    let _ = until(&mut edge_ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| x.first().is_some_and(|x| !x.peers.is_empty()))
    })
    .await;
    let before = open_tunnels(&l, &s).await;
    assert_eq!(before.len(), 1, "{before:?}");

    // Software asks the device's web service through the API: the server joins
    // the session as a peer of its own for this user. The device never answers
    // (no edge carries the tunnel here); the request runs on in the background.
    let router = l.app.app.clone();
    let path = format!(
        "/api/v1/sessions/{s}/devices/{}/http/192.168.1.10:502/index.html",
        d.id
    );
    let token = acct.admin.clone();
    let request = tokio::spawn(async move {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        router.oneshot(req).await.unwrap().status()
    });
    assert!(
        eventually(10, async || open_tunnels(&l, &s).await.len() == 2).await,
        "the browser peer joined"
    );
    assert_eq!(l.app.state.web.peers.len(), 1);
    let browser_key = open_tunnels(&l, &s)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| !before.iter().any(|(b, _)| b == k))
        .unwrap();
    // The device did not answer: a gateway error, and the peer stays.
    let status = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(
        status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT,
        "{status}"
    );

    // Short of the idle timeout (60 minutes by default), the peer stays.
    l.app.clock().advance(59 * 60);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        l.app.state.web.peers.len(),
        1,
        "a peer used 59 minutes ago stays"
    );
    assert_eq!(open_tunnels(&l, &s).await.len(), 2);

    // At the idle timeout it leaves within seconds: the tunnel ends on the record
    // as idle, the session and the other tunnel go on.
    l.app.clock().advance(60);
    assert!(
        eventually(10, async || l.app.state.web.peers.is_empty()).await,
        "an idle browser peer left"
    );
    assert!(
        eventually(10, async || open_tunnels(&l, &s).await == before).await,
        "only the browser's tunnel ended: {:?}",
        open_tunnels(&l, &s).await
    );
    let (reason,): (Option<String>,) = sqlx::query_as(
        "SELECT end_reason FROM tunnels WHERE session_id = $1 AND client_public_key = $2",
    )
    .bind(&s)
    .bind(&browser_key)
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("idle"));
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'tunnel.down' AND details LIKE $1",
    )
    .bind(format!("%{browser_key}%"))
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(n, 1, "one tunnel.down for the browser's tunnel");
    let (state,): (String,) = sqlx::query_as("SELECT state FROM sessions WHERE id = $1")
        .bind(&s)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(state, "active", "the session itself goes on");
}
