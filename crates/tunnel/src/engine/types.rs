//! The engine's public vocabulary: paths and why, reports, events, outputs, configuration
//! and errors.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

#[cfg(doc)]
use super::Node;
use super::{NatKind, PeerId, RelayId, Signal};
#[cfg(doc)]
use crate::frame::Frame;

/// Which way a peer's traffic currently goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Through the relay.
    Relay,
    /// Straight over UDP to this address.
    Direct(SocketAddr),
    /// Nowhere yet (no relay configured and no direct path).
    None,
}

impl Path {
    /// `relay`, `direct` or `none`: the path's kind, for reports and status lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Path::Relay => "relay",
            Path::Direct(_) => "direct",
            Path::None => "none",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Relay => write!(f, "relay"),
            Path::Direct(a) => write!(f, "direct {a}"),
            Path::None => write!(f, "none"),
        }
    }
}

/// Why the current path is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathReason {
    /// On the relay, waiting for the peer's candidates.
    AwaitingCandidates,
    /// On the relay while probing the direct path.
    Probing,
    /// The direct path answers.
    DirectOk,
    /// This side or the peer has no working UDP.
    UdpBlocked,
    /// Both sides are behind endpoint-dependent (symmetric) NATs.
    SymmetricNatBothSides,
    /// Hole punching was tried and nothing answered.
    NoDirectAnswer,
    /// The direct path stopped answering; back on the relay.
    DirectLost,
    /// No relay configured and no direct path.
    NoPath,
    /// A standard WireGuard client through the relay's UDP bridge (the only path it has).
    Bridged,
}

impl fmt::Display for PathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathReason::AwaitingCandidates => "waiting for the peer's candidates",
            PathReason::Probing => "probing the direct path",
            PathReason::DirectOk => "direct ok",
            PathReason::UdpBlocked => "UDP blocked",
            PathReason::SymmetricNatBothSides => "symmetric NAT on both sides",
            PathReason::NoDirectAnswer => "no direct path answered",
            PathReason::DirectLost => "direct path stopped answering",
            PathReason::NoPath => "no relay and no direct path",
            PathReason::Bridged => "standard WireGuard via the relay's UDP bridge",
        })
    }
}

/// Per-peer report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub path: Path,
    pub reason: PathReason,
    /// Round-trip time on the current path, when measured.
    pub rtt: Option<Duration>,
    /// IP payload bytes sent to / received from the peer.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// Packets dropped for this peer (full queues, no path).
    pub drops: u64,
    pub remote_nat: NatKind,
}

/// Something the application may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PathChanged {
        peer: PeerId,
        path: Path,
        reason: PathReason,
    },
    HandshakeCompleted {
        peer: PeerId,
    },
    /// STUN told us our public endpoint.
    PublicEndpoint {
        addr: SocketAddr,
        nat: NatKind,
    },
}

/// What the engine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram from the node's UDP socket.
    Udp {
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    /// Send a binary frame on a relay connection.
    Relay {
        relay: RelayId,
        frame: Vec<u8>,
    },
    /// An IP packet from `peer` for the application.
    Deliver {
        peer: PeerId,
        packet: Vec<u8>,
    },
    /// Candidates for `peer`, to be carried by the control plane.
    Signal {
        peer: PeerId,
        signal: Signal,
    },
    Event(Event),
}

/// An IP prefix a peer may use as source (and that routes to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        IpNet { addr, prefix }
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One peer's static configuration.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub public_key: PeerId,
    /// Inner source addresses the peer may use; also the routes to it. Empty = any source,
    /// and the peer is then reachable only with [`Node::send_ip_to`].
    pub allowed_ips: Vec<IpNet>,
    /// The relay connection that carries this peer, if any.
    pub relay: Option<RelayId>,
    pub persistent_keepalive: Option<u16>,
    /// A standard WireGuard client (wg-quick, wireguard-go, ...) reached through the relay's
    /// UDP bridge ([`Frame::Bridge`] on `relay`); it speaks plain WireGuard only: no relay
    /// frames of its own, no probes, no candidates.
    pub bridged: bool,
}

/// The node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub private_key: [u8; 32],
    /// STUN servers (two at different addresses let the node tell easy from symmetric NAT).
    pub stun_servers: Vec<SocketAddr>,
    /// Host candidates: the addresses the UDP socket is reachable at locally.
    pub local_addrs: Vec<SocketAddr>,
    /// Seed for the engine's randomness (timer jitter, probe nonces): tests pass one.
    pub seed: Option<u64>,
}

/// Why an application packet was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("packet too large")]
    TooLarge,
    #[error("not an IP packet")]
    NotIp,
    #[error("no peer routes this destination")]
    NoRoute,
    #[error("unknown peer")]
    UnknownPeer,
}

/// Why a peer could not be added.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("too many peers")]
    TooMany,
    #[error("peer is this node itself")]
    SelfPeer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_contains_matches_prefixes() {
        let n = IpNet::new("100.64.0.0".parse().unwrap(), 10);
        assert!(n.contains("100.127.1.1".parse().unwrap()));
        assert!(!n.contains("100.128.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(IpNet::new("0.0.0.0".parse().unwrap(), 0).contains("1.2.3.4".parse().unwrap()));
    }
}
