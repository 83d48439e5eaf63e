//! The revocation feed for standalone relays: a real server and a real standalone
//! relay (`drawbridge_relay::Standalone`, as `drawbridge-server relay --control-url`
//! runs it) on loopback; the feed's credential check and its paging over the store.
//! Each runs on SQLite and PostgreSQL.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use drawbridge_relay::feed::poll::RevocationFeed;
use drawbridge_relay::feed::{Credential, MAX_PAGE, issue_credential};
use drawbridge_relay::{RelayConfig, Standalone, StandaloneConfig};
use drawbridge_tunnel::frame::Frame;
use futures_util::{SinkExt, StreamExt};
use live_harness::{Live, Ws, closed, edge, edge_relay_token, enrolled, running};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

store_tests!(
    a_standalone_relay_closes_and_refuses_an_ended_session_within_5_s,
    the_feed_refuses_readers_without_a_relay_credential_of_this_control_plane,
    the_feed_pages_ended_sessions_until_their_tokens_expire,
);

fn credential(app: &TestApp) -> String {
    drawbridge_server::relay_feed::credential(
        &app.state.relay_key,
        "test-relay",
        app.state.now(),
        1,
    )
    .unwrap()
}

/// A standalone relay reading `l`'s feed; returns its `ws://` URL.
async fn standalone_relay(l: &Live) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let feed = RevocationFeed::new(
        &format!("https://127.0.0.1:{}", l.port),
        &credential(&l.app),
        Some(&l.ca_pem),
    )
    .unwrap();
    let relay = Standalone::bind(StandaloneConfig {
        relay_listen: "127.0.0.1:0".parse().unwrap(),
        stun_listen: "127.0.0.1:0".parse().unwrap(),
        bridge_listen: None,
        relay: RelayConfig::new(l.app.state.relay_key.verifying_key()),
        tls: None,
        revocations: Some(feed),
    })
    .await
    .unwrap();
    let url = format!("ws://{}/relay/v1", relay.relay_addr().unwrap());
    (url, tokio::spawn(relay.run()))
}

/// Whether the relay connection still answers a relay PING.
async fn answers_ping(ws: &mut Ws) -> bool {
    let ping = Frame::Ping(*b"feedtest").encode().unwrap();
    if ws.send(Message::Binary(ping.into())).await.is_err() {
        return false;
    }
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                return matches!(Frame::decode(&b), Ok(Frame::Pong(x)) if &x == b"feedtest");
            }
        }
        false
    });
    pong.await.unwrap_or(false)
}

async fn a_standalone_relay_closes_and_refuses_an_ended_session_within_5_s(app: TestApp) {
    let l = live_harness::live(app).await;
    let (relay_url, relay_task) = standalone_relay(&l).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press-1").await;
    let other = enrolled(&l, &acct, "press-2").await;
    let mut ws = edge(&l, &d, true).await;
    let mut ws_other = edge(&l, &other, true).await;
    let (s, _client) = running(&l, &acct, &d, 1).await;
    let (_s_other, _client_other) = running(&l, &acct, &other, 2).await;
    let token = edge_relay_token(&mut ws, &s, 201).await;
    let token_other = edge_relay_token(&mut ws_other, &_s_other, 202).await;
    let mut relayed = l
        .relay_at(&relay_url, &token)
        .await
        .expect("admitted before");
    let mut relayed_other = l.relay_at(&relay_url, &token_other).await.unwrap();
    assert!(answers_ping(&mut relayed).await);

    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/devices/{}/disable", d.id),
            &acct.admin,
            None,
        )
        .await;
    let disabled_at = Instant::now();
    // `closed` waits at most 5 s.
    assert!(
        closed(&mut relayed).await,
        "the standalone relay closes the ended session's connection"
    );
    assert_eq!(
        l.relay_at(&relay_url, &token).await.err(),
        Some(401),
        "and refuses its still valid token"
    );
    assert!(
        disabled_at.elapsed() < Duration::from_secs(5),
        "within 5 s: {:?}",
        disabled_at.elapsed()
    );
    // The mounted relay refuses it too; the other session is untouched, also after
    // further polls.
    assert_eq!(l.relay(&token).await.err(), Some(401));
    tokio::time::sleep(drawbridge_relay::feed::POLL_EVERY * 2).await;
    assert!(
        answers_ping(&mut relayed_other).await,
        "the other session's connection stays"
    );
    assert!(!relay_task.is_finished(), "the relay keeps running");
    relay_task.abort();
}

async fn feed_status(
    app: &TestApp,
    bearer: Option<&str>,
    query: &str,
) -> (StatusCode, serde_json::Value) {
    app.call(
        Method::GET,
        &format!("/relay/v1/revoked{query}"),
        bearer,
        None,
    )
    .await
}

