//! The node as a whole: two engines wired back to back through a pretend relay.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::SeedableRng;

use super::*;

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

fn ipv4(dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Moves relay frames from `a` to `b` like a relay would; returns packets delivered
/// by `b` is not counted here (they stay queued in `b`).
fn relay_pump(a: &mut Node, b: &mut Node, now: Instant) -> usize {
    let mut n = 0;
    let mut outs = Vec::new();
    while let Some(o) = a.poll_output() {
        outs.push(o);
    }
    for o in outs {
        if let Output::Relay { mut frame, .. } = o {
            n += 1;
            if crate::frame::rewrite_data_source(&mut frame, &a.public_key()).is_ok() {
                b.handle_relay_frame(now, 0, &frame);
            }
        }
    }
    n
}

#[test]
fn a_silent_peer_neither_blocks_nor_grows_without_bound_and_others_still_flow() {
    let now = Instant::now();
    let (mut a, mut b) = (node(1), node(2));
    let c_key = node(3).public_key();
    let cfg = |k, net: [u8; 4]| PeerConfig {
        public_key: k,
        allowed_ips: vec![IpNet::new(IpAddr::from(net), 32)],
        relay: Some(0),
        persistent_keepalive: None,
        bridged: false,
    };
    a.add_peer(now, cfg(b.public_key(), [100, 64, 0, 2]))
        .unwrap();
    a.add_peer(now, cfg(c_key, [100, 64, 0, 3])).unwrap();
    b.add_peer(now, cfg(a.public_key(), [100, 64, 0, 1]))
        .unwrap();
    // C never answers; the application floods it.
    for _ in 0..20_000 {
        a.send_ip(now, &ipv4([100, 64, 0, 3], 1000)).unwrap();
    }
    assert!(a.out.len() < 64, "outputs grew to {}", a.out.len());
    // B's traffic is unaffected.
    for _ in 0..4 {
        relay_pump(&mut a, &mut b, now);
        relay_pump(&mut b, &mut a, now);
    }
    a.send_ip(now, &ipv4([100, 64, 0, 2], 100)).unwrap();
    relay_pump(&mut a, &mut b, now);
    let mut delivered = 0;
    while let Some(o) = b.poll_output() {
        if let Output::Deliver { packet, .. } = o {
            assert_eq!(packet.len(), 100);
            delivered += 1;
        }
    }
    assert_eq!(delivered, 1);
}

/// Two nodes, each the other's peer on relay 0, with a session formed through it.
fn relay_pair(now: Instant) -> (Node, Node) {
    let (mut a, mut b) = (node(1), node(2));
    let cfg = |k| PeerConfig {
        public_key: k,
        allowed_ips: vec![IpNet::new(IpAddr::from([100, 64, 0, 2]), 32)],
        relay: Some(0),
        persistent_keepalive: None,
        bridged: false,
    };
    a.add_peer(now, cfg(b.public_key())).unwrap();
    b.add_peer(now, cfg(a.public_key())).unwrap();
    for _ in 0..4 {
        relay_pump(&mut a, &mut b, now);
        relay_pump(&mut b, &mut a, now);
    }
    (a, b)
}

#[test]
fn a_peer_moved_to_another_relay_keeps_its_session_and_uses_the_new_relay() {
    let now = Instant::now();
    let (mut a, b) = relay_pair(now);
    let hs = a.peer_stats(&b.public_key()).unwrap().last_handshake;
    a.set_peer_relay(now, &b.public_key(), Some(7));
    a.send_ip(now, &ipv4([100, 64, 0, 2], 60)).unwrap();
    let relays: Vec<RelayId> = std::iter::from_fn(|| a.poll_output())
        .filter_map(|o| match o {
            Output::Relay { relay, .. } => Some(relay),
            _ => None,
        })
        .collect();
    assert_eq!(relays, vec![7]);
    assert_eq!(a.peer_stats(&b.public_key()).unwrap().last_handshake, hs);
}

#[test]
fn oversized_and_non_ip_packets_from_the_app_are_refused() {
    let now = Instant::now();
    let mut a = node(1);
    let b = node(2).public_key();
    a.add_peer(
        now,
        PeerConfig {
            public_key: b,
            allowed_ips: vec![IpNet::new(IpAddr::from([100, 64, 0, 2]), 32)],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        },
    )
    .unwrap();
    assert_eq!(
        a.send_ip(now, &ipv4([100, 64, 0, 2], MAX_IP_PACKET + 1)),
        Err(SendError::TooLarge)
    );
    assert_eq!(a.send_ip(now, &[0x60, 0, 0]), Err(SendError::NotIp));
    assert_eq!(
        a.send_ip(now, &ipv4([10, 9, 9, 9], 40)),
        Err(SendError::NoRoute)
    );
    assert_eq!(
        a.add_peer(
            now,
            PeerConfig {
                public_key: a.public_key(),
                allowed_ips: vec![],
                relay: None,
                persistent_keepalive: None,
                bridged: false,
            }
        ),
        Err(PeerError::SelfPeer)
    );
}

#[test]
fn garbage_datagrams_and_frames_are_ignored() {
    let now = Instant::now();
    let mut n = Node::new(
        NodeConfig {
            private_key: [1; 32],
            stun_servers: vec![],
            local_addrs: vec![],
            seed: Some(1),
        },
        now,
    );
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..5000 {
        let len = rng.gen_range(0..300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        if let Some(x) = b.first_mut() {
            *x %= 6;
        }
        n.handle_udp(now, from, &b);
        n.handle_relay_frame(now, 0, &b);
    }
    assert!(n.poll_output().is_none());
}

#[test]
fn a_full_data_queue_never_drops_a_candidate_signal() {
    let now = Instant::now();
    let (mut a, b) = relay_pair(now);
    assert!(
        a.peer_stats(&b.public_key())
            .unwrap()
            .last_handshake
            .is_some()
    );
    // The application floods the peer and nobody drains the node: the data queue fills.
    while a.out.dropped() == 0 {
        a.send_ip(now, &ipv4([100, 64, 0, 2], 200)).unwrap();
    }
    // Now the node's candidates change: the peer must still be told.
    let new_addr: SocketAddr = "192.0.2.7:51820".parse().unwrap();
    a.set_local_addrs(now, vec![new_addr]);
    let signals: Vec<Signal> = std::iter::from_fn(|| a.poll_output())
        .filter_map(|o| match o {
            Output::Signal { peer, signal } if peer == b.public_key() => Some(signal),
            _ => None,
        })
        .collect();
    assert_eq!(signals.len(), 1, "the candidate signal was dropped");
    assert_eq!(signals[0].candidates, vec![new_addr]);
}
