//! Bridged peers: a standard WireGuard client reaching an edge through the relay's UDP bridge.
//!
//! The "standard client" A is our own engine with the edge B configured on relay 0, so its
//! WireGuard packets come out as DATA frames. The test plays the relay's bridge: it unwraps
//! A's frames into plain datagrams and hands them to B as BRIDGE frames with a tag, and
//! unwraps B's BRIDGE frames back to A. B therefore sees exactly what a plain WireGuard
//! client behind the bridge sends, and everything B does for that peer is its bridged logic.
//! (A's own relay pings travel as ordinary WireGuard data too; B must ignore them.)

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::frame::Frame;
use wg::{bridge_pseudo_addr, to_vec};

/// The edge's relay connection that carries the bridge.
const RELAY: RelayId = 3;

fn node(k: u8) -> Node {
    Node::new(
        NodeConfig {
            private_key: [k; 32],
            stun_servers: vec![],
            local_addrs: vec![],
            seed: Some(u64::from(k)),
        },
        Instant::now(),
    )
}

/// An IPv4 packet of `len` bytes from 100.64.0.`src` to 100.64.0.`dst`.
fn ip(src: u8, dst: u8, len: usize, mark: u8) -> Vec<u8> {
    let mut p = vec![mark; len];
    p[..20].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, src]);
    p[16..20].copy_from_slice(&[100, 64, 0, dst]);
    p
}

/// The client's view of the edge: an ordinary relay peer (whose relay the test replaces).
fn client_cfg(edge: PeerId) -> PeerConfig {
    PeerConfig {
        public_key: edge,
        allowed_ips: vec![IpNet::new(IpAddr::from([100, 64, 0, 2]), 32)],
        relay: Some(0),
        persistent_keepalive: None,
        bridged: false,
    }
}

/// The edge's view of the client.
fn edge_cfg(client: PeerId, bridged: bool, keepalive: Option<u16>) -> PeerConfig {
    PeerConfig {
        public_key: client,
        allowed_ips: vec![IpNet::new(IpAddr::from([100, 64, 0, 1]), 32)],
        relay: Some(RELAY),
        persistent_keepalive: keepalive,
        bridged,
    }
}

fn bridge_frame(tag: u64, payload: &[u8]) -> Vec<u8> {
    Frame::Bridge { tag, payload }.encode().unwrap()
}

#[derive(Default)]
struct Seen {
    /// IP packets delivered by the client / the edge.
    to_a: Vec<Vec<u8>>,
    to_b: Vec<Vec<u8>>,
    /// Datagrams the client sent (for replays).
    a_datagrams: Vec<Vec<u8>>,
    /// Tags of the edge's bridge frames, in order.
    b_tags: Vec<u64>,
    /// Anything else the edge sent towards the network: UDP, DATA frames, signals.
    b_stray: Vec<Output>,
}

/// Moves everything queued between client `a` and edge `b` (as the relay's bridge would,
/// with the client's endpoint named `tag` on the edge's relay `relay`) until both are quiet.
fn pump(a: &mut Node, b: &mut Node, tag: u64, relay: RelayId, now: Instant, seen: &mut Seen) {
    let b_key = b.public_key();
    for _ in 0..16 {
        let mut moved = false;
        while let Some(o) = a.poll_output() {
            match o {
                Output::Relay { frame, .. } => {
                    if let Ok(Frame::Data { payload, .. }) = Frame::decode(&frame) {
                        seen.a_datagrams.push(payload.to_vec());
                        b.handle_relay_frame(now, relay, &bridge_frame(tag, payload));
                        moved = true;
                    }
                }
                Output::Deliver { packet, .. } => seen.to_a.push(packet),
                _ => {}
            }
        }
        while let Some(o) = b.poll_output() {
            match o {
                Output::Relay { relay: r, frame } if r == relay => match Frame::decode(&frame) {
                    Ok(Frame::Bridge { tag: t, payload }) => {
                        seen.b_tags.push(t);
                        let data = Frame::Data {
                            peer: b_key,
                            payload,
                        }
                        .encode()
                        .unwrap();
                        a.handle_relay_frame(now, 0, &data);
                        moved = true;
                    }
                    _ => seen.b_stray.push(Output::Relay { relay: r, frame }),
                },
                Output::Deliver { packet, .. } => seen.to_b.push(packet),
                Output::Event(_) => {}
                other => seen.b_stray.push(other),
            }
        }
        if !moved {
            return;
        }
    }
}

