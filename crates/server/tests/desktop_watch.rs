//! Watching a desktop that runs on another replica: the watch origin is fed
//! from the stored recording, from its first byte, then each chunk as it is
//! stored, until the desktop ends; the watcher's own messages change nothing.
//! Over a real TLS WebSocket with the origin's cookie, both stores.

use crate::common;
use crate::live_harness;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::TestApp;
use drawbridge_desktop::recording::HEADER;
use drawbridge_proto::RecordingMode;
use drawbridge_server::desktop::recording::Recording;
use futures_util::{SinkExt, StreamExt};
use live_harness::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

store_tests!(a_watcher_on_another_replica_follows_the_stored_recording);

/// The next binary message, or the close reason (`Err`), within 10 s.
async fn next(ws: &mut Ws) -> Result<Vec<u8>, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return Ok(b.to_vec()),
            Ok(Some(Ok(Message::Close(c)))) => {
                return Err(c.map(|c| c.reason.to_string()).unwrap_or_default());
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => return Err(format!("{other:?}")),
            Err(_) => panic!("nothing from the watch origin within 10 s"),
        }
    }
}

async fn a_watcher_on_another_replica_follows_the_stored_recording(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let (_, auditor) = l.app.user(&acct, "audrey", "auditor").await;
    // A desktop another replica runs: its row and what it stored so far.
    let id = drawbridge_server::secret::new_id();
    sqlx::query(
        "INSERT INTO desktop_recordings (id, account_id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at)
         VALUES ($1, $2, 'sess', 'dev', '192.168.1.20:5900', $3, 0, 'live', 'required', 1, 1)",
    )
    .bind(&id)
    .bind(&acct.id)
    .bind(&acct.admin_id)
    .execute(&l.app.state.store.pool)
    .await
    .unwrap();
    let mut rec = Recording::new(id.clone(), RecordingMode::Required, 16, HEADER);
    rec.record(&bytes::Bytes::copy_from_slice(b"RFB 003.008\n"))
        .unwrap();
    rec.record(&bytes::Bytes::copy_from_slice(b"\x01\x01"))
        .unwrap();
    rec.store(&l.app.state).await.unwrap();

    // The auditor's one-time link, taken by "the browser" for the origin's cookie.
    let opened = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/desktops/{id}/watch"),
            &auditor,
            None,
        )
        .await;
    let url = url::Url::parse(opened["url"].as_str().unwrap()).unwrap();
    let host = url.host_str().unwrap().to_string();
    let enter = Request::builder()
        .uri(format!("{}?{}", url.path(), url.query().unwrap()))
        .header(header::HOST, &host)
        .body(Body::empty())
        .unwrap();
    let res = l.app.app.clone().oneshot(enter).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let connect = |cookie: Option<String>| {
        let mut req = format!("wss://127.0.0.1:{}/.drawbridge/watch", l.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert(header::HOST, host.parse().unwrap());
        if let Some(c) = cookie {
            req.headers_mut().insert(header::COOKIE, c.parse().unwrap());
        }
        let connector = tokio_tungstenite::Connector::Rustls(l.tls.clone());
        async move {
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
                .await
                .map(|(ws, _)| ws)
        }
    };
    // Without the origin's cookie: no stream.
    assert!(
        connect(None).await.is_err(),
        "the watch origin wants its cookie"
    );

    let mut ws = connect(Some(cookie)).await.expect("watch WebSocket");
    assert_eq!(next(&mut ws).await.unwrap(), b"RFB 003.008\n");
    assert_eq!(next(&mut ws).await.unwrap(), b"\x01\x01");
    // What the watcher sends is dropped; the stream goes on.
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into()))
        .await
        .unwrap();
    // The desktop goes on on its replica: each stored chunk follows.
    rec.record(&bytes::Bytes::copy_from_slice(b"frame-2"))
        .unwrap();
    rec.store(&l.app.state).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"frame-2");
    rec.record(&bytes::Bytes::copy_from_slice(b"frame-3"))
        .unwrap();
    rec.record(&bytes::Bytes::copy_from_slice(b"frame-4"))
        .unwrap();
    rec.store(&l.app.state).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"frame-3");
    assert_eq!(next(&mut ws).await.unwrap(), b"frame-4");
    // It ends there: the watcher is told.
    sqlx::query("UPDATE desktop_recordings SET state = 'ended' WHERE id = $1")
        .bind(&id)
        .execute(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Err("the desktop ended".into()));
}
