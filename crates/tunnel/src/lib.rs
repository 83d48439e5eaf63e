//! Drawbridge data plane: a sans-IO WireGuard peer engine with relay and direct paths,
//! and a thin tokio driver (the simulated network for tests is `drawbridge-testnet`).
//!
//! Typical use (client or edge):
//!
//! ```ignore
//! use drawbridge_tunnel::driver::{Connector, DriverConfig, DriverEvent, RelayEndpoint, Tunnel};
//! use drawbridge_tunnel::{IpNet, NodeConfig, PeerConfig, Signal, keys};
//!
//! let private_key = keys::generate_private_key(); // only keys::public_key(&private_key) leaves
//! let (tunnel, mut io) = Tunnel::start(DriverConfig {
//!     node: NodeConfig { private_key, stun_servers, local_addrs: vec![], seed: None },
//!     bind: "0.0.0.0:0".parse()?,
//!     relays: vec![RelayEndpoint {
//!         id: 0,
//!         url: "wss://relay.example/relay/v1".into(),
//!         token,                                      // from the control plane
//!         connector: Some(Connector::Rustls(tls)),    // always pass one for wss://
//!         proxy: None,
//!         local: None,
//!     }],
//!     peers: vec![PeerConfig { public_key: edge_key, allowed_ips, relay: Some(0), persistent_keepalive: None, bridged: false }],
//!     queue: 1024,
//! }).await?;
//! // Carry `DriverEvent::Signal { peer, signal }` to the peer through the control plane
//! // (`signal.encode()` bytes or JSON), and feed what arrives to `tunnel.signal(peer, signal)`.
//! tunnel.send_ip(ip_packet).await?;             // routed by destination over allowed_ips
//! let (from_peer, packet) = io.incoming.recv().await.unwrap();
//! let stats = tunnel.stats(edge_key).await?;    // path, reason, rtt, bytes, last handshake
//! ```

pub mod driver;
pub mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod malloc;
pub mod proxy;
pub mod session;
pub mod shutdown;

/// The pure wire formats live in `drawbridge-wire` (the relay links only that crate).
pub use drawbridge_wire::{frame, keys, stun, wgmac};

pub use shutdown::shutdown_signal;

pub use engine::{
    Event, IpNet, NatKind, Node, NodeConfig, Output, Path, PathReason, PeerConfig, PeerId,
    PeerStats, RelayId, Signal,
};
