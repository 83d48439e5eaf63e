//! The sans-IO peer engine: one WireGuard identity, one UDP socket, zero or more relays,
//! many peers.
//!
//! Inputs: [`Node::handle_udp`], [`Node::handle_relay_frame`], [`Node::send_ip`],
//! [`Node::handle_signal`], [`Node::handle_timeout`] — each with the current `Instant`.
//! Outputs: drained with [`Node::poll_output`]; the next wake-up is [`Node::poll_timeout`].
//! Nothing here touches a socket, a clock or a task.
//!
//! Path selection: every peer starts on its relay. Path probes are small authenticated
//! messages carried *inside* the WireGuard session (an IPv4 header with the experimental
//! protocol number 253 and a magic), so a probe answer proves that the WireGuard peer itself
//! answered from that address. A ping that is answered with a pong from the address it was
//! sent to moves the peer to the direct path; a direct path whose pongs stop falls back to the
//! relay, and the packets sent on it during the silence are re-sent through the relay
//! (WireGuard's replay window drops the ones that had arrived).
//!
//! Bridged peers ([`PeerConfig::bridged`]) are standard WireGuard clients that know nothing
//! of relays: the relay receives their plain datagrams on its UDP bridge and hands them to
//! this node as [`Frame::Bridge`] frames tagged with the client's endpoint. Such a peer has
//! exactly one path (the relay it is configured on), answers go back as Bridge frames with
//! the tag of the latest authenticated packet (WireGuard's roaming rule), and nothing of
//! ours (probes, relay pings, candidates, direct attempts) is ever sent to it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::tun::MtuWatcher;
use gotatun::x25519::{PublicKey, StaticSecret};
use mock_instant::thread_local::MockClock;
use rand::{Rng, SeedableRng};
use rand_09::SeedableRng as _;
use thiserror::Error;

use crate::frame::{Frame, MAX_PAYLOAD};
use crate::stun;

/// A peer is named by its WireGuard public key.
pub type PeerId = [u8; 32];
/// Identifies one of the node's relay connections (chosen by the caller).
pub type RelayId = u16;

/// Largest IP packet accepted from the application side.
pub const MAX_IP_PACKET: usize = MAX_PAYLOAD - 64;
/// Most candidates we keep per side.
pub const MAX_CANDIDATES: usize = 8;
/// Most peers per node.
pub const MAX_PEERS: usize = 1024;

const TICK: Duration = Duration::from_millis(100);
const PROBE_FAST_INTERVAL: Duration = Duration::from_millis(500);
const PROBE_FAST_ROUNDS: u32 = 8;
const PROBE_SLOW_INTERVAL: Duration = Duration::from_secs(15);
const PING_VALID: Duration = Duration::from_secs(5);
const DIRECT_KEEPALIVE: Duration = Duration::from_secs(1);
const DIRECT_TIMEOUT: Duration = Duration::from_millis(3500);
const RELAY_PING_INTERVAL: Duration = Duration::from_secs(5);
const HOLD_MAX: Duration = Duration::from_millis(500);
const HOLD_QUEUE: usize = 512;
const RESEND_RING: usize = 512;
const MAX_PENDING_PINGS: usize = 32;
const STUN_RETRY: Duration = Duration::from_secs(1);
const STUN_REFRESH: Duration = Duration::from_secs(25);
const STUN_ATTEMPTS_BEFORE_BLOCKED: u32 = 3;
const MAX_OUTPUTS: usize = 8192;
const DEFAULT_MTU: u16 = 1420;

/// How the node's own NAT behaves, as far as STUN tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// Not measured yet (or only one STUN server answered).
    Unknown,
    /// The mapped address equals a local address: no NAT.
    Open,
    /// Endpoint-independent mapping: hole punching can work.
    Easy,
    /// Endpoint-dependent ("symmetric") mapping: different STUN servers saw different ports.
    Hard,
    /// No STUN server answered: UDP is blocked.
    UdpBlocked,
}

impl NatKind {
    fn to_u8(self) -> u8 {
        match self {
            NatKind::Unknown => 0,
            NatKind::Open => 1,
            NatKind::Easy => 2,
            NatKind::Hard => 3,
            NatKind::UdpBlocked => 4,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => NatKind::Unknown,
            1 => NatKind::Open,
            2 => NatKind::Easy,
            3 => NatKind::Hard,
            4 => NatKind::UdpBlocked,
            _ => return None,
        })
    }
}

/// What one side tells the other through the control plane: where it may be reached.
/// Carry it as [`Signal::encode`] bytes or as JSON (serde); the receiver bounds it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub candidates: Vec<SocketAddr>,
    pub nat: NatKind,
}

/// A signalling message that could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("signal truncated")]
    Truncated,
    #[error("unsupported signal version {0}")]
    Version(u8),
    #[error("too many candidates")]
    TooMany,
    #[error("bad field")]
    Bad,
}

impl Signal {
    /// Compact binary form (version 1), at most 2 + 1 + 8 * 19 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![1, self.nat.to_u8()];
        let cands: Vec<_> = self.candidates.iter().take(MAX_CANDIDATES).collect();
        v.push(cands.len() as u8);
        for c in cands {
            match c.ip() {
                IpAddr::V4(ip) => {
                    v.push(4);
                    v.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    v.push(6);
                    v.extend_from_slice(&ip.octets());
                }
            }
            v.extend_from_slice(&c.port().to_be_bytes());
        }
        v
    }

    /// Decodes [`Signal::encode`]'s output; rejects anything malformed.
    pub fn decode(buf: &[u8]) -> Result<Self, SignalError> {
        let mut it = buf.iter().copied();
        let mut next = || it.next().ok_or(SignalError::Truncated);
        let ver = next()?;
        if ver != 1 {
            return Err(SignalError::Version(ver));
        }
        let nat = NatKind::from_u8(next()?).ok_or(SignalError::Bad)?;
        let n = usize::from(next()?);
        if n > MAX_CANDIDATES {
            return Err(SignalError::TooMany);
        }
        let mut candidates = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match next()? {
                4 => {
                    let mut o = [0u8; 4];
                    for b in &mut o {
                        *b = next()?;
                    }
                    IpAddr::from(o)
                }
                6 => {
                    let mut o = [0u8; 16];
                    for b in &mut o {
                        *b = next()?;
                    }
                    IpAddr::from(o)
                }
                _ => return Err(SignalError::Bad),
            };
            let port = u16::from_be_bytes([next()?, next()?]);
            candidates.push(SocketAddr::new(ip, port));
        }
        if next().is_ok() {
            return Err(SignalError::Bad);
        }
        Ok(Signal { candidates, nat })
    }
}

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

