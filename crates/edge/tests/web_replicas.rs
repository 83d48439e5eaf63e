//! Browser access with two control-plane replicas on one PostgreSQL database
//! (real binaries): a device origin opened through one replica is served by
//! the other, as a load balancer may send the browser anywhere. Each replica
//! joins the session as a peer of its own; the edge, connected to the first,
//! learns the second's peer through PostgreSQL. Needs the test PostgreSQL
//! (`DRAWBRIDGE_TEST_POSTGRES_URL`, set by scripts/test); skips visibly without.

use crate::common;

use common::*;
use serde_json::json;
use sqlx::Connection;
use std::net::SocketAddr;

fn page(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { "<h1>HMI on the LAN</h1>" }),
    );
    rt.spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[test]
fn any_replica_serves_any_device_origin() {
    let Ok(base) = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL") else {
        if std::env::var("DRAWBRIDGE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("DRAWBRIDGE_REQUIRE_POSTGRES=1 but DRAWBRIDGE_TEST_POSTGRES_URL is not set");
        }
        eprintln!(
            "SKIPPED any_replica_serves_any_device_origin: DRAWBRIDGE_TEST_POSTGRES_URL is not set (scripts/test starts a server and sets it)"
        );
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = format!("t_{}", uuid::Uuid::new_v4().simple());
    rt.block_on(async {
        let mut admin = sqlx::postgres::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .unwrap();
    });
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db);
    // Both replicas answer at the first one's public URL (the "load balancer").
    let port_a = free_port();
    let public = format!("https://127.0.0.1:{port_a}");
    let flags = vec![
        "--database".to_string(),
        url.to_string(),
        "--public-url".into(),
        public.clone(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (server_a, api, device, state) = setup_with(dir.path(), port_a, &flags);
    let port_b = free_port();
    let server_b = Server::start_with(&data, port_b, &flags);
    let web = page(&rt);
    let (sid, _agent) = lan_session(&api, &device, &state, &[web.port()], json!([]));
    // Opened through replica A …
    let (code, v) = api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": web.to_string()}),
    );
    assert_eq!(code, 200, "{v}");
    let entry = v["url"].as_str().unwrap().to_string();
    let origin = v["origin"].as_str().unwrap().to_string();
    let host = origin_host(&origin);
    // … entered and served through replica B, which joins as its own peer.
    // (A client's name override keeps the URL's port: B's port goes into the URL.)
    let via_b = |u: &str| u.replacen(&format!(":{port_a}"), &format!(":{port_b}"), 1);
    let b = web_browser(&server_b, &host);
    let r = b.get(via_b(&entry)).send().unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let r = b
        .get(via_b(&format!("{origin}/")))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("HMI on the LAN"));
    // And the same browser, sent to replica A, is served there too.
    let a = web_browser(&server_a, &host);
    let r = a
        .get(format!("{origin}/"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Two peers on the record: one per replica, each a tunnel of the user.
    let tunnels = api.get(&format!("/sessions/{sid}/tunnels"));
    assert_eq!(tunnels.as_array().map(Vec::len), Some(2), "{tunnels}");
    drop(server_b);
}
