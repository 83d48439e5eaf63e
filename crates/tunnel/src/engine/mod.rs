//! The sans-IO peer engine: one WireGuard identity, one UDP socket, zero or more relays,
//! many peers.
//!
//! Inputs: [`Node::handle_udp`], [`Node::handle_relay_frame`], [`Node::send_ip`],
//! [`Node::handle_signal`], [`Node::handle_timeout`] — each with the current `Instant`.
//! Outputs: drained with [`Node::poll_output`]; the next wake-up is [`Node::poll_timeout`].
//! Nothing here touches a socket, a clock or a task.
//!
//! The parts, each its own module with its own tests:
//! - `path`: one peer's path state machine ([`PathAgent`](path::PathAgent)): relay or
//!   direct, pings and pongs, switching, the hold after an upgrade, the re-send after a
//!   direct path dies.
//! - `nat`: STUN against the configured servers, candidates and NAT classification.
//! - `signal`: the candidate [`Signal`] and its codec.
//! - `probe`: the probe packet carried inside WireGuard.
//! - `outbox`: the output queues; transmits and control (events, signals) never share one.
//! - `wg`: the WireGuard side of the [`Node`] (decapsulation, encapsulation, sending on
//!   the path the agent chose); this file is the node that dispatches.
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
//! this node as [`Frame::Bridge`](crate::frame::Frame::Bridge) frames tagged with the
//! client's endpoint. Such a peer has exactly one path (the relay it is configured on),
//! answers go back as Bridge frames with the tag of the latest authenticated packet
//! (WireGuard's roaming rule), and nothing of ours (probes, relay pings, candidates, direct
//! attempts) is ever sent to it.

mod nat;
mod outbox;
mod path;
mod probe;
mod signal;
mod types;
mod wg;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gotatun::noise::Tunn;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::packet::WgKind;
use gotatun::tun::MtuWatcher;
use gotatun::x25519::{PublicKey, StaticSecret};
use mock_instant::thread_local::MockClock;
use rand::{Rng, SeedableRng};
use rand_09::SeedableRng as _;

use crate::frame::MAX_PAYLOAD;
use nat::NatProbe;
use outbox::Outbox;
use path::{Action, PathAgent};

pub use probe::ip_addrs;
pub use signal::{NatKind, Signal, SignalError};
pub use types::{
    Event, IpNet, NodeConfig, Output, Path, PathReason, PeerConfig, PeerError, PeerStats, SendError,
};

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

const DEFAULT_MTU: u16 = 1420;
/// Most allowed-IP prefixes kept per peer.
const MAX_ALLOWED_IPS: usize = 64;

struct Peer {
    id: PeerId,
    tunn: Tunn<rand_09::rngs::StdRng>,
    allowed_ips: Vec<IpNet>,
    /// Which way its packets go, and everything that decides it.
    agent: PathAgent,
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
    nat: NatProbe,
    out: Outbox,
    mtu: MtuWatcher,
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
        let nat = NatProbe::new(&config.stun_servers, config.local_addrs, now, &mut rng);
        Node {
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
            nat,
            out: Outbox::default(),
            mtu: MtuWatcher::new(DEFAULT_MTU),
        }
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> PeerId {
        *self.public.as_bytes()
    }

    /// This node's current candidates and NAT kind.
    pub fn local_signal(&self) -> Signal {
        self.nat.signal()
    }

    fn set_time(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        MockClock::set_time(self.now.duration_since(self.epoch));
    }

    fn transmit(&mut self, o: Output) {
        self.out.transmit(o);
    }

    fn event(&mut self, e: Event) {
        self.out.event(e);
    }

    /// Next thing to do, if any: events and candidate signals first (they have their own
    /// queue, which data can never fill), then datagrams, relay frames and deliveries in
    /// the order they were produced.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        for p in self.peers.values() {
            if let Some(h) = p.agent.wake_at() {
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
        let mut peer = Peer {
            id: cfg.public_key,
            tunn,
            allowed_ips: cfg.allowed_ips.into_iter().take(MAX_ALLOWED_IPS).collect(),
            agent: PathAgent::new(now, cfg.relay, cfg.bridged),
            tx_bytes: 0,
            rx_bytes: 0,
            last_handshake: None,
            drops: 0,
        };
        let id = peer.id;
        if cfg.bridged {
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
            self.send_wg(id, wg::to_vec(kind), false);
        }
        let signal = self.local_signal();
        self.out.signal(id, signal);
        Ok(())
    }

    /// Moves a peer to another relay connection (or none) without touching its session,
    /// e.g. when the control plane reassigns the session to another relay.
    pub fn set_peer_relay(&mut self, now: Instant, id: &PeerId, relay: Option<RelayId>) {
        self.set_time(now);
        if let Some(peer) = self.peers.get_mut(id) {
            peer.agent.set_relay(now, relay);
        }
    }

    /// Forgets a peer.
    pub fn remove_peer(&mut self, id: &PeerId) {
        if self.peers.remove(id).is_some() {
            self.by_idx.retain(|_, p| p != id);
            self.out.forget_peer(id);
        }
    }

