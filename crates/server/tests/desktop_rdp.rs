//! RDP desktops without a browser, over a real TLS WebSocket with the
//! origin's cookie, both stores: the desktop origin's page (or how to install
//! IronRDP) and its files under the RDP policy; the RDCleanPath WebSocket
//! refuses a page elsewhere (403), a wrong or reused ticket (401) with error
//! PDUs the web client reads; and a recorded RDP desktop is watched and
//! replayed as a gateway would answer: nothing before the client's request,
//! then the recorded response and stream. Stored RDP credentials (user name,
//! password, domain) are sealed, never shown, set by admins only (also 30 at
//! once), bounded, kept apart from VNC passwords, and the page then asks for
//! none. The bridge to a real RDP server runs
//! in `crates/edge/tests/desktop_rdp.rs`.

use crate::common;
use crate::live_harness;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::TestApp;
use drawbridge_desktop::rdp::rdcleanpath::RDCleanPathPdu;
use drawbridge_desktop::recording::RDP_HEADER;
use drawbridge_proto::RecordingMode;
use drawbridge_server::desktop::recording::Recording;
use futures_util::{SinkExt, StreamExt};
use live_harness::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceExt;

store_tests!(
    the_rdcleanpath_websocket_wants_this_pages_origin_and_a_one_time_ticket,
    a_recorded_rdp_desktop_is_watched_and_replayed_as_a_gateway_answers,
    rdp_credentials_are_stored_sealed_never_shown_and_only_by_admins,
);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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
            Err(_) => panic!("nothing from the origin within 10 s"),
        }
    }
}

/// The HTTP status in an RDCleanPath error PDU.
fn error_status(pdu: &[u8]) -> Option<u16> {
    RDCleanPathPdu::from_der(pdu).ok()?.error?.http_status_code
}

fn request(ticket: &str) -> Vec<u8> {
    let cr =
        b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x01\x00\x00\x00".to_vec();
    RDCleanPathPdu::new_request(cr, "desktop".into(), ticket.into(), None)
        .unwrap()
        .to_der()
        .unwrap()
}

/// An origin entered as a browser does: its host and cookie.
async fn enter(app: &TestApp, url: &str) -> (String, String) {
    let url = url::Url::parse(url).unwrap();
    let host = url.host_str().unwrap().to_string();
    let enter = Request::builder()
        .uri(format!("{}?{}", url.path(), url.query().unwrap()))
        .header(header::HOST, &host)
        .body(Body::empty())
        .unwrap();
    let res = app.app.clone().oneshot(enter).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (host, cookie)
}

/// GET `path` on the origin: status, headers, body (as text).
async fn get(
    app: &TestApp,
    host: &str,
    cookie: &str,
    path: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let (s, h, body) = get_bytes(app, host, cookie, path).await;
    (s, h, String::from_utf8_lossy(&body).into_owned())
}

/// GET `path` on the origin: status, headers, body.
async fn get_bytes(
    app: &TestApp,
    host: &str,
    cookie: &str,
    path: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::builder()
        .uri(path)
        .header(header::HOST, host)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    (parts.status, parts.headers, body.to_vec())
}

