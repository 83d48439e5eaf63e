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

    /// A made-up initiation (type 1, reserved bytes zero) with a correct `mac1` for `key`.
    fn initiation(key: &[u8; 32]) -> Vec<u8> {
        let mut p: Vec<u8> = (0..HANDSHAKE_INIT_LEN).map(|i| i as u8).collect();
        p[..4].copy_from_slice(&[1, 0, 0, 0]);
        let m = mac1(key, &p).expect("an initiation");
        let at = HANDSHAKE_INIT_LEN - 2 * MAC_LEN;
        p[at..at + MAC_LEN].copy_from_slice(&m);
        p
    }

    #[test]
    fn a_mac1_matches_its_key_only_and_not_once_tampered() {
        let key = mac1_key(&[2; 32]);
        let p = initiation(&key);
        assert!(mac1_matches(&key, &p));
        assert!(!mac1_matches(&mac1_key(&[3; 32]), &p));
        let mut t = p.clone();
        t[40] ^= 1;
        assert!(!mac1_matches(&key, &t));
        assert!(!mac1_matches(&key, &p[..HANDSHAKE_INIT_LEN - 1]));
        assert!(!mac1_matches(&key, &[]));
    }
}
