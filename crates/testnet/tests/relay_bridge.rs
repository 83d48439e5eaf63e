//! The relay's UDP bridge over real sockets on 127.0.0.1: standard WireGuard clients reach
//! edges whose token has the `bridge` claim.
//!
//! The "standard client" in the end-to-end tests is our engine's [`Node`] with the edge
//! configured as an ordinary relay peer; the test unwraps its relay DATA frames into plain
//! UDP datagrams to the bridge and wraps what comes back, so on the wire it is exactly a
//! plain WireGuard client (its own relay pings are ordinary WireGuard data the edge ignores).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drawbridge_relay::token::{self, Claims, SigningKey};
use drawbridge_relay::{RelayConfig, RelayState, router};
use drawbridge_testnet::sim::{numbered_packet, overlay_ip, packet_seq};
use drawbridge_tunnel::driver::{DriverConfig, RelayEndpoint, Tunnel, TunnelIo};
use drawbridge_tunnel::engine::{IpNet, Node, NodeConfig, Output, Path, PathReason, PeerConfig};
use drawbridge_tunnel::frame::Frame;
use drawbridge_tunnel::keys::public_key;
use drawbridge_tunnel::wgmac;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Server {
    addr: SocketAddr,
    bridge: SocketAddr,
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

async fn server() -> Server {
    let (key, _) = SigningKey::generate().unwrap();
    let state = RelayState::new(RelayConfig::new(key.verifying_key()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bridge = udp.local_addr().unwrap();
    let app = router(state.clone());
    let bridge_state = state.clone();
    let tasks = vec![
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
        tokio::spawn(async move {
            let _ = bridge_state.serve_bridge(udp).await;
        }),
    ];
    Server {
        addr,
        bridge,
        key,
        state,
        tasks,
    }
}

impl Server {
    fn url(&self) -> String {
        format!("ws://{}/relay/v1", self.addr)
    }
    fn token(&self, peer: [u8; 32], bridge: bool) -> String {
        token::issue(
            &self.key,
            &Claims {
                session_id: "s1".into(),
                peer,
                allowed_peers: vec![],
                expires_at: unix_now() + 600,
                bridge,
            },
        )
        .unwrap()
    }
    async fn connect(&self, token: &str) -> Ws {
        let mut req = self.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }
    async fn wait_connections(&self, n: u64) {
        for _ in 0..200 {
            if self.state.stats().connections == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} connections, have {:?}", self.state.stats());
    }
}

// ---- the bridge's rules, with hand-made WireGuard headers and raw WebSockets ----

/// A handshake initiation shaped packet addressed (by mac1) to `responder`.
fn initiation(responder: &[u8; 32], sender_idx: u32) -> Vec<u8> {
    let mut p = vec![0x5A; wgmac::HANDSHAKE_INIT_LEN];
    p[..4].copy_from_slice(&[1, 0, 0, 0]);
    p[4..8].copy_from_slice(&sender_idx.to_le_bytes());
    let mac = wgmac::mac1(&wgmac::mac1_key(responder), &p).unwrap();
    p[116..132].copy_from_slice(&mac);
    p[132..].fill(0);
    p
}

fn response(sender_idx: u32, receiver_idx: u32) -> Vec<u8> {
    let mut p = vec![0x6B; wgmac::HANDSHAKE_RESP_LEN];
    p[..4].copy_from_slice(&[2, 0, 0, 0]);
    p[4..8].copy_from_slice(&sender_idx.to_le_bytes());
    p[8..12].copy_from_slice(&receiver_idx.to_le_bytes());
    p
}

fn data(receiver_idx: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x7C; len];
    p[..4].copy_from_slice(&[4, 0, 0, 0]);
    p[4..8].copy_from_slice(&receiver_idx.to_le_bytes());
    p
}

fn bridge_msg(tag: u64, payload: &[u8]) -> Message {
    Message::Binary(Frame::Bridge { tag, payload }.encode().unwrap().into())
}

async fn recv_bridge(ws: &mut Ws, within: Duration) -> Option<(u64, Vec<u8>)> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(&b) {
                Ok(Frame::Bridge { tag, payload }) => return Some((tag, payload.to_vec())),
                _ => continue,
            },
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn recv_udp(sock: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(within, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((buf[..n].to_vec(), from))
}

const E: [u8; 32] = [0xE1; 32];
const F: [u8; 32] = [0xF1; 32];
const G: [u8; 32] = [0x61; 32];
const QUIET: Duration = Duration::from_millis(300);
const SOON: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_bridge_routes_by_mac1_then_by_index_and_only_to_the_tags_owner() {
    let s = server().await;
    let mut e = s.connect(&s.token(E, true)).await;
    let mut f = s.connect(&s.token(F, false)).await;
    let mut g = s.connect(&s.token(G, true)).await;
    s.wait_connections(3).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // An initiation addressed to E reaches E, tagged.
    let init = initiation(&E, 0x11);
    client.send_to(&init, s.bridge).await.unwrap();
    let (tag, got) = recv_bridge(&mut e, SOON)
        .await
        .expect("E gets the initiation");
    assert_eq!(got, init);
    // E answers: the client gets exactly the packet, from the bridge's address.
    let resp = response(0x55, 0x11);
    e.send(bridge_msg(tag, &resp)).await.unwrap();
    assert_eq!(recv_udp(&client, SOON).await, Some((resp, s.bridge)));
    // Data naming E's index now finds E, under the same tag.
    let d = data(0x55, 48);
    client.send_to(&d, s.bridge).await.unwrap();
    assert_eq!(recv_bridge(&mut e, SOON).await, Some((tag, d)));

    // Another bridging edge cannot use E's tag, and an edge whose token does not bridge
    // cannot send bridge frames at all.
    g.send(bridge_msg(tag, &data(1, 32))).await.unwrap();
    f.send(bridge_msg(tag, &data(1, 32))).await.unwrap();
    assert_eq!(recv_udp(&client, QUIET).await, None);
    // An initiation keyed to F (whose token does not bridge) reaches nobody; nor do data for
    // an unknown index or garbage.
    client
        .send_to(&initiation(&F, 0x12), s.bridge)
        .await
        .unwrap();
    client.send_to(&data(0x99, 32), s.bridge).await.unwrap();
    client.send_to(b"not wireguard", s.bridge).await.unwrap();
    client.send_to(&[4u8; 31], s.bridge).await.unwrap();
    assert_eq!(recv_bridge(&mut f, QUIET).await, None);
    assert_eq!(recv_bridge(&mut g, QUIET).await, None);
    assert_eq!(recv_bridge(&mut e, QUIET).await, None);

    let st = s.state.stats();
    assert_eq!(st.bridge_datagrams_in, 2);
    assert_eq!(st.bridge_datagrams_out, 1);
    assert_eq!(st.bridge_drops, 6);
    assert_eq!(st.drop_not_allowed, 2);
    assert_eq!(st.bridge_tags, 1);
    // Bridge frames from edges are not malformed frames: every connection is still up.
    assert_eq!(st.connections, 3);
    assert_eq!(st.closed_malformed, 0);
}

#[tokio::test]
async fn one_client_socket_talking_to_two_edges_keeps_them_apart() {
    let s = server().await;
    let mut e = s.connect(&s.token(E, true)).await;
    let mut g = s.connect(&s.token(G, true)).await;
    s.wait_connections(2).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    client.send_to(&initiation(&E, 1), s.bridge).await.unwrap();
    client.send_to(&initiation(&G, 2), s.bridge).await.unwrap();
    let (te, _) = recv_bridge(&mut e, SOON).await.unwrap();
    let (tg, _) = recv_bridge(&mut g, SOON).await.unwrap();
    assert_ne!(te, tg);
    e.send(bridge_msg(te, &response(0xE0, 1))).await.unwrap();
    assert!(recv_udp(&client, SOON).await.is_some());
    g.send(bridge_msg(tg, &response(0x60, 2))).await.unwrap();
    assert!(recv_udp(&client, SOON).await.is_some());

    client.send_to(&data(0x60, 32), s.bridge).await.unwrap();
    client.send_to(&data(0xE0, 40), s.bridge).await.unwrap();
    assert_eq!(recv_bridge(&mut g, SOON).await, Some((tg, data(0x60, 32))));
    assert_eq!(recv_bridge(&mut e, SOON).await, Some((te, data(0xE0, 40))));
    assert_eq!(recv_bridge(&mut e, QUIET).await, None);
}

// ---- a real edge tunnel and a plain WireGuard client ----

const EDGE_PRIVATE: [u8; 32] = [0x21; 32];
const CLIENT_PRIVATE: [u8; 32] = [0x31; 32];

/// The edge: a real driver on the relay, with `bridged` peers.
async fn edge(s: &Server, bridge_claim: bool, peers: &[[u8; 32]]) -> (Tunnel, TunnelIo) {
    Tunnel::start(DriverConfig {
        node: NodeConfig {
            private_key: EDGE_PRIVATE,
            stun_servers: vec![],
            local_addrs: vec![],
            seed: None,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        relays: vec![RelayEndpoint {
            id: 0,
            url: s.url(),
            token: s.token(public_key(&EDGE_PRIVATE), bridge_claim),
            connector: None,
            proxy: None,
            local: None,
        }],
        peers: peers
            .iter()
            .map(|&k| PeerConfig {
                public_key: k,
                allowed_ips: vec![IpNet::new(IpAddr::V4(overlay_ip(0)), 32)],
                relay: Some(0),
                persistent_keepalive: None,
                bridged: true,
            })
            .collect(),
        queue: 256,
    })
    .await
    .unwrap()
}

/// A plain WireGuard client on a UDP socket, talking to `bridge` only.
struct PlainClient {
    node: Node,
    sock: UdpSocket,
    bridge: SocketAddr,
    edge: [u8; 32],
    delivered: Vec<Vec<u8>>,
}

impl PlainClient {
    async fn new(private: [u8; 32], bridge: SocketAddr) -> Self {
        let edge = public_key(&EDGE_PRIVATE);
        let mut node = Node::new(
            NodeConfig {
                private_key: private,
                stun_servers: vec![],
                local_addrs: vec![],
                seed: Some(1),
            },
            Instant::now(),
        );
        node.add_peer(
            Instant::now(),
            PeerConfig {
                public_key: edge,
                allowed_ips: vec![IpNet::new(IpAddr::V4(overlay_ip(1)), 32)],
                relay: Some(0),
                persistent_keepalive: None,
                bridged: false,
            },
        )
        .unwrap();
        PlainClient {
            node,
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            bridge,
            edge,
            delivered: Vec::new(),
        }
    }

    /// Sends what the engine queued as plain datagrams; keeps deliveries.
    async fn flush(&mut self) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::Relay { frame, .. } => {
                    if let Ok(Frame::Data { payload, .. }) = Frame::decode(&frame) {
                        self.sock.send_to(payload, self.bridge).await.unwrap();
                    }
                }
                Output::Deliver { packet, .. } => self.delivered.push(packet),
                _ => {}
            }
        }
    }

    /// Runs the client for `dur` (or until `done`), answering what arrives from the bridge.
    async fn run(&mut self, dur: Duration, done: impl Fn(&Self) -> bool) {
        let end = tokio::time::Instant::now() + dur;
        let mut buf = [0u8; 2048];
        loop {
            self.flush().await;
            if done(self) || tokio::time::Instant::now() >= end {
                return;
            }
            let wake = tokio::time::Instant::from_std(self.node.poll_timeout()).min(end);
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => {
                    let (n, from) = r.unwrap();
                    // A plain client hears only its server (here, the bridge).
                    if from == self.bridge {
                        let f = Frame::Data { peer: self.edge, payload: &buf[..n] }
                            .encode()
                            .unwrap();
                        self.node.handle_relay_frame(Instant::now(), 0, &f);
                    }
                }
                _ = tokio::time::sleep_until(wake) => self.node.handle_timeout(Instant::now()),
            }
        }
    }

    fn handshaken(&self) -> bool {
        self.node
            .peer_stats(&self.edge)
            .is_some_and(|s| s.last_handshake.is_some())
    }
}

