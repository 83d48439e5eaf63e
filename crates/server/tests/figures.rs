//! Tunnel figures on the record come from the edge (what it forwarded), never
//! from what a client reports, and a client's reports cannot keep a session
//! from its idle timeout. Each runs on SQLite and PostgreSQL.

mod common;
mod live_harness;

use common::TestApp;
use drawbridge_proto::channel::{ClientToServer, EdgeToServer, TunnelReport};
use live_harness::*;
use std::time::Duration;

store_tests!(client_reports_neither_set_the_figures_nor_keep_a_session_alive,);

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