/// A client and an edge with a session through the bridge under `tag`.
fn connected(tag: u64) -> (Node, Node, Seen, Instant) {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    b.add_peer(now, edge_cfg(a.public_key(), true, None))
        .unwrap();
    a.add_peer(now, client_cfg(b.public_key())).unwrap();
    let mut seen = Seen::default();
    pump(&mut a, &mut b, tag, RELAY, now, &mut seen);
    assert!(
        b.peer_stats(&a.public_key())
            .unwrap()
            .last_handshake
            .is_some()
    );
    (a, b, seen, now)
}

#[test]
fn a_bridged_client_and_its_edge_exchange_packets_in_bridge_frames_only() {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    let (ka, kb) = (a.public_key(), b.public_key());

    // Adding a bridged peer sends nothing: no handshake (no tag yet), no candidates.
    b.add_peer(now, edge_cfg(ka, true, None)).unwrap();
    assert_eq!(b.poll_output(), None);
    // Nor can the edge reach it before the client writes: its handshake initiation is
    // dropped and counted, and WireGuard keeps the packet queued for the session.
    b.send_ip(now, &ip(2, 1, 60, 0xB0)).unwrap();
    assert!(
        std::iter::from_fn(|| b.poll_output()).all(|o| !matches!(o, Output::Relay { .. })),
        "the edge sent something to a client it cannot address"
    );
    assert!(b.peer_stats(&ka).unwrap().drops >= 1);

    a.add_peer(now, client_cfg(kb)).unwrap();
    let mut seen = Seen::default();
    pump(&mut a, &mut b, 7, RELAY, now, &mut seen);

    a.send_ip(now, &ip(1, 2, 100, 0xA1)).unwrap();
    pump(&mut a, &mut b, 7, RELAY, now, &mut seen);
    assert_eq!(seen.to_b, vec![ip(1, 2, 100, 0xA1)]);
    b.send_ip(now, &ip(2, 1, 200, 0xB1)).unwrap();
    pump(&mut a, &mut b, 7, RELAY, now, &mut seen);
    // The packet queued before the client wrote arrives once the session is up.
    assert_eq!(seen.to_a, vec![ip(2, 1, 60, 0xB0), ip(2, 1, 200, 0xB1)]);

    let st = b.peer_stats(&ka).unwrap();
    assert_eq!((st.path, st.reason), (Path::Relay, PathReason::Bridged));
    assert_eq!(st.rtt, None, "the edge never pings a bridged client");

    // A minute of timers: the edge's only traffic to the client is WireGuard's own (in
    // bridge frames with the client's tag); no probes, pings, candidates or UDP.
    let mut t = now;
    for _ in 0..600 {
        t += Duration::from_millis(100);
        a.handle_timeout(t);
        b.handle_timeout(t);
        pump(&mut a, &mut b, 7, RELAY, t, &mut seen);
    }
    assert!(seen.b_stray.is_empty(), "stray outputs: {:?}", seen.b_stray);
    assert!(!seen.b_tags.is_empty() && seen.b_tags.iter().all(|&t| t == 7));
    let p = &b.peers[&ka];
    assert!(
        p.agent.pings.is_empty()
            && p.agent.next_probe.is_none()
            && p.agent.next_relay_ping.is_none()
    );
    assert_eq!(b.peer_stats(&ka).unwrap().path, Path::Relay);

    // Still working after the client's relay pings went through (and were ignored).
    b.send_ip(t, &ip(2, 1, 80, 0xB2)).unwrap();
    a.send_ip(t, &ip(1, 2, 80, 0xA2)).unwrap();
    pump(&mut a, &mut b, 7, RELAY, t, &mut seen);
    assert_eq!(seen.to_a.last(), Some(&ip(2, 1, 80, 0xB2)));
    assert_eq!(seen.to_b.last(), Some(&ip(1, 2, 80, 0xA2)));
    // The client's inner probe packets never reached the edge's application.
    assert_eq!(seen.to_b.len(), 2);
}

