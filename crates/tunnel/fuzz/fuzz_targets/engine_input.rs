#![no_main]
//! Hostile datagrams and relay frames fed to an engine with a relay peer and a bridged
//! peer: never panics.
use std::time::Instant;

use drawbridge_tunnel::engine::{Node, NodeConfig, PeerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
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
    let from = "127.0.0.1:3478".parse().expect("literal");
    n.handle_udp(now, from, data);
    n.handle_relay_frame(now, 0, data);
    while n.poll_output().is_some() {}
});