struct StunServer {
    addr: SocketAddr,
    txid: [u8; 12],
    sent_at: Option<Instant>,
    next_at: Instant,
    attempts: u32,
    mapped: Option<SocketAddr>,
}

struct Peer {
    id: PeerId,
    tunn: Tunn<rand_09::rngs::StdRng>,
    allowed_ips: Vec<IpNet>,
    relay: Option<RelayId>,
    /// A standard WireGuard client behind the relay's UDP bridge ([`PeerConfig::bridged`]).
    bridged: bool,
    /// The bridge tag of the client's endpoint, from the latest authenticated packet.
    bridge_tag: Option<u64>,
    path: Path,
    reason: PathReason,
    remote_candidates: Vec<SocketAddr>,
    remote_nat: NatKind,
    /// Outstanding pings: nonce -> (address or None for relay, sent at).
    pings: BTreeMap<u64, (Option<SocketAddr>, Instant)>,
    next_probe: Option<Instant>,
    probe_round: u32,
    direct_since: Option<Instant>,
    direct_last_pong: Option<Instant>,
    direct_last_ping: Option<Instant>,
    direct_rtt: Option<Duration>,
    relay_rtt: Option<Duration>,
    next_relay_ping: Option<Instant>,
    hold_until: Option<Instant>,
    hold: VecDeque<Vec<u8>>,
    /// When the last data packet left through the relay (what a hold waits for).
    relay_data_at: Option<Instant>,
    resend: VecDeque<(Instant, Vec<u8>)>,
    tx_bytes: u64,
    rx_bytes: u64,
    last_handshake: Option<Instant>,
    drops: u64,
}

/// The engine.
pub struct Node {
    secret: StaticSecret,
    public: PublicKey,
    epoch: Instant,
    now: Instant,
    next_tick: Instant,
    rng: rand::rngs::StdRng,
    index_table: IndexTable<rand_09::rngs::StdRng>,
    rate_limiter: Arc<RateLimiter>,
    peers: BTreeMap<PeerId, Peer>,
    by_idx: HashMap<u32, PeerId>,
    stun: Vec<StunServer>,
    local_addrs: Vec<SocketAddr>,
    candidates: Vec<SocketAddr>,
    nat: NatKind,
    out: VecDeque<Output>,
    mtu: MtuWatcher,
    dropped_outputs: u64,
}

// ---- probe messages carried inside WireGuard ----

const PROBE_MAGIC: &[u8; 8] = b"DBPROBE1";
const PROBE_LEN: usize = 20 + 8 + 1 + 8;
const PROBE_PING: u8 = 1;
const PROBE_PONG: u8 = 2;

fn probe_packet(kind: u8, nonce: u64) -> Vec<u8> {
    let mut p = vec![0u8; PROBE_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PROBE_LEN as u16).to_be_bytes());
    p[8] = 1; // TTL
    p[9] = 253; // experimental protocol number (RFC 3692); never routed
    p[20..28].copy_from_slice(PROBE_MAGIC);
    p[28] = kind;
    p[29..37].copy_from_slice(&nonce.to_be_bytes());
    p
}

fn parse_probe(p: &[u8]) -> Option<(u8, u64)> {
    if p.len() != PROBE_LEN || p[0] != 0x45 || p[9] != 253 || &p[20..28] != PROBE_MAGIC {
        return None;
    }
    let nonce = u64::from_be_bytes(p[29..37].try_into().ok()?);
    Some((p[28], nonce))
}

/// Source and destination of an IPv4/IPv6 packet.
pub fn ip_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// The length an IPv4/IPv6 packet claims for itself, if it fits in `p`.
fn ip_total_len(p: &[u8]) -> Option<usize> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    (len <= p.len() && len >= 20).then_some(len)
}

fn to_vec(kind: WgKind) -> Vec<u8> {
    let p: Packet = kind.into();
    p.to_vec()
}

#[derive(Clone, Copy)]
enum Via {
    Udp(SocketAddr),
    Relay,
    /// Through the relay's UDP bridge, from the client endpoint this tag names.
    Bridge(u64),
}

/// The address a bridged datagram counts as for WireGuard's handshake rate limiter and
/// cookies: one per (relay, tag), i.e. per client endpoint, so one noisy client cannot use
/// up another's handshake budget. A unique-local IPv6 address that is never routed.
fn bridge_pseudo_addr(relay: RelayId, tag: u64) -> SocketAddr {
    let ip = (0xfd00_u128 << 112) | (u128::from(relay) << 64) | u128::from(tag);
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), 0)
}

