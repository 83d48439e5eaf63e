//! One peer's path state machine: which way its WireGuard packets go (relay, direct or
//! nowhere yet), the pings and pongs that find and keep a direct path, switching between the
//! two, the hold after an upgrade and the re-send through the relay after a direct path dies.
//!
//! Sans-IO and WireGuard-agnostic: packets are opaque bytes here. The node asks [`PathAgent::route`]
//! where a packet goes, feeds it pongs ([`PathAgent::on_pong`]), signals and handshakes, and
//! carries out what [`PathAgent::tick`] asks for (pings, a fall-back with packets to re-send).
//! Nonces come from the node (its seeded RNG); the agent only remembers them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{MAX_CANDIDATES, NatKind, Path, PathReason, RelayId, Signal};
use crate::wgmac::HANDSHAKE_INIT_LEN;

pub(super) const TICK: Duration = Duration::from_millis(100);
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

/// Where an authenticated packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Udp(SocketAddr),
    Relay,
    /// Through the relay's UDP bridge, from the client endpoint this tag names.
    Bridge(u64),
}

/// Where one WireGuard packet goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Straight over UDP.
    Udp(SocketAddr),
    /// In a DATA frame on `relay`, and (a handshake initiation) also to `also` over UDP.
    Relay {
        relay: RelayId,
        also: Vec<SocketAddr>,
    },
    /// In a BRIDGE frame on `relay`, to the client endpoint `tag`.
    Bridge { relay: RelayId, tag: u64 },
    /// Over UDP to each of these (a handshake with no confirmed path yet).
    Fanout(Vec<SocketAddr>),
}

/// What became of a packet handed to [`PathAgent::route`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Routed {
    Send(Route, Vec<u8>),
    /// Kept until the hold after an upgrade ends.
    Held,
    /// Nowhere to send it (or the hold queue is full).
    Dropped,
}

/// What the node must do for the agent after a [`PathAgent::tick`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Send a ping through the relay (then call [`PathAgent::relay_ping_sent`] if it went).
    PingRelay,
    /// Send a ping to this address over UDP.
    PingUdp(SocketAddr),
    /// The direct path died: re-send `replay` on the new path, then report the change.
    FellBack {
        path: Path,
        reason: PathReason,
        replay: Vec<Vec<u8>>,
    },
}

/// The path state of one peer.
#[derive(Debug)]
pub(super) struct PathAgent {
    relay: Option<RelayId>,
    /// A standard WireGuard client behind the relay's UDP bridge: one path, no probes.
    bridged: bool,
    /// The bridge tag of the client's endpoint, from the latest authenticated packet.
    pub(super) bridge_tag: Option<u64>,
    path: Path,
    reason: PathReason,
    remote_candidates: Vec<SocketAddr>,
    remote_nat: NatKind,
    /// Outstanding pings: nonce -> (address or None for relay, sent at).
    pub(super) pings: BTreeMap<u64, (Option<SocketAddr>, Instant)>,
    pub(super) next_probe: Option<Instant>,
    probe_round: u32,
    direct_last_pong: Option<Instant>,
    direct_last_ping: Option<Instant>,
    direct_rtt: Option<Duration>,
    relay_rtt: Option<Duration>,
    pub(super) next_relay_ping: Option<Instant>,
    hold_until: Option<Instant>,
    hold: VecDeque<Vec<u8>>,
    /// When the last data packet left through the relay (what a hold waits for).
    relay_data_at: Option<Instant>,
    resend: VecDeque<(Instant, Vec<u8>)>,
}

impl PathAgent {
    pub fn new(now: Instant, relay: Option<RelayId>, bridged: bool) -> Self {
        PathAgent {
            relay,
            bridged,
            bridge_tag: None,
            path: if relay.is_some() {
                Path::Relay
            } else {
                Path::None
            },
            reason: match (relay.is_some(), bridged) {
                (false, _) => PathReason::NoPath,
                (true, true) => PathReason::Bridged,
                (true, false) => PathReason::AwaitingCandidates,
            },
            remote_candidates: Vec::new(),
            remote_nat: NatKind::Unknown,
            pings: BTreeMap::new(),
            next_probe: None,
            probe_round: 0,
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
        }
    }

