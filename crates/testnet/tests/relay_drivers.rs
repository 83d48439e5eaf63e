//! Two tunnel drivers talking through a real relay on 127.0.0.1: over plain
//! WebSocket and TLS, moving to a direct path, reconnecting to a restarted
//! relay, in-process, and a token replaced in place ahead of the frames it
//! admits.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use drawbridge_relay::token::SigningKey;
use drawbridge_relay::{RelayConfig, RelayState, router};
use drawbridge_tunnel::driver::{DriverEvent, LocalLink, LocalRelay, RelayEndpoint, Tunnel};
use drawbridge_tunnel::engine::{IpNet, Path, PeerConfig};
use tokio::net::TcpListener;

#[tokio::test]
async fn two_drivers_talk_through_the_real_relay_then_move_to_direct() {
    let s = server().await;
    let (pa, pb) = ([0x11; 32], [0x22; 32]);
    let (ka, kb) = (pubkey(pa), pubkey(pb));
    let (a, mut a_io) = driver(&s, pa, kb, 0).await;
    let (b, mut b_io) = driver(&s, pb, ka, 1).await;
    wait_connections(&s, 2).await;

    // Without signals, only the relay is possible.
    let got = exchange(&a, &mut b_io, 0, 0, 20).await;
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(a.stats(kb).await.unwrap().unwrap().path, Path::Relay);
    assert!(s.state.stats().frames_forwarded >= 20);

    // Carry the signals (STUN-learned and host candidates): the direct path takes over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Ok(ev) = a_io.events.try_recv() {
            if let DriverEvent::Signal { signal, .. } = ev {
                b.signal(ka, signal).await.unwrap();
            }
        }
        while let Ok(ev) = b_io.events.try_recv() {
            if let DriverEvent::Signal { signal, .. } = ev {
                a.signal(kb, signal).await.unwrap();
            }
        }
        let st = a.stats(kb).await.unwrap().unwrap();
        if st.path == Path::Direct(b.local_addr()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no direct path: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarded = s.state.stats().frames_forwarded;
    let got = exchange(&b, &mut a_io, 1, 100, 20).await;
    assert_eq!(got, (100..120).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Data went direct: the relay saw at most the occasional RTT probe.
    assert!(s.state.stats().frames_forwarded < forwarded + 5);
}

#[tokio::test]
async fn driver_reconnects_to_a_restarted_relay() {
    let (key, _) = SigningKey::generate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mk_state = |k: &SigningKey| RelayState::new(RelayConfig::new(k.verifying_key()));
    let state = mk_state(&key);
    let app = router(state.clone());
    let first = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (pa, pb) = ([0x33; 32], [0x44; 32]);
    let (ka, kb) = (pubkey(pa), pubkey(pb));
    let mk = |private: [u8; 32], me, peer, index: usize| {
        let relay = endpoint(
            format!("ws://{addr}/relay/v1"),
            issue(&key, "s", me, &[peer], 600),
        );
        config(private, peer, index, relay, vec![])
    };
    let (a, _a_io) = Tunnel::start(mk(pa, ka, kb, 0)).await.unwrap();
    let (_b, mut b_io) = Tunnel::start(mk(pb, kb, ka, 1)).await.unwrap();
    assert_eq!(exchange(&a, &mut b_io, 0, 0, 5).await.len(), 5);

    // The relay dies and comes back on the same port.
    first.abort();
    let _ = first.await;
    // Aborting the accept loop leaves upgraded connections running: end them too.
    state.disconnect_session("s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let state2 = mk_state(&key);
    let app = router(state2.clone());
    let second = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state2.stats().connections < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drivers did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = exchange(&a, &mut b_io, 0, 10, 5).await;
    assert_eq!(got, (10..15).collect::<Vec<_>>());
    second.abort();
}

#[tokio::test]
async fn two_drivers_talk_through_the_relay_over_tls() {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_der = certified.cert.der().clone();
    let key_der =
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(client_cfg));

    let (key, _) = SigningKey::generate().unwrap();
    let state = RelayState::new(RelayConfig::new(key.verifying_key()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(drawbridge_relay::serve_tls(
        listener,
        router(state.clone()),
        std::sync::Arc::new(server_cfg),
    ));
    let (pa, pb) = ([0x55; 32], [0x66; 32]);
    let (ka, kb) = (pubkey(pa), pubkey(pb));
    let mk = |private: [u8; 32], me: [u8; 32], peer: [u8; 32], index: usize| {
        let relay = RelayEndpoint {
            connector: Some(connector.clone()),
            ..endpoint(
                format!("wss://{addr}/relay/v1"),
                issue(&key, "tls", me, &[peer], 600),
            )
        };
        config(private, peer, index, relay, vec![])
    };
    let (a, _a_io) = Tunnel::start(mk(pa, ka, kb, 0)).await.unwrap();
    let (_b, mut b_io) = Tunnel::start(mk(pb, kb, ka, 1)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.stats().connections < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no TLS connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        exchange(&a, &mut b_io, 0, 0, 10).await,
        (0..10).collect::<Vec<_>>()
    );
    assert!(state.stats().frames_forwarded >= 10);
    server.abort();
}

#[tokio::test]
async fn an_in_process_relay_is_used_only_at_its_url_with_the_same_admission() {
    let s = server().await;
    let (pa, pb) = ([0x55; 32], [0x66; 32]);
    let (ka, kb) = (pubkey(pa), pubkey(pb));
    // A's relay URL has nothing listening (port 1): only the in-process connection
    // reaches the relay, as the server's own peers reach its embedded relay.
    let url = "ws://127.0.0.1:1/relay/v1".to_string();
    let local = in_process(&s.state, &url, None);
    let relay = RelayEndpoint {
        local: Some(local),
        ..endpoint(url.clone(), s.token("s1", ka, &[kb], 600))
    };
    let (a, mut a_io) = Tunnel::start(config(pa, kb, 0, relay, vec![]))
        .await
        .unwrap();
    let (b, mut b_io) = driver(&s, pb, ka, 1).await;
    wait_connections(&s, 2).await;
    assert_eq!(
        exchange(&a, &mut b_io, 0, 0, 20).await,
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(
        exchange(&b, &mut a_io, 1, 100, 20).await,
        (100..120).collect::<Vec<_>>()
    );

    // A relay in this process at another URL is not used for this one: the
    // connection goes over the network.
    let dials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let other = in_process(&s.state, "ws://127.0.0.1:1/relay/v1", Some(dials.clone()));
    let pc = [0x77; 32];
    let relay = RelayEndpoint {
        local: Some(other),
        ..endpoint(s.url(), s.token("s1", pubkey(pc), &[ka], 600))
    };
    let (_c, _c_io) = Tunnel::start(config(pc, ka, 1, relay, vec![]))
        .await
        .unwrap();
    wait_connections(&s, 3).await;
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The in-process connection is admitted as a WebSocket is: a forged or
    // empty token is refused (the relay's own tests: relay_local.rs).
    let local = in_process(&s.state, &url, None);
    for bad in ["forged", ""] {
        assert!((local.connect)(bad).is_err(), "{bad:?}");
    }
    assert_eq!(s.state.stats().connections, 3);
}

/// The relay `state` as an in-process relay at `url`, counting its connects.
fn in_process(
    state: &RelayState,
    url: &str,
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> LocalRelay {
    struct Link(drawbridge_relay::LocalConn);
    impl LocalLink for Link {
        fn send(&mut self, frame: Vec<u8>) -> bool {
            self.0.send(frame)
        }
        fn recv<'a>(
            &'a mut self,
            buf: &'a mut Vec<axum::body::Bytes>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>> {
            Box::pin(self.0.recv_many(buf, 64))
        }
    }
    let state = state.clone();
    LocalRelay {
        url: url.to_string(),
        connect: std::sync::Arc::new(move |token| {
            if let Some(c) = &counted {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            match state.connect_local(token) {
                Ok(conn) => Ok(Box::new(Link(conn)) as Box<dyn LocalLink>),
                Err(e) => Err(e.to_string()),
            }
        }),
    }
}

/// The edge's order on a session update: the relay token naming a new peer,
/// then the peer, whose handshake initiation goes out at once. The relay must
/// see the token first, or it drops the initiation as not allowed and the
/// handshake waits for WireGuard's 5 s retry (the first page of a browser
/// session did). Eight peers in a row, as a random order would fail one of
/// them almost surely.
#[tokio::test]
async fn a_token_replaced_in_place_reaches_the_relay_before_the_frames_it_admits() {
    let s = server().await;
    let pa = [0x81; 32];
    let ka = pubkey(pa);
    // A (an edge) connected before anyone joined: its token names nobody.
    let relay = endpoint(s.url(), s.token("s1", ka, &[], 600));
    let mut cfg = config(pa, [0; 32], 0, relay, vec![]);
    cfg.peers.clear();
    let (a, _a_io) = Tunnel::start(cfg).await.unwrap();
    wait_connections(&s, 1).await;
    let dropped = |s: &Server| {
        let st = s.state.stats();
        st.drop_no_route + st.drop_not_allowed
    };
    let mut granted = Vec::new();
    let mut others = Vec::new();
    for i in 0..8u8 {
        let pb = [0x90 + i; 32];
        let kb = pubkey(pb);
        granted.push(kb);
        let before = dropped(&s);
        a.set_relay_token(0, s.token("s1", ka, &granted, 600))
            .await
            .unwrap();
        a.add_peer(PeerConfig {
            public_key: kb,
            allowed_ips: vec![IpNet::new(Ipv4Addr::new(100, 64, 1, i + 1).into(), 32)],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        })
        .await
        .unwrap();
        // A's initiation reached the relay; B is not connected yet, so it is
        // dropped, but as "no route" only if A's new token came first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dropped(&s) == before {
            assert!(tokio::time::Instant::now() < deadline, "A sent nothing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // B connects and initiates; A's grants admit it and A answers.
        others.push(driver(&s, pb, ka, 1).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while a.stats(kb).await.unwrap().unwrap().last_handshake.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no handshake with B{i}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        s.state.stats().drop_not_allowed,
        0,
        "a frame went out ahead of the token that admits it"
    );
}
