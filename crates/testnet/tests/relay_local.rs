//! The relay's in-process connections (`RelayState::connect_local`, how the
//! server's own peers reach its embedded relay) follow the same rules as a
//! WebSocket from outside: the same admission, the same forwarding rules, and
//! the same ways of being closed. Each test puts a local connection beside a
//! real WebSocket peer of the same relay on 127.0.0.1.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::*;
use drawbridge_relay::token::SigningKey;
use drawbridge_relay::{LocalConn, Refused, RelayConfig, RelayState};
use drawbridge_tunnel::frame::Frame;
use futures_util::SinkExt;

fn data_frame(dst: [u8; 32], payload: &[u8]) -> Vec<u8> {
    Frame::Data { peer: dst, payload }.encode().unwrap()
}

fn token_bytes(t: &str) -> Vec<u8> {
    Frame::Token(t.as_bytes()).encode().unwrap()
}

/// The next frame for `conn` within `within`; `None` on a timeout, and
/// `Some(None)` when the relay closed the connection.
async fn next_frame(conn: &mut LocalConn, within: Duration) -> Option<Option<Bytes>> {
    let mut buf = Vec::new();
    let n = tokio::time::timeout(within, conn.recv_many(&mut buf, 1))
        .await
        .ok()?;
    Some((n > 0).then(|| buf.remove(0)))
}

/// The next DATA frame's (source, payload), skipping others; `None` when none
/// comes within `within` or the connection closed.
async fn next_data(conn: &mut LocalConn, within: Duration) -> Option<([u8; 32], Vec<u8>)> {
    loop {
        let f = next_frame(conn, within).await??;
        if let Ok(Frame::Data { peer, payload }) = Frame::decode(&f) {
            return Some((peer, payload.to_vec()));
        }
    }
}

async fn closed_within_local(conn: &mut LocalConn, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_frame(conn, left).await {
            Some(None) => return true,
            Some(Some(_)) => continue,
            None => return false,
        }
    }
}

#[tokio::test]
async fn a_local_connection_and_a_websocket_reach_each_other_with_the_source_rewritten() {
    let s = server().await;
    let mut local = s.state.connect_local(&s.token("s1", A, &[B], 60)).unwrap();
    let mut ws = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;

    // A names B as the destination; B sees A as the source.
    assert!(local.send(data_frame(B, b"to the websocket")));
    assert_eq!(
        recv_data(&mut ws, Duration::from_secs(2)).await.unwrap(),
        (A, b"to the websocket".to_vec())
    );
    ws.send(data(A, b"to the local one")).await.unwrap();
    assert_eq!(
        next_data(&mut local, Duration::from_secs(2)).await.unwrap(),
        (B, b"to the local one".to_vec())
    );
    // A ping is answered on the connection itself.
    assert!(local.send(Frame::Ping(*b"12345678").encode().unwrap()));
    let pong = next_frame(&mut local, Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Frame::decode(&pong).unwrap(), Frame::Pong(*b"12345678"));
    assert_eq!(s.state.stats().frames_forwarded, 2);

    // Dropping the connection leaves the relay.
    drop(local);
    wait_connections(&s, 1).await;
}

