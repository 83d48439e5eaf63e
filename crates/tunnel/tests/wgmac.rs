//! WireGuard `mac1` (`drawbridge_wire::wgmac`, what the relay reads to pick an edge) against
//! the handshakes the real engine (gotatun) writes.

use std::time::Instant;

use drawbridge_tunnel::engine::{IpNet, Node, NodeConfig, Output, PeerConfig};
use drawbridge_tunnel::frame::Frame;
use drawbridge_tunnel::wgmac::{
    HANDSHAKE_INIT_LEN, HANDSHAKE_RESP_LEN, mac1, mac1_key, mac1_matches,
};

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

/// The first WireGuard packet `a` sends `b` over its relay (after `add_peer`).
fn first_packet(a: &mut Node, b: &Node) -> Vec<u8> {
    a.add_peer(
        Instant::now(),
        PeerConfig {
            public_key: b.public_key(),
            allowed_ips: vec![IpNet::new([100, 64, 0, 2].into(), 32)],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        },
    )
    .unwrap();
    std::iter::from_fn(|| a.poll_output())
        .find_map(|o| match o {
            Output::Relay { frame, .. } => match Frame::decode(&frame) {
                Ok(Frame::Data { payload, .. }) => Some(payload.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .expect("a handshake initiation")
}

#[test]
fn a_real_initiation_matches_its_responder_only() {
    let (mut a, b, c) = (node(1), node(2), node(3));
    let init = first_packet(&mut a, &b);
    assert_eq!(init.len(), HANDSHAKE_INIT_LEN);
    assert_eq!(init[0], 1);
    assert!(mac1_matches(&mac1_key(&b.public_key()), &init));
    assert!(!mac1_matches(&mac1_key(&c.public_key()), &init));
    assert!(!mac1_matches(&mac1_key(&a.public_key()), &init));
    assert_eq!(
        mac1(&mac1_key(&b.public_key()), &init).unwrap(),
        init[116..132]
    );
}

#[test]
fn a_real_response_matches_the_initiator() {
    let (mut a, mut b) = (node(1), node(2));
    let init = first_packet(&mut a, &b);
    b.add_peer(
        Instant::now(),
        PeerConfig {
            public_key: a.public_key(),
            allowed_ips: vec![],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        },
    )
    .unwrap();
    while b.poll_output().is_some() {}
    let frame = Frame::Data {
        peer: a.public_key(),
        payload: &init,
    }
    .encode()
    .unwrap();
    b.handle_relay_frame(Instant::now(), 0, &frame);
    let resp = std::iter::from_fn(|| b.poll_output())
        .find_map(|o| match o {
            Output::Relay { frame, .. } => match Frame::decode(&frame) {
                Ok(Frame::Data { payload, .. }) if payload[0] == 2 => Some(payload.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .expect("a handshake response");
    assert_eq!(resp.len(), HANDSHAKE_RESP_LEN);
    // The response is addressed to the initiator.
    assert!(mac1_matches(&mac1_key(&a.public_key()), &resp));
    assert!(!mac1_matches(&mac1_key(&b.public_key()), &resp));
}

#[test]
fn tampered_short_and_other_packets_never_match() {
    let (mut a, b) = (node(1), node(2));
    let key = mac1_key(&b.public_key());
    let init = first_packet(&mut a, &b);
    let mut t = init.clone();
    t[50] ^= 1;
    assert!(!mac1_matches(&key, &t));
    let mut t = init.clone();
    t[120] ^= 1;
    assert!(!mac1_matches(&key, &t));
    let mut t = init.clone();
    t[1] = 1; // reserved bytes must be zero
    assert!(!mac1_matches(&key, &t));
    assert!(!mac1_matches(&key, &init[..147]));
    assert!(!mac1_matches(&key, &[init.as_slice(), &[0]].concat()));
    assert!(!mac1_matches(&key, &[]));
    let mut t = init.clone();
    t[0] = 4;
    assert!(!mac1_matches(&key, &t));
    assert_eq!(mac1(&key, &t), None);
}