    pub fn path(&self) -> Path {
        self.path
    }
    pub fn reason(&self) -> PathReason {
        self.reason
    }
    pub fn relay(&self) -> Option<RelayId> {
        self.relay
    }
    pub fn bridged(&self) -> bool {
        self.bridged
    }
    pub fn remote_nat(&self) -> NatKind {
        self.remote_nat
    }
    /// Round-trip time on the current path, when measured.
    pub fn rtt(&self) -> Option<Duration> {
        match self.path {
            Path::Direct(_) => self.direct_rtt,
            _ => self.relay_rtt,
        }
    }
    /// When the hold after an upgrade ends (the node wakes at [`PathAgent::wake_at`]).
    #[cfg(test)]
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
    }

    /// Whether a hold waits for the relay's latency to be measured.
    fn hold_needs_relay_rtt(&self) -> bool {
        self.hold_until.is_some() && self.relay_rtt.is_none() && self.relay.is_some()
    }

    /// Whether a relay ping that a guessed hold waits for is due now (then the
    /// next one is not before a tick from now, whether this one goes or not).
    pub fn hold_ping_due(&mut self, now: Instant) -> bool {
        if self.hold_needs_relay_rtt() && self.next_relay_ping.is_some_and(|t| now >= t) {
            self.next_relay_ping = Some(now + TICK);
            return true;
        }
        false
    }

    /// When the node must be woken before its regular tick: the hold's end, or
    /// a relay ping that a guessed hold waits for ([`PathAgent::hold_ping_due`]).
    pub fn wake_at(&self) -> Option<Instant> {
        let ping = self.next_relay_ping.filter(|_| self.hold_needs_relay_rtt());
        match (self.hold_until, ping) {
            (Some(h), Some(p)) => Some(h.min(p)),
            (h, p) => h.or(p),
        }
    }
    /// The relay that carries our probes (none for a bridged client).
    pub fn probe_relay(&self) -> Option<RelayId> {
        self.relay.filter(|_| !self.bridged)
    }

    /// The peer moved to another relay connection (or none).
    pub fn set_relay(&mut self, now: Instant, relay: Option<RelayId>) {
        if self.relay != relay {
            // A bridge tag is meaningful only on the relay that chose it.
            self.bridge_tag = None;
        }
        self.relay = relay;
        self.relay_rtt = None;
        self.next_relay_ping = (!self.bridged).then_some(now);
        match (self.path, relay) {
            (Path::Relay, None) => self.path = Path::None,
            (Path::None, Some(_)) => self.path = Path::Relay,
            _ => {}
        }
    }

    /// The peer's relay connection came (back) up: measure it again now.
    pub fn relay_reconnected(&mut self, now: Instant) {
        self.next_relay_ping = Some(now);
    }

    /// An authenticated packet came through the bridge from endpoint `tag` (WireGuard's
    /// roaming: answers go there from now on). Returns whether the endpoint changed.
    pub fn bridge_endpoint(&mut self, tag: u64) -> bool {
        let changed = self.bridge_tag != Some(tag);
        self.bridge_tag = Some(tag);
        changed
    }

    /// The peer's candidates arrived. Returns `false` (ignored) for a bridged client.
    pub fn on_signal(&mut self, now: Instant, signal: Signal) -> bool {
        if self.bridged {
            return false;
        }
        let mut cands: Vec<SocketAddr> = Vec::new();
        for c in signal.candidates {
            if c.port() != 0 && !c.ip().is_unspecified() && !cands.contains(&c) {
                cands.push(c);
            }
            if cands.len() >= MAX_CANDIDATES {
                break;
            }
        }
        self.remote_candidates = cands;
        self.remote_nat = signal.nat;
        if !matches!(self.path, Path::Direct(_)) {
            self.probe_round = 0;
            self.next_probe = Some(now);
        }
        true
    }

    /// A handshake completed: measure the relay and probe at once.
    pub fn on_handshake(&mut self, now: Instant) {
        // Measure the relay as soon as there is a session (needed for a clean upgrade).
        if self.relay_rtt.is_none() && !self.bridged {
            self.next_relay_ping = Some(now);
        }
        // A fresh session: probe right away if we know where to.
        if !matches!(self.path, Path::Direct(_)) && !self.remote_candidates.is_empty() {
            self.next_probe = Some(now);
        }
    }

    /// Remembers a ping with `nonce` sent to `to` (`None`: through the relay). The oldest
    /// outstanding pings are forgotten beyond the bound.
    pub fn ping_sent(&mut self, now: Instant, nonce: u64, to: Option<SocketAddr>) {
        while self.pings.len() >= MAX_PENDING_PINGS {
            let Some(oldest) = self
                .pings
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.pings.remove(&oldest);
        }
        self.pings.insert(nonce, (to, now));
    }

    /// The relay ping of this tick went out: the next one in [`RELAY_PING_INTERVAL`].
    pub fn relay_ping_sent(&mut self, now: Instant) {
        self.next_relay_ping = Some(now + RELAY_PING_INTERVAL);
    }

    /// A ping arrived over UDP from `from`: whether to probe that address ourselves (a
    /// peer-reflexive candidate, or the peer roamed).
    pub fn should_probe(&self, from: SocketAddr) -> bool {
        self.path != Path::Direct(from) && !self.pings.values().any(|(a, _)| *a == Some(from))
    }

    /// A pong for `nonce` arrived `via`. Returns the new path when it switched to direct.
    pub fn on_pong(&mut self, now: Instant, nonce: u64, via: Via) -> Option<Path> {
        let (to, sent) = self.pings.remove(&nonce)?;
        let rtt = now.saturating_duration_since(sent);
        match (to, via) {
            (None, Via::Relay) => {
                self.relay_rtt = Some(rtt);
                // A hold guessed without the relay's latency shrinks to the real need.
                if self.hold_until.is_some() {
                    self.hold_until = self.hold_until.min(self.relay_hold_until());
                }
                None
            }
            (Some(addr), Via::Udp(from)) if addr == from => {
                if rtt > PING_VALID {
                    return None;
                }
                self.direct_rtt = Some(rtt);
                if self.path == Path::Direct(addr) {
                    self.direct_last_pong = Some(now);
                    None
                } else {
                    self.switch_to_direct(now, addr);
                    Some(self.path)
                }
            }
            _ => None,
        }
    }

    fn switch_to_direct(&mut self, now: Instant, addr: SocketAddr) {
        let was_relay = self.path == Path::Relay;
        self.path = Path::Direct(addr);
        self.reason = PathReason::DirectOk;
        self.direct_last_pong = Some(now);
        self.direct_last_ping = Some(now);
        self.resend.clear();
        if was_relay {
            self.hold_until = self.relay_hold_until().filter(|t| *t > now);
            // A hold guessed without the relay's latency (`HOLD_MAX`): measure
            // the relay now, so that its pong shrinks the hold to the real need.
            if self.hold_until.is_some() && self.relay_rtt.is_none() {
                self.next_relay_ping = Some(now);
            }
        }
    }

    /// Leaves a direct path for the relay (or none). Returns the new path and what to
    /// re-send on it; `None` when not on a direct path.
    pub fn fall_back(&mut self, now: Instant, reason: PathReason) -> Option<(Path, Vec<Vec<u8>>)> {
        let Path::Direct(_) = self.path else {
            return None;
        };
        self.path = if self.relay.is_some() {
            Path::Relay
        } else {
            Path::None
        };
        self.reason = reason;
        self.pings.clear();
        self.probe_round = 0;
        self.next_probe = Some(now + PROBE_FAST_INTERVAL);
        // Re-send through the relay what may have been lost on the dead path, oldest first;
        // the receiver's replay window discards what had arrived.
        let horizon = DIRECT_TIMEOUT + Duration::from_secs(1);
        let mut replay: Vec<Vec<u8>> = self
            .resend
            .drain(..)
            .filter(|(t, _)| now.saturating_duration_since(*t) <= horizon)
            .map(|(_, p)| p)
            .collect();
        replay.extend(self.hold.drain(..));
        self.hold_until = None;
        Some((self.path, replay))
    }

    /// Until when new direct packets wait after an upgrade from the relay, so that the
    /// data still in flight on the slower relay lands first: the last relay data packet
    /// plus the difference of the one-way delays (`HOLD_MAX` while the relay's latency is
    /// unknown). `None` when no data went through the relay: nothing to wait for.
    fn relay_hold_until(&self) -> Option<Instant> {
        let sent = self.relay_data_at?;
        let hold = match (self.relay_rtt, self.direct_rtt) {
            (Some(r), d) => (r.saturating_sub(d.unwrap_or_default()) / 2
                + Duration::from_millis(5))
            .min(HOLD_MAX),
            (None, _) => HOLD_MAX,
        };
        Some(sent + hold)
    }

    fn remember_for_resend(&mut self, now: Instant, bytes: &[u8]) {
        if self.resend.len() >= RESEND_RING {
            self.resend.pop_front();
        }
        self.resend.push_back((now, bytes.to_vec()));
    }

    /// Where one WireGuard packet goes on the current path.
    pub fn route(&mut self, now: Instant, bytes: Vec<u8>, is_data: bool) -> Routed {
        match self.path {
            Path::Direct(addr) => {
                if self.hold_until.is_some_and(|t| now < t) {
                    if self.hold.len() < HOLD_QUEUE {
                        self.hold.push_back(bytes);
                        return Routed::Held;
                    }
                    return Routed::Dropped;
                }
                if is_data {
                    self.remember_for_resend(now, &bytes);
                }
                Routed::Send(Route::Udp(addr), bytes)
            }
            Path::Relay if self.bridged => {
                // Plain WireGuard to the client's endpoint, through the relay's bridge. No tag
                // yet (the client has not written): nowhere to send it.
                match (self.relay, self.bridge_tag) {
                    (Some(relay), Some(tag)) => Routed::Send(Route::Bridge { relay, tag }, bytes),
                    _ => Routed::Dropped,
                }
            }
            Path::Relay => {
                let Some(relay) = self.relay else {
                    return Routed::Dropped;
                };
                if is_data {
                    self.relay_data_at = Some(now);
                }
                // Handshake initiations also go to the peer's candidates: if the relay is
                // down the session can still form directly. The duplicate is harmless
                // (WireGuard rejects a replayed initiation timestamp).
                let also =
                    if !is_data && bytes.first() == Some(&1) && bytes.len() == HANDSHAKE_INIT_LEN {
                        self.remote_candidates.clone()
                    } else {
                        Vec::new()
                    };
                Routed::Send(Route::Relay { relay, also }, bytes)
            }
            Path::None => {
                // No relay and no confirmed direct path yet: handshakes go to every
                // candidate so a session can form; data waits for a confirmed path.
                if is_data || self.remote_candidates.is_empty() {
                    return Routed::Dropped;
                }
                Routed::Send(Route::Fanout(self.remote_candidates.clone()), bytes)
            }
        }
    }

    /// The hold ended: the held packets go to the direct address now.
    pub fn flush_hold(&mut self, now: Instant) -> Option<(SocketAddr, Vec<Vec<u8>>)> {
        if self.hold_until.is_none_or(|t| now < t) {
            return None;
        }
        self.hold_until = None;
        let Path::Direct(addr) = self.path else {
            return None;
        };
        let held: Vec<Vec<u8>> = self.hold.drain(..).collect();
        for b in &held {
            self.remember_for_resend(now, b);
        }
        Some((addr, held))
    }

    /// Timers: pings due, probing rounds, the reason shown, direct-path liveness.
    /// `local_nat` is the node's own NAT kind.
    pub fn tick(&mut self, now: Instant, local_nat: NatKind) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.bridged {
            // Only WireGuard's own timers: no pings, probes or path changes.
            self.reason = if self.relay.is_some() {
                PathReason::Bridged
            } else {
                PathReason::NoPath
            };
            return actions;
        }
        self.pings
            .retain(|_, (_, t)| now.saturating_duration_since(*t) <= PING_VALID);
        match self.path {
            Path::Direct(addr) => {
                let last = self.direct_last_pong.unwrap_or(now);
                if now.saturating_duration_since(last) > DIRECT_TIMEOUT {
                    if let Some((path, replay)) = self.fall_back(now, PathReason::DirectLost) {
                        actions.push(Action::FellBack {
                            path,
                            reason: PathReason::DirectLost,
                            replay,
                        });
                    }
                    return actions;
                }
                // On the direct path the relay is measured only for a hold that
                // guessed its latency (the upgrade came before the relay's pong).
                if self.hold_ping_due(now) {
                    actions.push(Action::PingRelay);
                }
                if self
                    .direct_last_ping
                    .is_none_or(|t| now.saturating_duration_since(t) >= DIRECT_KEEPALIVE)
                {
                    self.direct_last_ping = Some(now);
                    actions.push(Action::PingUdp(addr));
                }
            }
            Path::Relay | Path::None => {
                if self.next_relay_ping.is_some_and(|t| now >= t) && self.relay.is_some() {
                    // Without a session yet, try again on the next tick
                    // (`relay_ping_sent` pushes this out when the ping went).
                    self.next_relay_ping = Some(now + TICK);
                    actions.push(Action::PingRelay);
                }
                if self.remote_candidates.is_empty() {
                    if self.reason != PathReason::DirectLost {
                        self.reason = if local_nat == NatKind::UdpBlocked {
                            PathReason::UdpBlocked
                        } else if self.path == Path::None {
                            PathReason::NoPath
                        } else {
                            PathReason::AwaitingCandidates
                        };
                    }
                    return actions;
                }
                let probe_now = self.next_probe.is_some_and(|t| now >= t);
                if probe_now {
                    self.probe_round = self.probe_round.saturating_add(1);
                    let fast = self.probe_round <= PROBE_FAST_ROUNDS;
                    self.next_probe = Some(
                        now + if fast {
                            PROBE_FAST_INTERVAL
                        } else {
                            PROBE_SLOW_INTERVAL
                        },
                    );
                }
                // The reason follows what is known now (every tick, not only at a probe:
                // a NAT classification that arrives after the fast rounds shows at once).
                let fast = self.probe_round <= PROBE_FAST_ROUNDS;
                if self.probe_round > 0 && (self.reason != PathReason::DirectLost || !fast) {
                    self.reason = if local_nat == NatKind::UdpBlocked
                        || self.remote_nat == NatKind::UdpBlocked
                    {
                        PathReason::UdpBlocked
                    } else if fast {
                        PathReason::Probing
                    } else if local_nat == NatKind::Hard && self.remote_nat == NatKind::Hard {
                        PathReason::SymmetricNatBothSides
                    } else {
                        PathReason::NoDirectAnswer
                    };
                }
                if probe_now {
                    actions.extend(self.remote_candidates.iter().map(|c| Action::PingUdp(*c)));
                }
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests;
