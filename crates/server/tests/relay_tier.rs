//! The relay tier: standalone relays (`drawbridge_relay::Standalone` as
//! `drawbridge-server relay --public-url` runs it) announce themselves through
//! the revocation feed of a real server on loopback; each session is handed one
//! of them, the same to its edge and its clients, and moves to another within
//! 10 s when its relay dies or drains. Each test runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use drawbridge_proto::channel::{
    ClientToServer, EdgeStatus, EdgeToServer, RelayRtt, ServerToClient, ServerToEdge,
};
use drawbridge_relay::feed::announce::Announce;
use drawbridge_relay::feed::poll::RevocationFeed;
use drawbridge_relay::{RelayConfig, RelayState, Standalone, StandaloneConfig};
use drawbridge_server::relays::{self, Local};
use futures_util::StreamExt;
use live_harness::*;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

store_tests!(
    a_session_gets_one_relay_for_edge_and_client_and_moves_within_10_s_when_it_dies,
    a_draining_relay_hands_its_sessions_over_and_takes_no_new_ones,
    bad_heartbeats_are_refused_and_change_nothing,
    a_new_session_gets_the_relay_its_edge_measured_nearest,
    a_new_session_gets_the_relay_nearest_its_edge_and_its_client_together,
    a_move_made_while_serving_one_peer_reaches_every_peer,
    without_measurements_a_new_session_goes_to_a_relay_of_its_devices_region,
);

/// A running standalone relay announcing itself.
struct TestRelay {
    url: String,
    state: RelayState,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn credential(l: &Live, name: &str) -> String {
    drawbridge_server::relay_feed::credential(&l.app.state.relay_key, name, l.app.state.now(), 1)
        .unwrap()
}

/// A relay named `name` on 127.0.0.1, announced to `l`'s control plane.
async fn announced_relay(l: &Live, name: &str) -> TestRelay {
    announced_relay_in(l, name, "eu-central").await
}

/// [`announced_relay`] in `region`.
async fn announced_relay_in(l: &Live, name: &str, region: &str) -> TestRelay {
    // The URL goes into the announcement before the relay binds: take a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/relay/v1");
    let feed = RevocationFeed::new(
        &format!("https://127.0.0.1:{}", l.port),
        &credential(l, name),
        Some(&l.ca_pem),
    )
    .unwrap()
    .with_announce(Announce {
        url: url.clone(),
        region: region.into(),
        stun: vec![format!("127.0.0.1:{port}")],
        bridge: None,
    })
    .unwrap();
    let relay = Standalone::bind(StandaloneConfig {
        relay_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        stun_listen: "127.0.0.1:0".parse().unwrap(),
        bridge_listen: None,
        relay: RelayConfig::new(l.app.state.relay_key.verifying_key()),
        tls: None,
        revocations: Some(feed),
    })
    .await
    .unwrap();
    let state = relay.state();
    TestRelay {
        url,
        state,
        task: tokio::spawn(relay.run()),
    }
}

/// Waits until the control plane has heard from every relay named.
async fn heard(l: &Live, names: &[&str]) {
    for _ in 0..100 {
        relays::refresh(&l.app.state).await.unwrap();
        let now = l.app.state.now();
        let view = relays::view(&l.app.state);
        if names
            .iter()
            .all(|n| view.iter().any(|r| r.name == *n && r.takes_sessions(now)))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no heartbeat from {names:?}");
}

async fn assigned(l: &Live, session: &str) -> Option<String> {
    sqlx::query_scalar("SELECT relay FROM sessions WHERE id = $1")
        .bind(session)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap()
}

/// The next message on `ws` (skipping pings) within `limit`.
async fn next_within<T: serde::de::DeserializeOwned>(ws: &mut Ws, limit: Duration) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(t) = m {
            return Some(serde_json::from_str(&t).expect("server message parses"));
        }
    }
}