/// Whether the edge configured with `edge_peer` (if any) answers the client's handshake
/// when it arrives the way `deliver` brings it.
fn answered(edge_peer: Option<PeerConfig>, deliver: impl Fn(&mut Node, Instant, &[u8])) -> bool {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    if let Some(cfg) = edge_peer {
        b.add_peer(now, cfg).unwrap();
    }
    // Some other bridged client is configured, so the edge does bridge.
    b.add_peer(now, edge_cfg(node(9).public_key(), true, None))
        .unwrap();
    while b.poll_output().is_some() {}
    a.add_peer(now, client_cfg(b.public_key())).unwrap();
    let init = std::iter::from_fn(|| a.poll_output())
        .find_map(|o| match o {
            Output::Relay { frame, .. } => match Frame::decode(&frame) {
                Ok(Frame::Data { payload, .. }) => Some(payload.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    deliver(&mut b, now, &init);
    std::iter::from_fn(|| b.poll_output()).any(|o| !matches!(o, Output::Event(_)))
}

#[test]
fn only_a_client_configured_as_bridged_on_that_relay_is_admitted() {
    let ka = node(1).public_key();
    let by_bridge =
        |b: &mut Node, now, p: &[u8]| b.handle_relay_frame(now, RELAY, &bridge_frame(5, p));
    // The baseline: a configured bridged client is answered.
    assert!(answered(Some(edge_cfg(ka, true, None)), by_bridge));
    // A key the edge does not know.
    assert!(!answered(None, by_bridge));
    // A known key that is not a bridged client (a peer of ours must use the relay protocol).
    assert!(!answered(Some(edge_cfg(ka, false, None)), by_bridge));
    // The right client, but on another relay connection than its own.
    assert!(!answered(Some(edge_cfg(ka, true, None)), |b, now, p| {
        b.handle_relay_frame(now, RELAY + 1, &bridge_frame(5, p))
    }));
    // A bridged client does not get in through relay DATA frames (nor over plain UDP).
    assert!(!answered(Some(edge_cfg(ka, true, None)), |b, now, p| {
        let f = Frame::Data {
            peer: ka,
            payload: p,
        }
        .encode()
        .unwrap();
        b.handle_relay_frame(now, RELAY, &f)
    }));
    assert!(!answered(Some(edge_cfg(ka, true, None)), |b, now, p| {
        b.handle_udp(now, "192.0.2.1:51820".parse().unwrap(), p)
    }));
}

#[test]
fn a_roaming_client_moves_the_edges_replies_to_its_new_tag() {
    let (mut a, mut b, mut seen, now) = connected(1);
    let ka = a.public_key();
    a.send_ip(now, &ip(1, 2, 60, 1)).unwrap();
    pump(&mut a, &mut b, 1, RELAY, now, &mut seen);
    let old_data = seen.a_datagrams.last().unwrap().clone();
    assert_eq!(old_data[0], 4, "a data packet");

    // The client's endpoint changed: the relay names it with a new tag.
    a.send_ip(now, &ip(1, 2, 60, 2)).unwrap();
    pump(&mut a, &mut b, 2, RELAY, now, &mut seen);
    assert_eq!(seen.to_b.last(), Some(&ip(1, 2, 60, 2)));
    seen.b_tags.clear();
    b.send_ip(now, &ip(2, 1, 60, 3)).unwrap();
    pump(&mut a, &mut b, 2, RELAY, now, &mut seen);
    assert_eq!(seen.b_tags, vec![2]);
    assert_eq!(seen.to_a.last(), Some(&ip(2, 1, 60, 3)));

    // A replayed packet under yet another tag does not authenticate, so moves nothing;
    // neither does garbage.
    b.handle_relay_frame(now, RELAY, &bridge_frame(3, &old_data));
    // A counter never seen (so not a replay) on a packet the AEAD must reject.
    let mut forged = old_data.clone();
    forged[8..16].copy_from_slice(&1000u64.to_le_bytes());
    b.handle_relay_frame(now, RELAY, &bridge_frame(4, &forged));
    assert!(std::iter::from_fn(|| b.poll_output()).all(|o| !matches!(o, Output::Relay { .. })));
    assert_eq!(b.peers[&ka].agent.bridge_tag, Some(2));
    seen.b_tags.clear();
    b.send_ip(now, &ip(2, 1, 60, 4)).unwrap();
    pump(&mut a, &mut b, 2, RELAY, now, &mut seen);
    assert_eq!(seen.b_tags, vec![2]);

    // A new handshake from a new endpoint moves it too, and its answer goes there.
    // (A second later: WireGuard refuses an initiation no newer than the last.)
    let t = now + Duration::from_secs(1);
    a.handle_timeout(t);
    let init = a
        .peers
        .get_mut(&b.public_key())
        .unwrap()
        .tunn
        .format_handshake_initiation(true)
        .map(|i| to_vec(i.into()))
        .unwrap();
    b.handle_relay_frame(t, RELAY, &bridge_frame(5, &init));
    let tags: Vec<u64> = std::iter::from_fn(|| b.poll_output())
        .filter_map(|o| match o {
            Output::Relay { frame, .. } => match Frame::decode(&frame) {
                Ok(Frame::Bridge { tag, .. }) => Some(tag),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(tags, vec![5]);
}

#[test]
fn keepalives_reach_a_bridged_client_once_its_tag_is_known() {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    b.add_peer(now, edge_cfg(a.public_key(), true, Some(5)))
        .unwrap();
    // Without a client, the keepalive setting makes the edge send nothing.
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_millis(100);
        b.handle_timeout(t);
    }
    assert!(std::iter::from_fn(|| b.poll_output()).all(|o| matches!(o, Output::Event(_))));

    a.add_peer(t, client_cfg(b.public_key())).unwrap();
    let mut seen = Seen::default();
    pump(&mut a, &mut b, 9, RELAY, t, &mut seen);
    a.send_ip(t, &ip(1, 2, 60, 0)).unwrap();
    pump(&mut a, &mut b, 9, RELAY, t, &mut seen);
    assert_eq!(seen.to_b.len(), 1);

    // The client goes quiet; the edge keeps the path open on its own, to the client's tag.
    let mut keepalives = 0;
    for _ in 0..120 {
        t += Duration::from_millis(100);
        b.handle_timeout(t);
        while let Some(o) = b.poll_output() {
            match o {
                Output::Relay { frame, .. } => match Frame::decode(&frame) {
                    Ok(Frame::Bridge { tag: 9, payload }) if payload[0] == 4 => keepalives += 1,
                    other => panic!("unexpected frame {other:?}"),
                },
                Output::Event(_) => {}
                other => panic!("unexpected output {other:?}"),
            }
        }
    }
    assert!(keepalives >= 2, "{keepalives} keepalives in 12 s");
}

#[test]
fn bridge_pseudo_addresses_are_distinct_per_relay_and_tag() {
    let a = bridge_pseudo_addr(1, 7);
    assert_ne!(a, bridge_pseudo_addr(2, 7));
    assert_ne!(a, bridge_pseudo_addr(1, 8));
    assert!(matches!(a.ip(), IpAddr::V6(v6) if v6.segments()[0] == 0xfd00));
}

#[test]
fn random_bridge_frames_never_panic_and_never_get_an_answer() {
    use rand::{Rng, SeedableRng};
    let (mut a, mut b, _, now) = connected(1);
    while a.poll_output().is_some() {}
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for i in 0..5000 {
        let len = rng.gen_range(1..300);
        let mut p: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        // Mostly WireGuard-shaped headers, so the deeper paths run too.
        if i % 2 == 0 {
            p[0] = rng.gen_range(1..=4);
            p[1..4.min(len)].fill(0);
        }
        b.handle_relay_frame(now, RELAY, &bridge_frame(rng.r#gen(), &p));
    }
    assert!(std::iter::from_fn(|| b.poll_output()).all(|o| !matches!(o, Output::Relay { .. })));
    assert_eq!(b.peers[&a.public_key()].agent.bridge_tag, Some(1));
}
