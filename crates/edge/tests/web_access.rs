//! Browser access with the real binaries on loopback: the real server joins
//! the session as a peer of its own and proxies HTTP, through the real edge,
//! to an "HMI" web server on 127.0.0.1 (with a cookie of its own, a redirect
//! to its own address and a WebSocket echo). A plain HTTP client (reqwest) and
//! a WebSocket client (tokio-tungstenite) play the browser and the IoT
//! software.

use crate::common;

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The HMI: `/` sets a cookie for a parent domain, `/headers` shows what it
/// got, `/go` redirects to its own address, `/ws` echoes.
fn hmi(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                (
                    [(
                        "set-cookie",
                        "hmi_session=abc; Domain=web.localhost; Path=/; HttpOnly",
                    )],
                    "<h1>HMI press-1</h1>",
                )
            }),
        )
        .route(
            "/headers",
            axum::routing::get(|h: HeaderMap| async move {
                let m: serde_json::Map<String, Value> = h
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value::String(v.to_str().unwrap_or("").into()),
                        )
                    })
                    .collect();
                axum::Json(Value::Object(m))
            }),
        )
        .route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body }),
        )
        .route(
            "/go",
            axum::routing::get(move || async move {
                (
                    axum::http::StatusCode::FOUND,
                    [("location", format!("http://{addr}/landed"))],
                )
            }),
        )
        .route(
            "/ws",
            axum::routing::get(|ws: WebSocketUpgrade| async {
                ws.on_upgrade(|mut s| async move {
                    while let Some(Ok(m)) = s.recv().await {
                        if let AxMessage::Text(t) = m
                            && s.send(AxMessage::Text(format!("echo {t}").into()))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                })
                .into_response()
            }),
        );
    rt.spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[test]
fn a_device_page_opens_on_its_own_origin_and_nothing_of_ours_reaches_the_device() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let web = hmi(&rt);
    let other = hmi(&rt); // on the same "LAN", not released
    let (sid, _agent) = lan_session(&api, &device, &state, &[web.port()], json!([]));

    // A port that is not released cannot be opened.
    let (code, v) = api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": other.to_string()}),
    );
    assert_eq!(code, 400, "{v}");

    let (code, v) = api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": web.to_string()}),
    );
    assert_eq!(code, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let origin = v["origin"].as_str().unwrap().to_string();
    let host = origin_host(&origin);
    assert!(host.ends_with(".web.localhost"), "{host}");
    let b = web_browser(&server, &host);

    // Without the cookie the origin lets nobody in.
    let r = b.get(format!("{origin}/")).send().unwrap();
    assert_eq!(r.status(), 401);
    // The handoff: once, and it sets a __Host- cookie for this origin only.
    let r = b.get(&url).send().unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("__Host-drawbridge-web=")
            && set.contains("Secure")
            && set.contains("HttpOnly")
            && set.contains("Path=/")
            && !set.to_ascii_lowercase().contains("domain"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert_eq!(
        b.get(&url).send().unwrap().status(),
        403,
        "a handoff works once"
    );

    // The page, through the server's own peer and the edge.
    let r = b
        .get(format!("{origin}/"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let device_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert_eq!(
        device_cookie, "hmi_session=abc; Path=/; HttpOnly",
        "a device cookie stays on its origin"
    );
    assert!(r.text().unwrap().contains("HMI press-1"));

    // What the device gets: its own Host, none of our credentials.
    let seen: Value = b
        .get(format!("{origin}/headers"))
        .header(
            "cookie",
            format!("{cookie}; hmi_session=abc; db_session=dbs_portal"),
        )
        .header("authorization", format!("Bearer {}", api.token))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(seen["host"], web.to_string());
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["cookie"], "hmi_session=abc", "{seen}");

    // A body streamed without a length (chunked) goes to the device and back, byte for byte.
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let r = b
        .post(format!("{origin}/echo"))
        .header("cookie", &cookie)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            payload.clone(),
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), payload.as_slice());

    // A redirect to the device's own address lands on its origin.
    let r = b
        .get(format!("{origin}/go"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{origin}/landed")
    );

    // The cookie is this origin's only: another label does not take it.
    let stranger = format!("{}.web.localhost", "a".repeat(20));
    let r = web_browser(&server, &stranger)
        .get(format!("https://{stranger}:{}/", server.port))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // A device page cannot call the API, even with a token it stole.
    let r = b
        .get(format!("{}/api/v1/me", server.url()))
        .header("origin", &origin)
        .bearer_auth(&api.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);

    // WebSocket through the origin.
    let ca = std::fs::read(server.data.join("ca.pem")).unwrap();
    let echoed = rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("wss://{host}:{}/ws", server.port)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
            req,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
                tls,
            ))),
        )
        .await
        .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => t.to_string(),
            other => panic!("no echo: {other:?}"),
        }
    });
    assert_eq!(echoed, "echo hello");

    // Software with an API token: the same device through the API route.
    let r = api
        .http
        .get(format!(
            "{}/api/v1/sessions/{sid}/devices/{device}/http/{web}/headers",
            server.url()
        ))
        .bearer_auth(&api.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "the device never sees the API token: {seen}"
    );
    let r = api
        .http
        .get(format!(
            "{}/api/v1/sessions/{sid}/devices/{device}/http/{other}/headers",
            server.url()
        ))
        .bearer_auth(&api.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "a port that is not released");

    // The browser's tunnel is on the record like any other.
    let audit = api.get("/audit?action=tunnel.up");
    assert!(audit.to_string().contains("tunnel.up"), "{audit}");

    // Another user of the account, not assigned to this session, opens nothing.
    let (code, v) = api.post(
        "/users",
        json!({"username": "bob", "role": "user", "password": PASSWORD}),
    );
    assert_eq!(code, 200, "{v}");
    let bob: Value = api
        .http
        .post(format!("{}/api/v1/auth/login", server.url()))
        .json(&json!({"account": "acme", "username": "bob", "password": PASSWORD}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let bob = bob["token"].as_str().unwrap().to_string();
    let r = api
        .http
        .post(format!("{}/api/v1/sessions/{sid}/web", server.url()))
        .bearer_auth(&bob)
        .json(&json!({"device_id": device, "target": web.to_string()}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "a user of no session reaches its devices");
    let r = api
        .http
        .get(format!(
            "{}/api/v1/sessions/{sid}/devices/{device}/http/{web}/",
            server.url()
        ))
        .bearer_auth(&bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // Thirty opens of the same page at once: one origin, thirty entry links,
    // each taking a browser in exactly once.
    let opens: Vec<_> = (0..30)
        .map(|_| {
            let (http, base, token) = (api.http.clone(), api.base.clone(), api.token.clone());
            let body = json!({"device_id": device, "target": web.to_string()});
            let sid = sid.clone();
            std::thread::spawn(move || {
                let r = http
                    .post(format!("{base}/api/v1/sessions/{sid}/web"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().unwrap()
            })
        })
        .collect();
    let opened: Vec<Value> = opens.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        opened.iter().all(|o| o["origin"] == origin.as_str()),
        "one origin per (session, device, target, user)"
    );
    for o in &opened {
        let url = o["url"].as_str().unwrap();
        assert_eq!(b.get(url).send().unwrap().status(), 303);
        assert_eq!(b.get(url).send().unwrap().status(), 403, "once only");
    }

    // Each proxied request is counted for the session, with its bytes.
    wait("the session counts the proxied requests", || {
        let v = api.get(&format!("/sessions/{sid}"));
        v["web_requests"].as_i64().unwrap_or(0) >= 5 && v["web_bytes"].as_i64().unwrap_or(0) > 100
    });

    // Ending the session closes the origin within 5 s.
    let (code, v) = api.post(&format!("/sessions/{sid}/end"), json!({}));
    assert_eq!(code, 200, "{v}");
    let ended = Instant::now();
    loop {
        let r = b
            .get(format!("{origin}/"))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        if r.status() != 200 {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "the origin still answers after the session ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