impl Node {
    /// Creates a node. `now` starts its clock.
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        MockClock::set_time(Duration::ZERO);
        let secret = StaticSecret::from(config.private_key);
        let public = PublicKey::from(&secret);
        let seed = config.seed.unwrap_or_else(rand::random);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let index_table = IndexTable::from_rng(rand_09::rngs::StdRng::seed_from_u64(rng.r#gen()));
        let rate_limiter = Arc::new(RateLimiter::new(&public, 100));
        let stun = config
            .stun_servers
            .iter()
            .take(4)
            .map(|&addr| StunServer {
                addr,
                txid: rng.r#gen(),
                sent_at: None,
                next_at: now,
                attempts: 0,
                mapped: None,
            })
            .collect();
        let mut node = Node {
            secret,
            public,
            epoch: now,
            now,
            next_tick: now,
            rng,
            index_table,
            rate_limiter,
            peers: BTreeMap::new(),
            by_idx: HashMap::new(),
            stun,
            local_addrs: config
                .local_addrs
                .into_iter()
                .take(MAX_CANDIDATES)
                .collect(),
            candidates: Vec::new(),
            nat: NatKind::Unknown,
            out: VecDeque::new(),
            mtu: MtuWatcher::new(DEFAULT_MTU),
            dropped_outputs: 0,
        };
        node.candidates = node.compute_candidates();
        node
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> PeerId {
        *self.public.as_bytes()
    }

    /// This node's current candidates and NAT kind.
    pub fn local_signal(&self) -> Signal {
        Signal {
            candidates: self.candidates.clone(),
            nat: self.nat,
        }
    }

    fn set_time(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        MockClock::set_time(self.now.duration_since(self.epoch));
    }

    fn push(&mut self, o: Output) {
        if self.out.len() >= MAX_OUTPUTS {
            self.dropped_outputs += 1;
            return;
        }
        self.out.push_back(o);
    }

    fn event(&mut self, e: Event) {
        self.push(Output::Event(e));
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        for p in self.peers.values() {
            if let Some(h) = p.hold_until {
                t = t.min(h);
            }
        }
        t
    }

    /// Adds (or replaces) a peer. It starts on its relay at once: a handshake goes out now.
    pub fn add_peer(&mut self, now: Instant, cfg: PeerConfig) -> Result<(), PeerError> {
        self.set_time(now);
        if cfg.public_key == self.public_key() {
            return Err(PeerError::SelfPeer);
        }
        if !self.peers.contains_key(&cfg.public_key) && self.peers.len() >= MAX_PEERS {
            return Err(PeerError::TooMany);
        }
        self.remove_peer(&cfg.public_key);
        let tunn = Tunn::new_with_rng(
            self.secret.clone(),
            PublicKey::from(cfg.public_key),
            None,
            cfg.persistent_keepalive,
            self.index_table.clone(),
            self.rate_limiter.clone(),
            rand_09::rngs::StdRng::seed_from_u64(self.rng.r#gen()),
        );
        let path = if cfg.relay.is_some() {
            Path::Relay
        } else {
            Path::None
        };
        let bridged = cfg.bridged;
        let mut peer = Peer {
            id: cfg.public_key,
            tunn,
            allowed_ips: cfg.allowed_ips.into_iter().take(64).collect(),
            relay: cfg.relay,
            bridged,
            bridge_tag: None,
            path,
            reason: match (cfg.relay.is_some(), bridged) {
                (false, _) => PathReason::NoPath,
                (true, true) => PathReason::Bridged,
                (true, false) => PathReason::AwaitingCandidates,
            },
            remote_candidates: Vec::new(),
            remote_nat: NatKind::Unknown,
            pings: BTreeMap::new(),
            next_probe: None,
            probe_round: 0,
            direct_since: None,
            direct_last_pong: None,
            direct_last_ping: None,
            direct_rtt: None,
            relay_rtt: None,
            // Bridged clients are never pinged (they would not understand it).
            next_relay_ping: (!bridged).then_some(now),
            hold_until: None,
            hold: VecDeque::new(),
            relay_data_at: None,
            resend: VecDeque::new(),
            tx_bytes: 0,
            rx_bytes: 0,
            last_handshake: None,
            drops: 0,
        };
        let id = peer.id;
        if bridged {
            // A bridged client is reachable only once it has written to us (we learn its
            // bridge tag then), and it gets no candidates: it only answers WireGuard.
            self.peers.insert(id, peer);
            return Ok(());
        }
        let init = peer.tunn.format_handshake_initiation(false);
        self.peers.insert(id, peer);
        if let Some(init) = init {
            let kind: WgKind = init.into();
            self.register_idx(id, &kind);
            self.send_wg(id, to_vec(kind), false);
        }
        let signal = self.local_signal();
        self.push(Output::Signal { peer: id, signal });
        Ok(())
    }

    /// Moves a peer to another relay connection (or none) without touching its session,
    /// e.g. when the control plane reassigns the session to another relay.
    pub fn set_peer_relay(&mut self, now: Instant, id: &PeerId, relay: Option<RelayId>) {
        self.set_time(now);
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.relay != relay {
            // A bridge tag is meaningful only on the relay that chose it.
            peer.bridge_tag = None;
        }
        peer.relay = relay;
        peer.relay_rtt = None;
        peer.next_relay_ping = (!peer.bridged).then_some(now);
        match (peer.path, relay) {
            (Path::Relay, None) => peer.path = Path::None,
            (Path::None, Some(_)) => peer.path = Path::Relay,
            _ => {}
        }
    }

    /// Forgets a peer.
    pub fn remove_peer(&mut self, id: &PeerId) {
        if self.peers.remove(id).is_some() {
            self.by_idx.retain(|_, p| p != id);
        }
    }

    /// Current report for one peer.
    pub fn peer_stats(&self, id: &PeerId) -> Option<PeerStats> {
        let p = self.peers.get(id)?;
        Some(PeerStats {
            path: p.path,
            reason: p.reason,
            rtt: match p.path {
                Path::Direct(_) => p.direct_rtt,
                _ => p.relay_rtt,
            },
            tx_bytes: p.tx_bytes,
            rx_bytes: p.rx_bytes,
            last_handshake: p.last_handshake,
            drops: p.drops,
            remote_nat: p.remote_nat,
        })
    }

    /// Known peers.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// The NAT kind STUN measured.
    pub fn nat(&self) -> NatKind {
        self.nat
    }

    fn register_idx(&mut self, id: PeerId, kind: &WgKind) {
        let idx = match kind {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        self.by_idx.insert(idx, id);
    }

    // ---- application side ----

    /// An IP packet from the application, routed by destination over the peers' allowed IPs.
    pub fn send_ip(&mut self, now: Instant, packet: &[u8]) -> Result<(), SendError> {
        let (_, dst) = ip_addrs(packet).ok_or(SendError::NotIp)?;
        let id = self
            .peers
            .values()
            .filter_map(|p| {
                p.allowed_ips
                    .iter()
                    .filter(|n| n.contains(dst))
                    .map(|n| n.prefix)
                    .max()
                    .map(|len| (len, p.id))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, id)| id)
            .ok_or(SendError::NoRoute)?;
        self.send_ip_to(now, &id, packet)
    }

    /// An IP packet from the application for a given peer.
    pub fn send_ip_to(
        &mut self,
        now: Instant,
        id: &PeerId,
        packet: &[u8],
    ) -> Result<(), SendError> {
        self.set_time(now);
        if packet.len() > MAX_IP_PACKET {
            return Err(SendError::TooLarge);
        }
        if ip_addrs(packet).is_none() {
            return Err(SendError::NotIp);
        }
        let mtu = &mut self.mtu;
        let peer = self.peers.get_mut(id).ok_or(SendError::UnknownPeer)?;
        peer.tx_bytes += packet.len() as u64;
        let out = peer
            .tunn
            .handle_outgoing_packet(Packet::from_bytes(BytesMut::from(packet)), Some(mtu));
        if let Some(kind) = out {
            let is_data = matches!(kind, WgKind::Data(_));
            self.register_idx(*id, &kind);
            self.send_wg(*id, to_vec(kind), is_data);
        }
        Ok(())
    }

    // ---- network side ----

    /// A datagram arrived on the node's UDP socket.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.set_time(now);
        if data.len() > MAX_PAYLOAD || data.is_empty() {
            return;
        }
        if stun::looks_like_stun(data) {
            self.handle_stun(from, data);
            return;
        }
        let kind = match self
            .rate_limiter
            .verify_packet(from, Packet::from_bytes(BytesMut::from(data)))
        {
            Ok(k) => k,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                self.push(Output::Udp {
                    dst: from,
                    payload: to_vec(cookie),
                });
                return;
            }
            Err(_) => return,
        };
        let id = match &kind {
            WgKind::HandshakeInit(p) => parse_handshake_anon(&self.secret, &self.public, p)
                .ok()
                .map(|h| h.peer_static_public),
            WgKind::HandshakeResp(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::CookieReply(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::Data(p) => self.by_idx.get(&p.header.receiver_idx.get()).copied(),
        };
        // A bridged client is reached only through the relay's bridge.
        let Some(id) = id.filter(|id| self.peers.get(id).is_some_and(|p| !p.bridged)) else {
            return;
        };
        self.handle_wg(id, kind, Via::Udp(from));
    }

    /// A frame arrived on relay connection `relay`.
    pub fn handle_relay_frame(&mut self, now: Instant, relay: RelayId, frame: &[u8]) {
        self.set_time(now);
        let (peer, payload) = match Frame::decode(frame) {
            Ok(Frame::Data { peer, payload }) => (peer, payload),
            Ok(Frame::Bridge { tag, payload }) => {
                self.handle_bridge_frame(relay, tag, payload);
                return;
            }
            _ => return,
        };
        // Bridged clients never speak our relay protocol.
        if !self
            .peers
            .get(&peer)
            .is_some_and(|p| p.relay == Some(relay) && !p.bridged)
        {
            return;
        }
        // The relay vouches for the source key; the WireGuard session still authenticates it.
        let pseudo = SocketAddr::from(([0, 0, 0, 0], relay));
        let kind = match self
            .rate_limiter
            .verify_packet(pseudo, Packet::from_bytes(BytesMut::from(payload)))
        {
            Ok(k) => k,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                if let Ok(frame) = (Frame::Data {
                    peer,
                    payload: &to_vec(cookie),
                })
                .encode()
                {
                    self.push(Output::Relay { relay, frame });
                }
                return;
            }
            Err(_) => return,
        };
        if let WgKind::HandshakeInit(p) = &kind {
            match parse_handshake_anon(&self.secret, &self.public, p) {
                Ok(h) if h.peer_static_public == peer => {}
                _ => return,
            }
        }
        self.handle_wg(peer, kind, Via::Relay);
    }

    /// A datagram from a standard WireGuard client, through relay `relay`'s UDP bridge.
    /// The relay only chose the tag; which peer this is comes from WireGuard itself (the
    /// handshake's static key, or our receiver index), and only a peer configured as
    /// bridged on this very relay is accepted.
    fn handle_bridge_frame(&mut self, relay: RelayId, tag: u64, payload: &[u8]) {
        let pseudo = bridge_pseudo_addr(relay, tag);
        let kind = match self
            .rate_limiter
            .verify_packet(pseudo, Packet::from_bytes(BytesMut::from(payload)))
        {
            Ok(k) => k,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load: the cookie goes back to the same endpoint.
                let cookie = to_vec(cookie);
                if let Ok(frame) = (Frame::Bridge {
                    tag,
                    payload: &cookie,
                })
                .encode()
                {
                    self.push(Output::Relay { relay, frame });
                }
                return;
            }
            Err(_) => return,
        };
        let id = match &kind {
            WgKind::HandshakeInit(p) => parse_handshake_anon(&self.secret, &self.public, p)
                .ok()
                .map(|h| h.peer_static_public),
            WgKind::HandshakeResp(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::CookieReply(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::Data(p) => self.by_idx.get(&p.header.receiver_idx.get()).copied(),
        };
        let Some(id) = id.filter(|id| {
            self.peers
                .get(id)
                .is_some_and(|p| p.bridged && p.relay == Some(relay))
        }) else {
            tracing::trace!(relay, "bridged datagram for no bridged peer dropped");
            return;
        };
        self.handle_wg(id, kind, Via::Bridge(tag));
    }

    fn handle_wg(&mut self, id: PeerId, kind: WgKind, via: Via) {
        let now = self.now;
        let is_handshake = matches!(kind, WgKind::HandshakeInit(_) | WgKind::HandshakeResp(_));
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let res = peer.tunn.handle_incoming_packet(kind);
        // WireGuard's roaming: the endpoint of the latest authenticated packet is where
        // answers go, starting with the answer to this very packet.
        if let Via::Bridge(tag) = via
            && matches!(
                res,
                TunnResult::WriteToNetwork(_) | TunnResult::WriteToTunnel(_)
            )
            && peer.bridge_tag != Some(tag)
        {
            tracing::debug!(peer = %hex::encode(&id[..4]), tag, "bridged client endpoint");
            peer.bridge_tag = Some(tag);
        }
        let mut authenticated = false;
        match res {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "wireguard packet rejected");
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                authenticated = true;
                let is_data = matches!(reply, WgKind::Data(_));
                let is_resp = matches!(reply, WgKind::HandshakeResp(_));
                self.register_idx(id, &reply);
                let bytes = to_vec(reply);
                // A handshake that came straight over UDP is also answered straight back,
                // so a session can form while the relay is unavailable.
                if let Via::Udp(from) = via
                    && is_resp
                    && self.peers.get(&id).is_some_and(|p| p.path == Path::Relay)
                {
                    self.push(Output::Udp {
                        dst: from,
                        payload: bytes.clone(),
                    });
                }
                self.send_wg(id, bytes, is_data);
                let mut queued = Vec::new();
                if let Some(peer) = self.peers.get_mut(&id) {
                    queued.extend(peer.tunn.get_queued_packets(&mut self.mtu));
                }
                for q in queued {
                    let is_data = matches!(q, WgKind::Data(_));
                    self.send_wg(id, to_vec(q), is_data);
                }
            }
            TunnResult::WriteToTunnel(packet) => {
                authenticated = true;
                if !packet.is_empty() {
                    self.inner_packet(id, &packet, &via);
                }
            }
        }
        if authenticated && is_handshake {
            if let Some(p) = self.peers.get_mut(&id) {
                p.last_handshake = Some(now);
            }
            self.event(Event::HandshakeCompleted { peer: id });
            // Measure the relay as soon as there is a session (needed for a clean upgrade).
            if let Some(p) = self.peers.get_mut(&id)
                && p.relay_rtt.is_none()
                && !p.bridged
            {
                p.next_relay_ping = Some(now);
            }
            // A fresh session: probe right away if we know where to.
            if let Some(p) = self.peers.get_mut(&id)
                && !matches!(p.path, Path::Direct(_))
                && !p.remote_candidates.is_empty()
            {
                p.next_probe = Some(now);
            }
        }
    }

    fn inner_packet(&mut self, id: PeerId, packet: &[u8], via: &Via) {
        let now = self.now;
        // WireGuard pads to 16 bytes: cut back to the IP length; drop what is not IP.
        let Some(len) = ip_total_len(packet) else {
            if let Some(p) = self.peers.get_mut(&id) {
                p.drops += 1;
            }
            return;
        };
        let packet = &packet[..len];
        if let Some((kind, nonce)) = parse_probe(packet) {
            if matches!(via, Via::Bridge(_)) {
                // We never probe a bridged client, and it has no business probing us.
                return;
            }
            match kind {
                PROBE_PING => {
                    // Answer on the path the ping came in on.
                    let pong = probe_packet(PROBE_PONG, nonce);
                    match via {
                        Via::Udp(from) => {
                            self.send_inner_udp(id, *from, &pong);
                            // A ping from an address we are not using (peer-reflexive
                            // candidate, or the peer roamed): probe it ourselves.
                            let from = *from;
                            let probe_it = self.peers.get(&id).is_some_and(|p| {
                                p.path != Path::Direct(from)
                                    && !p.pings.values().any(|(a, _)| *a == Some(from))
                            });
                            if probe_it {
                                self.ping_udp(id, from);
                            }
                        }
                        Via::Relay => {
                            self.send_inner_relay(id, &pong);
                        }
                        Via::Bridge(_) => {}
                    }
                }
                PROBE_PONG => self.handle_pong(id, nonce, via),
                _ => {}
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.allowed_ips.is_empty() {
            let ok = ip_addrs(packet)
                .map(|(src, _)| peer.allowed_ips.iter().any(|n| n.contains(src)))
                .unwrap_or(false);
            if !ok {
                peer.drops += 1;
                return;
            }
        }
        peer.rx_bytes += packet.len() as u64;
        let _ = now;
        self.push(Output::Deliver {
            peer: id,
            packet: packet.to_vec(),
        });
    }

    fn handle_pong(&mut self, id: PeerId, nonce: u64, via: &Via) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some((to, sent)) = peer.pings.remove(&nonce) else {
            return;
        };
        let rtt = now.saturating_duration_since(sent);
        match (to, via) {
            (None, Via::Relay) => {
                peer.relay_rtt = Some(rtt);
                // A hold guessed without the relay's latency shrinks to the real need.
                if peer.hold_until.is_some() {
                    peer.hold_until = peer.hold_until.min(relay_hold_until(peer));
                }
            }
            (Some(addr), Via::Udp(from)) if addr == *from => {
                if now.saturating_duration_since(sent) > PING_VALID {
                    return;
                }
                peer.direct_rtt = Some(rtt);
                if peer.path == Path::Direct(addr) {
                    peer.direct_last_pong = Some(now);
                } else {
                    self.switch_to_direct(id, addr);
                }
            }
            _ => {}
        }
    }

    fn switch_to_direct(&mut self, id: PeerId, addr: SocketAddr) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let was_relay = peer.path == Path::Relay;
        peer.path = Path::Direct(addr);
        peer.reason = PathReason::DirectOk;
        peer.direct_since = Some(now);
        peer.direct_last_pong = Some(now);
        peer.direct_last_ping = Some(now);
        peer.resend.clear();
        if was_relay {
            peer.hold_until = relay_hold_until(peer).filter(|t| *t > now);
        }
        tracing::debug!(peer = %hex::encode(&id[..4]), %addr, "path: direct");
        self.event(Event::PathChanged {
            peer: id,
            path: Path::Direct(addr),
            reason: PathReason::DirectOk,
        });
    }

    fn fall_back(&mut self, id: PeerId, reason: PathReason) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Path::Direct(_) = peer.path else {
            return;
        };
        peer.path = if peer.relay.is_some() {
            Path::Relay
        } else {
            Path::None
        };
        peer.reason = reason;
        peer.direct_since = None;
        peer.pings.clear();
        peer.probe_round = 0;
        peer.next_probe = Some(now + PROBE_FAST_INTERVAL);
        // Re-send through the relay what may have been lost on the dead path, oldest first;
        // the receiver's replay window discards what had arrived.
        let horizon = DIRECT_TIMEOUT + Duration::from_secs(1);
        let mut replay: Vec<Vec<u8>> = peer
            .resend
            .drain(..)
            .filter(|(t, _)| now.saturating_duration_since(*t) <= horizon)
            .map(|(_, p)| p)
            .collect();
        replay.extend(peer.hold.drain(..));
        peer.hold_until = None;
        let path = peer.path;
        tracing::debug!(peer = %hex::encode(&id[..4]), %reason, "path: fell back to relay");
        for p in replay {
            self.send_wg(id, p, false);
        }
        self.event(Event::PathChanged {
            peer: id,
            path,
            reason,
        });
    }

    /// Sends one WireGuard packet on the peer's current path.
    fn send_wg(&mut self, id: PeerId, bytes: Vec<u8>, is_data: bool) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match peer.path {
            Path::Direct(addr) => {
                if peer.hold_until.is_some_and(|t| now < t) {
                    if peer.hold.len() < HOLD_QUEUE {
                        peer.hold.push_back(bytes);
                    } else {
                        peer.drops += 1;
                    }
                    return;
                }
                if is_data {
                    if peer.resend.len() >= RESEND_RING {
                        peer.resend.pop_front();
                    }
                    peer.resend.push_back((now, bytes.clone()));
                }
                self.push(Output::Udp {
                    dst: addr,
                    payload: bytes,
                });
            }
            Path::Relay if peer.bridged => {
                // Plain WireGuard to the client's endpoint, through the relay's bridge. No tag
                // yet (the client has not written): nowhere to send it.
                let (Some(relay), Some(tag)) = (peer.relay, peer.bridge_tag) else {
                    peer.drops += 1;
                    return;
                };
                match (Frame::Bridge {
                    tag,
                    payload: &bytes,
                })
                .encode()
                {
                    Ok(frame) => self.push(Output::Relay { relay, frame }),
                    Err(_) => peer.drops += 1,
                }
            }
            Path::Relay => {
                let Some(relay) = peer.relay else {
                    peer.drops += 1;
                    return;
                };
                if is_data {
                    peer.relay_data_at = Some(now);
                }
                // Handshake initiations also go to the peer's candidates: if the relay is
                // down the session can still form directly. The duplicate is harmless
                // (WireGuard rejects a replayed initiation timestamp).
                let extra: Vec<SocketAddr> =
                    if !is_data && bytes.first() == Some(&1) && bytes.len() == 148 {
                        peer.remote_candidates.clone()
                    } else {
                        Vec::new()
                    };
                match (Frame::Data {
                    peer: id,
                    payload: &bytes,
                })
                .encode()
                {
                    Ok(frame) => self.push(Output::Relay { relay, frame }),
                    Err(_) => peer.drops += 1,
                }
                for dst in extra {
                    self.push(Output::Udp {
                        dst,
                        payload: bytes.clone(),
                    });
                }
            }
            Path::None => {
                // No relay and no confirmed direct path yet: handshakes go to every
                // candidate so a session can form; data waits for a confirmed path.
                if is_data || peer.remote_candidates.is_empty() {
                    peer.drops += 1;
                    return;
                }
                let cands = peer.remote_candidates.clone();
                for dst in cands {
                    self.push(Output::Udp {
                        dst,
                        payload: bytes.clone(),
                    });
                }
            }
        }
    }

