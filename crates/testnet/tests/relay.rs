//! Real-socket tests of the relay on 127.0.0.1: its admission and forwarding
//! rules with raw WebSocket clients, token expiry and revocation, and the STUN
//! service. (Tunnel drivers through the relay: `relay_drivers.rs`.)

mod common;

use std::time::Duration;

use common::*;
use drawbridge_relay::token::SigningKey;
use drawbridge_tunnel::frame::MAX_FRAME;
use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn relay_forwards_between_allowed_peers_and_rewrites_the_source() {
    let s = server().await;
    let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    a.send(data(B, b"ciphertext")).await.unwrap();
    let (src, payload) = recv_data(&mut b, Duration::from_secs(2)).await.unwrap();
    assert_eq!(src, A, "the relay names the sender, not the destination");
    assert_eq!(payload, b"ciphertext");
    let st = s.state.stats();
    assert_eq!(st.frames_forwarded, 1);
    assert_eq!(st.bytes_forwarded, 1 + 32 + 10);
}

#[tokio::test]
async fn a_fresh_token_on_the_open_connection_grants_a_new_peer_without_a_reconnect() {
    let s = server().await;
    // A (the edge) connected before B (a client) joined: its token names nobody.
    let mut a = s.connect(&s.token("s1", A, &[], 60)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    b.send(data(A, b"early")).await.unwrap();
    assert!(
        recv_data(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    // The control plane's new token for A names B: sent in-band, both ways work.
    a.send(token_frame(&s.token("s1", A, &[B], 60)))
        .await
        .unwrap();
    let mut delivered = None;
    for _ in 0..20 {
        b.send(data(A, b"after")).await.unwrap();
        delivered = recv_data(&mut a, Duration::from_millis(100)).await;
        if delivered.is_some() {
            break;
        }
    }
    assert_eq!(delivered.unwrap(), (B, b"after".to_vec()));
    a.send(data(B, b"back")).await.unwrap();
    assert_eq!(
        recv_data(&mut b, Duration::from_secs(2)).await.unwrap(),
        (A, b"back".to_vec())
    );
    assert_eq!(s.state.stats().connections_total, 2, "no reconnect");
}

#[tokio::test]
async fn a_token_for_another_key_or_session_or_a_forged_one_closes_the_connection() {
    let s = server().await;
    let (other, _) = SigningKey::generate().unwrap();
    let forged = issue(&other, "s1", A, &[B, C], 60);
    for bad in [
        s.token("s1", C, &[B], 60),
        s.token("s2", A, &[B], 60),
        forged,
        "garbage".to_string(),
    ] {
        let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
        a.send(token_frame(&bad)).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match a.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(closed, "a bad token ends the connection");
    }
    assert!(s.state.stats().refused >= 4);
}

#[tokio::test]
async fn wrong_or_expired_tokens_are_refused() {
    let s = server().await;
    let (other, _) = SigningKey::generate().unwrap();
    let forged = issue(&other, "s1", A, &[B], 60);
    for bad in [forged, s.token("s1", A, &[B], -1), "garbage".to_string()] {
        match s.connect(&bad).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("token accepted: {:?}", other.map(|_| ())),
        }
    }
    // No token at all.
    let r = tokio_tungstenite::connect_async(s.url()).await;
    assert!(r.is_err());
    assert_eq!(s.state.stats().connections, 0);
    assert!(s.state.stats().refused >= 4);
}

#[tokio::test]
async fn a_peer_never_reaches_a_peer_its_token_does_not_name() {
    let s = server().await;
    // A may reach B only. C's token names A, but A's does not name C. D is in another session.
    let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    let mut c = s.connect(&s.token("s1", C, &[A], 60)).await.unwrap();
    const D: [u8; 32] = [0xD; 32];
    let mut d = s.connect(&s.token("s2", D, &[A, B], 60)).await.unwrap();
    wait_connections(&s, 4).await;
    c.send(data(A, b"from c")).await.unwrap();
    a.send(data(C, b"to c")).await.unwrap();
    d.send(data(A, b"from d")).await.unwrap();
    d.send(data(B, b"from d")).await.unwrap();
    a.send(data(B, b"ok")).await.unwrap();
    let (src, payload) = recv_data(&mut b, Duration::from_secs(2)).await.unwrap();
    assert_eq!((src, payload.as_slice()), (A, &b"ok"[..]));
    assert!(
        recv_data(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        recv_data(&mut c, Duration::from_millis(100))
            .await
            .is_none()
    );
    assert!(
        recv_data(&mut b, Duration::from_millis(100))
            .await
            .is_none()
    );
    assert!(
        recv_data(&mut d, Duration::from_millis(100))
            .await
            .is_none()
    );
    let st = s.state.stats();
    assert_eq!(st.frames_forwarded, 1);
    assert_eq!(st.drop_not_allowed, 4);
}

#[tokio::test]
async fn a_malformed_or_oversized_frame_closes_only_that_connection() {
    let s = server().await;
    let mut a = s.connect(&s.token("s1", A, &[B, C], 60)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    let mut c = s.connect(&s.token("s1", C, &[A], 60)).await.unwrap();
    wait_connections(&s, 3).await;
    b.send(Message::Binary(vec![0x7F, 1, 2, 3].into()))
        .await
        .unwrap();
    assert!(
        recv_data(&mut b, Duration::from_secs(2)).await.is_none(),
        "b must be closed"
    );
    let mut big = vec![0x01];
    big.extend_from_slice(&A);
    big.extend(std::iter::repeat_n(0u8, MAX_FRAME));
    let _ = c.send(Message::Binary(big.into())).await;
    assert!(
        recv_data(&mut c, Duration::from_secs(2)).await.is_none(),
        "c must be closed"
    );
    wait_connections(&s, 1).await;
    // A is unaffected: it can still talk to a fresh B.
    let mut b2 = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    a.send(data(B, b"still here")).await.unwrap();
    assert!(recv_data(&mut b2, Duration::from_secs(2)).await.is_some());
    assert_eq!(s.state.stats().closed_malformed, 1);
}

#[tokio::test]
async fn a_slow_receiver_is_disconnected_instead_of_buffered() {
    let s = server_with(4).await;
    let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
    let _b_never_reads = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    let payload = vec![0u8; 4000];
    // The queue fills and stays full: after `slow_after` (2 s) B is cut off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s.state.stats().drop_slow_receiver == 0 && tokio::time::Instant::now() < deadline {
        if a.send(data(B, &payload)).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    wait_connections(&s, 1).await;
    assert!(s.state.stats().drop_slow_receiver >= 1);
    assert!(s.state.stats().drop_queue_full >= 1);
    // The sender is unaffected and reaches a receiver that keeps up.
    let mut b2 = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    a.send(data(B, b"after")).await.unwrap();
    loop {
        let (_, p) = recv_data(&mut b2, Duration::from_secs(5))
            .await
            .expect("a reaches b2");
        if p == b"after" {
            break;
        }
    }
}

#[tokio::test]
async fn a_burst_beyond_the_queue_is_tail_dropped_and_the_receiver_stays() {
    let s = server_with(4).await;
    let mut a = s.connect(&s.token("s1", A, &[B], 60)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 60)).await.unwrap();
    wait_connections(&s, 2).await;
    // B reads nothing while A sends a burst far larger than B's queue of 4 frames
    // and B's socket buffers.
    let payload = vec![0u8; 4000];
    let mut sent = 0;
    while s.state.stats().drop_queue_full == 0 && sent < 20_000 {
        a.send(data(B, &payload)).await.unwrap();
        sent += 1;
    }
    assert!(
        s.state.stats().drop_queue_full >= 1,
        "the burst overflowed the queue"
    );
    // Now B reads again: it is still connected and gets what follows.
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(data(B, b"after the burst")).await.unwrap();
    loop {
        let (_, p) = recv_data(&mut b, Duration::from_secs(5))
            .await
            .expect("b is still connected after a burst");
        if p == b"after the burst" {
            break;
        }
    }
    assert_eq!(s.state.stats().drop_slow_receiver, 0);
    assert_eq!(s.state.stats().connections, 2);
}

#[tokio::test]
async fn stun_service_answers_binding_requests_and_ignores_garbage() {
    let s = server().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(b"\x00\x01garbage that is not stun", s.stun)
        .await
        .unwrap();
    sock.send_to(&drawbridge_tunnel::stun::binding_request([5; 12]), s.stun)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, s.stun);
    assert_eq!(
        drawbridge_tunnel::stun::parse_binding_response(&buf[..n]),
        Some(([5; 12], me))
    );
    // The garbage produced no answer: nothing else is waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_connection_is_closed_when_its_token_expires() {
    let s = server().await;
    let mut a = s.connect(&s.token("s1", A, &[B], 2)).await.unwrap();
    wait_connections(&s, 1).await;
    // The relay ends the connection at expiry (within the token's seconds granularity).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection outlived its token");
    wait_connections(&s, 0).await;
}

#[tokio::test]
async fn a_revoked_session_is_disconnected_and_its_valid_tokens_are_refused() {
    let s = server().await;
    let mut a = s.connect(&s.token("s1", A, &[B], 600)).await.unwrap();
    let mut b = s.connect(&s.token("s1", B, &[A], 600)).await.unwrap();
    let mut other = s.connect(&s.token("s2", C, &[], 600)).await.unwrap();
    wait_connections(&s, 3).await;
    s.state.revoke_session("s1", now() + 600);
    assert!(closed_within(&mut a, Duration::from_secs(5)).await);
    assert!(closed_within(&mut b, Duration::from_secs(5)).await);
    wait_connections(&s, 1).await;
    // The tokens are still signed and unexpired, but the session is revoked.
    for t in [s.token("s1", A, &[B], 600), s.token("s1", B, &[A], 600)] {
        match s.connect(&t).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("revoked token admitted: {:?}", other.map(|_| ())),
        }
    }
    // Nor can another session's open connection switch to it with a TOKEN frame.
    other
        .send(token_frame(&s.token("s1", C, &[A], 600)))
        .await
        .unwrap();
    assert!(closed_within(&mut other, Duration::from_secs(5)).await);
    // Other sessions are untouched; an entry whose tokens have all expired is forgotten.
    let mut d = s.connect(&s.token("s3", C, &[], 600)).await.unwrap();
    wait_connections(&s, 1).await;
    d.send(Message::Ping(Vec::new().into())).await.unwrap();
    s.state.revoke_session("s4", now() - 1);
    assert!(s.connect(&s.token("s4", A, &[], 600)).await.is_ok());
}
