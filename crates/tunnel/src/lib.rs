//! Drawbridge data plane: a sans-IO WireGuard peer engine with relay and direct paths,
//! a thin tokio driver, and a deterministic simulated network for tests.

pub mod driver;
pub mod engine;
pub mod frame;
pub mod keys;
pub mod sim;
pub mod stun;

pub use engine::{
    Event, IpNet, NatKind, Node, NodeConfig, Output, Path, PathReason, PeerConfig, PeerId,
    PeerStats, RelayId, Signal,
};