#[tokio::test]
async fn a_local_connection_is_admitted_only_with_a_valid_token_of_a_live_session() {
    let s = server().await;
    let (other, _) = SigningKey::generate().unwrap();
    for bad in [
        issue(&other, "s1", A, &[B], 60),
        s.token("s1", A, &[B], -1),
        "garbage".to_string(),
        String::new(),
    ] {
        match s.state.connect_local(&bad) {
            Err(Refused::Token(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    s.state.revoke_session("s2", now() + 600);
    assert!(matches!(
        s.state.connect_local(&s.token("s2", A, &[B], 600)),
        Err(Refused::Revoked)
    ));
    assert_eq!(s.state.stats().connections, 0);
    assert_eq!(s.state.stats().refused, 5);

    // A full relay refuses one more, local or not.
    let (key, _) = SigningKey::generate().unwrap();
    let mut cfg = RelayConfig::new(key.verifying_key());
    cfg.max_connections = 1;
    let full = RelayState::new(cfg);
    let _first = full.connect_local(&issue(&key, "s1", A, &[B], 60)).unwrap();
    assert!(matches!(
        full.connect_local(&issue(&key, "s1", B, &[A], 60)),
        Err(Refused::Full)
    ));
}

#[tokio::test]
async fn a_local_connection_never_reaches_a_peer_its_token_does_not_name() {
    let s = server().await;
    // A's token names B only; C's names A, but A's does not name C; D is in
    // another session and names A.
    const D: [u8; 32] = [0xD; 32];
    let mut a = s.state.connect_local(&s.token("s1", A, &[B], 60)).unwrap();
    let mut c = s.connect(&s.token("s1", C, &[A], 60)).await.unwrap();
    let mut d = s.connect(&s.token("s2", D, &[A], 60)).await.unwrap();
    wait_connections(&s, 3).await;
    assert!(a.send(data_frame(C, b"to c")));
    assert!(a.send(data_frame(D, b"to d")));
    c.send(data(A, b"from c")).await.unwrap();
    d.send(data(A, b"from d")).await.unwrap();
    assert!(
        recv_data(&mut c, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        recv_data(&mut d, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        next_data(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    let st = s.state.stats();
    assert_eq!(st.frames_forwarded, 0);
    assert_eq!(st.drop_not_allowed, 4);
}

#[tokio::test]
async fn a_fresh_token_grants_a_local_connection_a_new_peer_and_a_bad_one_closes_it() {
    let s = server().await;
    let mut a = s.state.connect_local(&s.token("s1", A, &[], 60)).unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    b.send(data(A, b"early")).await.unwrap();
    assert!(
        next_data(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(a.send(token_bytes(&s.token("s1", A, &[B], 60))));
    b.send(data(A, b"after")).await.unwrap();
    assert_eq!(
        next_data(&mut a, Duration::from_secs(2)).await.unwrap(),
        (B, b"after".to_vec())
    );
    assert_eq!(s.state.stats().connections_total, 2, "no reconnect");

    // A token for another session (signed and valid) closes the connection.
    assert!(!a.send(token_bytes(&s.token("s2", A, &[B], 60))));
    assert!(
        !a.send(data_frame(B, b"after the close")),
        "closed for good"
    );
    assert!(closed_within_local(&mut a, Duration::from_secs(1)).await);
    assert!(
        recv_data(&mut b, Duration::from_millis(300))
            .await
            .is_none()
    );
    drop(a);
    wait_connections(&s, 1).await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_the_local_connection() {
    let s = server().await;
    for bad in [
        vec![],
        vec![0x09, 1, 2],
        Frame::Pong([0; 8]).encode().unwrap(),
    ] {
        let mut a = s.state.connect_local(&s.token("s1", A, &[B], 60)).unwrap();
        assert!(!a.send(bad.clone()), "{bad:?}");
        assert!(closed_within_local(&mut a, Duration::from_secs(1)).await);
    }
    assert_eq!(s.state.stats().closed_malformed, 3);
    let mut b = s.state.connect_local(&s.token("s1", B, &[A], 60)).unwrap();
    assert!(b.send(Frame::Ping([1; 8]).encode().unwrap()));
    assert!(
        next_frame(&mut b, Duration::from_secs(1))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_relay_closes_a_local_connection_on_revocation_expiry_or_a_newer_connection() {
    let s = server().await;
    // Revocation.
    let mut a = s.state.connect_local(&s.token("s1", A, &[B], 600)).unwrap();
    let mut other = s.state.connect_local(&s.token("s2", C, &[], 600)).unwrap();
    s.state.revoke_session("s1", now() + 600);
    assert!(closed_within_local(&mut a, Duration::from_secs(1)).await);
    assert!(!a.send(data_frame(B, b"x")));
    assert!(!closed_within_local(&mut other, Duration::from_millis(200)).await);
    drop(a);

    // The same key connecting again: the older connection is closed.
    let mut first = s.state.connect_local(&s.token("s3", A, &[B], 600)).unwrap();
    let mut second = s.state.connect_local(&s.token("s3", A, &[B], 600)).unwrap();
    assert!(closed_within_local(&mut first, Duration::from_secs(1)).await);
    drop(first);
    assert!(second.send(Frame::Ping([2; 8]).encode().unwrap()));
    assert!(
        next_frame(&mut second, Duration::from_secs(1))
            .await
            .unwrap()
            .is_some()
    );
    wait_connections(&s, 2).await;

    // Expiry (the token's seconds granularity): closed without any frame sent.
    let mut short = s.state.connect_local(&s.token("s4", B, &[A], 2)).unwrap();
    assert!(closed_within_local(&mut short, Duration::from_secs(5)).await);
    assert!(!short.send(Frame::Ping([3; 8]).encode().unwrap()));
}

#[tokio::test]
async fn a_local_connection_that_takes_nothing_is_disconnected_as_slow() {
    let s = server_with(4).await;
    let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
    let mut b_never_reads = s.state.connect_local(&s.token("s1", B, &[A], 60)).unwrap();
    wait_connections(&s, 2).await;
    let payload = vec![0u8; 4000];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s.state.stats().drop_slow_receiver == 0 && tokio::time::Instant::now() < deadline {
        a.send(data(B, &payload)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(s.state.stats().drop_slow_receiver >= 1);
    wait_connections(&s, 1).await;
    assert!(closed_within_local(&mut b_never_reads, Duration::from_secs(1)).await);
}
