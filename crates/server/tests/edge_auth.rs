//! Failed edge authentications: limited per remote address before any lookup
//! or signature check, and on the record at most once per device and window,
//! the entry counting the refusals it stands for. Each runs on SQLite and
//! PostgreSQL.

use crate::common;
use crate::live_harness;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::TestApp;
use drawbridge_proto::channel::{EDGE_AUTH_CONTEXT, EdgeToServer, ServerToEdge};
use live_harness::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

store_tests!(a_stranger_hammering_an_edge_id_is_limited_and_recorded_once_with_a_count,);

/// The edge channel opened from `local` (a loopback address of the test's choice).
async fn channel_from(l: &Live, local: &str) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = sock
        .connect(format!("127.0.0.1:{}", l.port).parse().unwrap())
        .await
        .unwrap();
    let req = format!("wss://127.0.0.1:{}/api/v1/edge/channel", l.port)
        .into_client_request()
        .unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(l.tls.clone());
    tokio_tungstenite::client_async_tls_with_config(req, stream, None, Some(connector))
        .await
        .unwrap()
        .0
}

/// Answers the challenge for `d`, with its key when `good`, and returns the
/// server's answer (`welcome`, or the error code).
async fn authenticate(ws: &mut Ws, d: &Device, good: bool) -> String {
    let ServerToEdge::Challenge { nonce } = recv(ws).await.unwrap() else {
        panic!("challenge first")
    };
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(d.id.as_bytes());
    let signature = if good {
        STANDARD.encode(d.key.sign(&msg).as_ref())
    } else {
        STANDARD.encode([7u8; 64])
    };
    send(
        ws,
        &EdgeToServer::Auth {
            device_id: d.id.clone(),
            signature,
        },
    )
    .await;
    match recv::<ServerToEdge>(ws).await {
        Some(ServerToEdge::Welcome { .. }) => "welcome".into(),
        Some(ServerToEdge::Error { code, .. }) => code,
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn auth_entries(l: &Live) -> Vec<(i64, i64)> {
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_log WHERE action = 'device.auth' ORDER BY seq")
            .fetch_all(&l.app.state.store.pool)
            .await
            .unwrap();
    let account: String =
        sqlx::query_scalar("SELECT account_id FROM audit_log WHERE action = 'device.auth'")
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap();
    let mut out = Vec::new();
    for s in seqs {
        let n = drawbridge_server::audit::coalesced_count(&l.app.state.store, &account, s)
            .await
            .unwrap();
        out.push((s, n));
    }
    out
}

async fn a_stranger_hammering_an_edge_id_is_limited_and_recorded_once_with_a_count(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    for _ in 0..30 {
        let mut ws = channel_from(&l, "127.0.0.1").await;
        assert_eq!(authenticate(&mut ws, &d, false).await, "unauthenticated");
    }
    let entries = auth_entries(&l).await;
    assert_eq!(entries.len(), 1, "one entry for 30 failures: {entries:?}");
    assert_eq!(
        entries[0].1, 30,
        "the entry counts the failures it stands for"
    );
    // The count is shown where entries are read: the API's page (also the
    // client's `audit export`) and the server's JSON-lines and CSV exports.
    let account: String =
        sqlx::query_scalar("SELECT account_id FROM audit_log WHERE action = 'device.auth'")
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap();
    let q = drawbridge_proto::api::AuditQuery {
        action: Some("device.auth".into()),
        ..Default::default()
    };
    let page = drawbridge_server::audit::query_page(&l.app.state.store, &account, &q)
        .await
        .unwrap();
    let rep = page.entries[0]
        .repeated
        .clone()
        .expect("the entry shows its count");
    assert_eq!(rep.count, 30);
    assert!(rep.first <= rep.last && rep.first == page.entries[0].time);
    let all = drawbridge_server::audit::query_all(&l.app.state.store, &account, &q)
        .await
        .unwrap();
    let jsonl = drawbridge_server::audit::to_jsonl(&all);
    assert!(jsonl.contains("\"repeated\":{\"count\":30"), "{jsonl}");
    let csv = drawbridge_server::audit::to_csv(&all);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",repeated,repeated_last"),
        "{csv}"
    );
    assert!(csv.lines().nth(1).unwrap().contains(",30,"), "{csv}");
    // The address soon runs out of attempts, with a clear refusal.
    let mut limited = false;
    for _ in 0..100 {
        let mut ws = channel_from(&l, "127.0.0.1").await;
        if authenticate(&mut ws, &d, false).await == "rate_limited" {
            limited = true;
            break;
        }
    }
    assert!(limited, "the address is refused once over its allowance");
    // Even the right key is refused from the limited address ...
    let mut ws = channel_from(&l, "127.0.0.1").await;
    assert_eq!(authenticate(&mut ws, &d, true).await, "rate_limited");
    assert_eq!(auth_entries(&l).await.len(), 1, "still one entry");
    // ... while the edge itself, from its own address, gets in.
    let mut ws = channel_from(&l, "127.0.0.2").await;
    assert_eq!(authenticate(&mut ws, &d, true).await, "welcome");
}
