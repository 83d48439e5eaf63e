//! Real-socket tests on 127.0.0.1: the relay's admission and forwarding rules, the STUN
//! service, and two tunnel drivers talking through a real relay + STUN server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drawbridge_relay::token::{self, Claims, SigningKey};
use drawbridge_relay::{RelayConfig, RelayState, router};
use drawbridge_testnet::sim::{numbered_packet, overlay_ip, packet_seq};
use drawbridge_tunnel::driver::{
    DriverConfig, DriverEvent, LocalRelay, RelayEndpoint, Tunnel, TunnelIo,
};
use drawbridge_tunnel::engine::{IpNet, NodeConfig, Path, PeerConfig};
use drawbridge_tunnel::frame::{Frame, MAX_FRAME};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Server {
    addr: SocketAddr,
    stun: SocketAddr,
    key: SigningKey,
    state: RelayState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn server_with(send_queue: usize) -> Server {
    let (key, _) = SigningKey::generate().unwrap();
    let mut cfg = RelayConfig::new(key.verifying_key());
    cfg.send_queue = send_queue;
    let state = RelayState::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun = udp.local_addr().unwrap();
    let tasks = vec![
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
        tokio::spawn(async move {
            let _ = drawbridge_relay::stun::serve(udp).await;
        }),
    ];
    Server {
        addr,
        stun,
        key,
        state,
        tasks,
    }
}

async fn server() -> Server {
    server_with(256).await
}

impl Server {
    fn url(&self) -> String {
        format!("ws://{}/relay/v1", self.addr)
    }
    fn token(&self, session: &str, peer: [u8; 32], allowed: &[[u8; 32]], ttl: i64) -> String {
        token::issue(
            &self.key,
            &Claims {
                session_id: session.into(),
                peer,
                allowed_peers: allowed.to_vec(),
                expires_at: (now() as i64 + ttl) as u64,
                bridge: false,
            },
        )
        .unwrap()
    }
    async fn connect(&self, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = self.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }
}

fn data(dst: [u8; 32], payload: &[u8]) -> Message {
    Message::Binary(Frame::Data { peer: dst, payload }.encode().unwrap().into())
}

async fn recv_data(ws: &mut Ws, within: Duration) -> Option<([u8; 32], Vec<u8>)> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(&b) {
                Ok(Frame::Data { peer, payload }) => return Some((peer, payload.to_vec())),
                _ => continue,
            },
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn wait_connections(s: &Server, n: u64) {
    for _ in 0..200 {
        if s.state.stats().connections == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} connections, have {:?}", s.state.stats());
}

const A: [u8; 32] = [0xA; 32];
const B: [u8; 32] = [0xB; 32];
const C: [u8; 32] = [0xC; 32];

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

fn token_frame(t: &str) -> Message {
    Message::Binary(Frame::Token(t.as_bytes()).encode().unwrap().into())
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
    let forged = token::issue(
        &other,
        &Claims {
            session_id: "s1".into(),
            peer: A,
            allowed_peers: vec![B, C],
            expires_at: now() + 60,
            bridge: false,
        },
    )
    .unwrap();
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
    let forged = token::issue(
        &other,
        &Claims {
            session_id: "s1".into(),
            peer: A,
            allowed_peers: vec![B],
            expires_at: now() + 60,
            bridge: false,
        },
    )
    .unwrap();
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

// ---- two real tunnel drivers through the real relay ----

fn pubkey(private: [u8; 32]) -> [u8; 32] {
    drawbridge_tunnel::keys::public_key(&private)
}

async fn driver(s: &Server, private: [u8; 32], peer: [u8; 32], index: usize) -> (Tunnel, TunnelIo) {
    let me = pubkey(private);
    let relay = RelayEndpoint {
        id: 0,
        url: s.url(),
        token: s.token("s1", me, &[peer], 600),
        connector: None,
        proxy: None,
        local: None,
    };
    Tunnel::start(config(private, peer, index, relay, vec![s.stun]))
        .await
        .unwrap()
}

/// Peer `index` (0 or 1) of a two-peer tunnel over `relay`, with `stun`.
fn config(
    private: [u8; 32],
    peer: [u8; 32],
    index: usize,
    relay: RelayEndpoint,
    stun: Vec<SocketAddr>,
) -> DriverConfig {
    DriverConfig {
        node: NodeConfig {
            private_key: private,
            stun_servers: stun,
            local_addrs: vec![],
            seed: None,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        relays: vec![relay],
        peers: vec![PeerConfig {
            public_key: peer,
            allowed_ips: vec![IpNet::new(IpAddr::V4(overlay_ip(1 - index)), 32)],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        }],
        queue: 256,
    }
}

async fn exchange(a: &Tunnel, b_io: &mut TunnelIo, from: usize, first: u32, n: u32) -> Vec<u32> {
    for seq in first..first + n {
        a.send_ip(numbered_packet(from, 1 - from, seq))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < n as usize {
        match tokio::time::timeout(Duration::from_secs(5), b_io.incoming.recv()).await {
            Ok(Some((_, p))) => got.push(packet_seq(&p).unwrap()),
            _ => break,
        }
    }
    got
}

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
    let tok = |me, peer| {
        token::issue(
            &key,
            &Claims {
                session_id: "s".into(),
                peer: me,
                allowed_peers: vec![peer],
                expires_at: now() + 600,
                bridge: false,
            },
        )
        .unwrap()
    };
    let mk = |private: [u8; 32], me, peer, index: usize| {
        let relay = RelayEndpoint {
            id: 0,
            url: format!("ws://{addr}/relay/v1"),
            token: tok(me, peer),
            connector: None,
            proxy: None,
            local: None,
        };
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
            id: 0,
            url: format!("wss://{addr}/relay/v1"),
            token: token::issue(
                &key,
                &Claims {
                    session_id: "tls".into(),
                    peer: me,
                    allowed_peers: vec![peer],
                    expires_at: now() + 600,
                    bridge: false,
                },
            )
            .unwrap(),
            connector: Some(connector.clone()),
            proxy: None,
            local: None,
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

async fn closed_within(ws: &mut Ws, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
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

#[tokio::test]
async fn an_in_process_relay_is_used_only_at_its_url_with_the_same_admission() {
    let s = server().await;
    let (pa, pb) = ([0x55; 32], [0x66; 32]);
    let (ka, kb) = (pubkey(pa), pubkey(pb));
    // A's relay URL has nothing listening (port 1): only the in-process stream
    // reaches the relay, as the server's own peers reach its embedded relay.
    let url = "ws://127.0.0.1:1/relay/v1".to_string();
    let app = router(s.state.clone());
    let local = LocalRelay {
        url: url.clone(),
        dial: std::sync::Arc::new(move || Box::new(drawbridge_relay::dial_in_process(&app))),
    };
    let relay = RelayEndpoint {
        id: 0,
        url,
        token: s.token("s1", ka, &[kb], 600),
        connector: None,
        proxy: None,
        local: Some(local),
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
    let (counted, app) = (dials.clone(), router(s.state.clone()));
    let other = LocalRelay {
        url: "ws://127.0.0.1:1/relay/v1".into(),
        dial: std::sync::Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::new(drawbridge_relay::dial_in_process(&app))
        }),
    };
    let pc = [0x77; 32];
    let relay = RelayEndpoint {
        id: 0,
        url: s.url(),
        token: s.token("s1", pubkey(pc), &[ka], 600),
        connector: None,
        proxy: None,
        local: Some(other),
    };
    let (_c, _c_io) = Tunnel::start(config(pc, ka, 1, relay, vec![]))
        .await
        .unwrap();
    wait_connections(&s, 3).await;
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The in-process stream is admitted as a TCP connection is: a forged or
    // missing token is refused before any WebSocket.
    let app = router(s.state.clone());
    for auth in [Some("Bearer forged"), None] {
        let mut req = s.url().into_client_request().unwrap();
        if let Some(v) = auth {
            req.headers_mut()
                .insert("authorization", v.parse().unwrap());
        }
        let r = tokio_tungstenite::client_async(req, drawbridge_relay::dial_in_process(&app)).await;
        match r {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401, "{auth:?}")
            }
            other => panic!("{auth:?}: {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(s.state.stats().connections, 3);
}