async fn ws(l: &Live, host: &str, cookie: &str, path: &str, origin: Option<&str>) -> Ws {
    let mut req = format!("wss://127.0.0.1:{}{path}", l.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(header::HOST, host.parse().unwrap());
    req.headers_mut()
        .insert(header::COOKIE, cookie.parse().unwrap());
    if let Some(o) = origin {
        req.headers_mut().insert(header::ORIGIN, o.parse().unwrap());
    }
    let connector = tokio_tungstenite::Connector::Rustls(l.tls.clone());
    tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
        .await
        .map(|(ws, _)| ws)
        .expect("WebSocket")
}

async fn the_rdcleanpath_websocket_wants_this_pages_origin_and_a_one_time_ticket(app: TestApp) {
    let l = live(app).await;
    let app = &l.app;
    let acct = app.account("acme").await;
    let (dev, _) = app.device(&acct, "hmi").await;
    app.ok(
        Method::PATCH,
        &format!("/api/v1/devices/{dev}"),
        &acct.admin,
        Some(json!({
            "firewall": [{"address": "192.168.1.30", "protocol": "tcp", "ports": "3389"}],
            "web_services": [{"target": "192.168.1.30:3389", "scheme": "rdp"}],
        })),
    )
    .await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(json!({
                "name": "rdp",
                "devices": [{"device_id": dev, "targets": [{"address": "192.168.1.30", "protocol": "tcp", "ports": "3389"}]}],
                "users": [acct.admin_id],
            })),
        )
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    app.edge_state(&dev, true, true).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{session}/start"),
        &acct.admin,
        None,
    )
    .await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{session}/web"),
            &acct.admin,
            Some(json!({"device_id": dev, "target": "192.168.1.30:3389"})),
        )
        .await;
    let (host, cookie) = enter(app, v["url"].as_str().unwrap()).await;
    let origin = format!("https://{host}");

    // Without IronRDP on the server the page says how to install it.
    app.state.web.set_ironrdp(None);
    let (s, _, page) = get(app, &host, &cookie, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("npm install @devolutions/iron-remote-desktop@0.11.0"),
        "{page}"
    );
    // With it: our page, and its files under a policy that lets its WebAssembly run.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("iron-remote-desktop.js"),
        "export const ui = 1;",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("iron-remote-desktop-rdp.js"),
        "export const rdp = 1;",
    )
    .unwrap();
    app.state
        .web
        .set_ironrdp(drawbridge_server::desktop::rdp::ironrdp_in(dir.path()));
    let (s, h, page) = get(app, &host, &cookie, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("/.drawbridge/rdp-viewer.js"), "{page}");
    assert!(page.contains("data-mode=\"desktop\"") && page.contains("data-view-only=\"false\""));
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (s, _, js) = get(
        app,
        &host,
        &cookie,
        "/.drawbridge/ironrdp/iron-remote-desktop-rdp.js",
    )
    .await;
    assert_eq!((s, js.as_str()), (StatusCode::OK, "export const rdp = 1;"));
    let (s, _, _) = get(app, &host, &cookie, "/.drawbridge/ironrdp/../secret").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A page elsewhere (no or another Origin) is refused before anything else.
    for other in [None, Some("https://evil.example")] {
        let mut w = ws(&l, &host, &cookie, "/.drawbridge/rdcleanpath", other).await;
        assert_eq!(error_status(&next(&mut w).await.unwrap()), Some(403));
        assert!(next(&mut w).await.unwrap_err().contains("own page"));
    }
    // A ticket that is not this page's: 401, in an error PDU and the close reason.
    let mut w = ws(
        &l,
        &host,
        &cookie,
        "/.drawbridge/rdcleanpath",
        Some(&origin),
    )
    .await;
    w.send(Message::Binary(request("dbt_made-up").into()))
        .await
        .unwrap();
    assert_eq!(error_status(&next(&mut w).await.unwrap()), Some(401));
    assert!(next(&mut w).await.unwrap_err().contains("ticket"));
    // A real one passes (the RDP server is not reachable here: some later
    // refusal), once: used again it is refused like a made-up one.
    let (s, _, ticket) = get(app, &host, &cookie, "/.drawbridge/rdp-ticket").await;
    assert_eq!(s, StatusCode::OK);
    let mut w = ws(
        &l,
        &host,
        &cookie,
        "/.drawbridge/rdcleanpath",
        Some(&origin),
    )
    .await;
    w.send(Message::Binary(request(&ticket).into()))
        .await
        .unwrap();
    let first = next(&mut w).await.unwrap();
    assert_ne!(error_status(&first), Some(401), "the ticket was taken");
    let mut w = ws(
        &l,
        &host,
        &cookie,
        "/.drawbridge/rdcleanpath",
        Some(&origin),
    )
    .await;
    w.send(Message::Binary(request(&ticket).into()))
        .await
        .unwrap();
    assert_eq!(error_status(&next(&mut w).await.unwrap()), Some(401));
    // Not RDCleanPath at all: 400.
    let mut w = ws(
        &l,
        &host,
        &cookie,
        "/.drawbridge/rdcleanpath",
        Some(&origin),
    )
    .await;
    w.send(Message::Binary(b"\x00\x00garbage".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(error_status(&next(&mut w).await.unwrap()), Some(400));
}

async fn a_recorded_rdp_desktop_is_watched_and_replayed_as_a_gateway_answers(app: TestApp) {
    let l = live(app).await;
    let app = &l.app;
    let acct = app.account("acme").await;
    let (_, auditor) = app.user(&acct, "audrey", "auditor").await;
    // An RDP desktop another replica runs: its row and what it stored so far.
    // The watch is opened before the writer surely stored the first chunk:
    // the row alone says it is RDP.
    let id = drawbridge_server::secret::new_id();
    sqlx::query(
        "INSERT INTO desktop_recordings (id, account_id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at, protocol)
         VALUES ($1, $2, 'sess', 'dev', '192.168.1.30:3389', $3, 0, 'live', 'required', 1, 1, 'rdp')",
    )
    .bind(&id)
    .bind(&acct.id)
    .bind(&acct.admin_id)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
    let response =
        RDCleanPathPdu::new_response("192.168.1.30:3389".into(), vec![3, 0, 0, 4], [vec![0x30]])
            .unwrap()
            .to_der()
            .unwrap();
    let mut rec = Recording::new(id.clone(), RecordingMode::Required, 16, RDP_HEADER);
    rec.record(&bytes::Bytes::copy_from_slice(&response))
        .unwrap();
    rec.record(&bytes::Bytes::copy_from_slice(b"\x03\x00\x00\x08mcs1"))
        .unwrap();
    rec.store(&app.state).await.unwrap();

    let opened = app
        .ok(
            Method::POST,
            &format!("/api/v1/desktops/{id}/watch"),
            &auditor,
            None,
        )
        .await;
    let (host, cookie) = enter(app, opened["url"].as_str().unwrap()).await;
    let origin = format!("https://{host}");
    let (_, _, page) = get(app, &host, &cookie, "/").await;
    assert!(
        page.contains("rdp-viewer.js") || page.contains("npm install"),
        "an RDP desktop's watch origin serves the RDP viewer: {page}"
    );
    let mut w = ws(&l, &host, &cookie, "/.drawbridge/watch", Some(&origin)).await;
    // Nothing before the client's request (it sends first, as to a gateway).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), w.next())
            .await
            .is_err(),
        "the watch origin spoke before the client"
    );
    w.send(Message::Binary(request("watch").into()))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.unwrap(), response);
    assert_eq!(next(&mut w).await.unwrap(), b"\x03\x00\x00\x08mcs1");
    // Input is dropped; stored chunks follow; the end is told.
    w.send(Message::Binary(b"\x04\x04\x00\x1e".to_vec().into()))
        .await
        .unwrap();
    rec.record(&bytes::Bytes::copy_from_slice(b"frame-2"))
        .unwrap();
    rec.store(&app.state).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap(), b"frame-2");
    let sha = rec.finish().await;
    sqlx::query("UPDATE desktop_recordings SET state = 'ended', sha256 = $1 WHERE id = $2")
        .bind(&sha)
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(next(&mut w).await, Err("the desktop ended".into()));

    // Replayed: the player's figures, then the client answered from the recording.
    let opened = app
        .ok(
            Method::POST,
            &format!("/api/v1/desktops/{id}/replay"),
            &auditor,
            None,
        )
        .await;
    let (host, cookie) = enter(app, opened["url"].as_str().unwrap()).await;
    let (s, _, info) = get(app, &host, &cookie, "/.drawbridge/replay-info").await;
    assert_eq!(s, StatusCode::OK, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["intact"], true, "{info}");
    let mut w = ws(
        &l,
        &host,
        &cookie,
        "/.drawbridge/replay?from=0",
        Some(&format!("https://{host}")),
    )
    .await;
    w.send(Message::Binary(request("replay").into()))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.unwrap(), response);
    assert_eq!(next(&mut w).await.unwrap(), b"\x03\x00\x00\x08mcs1");
    assert_eq!(next(&mut w).await.unwrap(), b"frame-2");
    let (s, h, file) = get_bytes(app, &host, &cookie, "/.drawbridge/recording?download=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-recording-sha256"], sha.clone().unwrap().as_str());
    use sha2::Digest;
    assert_eq!(Some(hex::encode(sha2::Sha256::digest(&file))), sha);
    let mut stream = Vec::new();
    std::io::Read::read_to_end(
        &mut lz4_flex::frame::FrameDecoder::new(&file[..]),
        &mut stream,
    )
    .unwrap();
    assert!(stream.starts_with(b"DBRDP1\n"));
}