    fn encapsulate_inner(&mut self, id: PeerId, inner: &[u8]) -> Option<Vec<u8>> {
        let peer = self.peers.get_mut(&id)?;
        peer.tunn
            .encapsulate_with_session(Packet::from_bytes(BytesMut::from(inner)))
            .ok()
            .map(|p| p.into_bytes().to_vec())
    }

    fn send_inner_udp(&mut self, id: PeerId, dst: SocketAddr, inner: &[u8]) {
        if let Some(b) = self.encapsulate_inner(id, inner) {
            self.push(Output::Udp { dst, payload: b });
        }
    }

    fn send_inner_relay(&mut self, id: PeerId, inner: &[u8]) -> bool {
        let Some(relay) = self
            .peers
            .get(&id)
            .filter(|p| !p.bridged)
            .and_then(|p| p.relay)
        else {
            return false;
        };
        if let Some(b) = self.encapsulate_inner(id, inner)
            && let Ok(frame) = (Frame::Data {
                peer: id,
                payload: &b,
            })
            .encode()
        {
            self.push(Output::Relay { relay, frame });
            return true;
        }
        false
    }

    fn new_ping(&mut self, id: PeerId, to: Option<SocketAddr>) -> Option<Vec<u8>> {
        let nonce: u64 = self.rng.r#gen();
        let now = self.now;
        let peer = self.peers.get_mut(&id)?;
        while peer.pings.len() >= MAX_PENDING_PINGS {
            let oldest = peer
                .pings
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)?;
            peer.pings.remove(&oldest);
        }
        peer.pings.insert(nonce, (to, now));
        Some(probe_packet(PROBE_PING, nonce))
    }

    fn ping_udp(&mut self, id: PeerId, addr: SocketAddr) {
        if let Some(p) = self.new_ping(id, Some(addr)) {
            self.send_inner_udp(id, addr, &p);
        }
    }

    /// Candidates for a peer, from the control plane.
    pub fn handle_signal(&mut self, now: Instant, id: &PeerId, signal: Signal) {
        self.set_time(now);
        // A bridged client has no candidates of ours to use, nor we of its.
        let Some(peer) = self.peers.get_mut(id).filter(|p| !p.bridged) else {
            return;
        };
        let mut cands: Vec<SocketAddr> = Vec::new();
        for c in signal.candidates {
            if c.port() != 0 && !c.ip().is_unspecified() && !cands.contains(&c) {
                cands.push(c);
            }
            if cands.len() >= MAX_CANDIDATES {
                break;
            }
        }
        peer.remote_candidates = cands;
        peer.remote_nat = signal.nat;
        if !matches!(peer.path, Path::Direct(_)) {
            peer.probe_round = 0;
            peer.next_probe = Some(now);
        }
        if peer.path == Path::None && peer.last_handshake.is_none() {
            // Relay-less peer: the handshake can go out now that we know where to.
            if let Some(init) = peer.tunn.format_handshake_initiation(true) {
                let kind: WgKind = init.into();
                let id = *id;
                self.register_idx(id, &kind);
                self.send_wg(id, to_vec(kind), false);
            }
        }
    }

    // ---- STUN ----

    fn handle_stun(&mut self, from: SocketAddr, data: &[u8]) {
        let Some((txid, mapped)) = stun::parse_binding_response(data) else {
            return;
        };
        let now = self.now;
        let Some(s) = self
            .stun
            .iter_mut()
            .find(|s| s.addr == from && s.txid == txid && s.sent_at.is_some())
        else {
            return;
        };
        s.sent_at = None;
        s.attempts = 0;
        s.next_at = now + STUN_REFRESH;
        let changed = s.mapped != Some(mapped);
        s.mapped = Some(mapped);
        if changed {
            self.update_nat();
            self.event(Event::PublicEndpoint {
                addr: mapped,
                nat: self.nat,
            });
        }
    }

    fn update_nat(&mut self) {
        let mapped: BTreeSet<SocketAddr> = self.stun.iter().filter_map(|s| s.mapped).collect();
        let answered = self.stun.iter().filter(|s| s.mapped.is_some()).count();
        let nat_before = self.nat;
        self.nat = if mapped.is_empty() {
            if !self.stun.is_empty()
                && self
                    .stun
                    .iter()
                    .all(|s| s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED)
            {
                NatKind::UdpBlocked
            } else {
                NatKind::Unknown
            }
        } else if mapped.len() > 1 {
            NatKind::Hard
        } else if mapped.iter().all(|m| self.local_addrs.contains(m)) {
            NatKind::Open
        } else if answered >= 2 {
            NatKind::Easy
        } else {
            NatKind::Unknown
        };
        let cands = self.compute_candidates();
        if cands != self.candidates || nat_before != self.nat {
            self.candidates = cands;
            let signal = self.local_signal();
            let ids: Vec<PeerId> = self
                .peers
                .values()
                .filter(|p| !p.bridged)
                .map(|p| p.id)
                .collect();
            for peer in ids {
                self.push(Output::Signal {
                    peer,
                    signal: signal.clone(),
                });
            }
        }
    }

    fn compute_candidates(&self) -> Vec<SocketAddr> {
        let mut c: Vec<SocketAddr> = Vec::new();
        for a in self
            .stun
            .iter()
            .filter_map(|s| s.mapped)
            .chain(self.local_addrs.iter().copied())
        {
            if !c.contains(&a) && c.len() < MAX_CANDIDATES {
                c.push(a);
            }
        }
        c
    }

    /// A relay connection (re)connected: peers on it without a session handshake now
    /// instead of waiting for WireGuard's retry timer.
    pub fn relay_connected(&mut self, now: Instant, relay: RelayId) {
        self.set_time(now);
        let ids: Vec<PeerId> = self
            .peers
            .values()
            // A bridged client is answered, not called: it initiates through the bridge.
            .filter(|p| p.relay == Some(relay) && !p.bridged)
            .map(|p| p.id)
            .collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.next_relay_ping = Some(now);
            let fresh = peer
                .tunn
                .time_since_last_handshake()
                .is_some_and(|t| t < Duration::from_secs(170));
            if fresh {
                continue;
            }
            // Never force: a second initiation while one is in flight would orphan the
            // peer's answer to the first (gotatun keeps one previous handshake state).
            if let Some(init) = peer.tunn.format_handshake_initiation(false) {
                let kind: WgKind = init.into();
                self.register_idx(id, &kind);
                self.send_wg(id, to_vec(kind), false);
            }
        }
    }

    /// Local addresses changed (e.g. the driver rebound its socket).
    pub fn set_local_addrs(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        self.set_time(now);
        self.local_addrs = addrs.into_iter().take(MAX_CANDIDATES).collect();
        for s in &mut self.stun {
            s.next_at = now;
        }
        self.update_nat();
    }

    // ---- timers ----

    /// Drives timers: WireGuard's, STUN, probing, path liveness, holds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_time(now);
        let now = self.now;
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick_stun();
            // Forget last second's per-source handshake counts (bounded by traffic, and
            // bridged clients each count under their own pseudo address).
            self.rate_limiter.try_reset_count();
            self.by_idx.retain(|idx, _| self.index_table.in_use(*idx));
            let ids: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in ids {
                self.tick_peer(id);
            }
        }
        self.flush_holds();
    }

    fn tick_stun(&mut self) {
        let now = self.now;
        let mut sends = Vec::new();
        let mut blocked_check = false;
        for s in &mut self.stun {
            if now < s.next_at {
                continue;
            }
            if s.sent_at.is_some() {
                s.attempts = s.attempts.saturating_add(1);
                if s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED {
                    blocked_check = true;
                    if s.mapped.is_some() && s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED * 2 {
                        s.mapped = None;
                    }
                }
            }
            s.txid = self.rng.r#gen();
            s.sent_at = Some(now);
            let backoff = if s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED {
                STUN_RETRY * 5
            } else {
                STUN_RETRY
            };
            s.next_at = now + backoff;
            sends.push((s.addr, stun::binding_request(s.txid)));
        }
        for (dst, payload) in sends {
            self.push(Output::Udp { dst, payload });
        }
        if blocked_check {
            self.update_nat();
        }
    }

    fn tick_peer(&mut self, id: PeerId) {
        let now = self.now;
        // WireGuard timers.
        let timer = self.peers.get_mut(&id).map(|p| p.tunn.update_timers());
        if let Some(Ok(Some(pkt))) = timer {
            let is_data = matches!(pkt, WgKind::Data(_));
            self.register_idx(id, &pkt);
            self.send_wg(id, to_vec(pkt), is_data);
        }
        let local_nat = self.nat;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.bridged {
            // Only WireGuard's own timers (above): no pings, probes or path changes.
            peer.reason = if peer.relay.is_some() {
                PathReason::Bridged
            } else {
                PathReason::NoPath
            };
            return;
        }
        let expired: Vec<u64> = peer
            .pings
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) > PING_VALID)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            peer.pings.remove(&k);
        }
        match peer.path {
            Path::Direct(addr) => {
                let last = peer.direct_last_pong.unwrap_or(now);
                if now.saturating_duration_since(last) > DIRECT_TIMEOUT {
                    self.fall_back(id, PathReason::DirectLost);
                    return;
                }
                if peer
                    .direct_last_ping
                    .is_none_or(|t| now.saturating_duration_since(t) >= DIRECT_KEEPALIVE)
                {
                    peer.direct_last_ping = Some(now);
                    self.ping_udp(id, addr);
                }
            }
            Path::Relay | Path::None => {
                if peer.next_relay_ping.is_some_and(|t| now >= t) && peer.relay.is_some() {
                    let sent = match self.new_ping(id, None) {
                        Some(p) => self.send_inner_relay(id, &p),
                        None => false,
                    };
                    if let Some(peer) = self.peers.get_mut(&id) {
                        // Without a session yet, try again on the next tick.
                        peer.next_relay_ping =
                            Some(now + if sent { RELAY_PING_INTERVAL } else { TICK });
                    }
                }
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                if peer.remote_candidates.is_empty() {
                    if peer.reason != PathReason::DirectLost {
                        peer.reason = if local_nat == NatKind::UdpBlocked {
                            PathReason::UdpBlocked
                        } else if peer.path == Path::None {
                            PathReason::NoPath
                        } else {
                            PathReason::AwaitingCandidates
                        };
                    }
                    return;
                }
                let probe_now = peer.next_probe.is_some_and(|t| now >= t);
                if probe_now {
                    peer.probe_round = peer.probe_round.saturating_add(1);
                    let fast = peer.probe_round <= PROBE_FAST_ROUNDS;
                    peer.next_probe = Some(
                        now + if fast {
                            PROBE_FAST_INTERVAL
                        } else {
                            PROBE_SLOW_INTERVAL
                        },
                    );
                }
                // The reason follows what is known now (every tick, not only at a probe:
                // a NAT classification that arrives after the fast rounds shows at once).
                let fast = peer.probe_round <= PROBE_FAST_ROUNDS;
                if peer.probe_round > 0 && (peer.reason != PathReason::DirectLost || !fast) {
                    peer.reason = if local_nat == NatKind::UdpBlocked
                        || peer.remote_nat == NatKind::UdpBlocked
                    {
                        PathReason::UdpBlocked
                    } else if fast {
                        PathReason::Probing
                    } else if local_nat == NatKind::Hard && peer.remote_nat == NatKind::Hard {
                        PathReason::SymmetricNatBothSides
                    } else {
                        PathReason::NoDirectAnswer
                    };
                }
                if probe_now {
                    let cands = peer.remote_candidates.clone();
                    for c in cands {
                        self.ping_udp(id, c);
                    }
                }
            }
        }
    }

    fn flush_holds(&mut self) {
        let now = self.now;
        let mut flush = Vec::new();
        for p in self.peers.values_mut() {
            if p.hold_until.is_some_and(|t| now >= t) {
                p.hold_until = None;
                if let Path::Direct(addr) = p.path {
                    for b in p.hold.drain(..) {
                        if p.resend.len() >= RESEND_RING {
                            p.resend.pop_front();
                        }
                        p.resend.push_back((now, b.clone()));
                        flush.push((addr, b));
                    }
                }
            }
        }
        for (dst, payload) in flush {
            self.push(Output::Udp { dst, payload });
        }
    }
}

