//! The relay tests' shared pieces: a real relay with its STUN service on
//! 127.0.0.1, tokens it accepts, raw WebSocket clients, and two-peer tunnel
//! drivers. (Each test binary uses a part of them.)
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drawbridge_relay::token::{self, Claims, SigningKey};
use drawbridge_relay::{RelayConfig, RelayState, router};
use drawbridge_testnet::sim::{numbered_packet, overlay_ip, packet_seq};
use drawbridge_tunnel::driver::{DriverConfig, RelayEndpoint, Tunnel, TunnelIo};
use drawbridge_tunnel::engine::{IpNet, NodeConfig, PeerConfig};
use drawbridge_tunnel::frame::Frame;
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Server {
    pub addr: SocketAddr,
    pub stun: SocketAddr,
    pub key: SigningKey,
    pub state: RelayState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn server_with(send_queue: usize) -> Server {
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

pub async fn server() -> Server {
    server_with(256).await
}

impl Server {
    pub fn url(&self) -> String {
        format!("ws://{}/relay/v1", self.addr)
    }
    pub fn token(&self, session: &str, peer: [u8; 32], allowed: &[[u8; 32]], ttl: i64) -> String {
        issue(&self.key, session, peer, allowed, ttl)
    }
    pub async fn connect(&self, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = self.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }
}

/// A relay token for `peer` in `session` naming `allowed`, signed with `key`,
/// valid for `ttl` seconds from now (negative: already expired).
pub fn issue(
    key: &SigningKey,
    session: &str,
    peer: [u8; 32],
    allowed: &[[u8; 32]],
    ttl: i64,
) -> String {
    token::issue(
        key,
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

/// Relay 0 at `url`, reached directly (no TLS connector, proxy or in-process relay).
pub fn endpoint(url: String, token: String) -> RelayEndpoint {
    RelayEndpoint {
        id: 0,
        url,
        token,
        connector: None,
        proxy: None,
        local: None,
    }
}

pub fn data(dst: [u8; 32], payload: &[u8]) -> Message {
    Message::Binary(Frame::Data { peer: dst, payload }.encode().unwrap().into())
}

pub async fn recv_data(ws: &mut Ws, within: Duration) -> Option<([u8; 32], Vec<u8>)> {
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

pub async fn wait_connections(s: &Server, n: u64) {
    for _ in 0..200 {
        if s.state.stats().connections == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} connections, have {:?}", s.state.stats());
}

pub const A: [u8; 32] = [0xA; 32];
pub const B: [u8; 32] = [0xB; 32];
pub const C: [u8; 32] = [0xC; 32];

pub fn token_frame(t: &str) -> Message {
    Message::Binary(Frame::Token(t.as_bytes()).encode().unwrap().into())
}

pub async fn closed_within(ws: &mut Ws, within: Duration) -> bool {
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

// ---- two real tunnel drivers through the real relay ----

pub fn pubkey(private: [u8; 32]) -> [u8; 32] {
    drawbridge_tunnel::keys::public_key(&private)
}

pub async fn driver(
    s: &Server,
    private: [u8; 32],
    peer: [u8; 32],
    index: usize,
) -> (Tunnel, TunnelIo) {
    let me = pubkey(private);
    let relay = endpoint(s.url(), s.token("s1", me, &[peer], 600));
    Tunnel::start(config(private, peer, index, relay, vec![s.stun]))
        .await
        .unwrap()
}

/// Peer `index` (0 or 1) of a two-peer tunnel over `relay`, with `stun`.
pub fn config(
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

pub async fn exchange(
    a: &Tunnel,
    b_io: &mut TunnelIo,
    from: usize,
    first: u32,
    n: u32,
) -> Vec<u32> {
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