async fn rdp_credentials_are_stored_sealed_never_shown_and_only_by_admins(app: TestApp) {
    let acct = app.account("acme").await;
    let (dev, _) = app.device(&acct, "hmi").await;
    let services = json!({
        "firewall": [{"address": "192.168.1.30", "protocol": "tcp", "ports": "3389"},
                     {"address": "192.168.1.20", "protocol": "tcp", "ports": "5900"}],
        "web_services": [{"target": "192.168.1.30:3389", "scheme": "rdp"},
                         {"target": "192.168.1.20:5900", "scheme": "vnc"}],
    });
    app.ok(
        Method::PATCH,
        &format!("/api/v1/devices/{dev}"),
        &acct.admin,
        Some(services.clone()),
    )
    .await;
    let path = format!("/api/v1/devices/{dev}/desktop-passwords");
    let (user, password, domain) = ("plant-operator", "Rdp-Secret-9", "PLANTDOM");
    let rdp = |u: Value, p: Value, d: Value| json!({"target": "192.168.1.30:3389", "username": u, "password": p, "domain": d});

    // Bad input, each refused and nothing stored: no or an empty user name,
    // an empty password, 256 UTF-16 units (a character outside the BMP counts
    // two), control characters, a user name for VNC or to forget, unknown fields.
    let long = "x".repeat(256);
    let astral = "😀".repeat(128);
    for body in [
        rdp(Value::Null, json!(password), Value::Null),
        rdp(json!(""), json!(password), Value::Null),
        rdp(json!(user), json!(""), Value::Null),
        rdp(json!(long), json!(password), Value::Null),
        rdp(json!(user), json!(long), Value::Null),
        rdp(json!(user), json!(astral), Value::Null),
        rdp(json!(user), json!(password), json!(long)),
        rdp(json!("a\tb"), json!(password), Value::Null),
        rdp(json!(user), json!("a\u{0}b"), Value::Null),
        rdp(json!(user), json!(password), json!("D\nX")),
        rdp(json!(user), Value::Null, Value::Null),
        json!({"target": "192.168.1.20:5900", "username": user, "password": password}),
        json!({"target": "192.168.1.30:3389", "user": user, "password": password}),
    ] {
        let (s, v) = app
            .call(Method::PUT, &path, Some(&acct.admin), Some(body.clone()))
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {s} {v}"
        );
        assert!(!v.to_string().contains(password), "{v}");
    }
    assert_eq!(app.count("desktop_passwords").await, 0);
    // The longest there may be: 255 units each.
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(rdp(
                json!("u".repeat(255)),
                json!("😀".repeat(127)),
                json!("d".repeat(255)),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    // Not an admin: refused.
    let (_, sadmin) = app.user(&acct, "ursula", "session_admin").await;
    let (s, _) = app
        .call(
            Method::PUT,
            &path,
            Some(&sadmin),
            Some(rdp(json!("mallory"), json!(password), Value::Null)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // 30 admins' writes at once: one row, no error; then the real ones.
    let mut calls = Vec::new();
    for i in 0..30 {
        let (app, path, token) = (&app, &path, &acct.admin);
        let body = rdp(
            json!(format!("{user}-{i}")),
            json!(format!("{password}-{i}")),
            Value::Null,
        );
        calls.push(async move { app.call(Method::PUT, path, Some(token), Some(body)).await });
    }
    for (s, v) in futures_util::future::join_all(calls).await {
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    assert_eq!(app.count("desktop_passwords").await, 1);
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(rdp(json!(user), json!(password), json!(domain))),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    // Listed by target only; sealed at rest (user and domain too); opened for
    // the bridge as RDP credentials, never as a VNC password.
    let listed = app.ok(Method::GET, &path, &acct.admin, None).await;
    assert_eq!(listed, json!(["192.168.1.30:3389"]));
    let (sealed, kind): (String, String) =
        sqlx::query_as("SELECT sealed, kind FROM desktop_passwords")
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(kind, "rdp");
    assert!(drawbridge_server::sealed::is_sealed(&sealed));
    for secret in [user, password, domain] {
        assert!(!sealed.contains(secret), "{secret} is sealed at rest");
    }
    let target = "192.168.1.30:3389".parse().unwrap();
    let mut conn = app.state.store.pool.acquire().await.unwrap();
    let opened =
        drawbridge_server::desktop::stored_rdp_credentials(&app.state, &mut conn, &dev, target)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        (
            opened.username.as_str(),
            opened.password.as_str(),
            opened.domain.as_str()
        ),
        (user, password, domain)
    );
    assert!(!format!("{opened:?}").contains(password));
    assert_eq!(
        drawbridge_server::desktop::stored_password(&app.state, &mut conn, &dev, target)
            .await
            .unwrap(),
        None,
        "RDP credentials are no VNC password"
    );
    // Relabelled as a VNC password, the sealed value does not open.
    sqlx::query("UPDATE desktop_passwords SET kind = 'vnc'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(
        drawbridge_server::desktop::stored_password(&app.state, &mut conn, &dev, target)
            .await
            .is_err()
    );
    sqlx::query("UPDATE desktop_passwords SET kind = 'rdp'")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    // Nothing else shows them: the device, the audit log (which says RDP).
    let device = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{dev}"),
            &acct.admin,
            None,
        )
        .await;
    let audit = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=desktop.password",
            &acct.admin,
            None,
        )
        .await;
    for text in [device.to_string(), audit.to_string()] {
        for secret in [user, password, domain] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert!(
        audit.to_string().contains("\"protocol\":\"rdp\""),
        "{audit}"
    );

    // The desktop's page asks for nothing: the server signs in.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(json!({
                "name": "rdp",
                "devices": [{"device_id": dev, "targets": [{"address": "192.168.1.30", "protocol": "tcp", "ports": "3389"}]}],
                "users": [acct.admin_id],
            })),
        )
        .await;
    let session = v["id"].as_str().unwrap().to_string();
    app.edge_state(&dev, true, true).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{session}/start"),
        &acct.admin,
        None,
    )
    .await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{session}/web"),
            &acct.admin,
            Some(json!({"device_id": dev, "target": "192.168.1.30:3389"})),
        )
        .await;
    let (host, cookie) = enter(&app, v["url"].as_str().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("iron-remote-desktop.js"), "").unwrap();
    std::fs::write(dir.path().join("iron-remote-desktop-rdp.js"), "").unwrap();
    app.state
        .web
        .set_ironrdp(drawbridge_server::desktop::rdp::ironrdp_in(dir.path()));
    let (s, _, page) = get(&app, &host, &cookie, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("data-stored=\"true\""), "{page}");
    for secret in [user, password, domain] {
        assert!(!page.contains(secret));
    }

    // Forgotten with null: listed no more, and the page asks again.
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(json!({"target": "192.168.1.30:3389", "password": null})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        app.ok(Method::GET, &path, &acct.admin, None).await,
        json!([])
    );
    let (_, _, page) = get(&app, &host, &cookie, "/").await;
    assert!(page.contains("data-stored=\"false\""), "{page}");

    // A VNC password stays one when its target becomes an RDP desktop: not
    // listed or used for RDP.
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(json!({"target": "192.168.1.20:5900", "password": "vnc-pass"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let mut services = services;
    services["web_services"][1]["scheme"] = json!("rdp");
    app.ok(
        Method::PATCH,
        &format!("/api/v1/devices/{dev}"),
        &acct.admin,
        Some(services),
    )
    .await;
    assert_eq!(
        app.ok(Method::GET, &path, &acct.admin, None).await,
        json!([])
    );
    let mut conn = app.state.store.pool.acquire().await.unwrap();
    let vnc_target = "192.168.1.20:5900".parse().unwrap();
    assert!(
        drawbridge_server::desktop::stored_rdp_credentials(&app.state, &mut conn, &dev, vnc_target)
            .await
            .unwrap()
            .is_none()
    );
}