/// Until when new direct packets wait after an upgrade from the relay, so that the
/// data still in flight on the slower relay lands first: the last relay data packet
/// plus the difference of the one-way delays (`HOLD_MAX` while the relay's latency is
/// unknown). `None` when no data went through the relay: nothing to wait for.
fn relay_hold_until(peer: &Peer) -> Option<Instant> {
    let sent = peer.relay_data_at?;
    let hold = match (peer.relay_rtt, peer.direct_rtt) {
        (Some(r), d) => {
            (r.saturating_sub(d.unwrap_or_default()) / 2 + Duration::from_millis(5)).min(HOLD_MAX)
        }
        (None, _) => HOLD_MAX,
    };
    Some(sent + hold)
}

#[cfg(test)]
mod bridge_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_round_trips_and_rejects_garbage() {
        let s = Signal {
            candidates: vec![
                "192.0.2.1:51820".parse().unwrap(),
                "[2001:db8::1]:9".parse().unwrap(),
            ],
            nat: NatKind::Hard,
        };
        assert_eq!(Signal::decode(&s.encode()).unwrap(), s);
        assert!(Signal::decode(&[]).is_err());
        assert!(Signal::decode(&[2, 0, 0]).is_err());
        assert!(Signal::decode(&[1, 9, 0]).is_err());
        assert!(Signal::decode(&[1, 0, 9]).is_err());
        let mut long = s.encode();
        long.push(0);
        assert!(Signal::decode(&long).is_err());
    }

    #[test]
    fn signal_travels_as_json_too() {
        let s = Signal {
            candidates: vec!["192.0.2.1:51820".parse().unwrap()],
            nat: NatKind::Easy,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"candidates":["192.0.2.1:51820"],"nat":"easy"}"#);
        assert_eq!(serde_json::from_str::<Signal>(&j).unwrap(), s);
    }

    #[test]
    fn ipnet_contains_matches_prefixes() {
        let n = IpNet::new("100.64.0.0".parse().unwrap(), 10);
        assert!(n.contains("100.127.1.1".parse().unwrap()));
        assert!(!n.contains("100.128.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(IpNet::new("0.0.0.0".parse().unwrap(), 0).contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn probe_packets_are_recognised_and_ordinary_packets_are_not() {
        let p = probe_packet(PROBE_PING, 42);
        assert_eq!(parse_probe(&p), Some((PROBE_PING, 42)));
        let mut q = p.clone();
        q[9] = 17;
        assert_eq!(parse_probe(&q), None);
        assert_eq!(parse_probe(&p[..30]), None);
    }

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

    #[test]
    fn a_peer_moved_to_another_relay_keeps_its_session_and_uses_the_new_relay() {
        let now = Instant::now();
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
}
