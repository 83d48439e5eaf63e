//! WireGuard's `mac1` field, for a relay that must tell which edge a standard WireGuard
//! client's handshake is meant for without any secret.
//!
//! `mac1` (WireGuard paper §5.4.4) is a keyed BLAKE2s-128 over the handshake message up to
//! the field, keyed with `BLAKE2s-256("mac1----" || responder's static public key)`. It needs
//! only the responder's *public* key, so it proves nothing about the sender; it only says
//! whom the message is addressed to. The relay uses it to pick an edge; the edge's
//! WireGuard handshake then authenticates the client.

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

/// Length of a WireGuard handshake initiation (type 1).
pub const HANDSHAKE_INIT_LEN: usize = 148;
/// Length of a WireGuard handshake response (type 2).
pub const HANDSHAKE_RESP_LEN: usize = 92;
/// Length of the `mac1` (and `mac2`) fields.
pub const MAC_LEN: usize = 16;

const LABEL_MAC1: &[u8; 8] = b"mac1----";

/// The `mac1` key of a responder: `BLAKE2s-256("mac1----" || responder_public)`.
pub fn mac1_key(responder_public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(LABEL_MAC1);
    h.update(responder_public);
    h.finalize().into()
}

/// Where `mac1` starts in a handshake packet (the MAC covers everything before it), or
/// `None` when the packet is not a handshake initiation or response of the right length.
fn mac1_offset(packet: &[u8]) -> Option<usize> {
    let len = match packet.first()? {
        1 => HANDSHAKE_INIT_LEN,
        2 => HANDSHAKE_RESP_LEN,
        _ => return None,
    };
    // Type byte, then three reserved zero bytes.
    (packet.len() == len && packet[1..4] == [0, 0, 0]).then_some(len - 2 * MAC_LEN)
}

fn mac(key: &[u8; 32], msg: &[u8]) -> Blake2sMac<U16> {
    let mut m = <Blake2sMac<U16> as KeyInit>::new(key.into());
    Mac::update(&mut m, msg);
    m
}

/// Computes the `mac1` a handshake initiation (148 bytes) or response (92 bytes) should
/// carry for the responder whose [`mac1_key`] is `key`; `None` for anything else.
pub fn mac1(key: &[u8; 32], packet: &[u8]) -> Option<[u8; MAC_LEN]> {
    let at = mac1_offset(packet)?;
    Some(mac(key, &packet[..at]).finalize().into_bytes().into())
}

/// Whether `packet` is a handshake initiation or response whose `mac1` is right for the
/// responder whose [`mac1_key`] is `key`. Compared in constant time.
pub fn mac1_matches(key: &[u8; 32], packet: &[u8]) -> bool {
    let Some(at) = mac1_offset(packet) else {
        return false;
    };
    mac(key, &packet[..at])
        .verify_slice(&packet[at..at + MAC_LEN])
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{IpNet, Node, NodeConfig, Output, PeerConfig};
    use crate::frame::Frame;
    use std::time::Instant;

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
}