/// Waits (at most `limit`) until the edge is told `relay_url` for `session`.
async fn edge_told(ws: &mut Ws, session: &str, relay_url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(m) = next_within::<ServerToEdge>(ws, deadline - Instant::now()).await {
        if sessions_of(&m).is_some_and(|x| {
            x.iter()
                .any(|s| s.session_id == session && s.relay_url == relay_url)
        }) {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    false
}

/// Waits (at most `limit`) until the client is told `relay_url`.
async fn client_told(ws: &mut Ws, relay_url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(m) = next_within::<ServerToClient>(ws, deadline - Instant::now()).await {
        if matches!(&m, ServerToClient::Update(j) if j.relay_url == relay_url) {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    false
}

/// The live harness with the embedded relay on standby, so that sessions go to
/// the standalone relays while one lives; the relay sweep runs as in the server.
async fn tier(app: common::TestApp) -> Live {
    let l = live(app).await;
    l.app.state.relays.set_local(Local {
        standby: true,
        ..Local::default()
    });
    relays::spawn(l.app.state.clone());
    l
}

async fn a_session_gets_one_relay_for_edge_and_client_and_moves_within_10_s_when_it_dies(
    app: common::TestApp,
) {
    let l = tier(app).await;
    let a = announced_relay(&l, "eu-1").await;
    let b = announced_relay(&l, "eu-2").await;
    heard(&l, &["eu-1", "eu-2"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut edge_ws = edge(&l, &d, true).await;
    let (s, mut client) = running(&l, &acct, &d, 1).await;
    let name = assigned(&l, &s).await.expect("a relay is assigned");
    let (dying, other) = if name == "eu-1" { (a, b) } else { (b, a) };
    let other_name = if name == "eu-1" { "eu-2" } else { "eu-1" };
    // Edge and client are handed the same relay instance, not the embedded one.
    assert!(edge_told(&mut edge_ws, &s, &dying.url, Duration::from_secs(5)).await);
    let (st, join) = l
        .app
        .call(
            Method::GET,
            &format!("/api/v1/sessions/{s}"),
            Some(&acct.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{join}");

    // The relay dies: the session moves to the other one, and both sides hear it.
    let killed = Instant::now();
    drop(dying);
    assert!(
        client_told(&mut client, &other.url, Duration::from_secs(10)).await,
        "the client is told the new relay within 10 s"
    );
    assert!(
        edge_told(
            &mut edge_ws,
            &s,
            &other.url,
            Duration::from_secs(10) - killed.elapsed()
        )
        .await,
        "the edge is told the new relay within 10 s"
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(assigned(&l, &s).await.as_deref(), Some(other_name));
    let (state,): (String,) = sqlx::query_as("SELECT state FROM sessions WHERE id = $1")
        .bind(&s)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(state, "active", "the same session goes on");

    // The last standalone relay dies too: the embedded standby relay takes over.
    let local_url = relays::view(&l.app.state)[0].url.clone();
    drop(other);
    assert!(client_told(&mut client, &local_url, Duration::from_secs(10)).await);
    assert_eq!(assigned(&l, &s).await.as_deref(), Some("local"));
}

async fn a_draining_relay_hands_its_sessions_over_and_takes_no_new_ones(app: common::TestApp) {
    let l = tier(app).await;
    let a = announced_relay(&l, "eu-1").await;
    let b = announced_relay(&l, "eu-2").await;
    heard(&l, &["eu-1", "eu-2"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let _edge_ws = edge(&l, &d, true).await;
    let (s, mut client) = running(&l, &acct, &d, 1).await;
    let name = assigned(&l, &s).await.unwrap();
    let (draining, other) = if name == "eu-1" { (&a, &b) } else { (&b, &a) };
    let draining_name = name.clone();

    // The relay is stopping (`drawbridge-server relay` on SIGTERM): its next
    // heartbeat goes out at once and its session moves within seconds.
    let asked = Instant::now();
    draining.state.start_draining();
    assert!(client_told(&mut client, &other.url, Duration::from_secs(5)).await);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // It takes no new session while it drains, although it is alive.
    for n in 0..6u8 {
        let d2 = enrolled(&l, &acct, &format!("press-{n}")).await;
        let _ws = edge(&l, &d2, true).await;
        let (s2, _c2) = running(&l, &acct, &d2, 10 + n).await;
        assert_ne!(assigned(&l, &s2).await, Some(draining_name.clone()));
    }

    // An operator drains the other (`drawbridge-server relays drain`): the
    // session goes to the embedded standby relay; undrained, the relay takes
    // new sessions again.
    let other_name = if draining_name == "eu-1" {
        "eu-2"
    } else {
        "eu-1"
    };
    assert!(
        relays::set_drain(&l.app.state.store, other_name, true)
            .await
            .unwrap()
    );
    let local_url = relays::view(&l.app.state)[0].url.clone();
    assert!(client_told(&mut client, &local_url, Duration::from_secs(5)).await);
    assert!(
        !relays::set_drain(&l.app.state.store, "no-such-relay", true)
            .await
            .unwrap()
    );
    assert!(
        relays::set_drain(&l.app.state.store, other_name, false)
            .await
            .unwrap()
    );
    heard(&l, &[other_name]).await;
    let d3 = enrolled(&l, &acct, "press-new").await;
    let _ws3 = edge(&l, &d3, true).await;
    let (s3, _c3) = running(&l, &acct, &d3, 30).await;
    assert_eq!(assigned(&l, &s3).await.as_deref(), Some(other_name));
}

async fn bad_heartbeats_are_refused_and_change_nothing(app: common::TestApp) {
    let l = live(app).await;
    let cred = credential(&l, "eu-1");
    let beat = |q: &str| format!("/relay/v1/revoked?after=&{q}");
    let good = "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&region=eu&stun=relay.example.com%3A3478&draining=0&connections=3";
    let (st, v) = l
        .app
        .call(Method::GET, &beat(good), Some(&cred), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let rows = || async {
        sqlx::query_as::<_, (String, String, String, i64)>(
            "SELECT name, url, region, connections FROM relays ORDER BY name",
        )
        .fetch_all(&l.app.state.store.pool)
        .await
        .unwrap()
    };
    let before = rows().await;
    assert_eq!(
        before,
        vec![(
            "eu-1".to_string(),
            "wss://relay.example.com/relay/v1".to_string(),
            "eu".to_string(),
            3
        )]
    );
    for bad in [
        "url=https%3A%2F%2Frelay.example.com%2Frelay%2Fv1",
        "url=wss%3A%2F%2Frelay.example.com%2Fother",
        "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&region=EU",
        "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&stun=no-port",
        "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&draining=maybe",
        "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&connections=-5",
        "url=wss%3A%2F%2Fa.example%2Frelay%2Fv1&url=wss%3A%2F%2Fb.example%2Frelay%2Fv1",
        "region=eu",
        "surprise=1",
    ] {
        let (st, v) = l.app.call(Method::GET, &beat(bad), Some(&cred), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let long = format!("url=wss%3A%2F%2F{}%2Frelay%2Fv1", "a".repeat(3000));
    let (st, _) = l
        .app
        .call(Method::GET, &beat(&long), Some(&cred), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A standalone relay may not take the name of a replica's embedded relay;
    // it still gets the revocation feed (nothing is recorded of it).
    let (st, v) = l
        .app
        .call(
            Method::GET,
            &beat(good),
            Some(&credential(&l, "local")),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["revoked"].is_array(), "the revocation page: {v}");
    // Without a credential nothing is recorded either.
    let (st, _) = l.app.call(Method::GET, &beat(good), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(rows().await, before, "nothing changed");

    // 30 heartbeats of one relay at once: one row, all answered.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let app = l.app.app.clone();
        let cred = cred.clone();
        let path = beat(&format!(
            "url=wss%3A%2F%2Frelay.example.com%2Frelay%2Fv1&region=eu&connections={i}"
        ));
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::get(path)
                .header("authorization", format!("Bearer {cred}"))
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let after = rows().await;
    assert_eq!(after.len(), 1, "{after:?}");
}

async fn a_new_session_gets_the_relay_its_edge_measured_nearest(app: common::TestApp) {
    let l = tier(app).await;
    let a = announced_relay(&l, "eu-1").await;
    let b = announced_relay(&l, "eu-2").await;
    heard(&l, &["eu-1", "eu-2"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut edge_ws = edge(&l, &d, true).await;
    // The edge is told which relays to measure (with every full state it gets):
    // both standalone ones (and the embedded standby relay).
    let (_first, _c0) = running(&l, &acct, &d, 39).await;
    let m = until(
        &mut edge_ws,
        |m: &ServerToEdge| matches!(m, ServerToEdge::Sessions { relays, .. } if relays.len() >= 2),
    )
    .await;
    let ServerToEdge::Sessions { relays: probes, .. } = m else {
        unreachable!()
    };
    for url in [&a.url, &b.url] {
        assert!(probes.iter().any(|p| &p.url == url), "{probes:?}");
    }
    let status = |rtt: Vec<RelayRtt>| {
        EdgeToServer::Status(EdgeStatus {
            switch_on: true,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: rtt,
        })
    };
    let rtt = |name: &str, ms: u32| RelayRtt {
        relay: name.into(),
        rtt_ms: ms,
    };
    // Out of bounds: refused, nothing recorded.
    for bad in [
        vec![rtt("eu-1", 70_000)],
        vec![rtt("", 5)],
        (0..20).map(|i| rtt(&format!("r{i}"), 5)).collect(),
    ] {
        send(&mut edge_ws, &status(bad)).await;
        let m = until(&mut edge_ws, |m: &ServerToEdge| {
            matches!(m, ServerToEdge::Error { .. })
        })
        .await;
        assert!(
            matches!(&m, ServerToEdge::Error { message, .. } if message.contains("out of bounds")),
            "{m:?}"
        );
    }
    let none: Option<String> = sqlx::query_scalar("SELECT relay_rtt FROM devices WHERE id = $1")
        .bind(&d.id)
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(none, None, "nothing recorded");
    // eu-2 is much nearer than eu-1.
    send(&mut edge_ws, &status(vec![rtt("eu-1", 80), rtt("eu-2", 9)])).await;
    let mut stored = None;
    for _ in 0..50 {
        stored =
            sqlx::query_scalar::<_, Option<String>>("SELECT relay_rtt FROM devices WHERE id = $1")
                .bind(&d.id)
                .fetch_one(&l.app.state.store.pool)
                .await
                .unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored.as_deref(), Some(r#"{"eu-1":80,"eu-2":9}"#));
    // Every new session of this device goes to eu-2 (without measurements half
    // of them would go to eu-1).
    for n in 0..8u8 {
        let (s, _c) = running(&l, &acct, &d, 40 + n).await;
        assert_eq!(
            assigned(&l, &s).await.as_deref(),
            Some("eu-2"),
            "session {n}"
        );
    }
}

async fn a_new_session_gets_the_relay_nearest_its_edge_and_its_client_together(
    app: common::TestApp,
) {
    let l = tier(app).await;
    let a = announced_relay(&l, "eu-1").await;
    let b = announced_relay(&l, "eu-2").await;
    heard(&l, &["eu-1", "eu-2"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut edge_ws = edge(&l, &d, true).await;
    let rtt = |name: &str, ms: u32| RelayRtt {
        relay: name.into(),
        rtt_ms: ms,
    };
    // The edge is a little nearer eu-1.
    send(
        &mut edge_ws,
        &EdgeToServer::Status(EdgeStatus {
            switch_on: true,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: vec![rtt("eu-1", 10), rtt("eu-2", 30)],
        }),
    )
    .await;
    let stored = |sql: &'static str, id: String| {
        let pool = l.app.state.store.pool.clone();
        async move {
            for _ in 0..50 {
                let v: Option<String> = sqlx::query_scalar(sql)
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if v.is_some() {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }
    };
    assert!(
        stored("SELECT relay_rtt FROM devices WHERE id = $1", d.id.clone())
            .await
            .is_some()
    );
    let (s, mut client) = running(&l, &acct, &d, 50).await;
    assert_eq!(assigned(&l, &s).await.as_deref(), Some("eu-1"));
    // The client's join data names the relays to measure.
    let j = l
        .app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(serde_json::json!({"public_key": wg_key(49)})),
        )
        .await;
    for url in [&a.url, &b.url] {
        assert!(
            j["relays"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["url"] == url.as_str()),
            "{j}"
        );
    }
    // Reports out of bounds are ignored, and the channel stays up.
    for bad in [
        vec![rtt("eu-1", 70_000)],
        vec![rtt("", 5)],
        (0..20).map(|i| rtt(&format!("r{i}"), 5)).collect(),
    ] {
        send(&mut client, &ClientToServer::RelayRtt { relay_rtt: bad }).await;
    }
    // The client is far from eu-1 and near eu-2: edge → relay → client is
    // 90 ms through eu-1 and 39 ms through eu-2.
    send(
        &mut client,
        &ClientToServer::RelayRtt {
            relay_rtt: vec![rtt("eu-1", 80), rtt("eu-2", 9)],
        },
    )
    .await;
    let users = stored(
        "SELECT relay_rtt FROM users WHERE id = $1",
        acct.admin_id.clone(),
    )
    .await;
    assert_eq!(users.as_deref(), Some(r#"{"eu-1":80,"eu-2":9}"#));
    // The running session keeps its relay; every new one of this user goes to eu-2.
    assert_eq!(assigned(&l, &s).await.as_deref(), Some("eu-1"));
    for n in 0..6u8 {
        let (s, _c) = running(&l, &acct, &d, 51 + n).await;
        assert_eq!(
            assigned(&l, &s).await.as_deref(),
            Some("eu-2"),
            "session {n}"
        );
    }
}

async fn a_move_made_while_serving_one_peer_reaches_every_peer(app: common::TestApp) {
    // No sweep runs here: the move happens while a second client joins.
    let l = live(app).await;
    l.app.state.relays.set_local(Local {
        standby: true,
        ..Local::default()
    });
    let a = announced_relay(&l, "eu-1").await;
    let b = announced_relay(&l, "eu-2").await;
    heard(&l, &["eu-1", "eu-2"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut edge_ws = edge(&l, &d, true).await;
    let (s, mut client) = running(&l, &acct, &d, 1).await;
    let name = assigned(&l, &s).await.unwrap();
    let other = if name == "eu-1" { &b } else { &a };
    // An operator drains the relay; this replica reloads the table but sweeps nothing.
    assert!(
        relays::set_drain(&l.app.state.store, &name, true)
            .await
            .unwrap()
    );
    relays::refresh(&l.app.state).await.unwrap();
    // A second client joins: its join finds the relay drained and moves the session …
    let (st, join) = l
        .app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            Some(&acct.admin),
            Some(serde_json::json!({"public_key": wg_key(2)})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{join}");
    assert_eq!(join["relay_url"], other.url.as_str());
    // … and the edge and the first client are told, not only the one who asked.
    assert!(edge_told(&mut edge_ws, &s, &other.url, Duration::from_secs(5)).await);
    assert!(client_told(&mut client, &other.url, Duration::from_secs(5)).await);
}

async fn without_measurements_a_new_session_goes_to_a_relay_of_its_devices_region(
    app: common::TestApp,
) {
    let l = tier(app).await;
    let _eu = announced_relay_in(&l, "eu-1", "eu-central").await;
    let _us = announced_relay_in(&l, "us-1", "us-east").await;
    heard(&l, &["eu-1", "us-1"]).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let _edge_ws = edge(&l, &d, true).await;
    let path = format!("/api/v1/devices/{}", d.id);
    // A region that is no region changes nothing.
    for bad in ["US East", "", "a_b", &"x".repeat(33)] {
        let (st, v) = l
            .app
            .patch(&path, &acct.admin, serde_json::json!({ "region": bad }))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let v = l.app.ok(Method::GET, &path, &acct.admin, None).await;
    assert_eq!(v["region"], serde_json::Value::Null);
    let v = l
        .app
        .ok(
            Method::PATCH,
            &path,
            &acct.admin,
            Some(serde_json::json!({ "region": "us-east" })),
        )
        .await;
    assert_eq!(v["region"], "us-east");
    for n in 0..8u8 {
        let (s, _c) = running(&l, &acct, &d, 60 + n).await;
        assert_eq!(
            assigned(&l, &s).await.as_deref(),
            Some("us-1"),
            "session {n}"
        );
    }
    // null forgets it; the other fields stay as they were.
    let v = l
        .app
        .ok(
            Method::PATCH,
            &path,
            &acct.admin,
            Some(serde_json::json!({ "region": null })),
        )
        .await;
    assert_eq!(v["region"], serde_json::Value::Null);
    assert_eq!(v["name"], "press");
}