#[tokio::test]
async fn a_plain_wireguard_client_and_an_edge_tunnel_exchange_packets_through_the_bridge() {
    let s = server().await;
    let mut client = PlainClient::new(CLIENT_PRIVATE, s.bridge).await;
    let (edge, mut edge_io) = edge(&s, true, &[public_key(&CLIENT_PRIVATE)]).await;
    s.wait_connections(1).await;

    client
        .run(Duration::from_secs(10), |c| c.handshaken())
        .await;
    assert!(client.handshaken(), "no handshake: {:?}", s.state.stats());

    // Client -> edge.
    for seq in 0..5 {
        client
            .node
            .send_ip(Instant::now(), &numbered_packet(0, 1, seq))
            .unwrap();
    }
    client.run(Duration::from_millis(200), |_| false).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        let (from, p) = tokio::time::timeout(SOON, edge_io.incoming.recv())
            .await
            .expect("edge receives")
            .unwrap();
        assert_eq!(from, public_key(&CLIENT_PRIVATE));
        got.push(packet_seq(&p).unwrap());
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // Edge -> client.
    for seq in 100..105 {
        edge.send_ip(numbered_packet(1, 0, seq)).await.unwrap();
    }
    client
        .run(Duration::from_secs(5), |c| c.delivered.len() >= 5)
        .await;
    let seqs: Vec<u32> = client
        .delivered
        .iter()
        .filter_map(|p| packet_seq(p))
        .collect();
    assert_eq!(seqs, vec![100, 101, 102, 103, 104]);

    let st = edge
        .stats(public_key(&CLIENT_PRIVATE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((st.path, st.reason), (Path::Relay, PathReason::Bridged));
    let rs = s.state.stats();
    assert!(
        rs.bridge_datagrams_in >= 6 && rs.bridge_datagrams_out >= 6,
        "{rs:?}"
    );
    assert_eq!(
        rs.frames_forwarded, 0,
        "nothing went through relay DATA frames"
    );
}

#[tokio::test]
async fn a_client_key_the_edge_does_not_know_gets_no_answer() {
    let s = server().await;
    let mut client = PlainClient::new(CLIENT_PRIVATE, s.bridge).await;
    // The edge bridges, but for another client only.
    let (_edge, mut edge_io) = edge(&s, true, &[public_key(&[0x41; 32])]).await;
    s.wait_connections(1).await;

    client
        .node
        .send_ip(Instant::now(), &numbered_packet(0, 1, 1))
        .unwrap();
    client.run(Duration::from_secs(2), |c| c.handshaken()).await;
    assert!(!client.handshaken());
    assert!(edge_io.incoming.try_recv().is_err());
    let rs = s.state.stats();
    // The relay handed the initiation over (mac1 names the edge); the edge refused it.
    assert!(rs.bridge_datagrams_in >= 1, "{rs:?}");
    assert_eq!(rs.bridge_datagrams_out, 0, "{rs:?}");
}

#[tokio::test]
async fn an_edge_whose_token_lacks_bridge_receives_nothing() {
    let s = server().await;
    let mut client = PlainClient::new(CLIENT_PRIVATE, s.bridge).await;
    // The edge is configured for this client, but its token does not bridge.
    let (_edge, mut edge_io) = edge(&s, false, &[public_key(&CLIENT_PRIVATE)]).await;
    s.wait_connections(1).await;

    client
        .node
        .send_ip(Instant::now(), &numbered_packet(0, 1, 1))
        .unwrap();
    client.run(Duration::from_secs(2), |c| c.handshaken()).await;
    assert!(!client.handshaken());
    assert!(edge_io.incoming.try_recv().is_err());
    let rs = s.state.stats();
    assert_eq!(rs.bridge_datagrams_in, 0, "{rs:?}");
    assert!(rs.bridge_drops >= 1, "{rs:?}");
    assert_eq!(rs.bridge_tags, 0);
}
