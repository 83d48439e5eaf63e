//! Bodies of the `cargo fuzz` targets in `crates/relay/fuzz`, shared with the
//! replay test (`tests/fuzz_corpus.rs`) that runs the stored corpus and every
//! crash found on stable Rust. Not part of the API.

use std::collections::HashSet;
use std::net::SocketAddr;

use drawbridge_wire::frame::Frame;
use drawbridge_wire::wgmac;
use tokio::sync::{mpsc, watch};

use crate::switchboard::Grant;
use crate::token::{VerifyingKey, verify};
use crate::{Conn, RelayConfig, RelayState};

/// `fuzz_targets/token_verify.rs`: token verification never panics, never accepts
/// what the key did not sign.
pub fn token_verify(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(verify(&VerifyingKey::from_bytes([3; 32]), s, 0).is_err());
    }
}

const EDGE: [u8; 32] = [7; 32];
const OTHER_EDGE: [u8; 32] = [6; 32];

/// `fuzz_targets/bridge_input.rs`: a run of UDP bridge input against a relay with
/// two connected edges (one that bridges, one that does not). The input is a list
/// of records `[op, arg, len (u16 LE), payload…]`: op bit 0..1 picks a client datagram
/// (from port 40000 + arg), an edge's `BRIDGE` frame (tag: the arg-th tag the
/// relay handed out, or a raw one) or a raw relay frame from the edge; op bit 2
/// fills in a correct `mac1` for the bridging edge. Never panics; the tag and
/// route tables stay within their bounds; nothing reaches the edge that does not
/// bridge.
pub fn bridge_input(data: &[u8]) {
    let state = RelayState::new(RelayConfig::new(VerifyingKey::from_bytes([3; 32])));
    let mut edge_rx = connect(&state, EDGE, true);
    let mut other_rx = connect(&state, OTHER_EDGE, false);
    let mut tags: Vec<u64> = Vec::new();
    let mut rest = data;
    while let [op, arg, lo, hi, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let mut payload = tail[..n].to_vec();
        rest = &tail[n..];
        if op & 4 != 0
            && let Some(mac) = wgmac::mac1(&wgmac::mac1_key(&EDGE), &payload)
        {
            let at = payload.len() - 2 * wgmac::MAC_LEN;
            payload[at..at + wgmac::MAC_LEN].copy_from_slice(&mac);
        }
        let from = SocketAddr::from(([127, 0, 0, 1], 40000 + u16::from(*arg)));
        match op & 3 {
            0 => state.bridge_datagram(from, &payload),
            1 => {
                let tag = tags
                    .get(usize::from(*arg))
                    .copied()
                    .unwrap_or(u64::from(*arg));
                state.bridge_from_edge(&EDGE, op & 8 == 0, tag, &payload);
            }
            2 => {
                if let Ok(Frame::Bridge { tag, payload }) = Frame::decode(&payload) {
                    state.bridge_from_edge(&EDGE, true, tag, payload);
                }
            }
            _ => {
                let tag = tags.first().copied().unwrap_or(0);
                // Another edge may never use a tag of the bridging edge.
                let before = state.stats().bridge_datagrams_out;
                state.bridge_from_edge(&OTHER_EDGE, true, tag, &payload);
                assert_eq!(state.stats().bridge_datagrams_out, before);
            }
        }
        while let Ok(frame) = edge_rx.try_recv() {
            match Frame::decode(&frame) {
                Ok(Frame::Bridge { tag, .. }) => {
                    if !tags.contains(&tag) {
                        tags.push(tag);
                    }
                }
                other => panic!("the bridge sent the edge {other:?}"),
            }
        }
        assert!(
            other_rx.try_recv().is_err(),
            "a non-bridging edge got a frame"
        );
        let t = state.inner.bridge.table();
        assert!(t.len() <= crate::bridge::MAX_TAGS);
    }
}

fn connect(state: &RelayState, key: [u8; 32], bridge: bool) -> mpsc::Receiver<axum::body::Bytes> {
    let (tx, rx) = mpsc::channel(64);
    let (kill, _) = watch::channel(false);
    let grant = Grant {
        session: "s".into(),
        allowed: HashSet::new(),
        bridge: bridge.then(|| wgmac::mac1_key(&key)),
    };
    state
        .lock()
        .admit(key, u64::from(key[0]), grant, Conn { tx, kill });
    rx
}