async fn the_feed_refuses_readers_without_a_relay_credential_of_this_control_plane(app: TestApp) {
    let acct = app.account("acme").await;
    let now = u64::try_from(app.state.now()).unwrap();
    let (foreign, _) = drawbridge_relay::SigningKey::generate().unwrap();
    let cred = |key: &drawbridge_relay::SigningKey, expires_at: u64| {
        issue_credential(
            key,
            &Credential {
                relay: "r".into(),
                expires_at,
            },
        )
        .unwrap()
    };
    let admission = drawbridge_relay::token::issue(
        &app.state.relay_key,
        &drawbridge_relay::Claims {
            session_id: "s".into(),
            peer: [1; 32],
            allowed_peers: vec![],
            expires_at: now + 600,
            bridge: false,
        },
    )
    .unwrap();
    let refused = [
        ("no credential", None),
        ("another control plane's", Some(cred(&foreign, now + 600))),
        ("expired", Some(cred(&app.state.relay_key, now))),
        ("an admission token", Some(admission)),
        ("a user's API token", Some(acct.admin.clone())),
        ("garbage", Some("drf1.e30.AAAA".to_string())),
    ];
    for (what, bearer) in refused {
        let (s, v) = feed_status(&app, bearer.as_deref(), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_eq!(v["code"], "unauthenticated", "{what}");
        assert!(v.get("revoked").is_none(), "{what}: nothing revealed");
    }
    let good = cred(&app.state.relay_key, now + 600);
    let (s, v) = feed_status(&app, Some(&good), "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for bad in [
        "?after=x",
        "?after=1.a&after=2.b",
        "?other=1",
        "?after=-1.a",
    ] {
        let (s, _) = feed_status(&app, Some(&good), bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// A session row as the store holds it after its end.
async fn ended_session(app: &TestApp, account: &str, id: &str, ended_at: i64, valid_until: i64) {
    sqlx::query(
        "INSERT INTO sessions (id, account_id, name, state, created_by, created_at, valid_from, valid_until, ended_at, end_reason)
         VALUES ($1, $2, 'm', 'ended', 'u', $3, $3, $4, $3, 'ended_by_admin')",
    )
    .bind(id)
    .bind(account)
    .bind(ended_at)
    .bind(valid_until)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
}

async fn the_feed_pages_ended_sessions_until_their_tokens_expire(app: TestApp) {
    let acct = app.account("acme").await;
    let now = app.state.now();
    // MAX_PAGE + 1 ended sessions with tokens still valid, ended at distinct times.
    for i in 0..=MAX_PAGE as i64 {
        ended_session(
            &app,
            &acct.id,
            &format!("s{i:04}"),
            now - 10_000 + i,
            now + 3_600,
        )
        .await;
    }
    // Ended a moment ago: the newest entry.
    ended_session(&app, &acct.id, "recent", now - 5, now + 3_600).await;
    // Tokens expired already: not revealed, nothing to refuse.
    ended_session(&app, &acct.id, "expired", now - 5_000, now - 1).await;
    // A running session is not in the feed.
    let d = app.device(&acct, "press-1").await.0;
    app.session(&acct.admin, &d, &[&acct.admin_id]).await;

    let good = credential(&app);
    let (s, p1) = feed_status(&app, Some(&good), "").await;
    assert_eq!(s, StatusCode::OK, "{p1}");
    let p1: drawbridge_relay::feed::Page = serde_json::from_value(p1).unwrap();
    assert_eq!(p1.revoked.len(), MAX_PAGE);
    assert!(p1.more);
    assert_eq!(p1.revoked[0].session, "s0000", "oldest end first");
    assert_eq!(p1.revoked[0].until, u64::try_from(now + 3_600).unwrap());
    let after = url::form_urlencoded::byte_serialize(p1.next.as_bytes()).collect::<String>();
    let (_, p2) = feed_status(&app, Some(&good), &format!("?after={after}")).await;
    let p2: drawbridge_relay::feed::Page = serde_json::from_value(p2).unwrap();
    let ids: Vec<&str> = p2.revoked.iter().map(|r| r.session.as_str()).collect();
    assert_eq!(
        ids,
        [format!("s{MAX_PAGE:04}").as_str(), "recent"],
        "the rest, nothing twice"
    );
    assert!(!p2.more);
    // Caught up: the cursor goes back to the settle window (the clock moved on while
    // the rows were written).
    let settle = drawbridge_server::relay_feed::SETTLE_SECS;
    let back: i64 = p2.next.strip_suffix('.').unwrap().parse().unwrap();
    assert!(
        (now - settle..=app.state.now() - settle).contains(&back),
        "{} is not the settle window's start",
        p2.next
    );

    // A session whose end committed late (its end time behind "recent", the newest
    // entry sent) is still delivered by the next poll, with the window sent again.
    ended_session(&app, &acct.id, "late", now - 30, now + 3_600).await;
    let after = url::form_urlencoded::byte_serialize(p2.next.as_bytes()).collect::<String>();
    let (_, p3) = feed_status(&app, Some(&good), &format!("?after={after}")).await;
    let p3: drawbridge_relay::feed::Page = serde_json::from_value(p3).unwrap();
    let ids: Vec<&str> = p3.revoked.iter().map(|r| r.session.as_str()).collect();
    assert_eq!(ids, ["late", "recent"]);

    // Once their tokens expire, the entries leave the feed.
    app.clock().advance(3_601);
    let (_, all) = feed_status(&app, Some(&credential(&app)), "").await;
    assert_eq!(all["revoked"], serde_json::json!([]), "{all}");
}
