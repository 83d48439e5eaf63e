//! Bodies of the `cargo fuzz` targets in `crates/tunnel/fuzz`, shared with the
//! replay test (`tests/fuzz_corpus.rs`) that runs the stored corpus and every
//! crash found on stable Rust. Not part of the API.

use std::cell::RefCell;
use std::time::Instant;

use crate::engine::{Node, NodeConfig, PeerConfig, Signal};

/// `fuzz_targets/signal.rs`: the candidate signal codec (what the control plane
/// carries from the other side) never panics; a decoded signal re-encodes to the
/// same bytes.
pub fn signal(data: &[u8]) {
    if let Ok(s) = Signal::decode(data) {
        assert_eq!(s.encode(), data);
    }
}

/// A node with a relay peer and a bridged peer on relay 0.
fn engine_node(now: Instant) -> Node {
    let mut n = Node::new(
        NodeConfig {
            private_key: [1; 32],
            stun_servers: vec!["127.0.0.1:3478".parse().expect("literal")],
            local_addrs: vec![],
            seed: Some(1),
        },
        now,
    );
    let _ = n.add_peer(
        now,
        PeerConfig {
            public_key: [9; 32],
            allowed_ips: vec![],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: false,
        },
    );
    // A bridged client on the same relay: BRIDGE frames reach the bridged path.
    let _ = n.add_peer(
        now,
        PeerConfig {
            public_key: [8; 32],
            allowed_ips: vec![],
            relay: Some(0),
            persistent_keepalive: None,
            bridged: true,
        },
    );
    n
}

/// `fuzz_targets/engine_input.rs`: hostile datagrams and relay frames fed to an
/// engine with a relay peer and a bridged peer never panic.
///
/// The engine is made once per thread and kept: making it costs seven X25519
/// operations (the node's public key, two peers' static-static secrets and public
/// keys, the first handshake), which took over 80 % of the time per input (perf,
/// < 1,000 inputs/s); hostile input never completes a handshake, so what one input
/// leaves behind is bounded (queues, rate limiter) and the next sees the same
/// engine. The replay test feeds the stored inputs in order to one engine too.
pub fn engine_input(data: &[u8]) {
    thread_local! {
        static NODE: RefCell<Option<Node>> = const { RefCell::new(None) };
    }
    NODE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let now = Instant::now();
        let n = cell.get_or_insert_with(|| engine_node(now));
        let from = "127.0.0.1:3478".parse().expect("literal");
        n.handle_udp(now, from, data);
        n.handle_relay_frame(now, 0, data);
        while n.poll_output().is_some() {}
    });
}