    /// Current report for one peer.
    pub fn peer_stats(&self, id: &PeerId) -> Option<PeerStats> {
        let p = self.peers.get(id)?;
        Some(PeerStats {
            path: p.agent.path(),
            reason: p.agent.reason(),
            rtt: p.agent.rtt(),
            tx_bytes: p.tx_bytes,
            rx_bytes: p.rx_bytes,
            last_handshake: p.last_handshake,
            drops: p.drops,
            remote_nat: p.agent.remote_nat(),
        })
    }

    /// Known peers.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// The NAT kind STUN measured.
    pub fn nat(&self) -> NatKind {
        self.nat.nat()
    }

    /// Candidates for a peer, from the control plane.
    pub fn handle_signal(&mut self, now: Instant, id: &PeerId, signal: Signal) {
        self.set_time(now);
        // A bridged client has no candidates of ours to use, nor we of its.
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if !peer.agent.on_signal(now, signal) {
            return;
        }
        if peer.agent.path() == Path::None && peer.last_handshake.is_none() {
            // Relay-less peer: the handshake can go out now that we know where to.
            if let Some(init) = peer.tunn.format_handshake_initiation(true) {
                let kind: WgKind = init.into();
                let id = *id;
                self.register_idx(id, &kind);
                self.send_wg(id, wg::to_vec(kind), false);
            }
        }
    }

    /// Our candidates or NAT kind changed: every peer that speaks our protocol is told.
    fn signal_all(&mut self) {
        let signal = self.local_signal();
        let ids: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| !p.agent.bridged())
            .map(|p| p.id)
            .collect();
        for peer in ids {
            self.out.signal(peer, signal.clone());
        }
    }

    /// A STUN datagram arrived on the node's socket.
    fn handle_stun(&mut self, from: SocketAddr, data: &[u8]) {
        let Some(mapped) = self.nat.handle_response(self.now, from, data) else {
            return;
        };
        if mapped.signal_changed {
            self.signal_all();
        }
        self.event(Event::PublicEndpoint {
            addr: mapped.addr,
            nat: self.nat.nat(),
        });
    }

    /// A relay connection (re)connected: peers on it without a session handshake now
    /// instead of waiting for WireGuard's retry timer.
    pub fn relay_connected(&mut self, now: Instant, relay: RelayId) {
        self.set_time(now);
        let ids: Vec<PeerId> = self
            .peers
            .values()
            // A bridged client is answered, not called: it initiates through the bridge.
            .filter(|p| p.agent.relay() == Some(relay) && !p.agent.bridged())
            .map(|p| p.id)
            .collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.agent.relay_reconnected(now);
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
                self.send_wg(id, wg::to_vec(kind), false);
            }
        }
    }

    /// Local addresses changed (e.g. the driver rebound its socket).
    pub fn set_local_addrs(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        self.set_time(now);
        if self.nat.set_local_addrs(now, addrs) {
            self.signal_all();
        }
    }

    // ---- timers ----

    /// Drives timers: WireGuard's, STUN, probing, path liveness, holds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_time(now);
        let now = self.now;
        if now >= self.next_tick {
            self.next_tick = now + path::TICK;
            let (requests, changed) = self.nat.poll(now, &mut self.rng);
            for (dst, payload) in requests {
                self.transmit(Output::Udp { dst, payload });
            }
            if changed {
                self.signal_all();
            }
            // Forget last second's per-source handshake counts (bounded by traffic, and
            // bridged clients each count under their own pseudo address).
            self.rate_limiter.try_reset_count();
            self.by_idx.retain(|idx, _| self.index_table.in_use(*idx));
            let ids: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in ids {
                self.tick_peer(id);
            }
        }
        // Between ticks: relay pings that a guessed hold waits for.
        let due: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.agent.hold_ping_due(now).then_some(*id))
            .collect();
        for id in due {
            if self.ping_relay(id)
                && let Some(p) = self.peers.get_mut(&id)
            {
                p.agent.relay_ping_sent(now);
            }
        }
        self.flush_holds();
    }

    fn tick_peer(&mut self, id: PeerId) {
        let now = self.now;
        // WireGuard timers.
        let timer = self.peers.get_mut(&id).map(|p| p.tunn.update_timers());
        if let Some(Ok(Some(pkt))) = timer {
            let is_data = matches!(pkt, WgKind::Data(_));
            self.register_idx(id, &pkt);
            self.send_wg(id, wg::to_vec(pkt), is_data);
        }
        let local_nat = self.nat.nat();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        for action in peer.agent.tick(now, local_nat) {
            match action {
                Action::PingRelay => {
                    if self.ping_relay(id)
                        && let Some(p) = self.peers.get_mut(&id)
                    {
                        p.agent.relay_ping_sent(now);
                    }
                }
                Action::PingUdp(addr) => self.ping_udp(id, addr),
                Action::FellBack {
                    path,
                    reason,
                    replay,
                } => {
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
            }
        }
    }

    fn flush_holds(&mut self) {
        let now = self.now;
        let mut flush = Vec::new();
        for p in self.peers.values_mut() {
            if let Some((addr, held)) = p.agent.flush_hold(now) {
                flush.extend(held.into_iter().map(|b| (addr, b)));
            }
        }
        for (dst, payload) in flush {
            self.transmit(Output::Udp { dst, payload });
        }
    }
}

#[cfg(test)]
mod bridge_tests;
#[cfg(test)]
mod tests;
