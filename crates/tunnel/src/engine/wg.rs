//! The WireGuard side of the [`Node`]: packets from the application are encapsulated and
//! sent where the peer's path agent says; datagrams and relay frames are authenticated by
//! WireGuard, and what they carry is delivered, or handled here when it is a probe.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;
use gotatun::noise::TunnResult;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::packet::{Packet, WgKind};
use rand::Rng;

use super::path::{Route, Routed, Via};
use super::probe::{PROBE_PING, PROBE_PONG, ip_addrs, ip_total_len, parse_probe, probe_packet};
use super::{Event, MAX_IP_PACKET, Node, Output, Path, PeerId, RelayId, SendError};
use crate::frame::{Frame, MAX_PAYLOAD};
use crate::stun;

/// A WireGuard message's bytes, to send.
pub(super) fn to_vec(kind: WgKind) -> Vec<u8> {
    into_vec(kind.into())
}

/// A packet's bytes as a `Vec`: its own buffer when it holds the whole of
/// one (as gotatun's encapsulation and decryption leave it), so that a data
/// packet is neither allocated nor copied again; otherwise a copy.
fn into_vec(mut p: Packet) -> Vec<u8> {
    Vec::from(std::mem::take(p.buf_mut()))
}

/// The address a bridged datagram counts as for WireGuard's handshake rate limiter and
/// cookies: one per (relay, tag), i.e. per client endpoint, so one noisy client cannot use
/// up another's handshake budget. A unique-local IPv6 address that is never routed.
pub(super) fn bridge_pseudo_addr(relay: RelayId, tag: u64) -> SocketAddr {
    let ip = (0xfd00_u128 << 112) | (u128::from(relay) << 64) | u128::from(tag);
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), 0)
}

impl Node {
    pub(super) fn register_idx(&mut self, id: PeerId, kind: &WgKind) {
        let idx = match kind {
            WgKind::HandshakeInit(p) => p.sender_idx.get(),
            WgKind::HandshakeResp(p) => p.sender_idx.get(),
            _ => return,
        };
        self.by_idx.insert(idx, id);
    }

    /// The peer a verified WireGuard packet belongs to: the initiation's static key, or our
    /// receiver index.
    fn peer_of(&self, kind: &WgKind) -> Option<PeerId> {
        match kind {
            WgKind::HandshakeInit(p) => parse_handshake_anon(&self.secret, &self.public, p)
                .ok()
                .map(|h| h.peer_static_public),
            WgKind::HandshakeResp(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::CookieReply(p) => self.by_idx.get(&p.receiver_idx.get()).copied(),
            WgKind::Data(p) => self.by_idx.get(&p.header.receiver_idx.get()).copied(),
        }
    }

    // ---- application side ----

    /// An IP packet from the application, routed by destination over the peers' allowed IPs.
    pub fn send_ip(&mut self, now: std::time::Instant, packet: &[u8]) -> Result<(), SendError> {
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
        now: std::time::Instant,
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
    pub fn handle_udp(&mut self, now: std::time::Instant, from: SocketAddr, data: &[u8]) {
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
                self.transmit(Output::Udp {
                    dst: from,
                    payload: to_vec(cookie),
                });
                return;
            }
            Err(_) => return,
        };
        // A bridged client is reached only through the relay's bridge.
        let Some(id) = self
            .peer_of(&kind)
            .filter(|id| self.peers.get(id).is_some_and(|p| !p.agent.bridged()))
        else {
            return;
        };
        self.handle_wg(id, kind, Via::Udp(from));
    }

    /// A frame arrived on relay connection `relay`.
    pub fn handle_relay_frame(&mut self, now: std::time::Instant, relay: RelayId, frame: &[u8]) {
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
        if self
            .peers
            .get(&peer)
            .is_none_or(|p| p.agent.probe_relay() != Some(relay))
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
                    self.transmit(Output::Relay { relay, frame });
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
                    self.transmit(Output::Relay { relay, frame });
                }
                return;
            }
            Err(_) => return,
        };
        let Some(id) = self.peer_of(&kind).filter(|id| {
            self.peers
                .get(id)
                .is_some_and(|p| p.agent.bridged() && p.agent.relay() == Some(relay))
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
            && peer.agent.bridge_endpoint(tag)
        {
            tracing::debug!(peer = %hex::encode(&id[..4]), tag, "bridged client endpoint");
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
                    && self
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.agent.path() == Path::Relay)
                {
                    self.transmit(Output::Udp {
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
                    self.inner_packet(id, into_vec(packet), via);
                }
            }
        }
        if authenticated && is_handshake {
            if let Some(p) = self.peers.get_mut(&id) {
                p.last_handshake = Some(now);
                p.agent.on_handshake(now);
            }
            self.event(Event::HandshakeCompleted { peer: id });
        }
    }

    fn inner_packet(&mut self, id: PeerId, mut packet: Vec<u8>, via: Via) {
        // WireGuard pads to 16 bytes: cut back to the IP length; drop what is not IP.
        let Some(len) = ip_total_len(&packet) else {
            if let Some(p) = self.peers.get_mut(&id) {
                p.drops += 1;
            }
            return;
        };
        packet.truncate(len);
        if let Some((kind, nonce)) = parse_probe(&packet) {
            self.probe(id, kind, nonce, via);
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.allowed_ips.is_empty() {
            let ok = ip_addrs(&packet)
                .map(|(src, _)| peer.allowed_ips.iter().any(|n| n.contains(src)))
                .unwrap_or(false);
            if !ok {
                peer.drops += 1;
                return;
            }
        }
        peer.rx_bytes += packet.len() as u64;
        self.transmit(Output::Deliver { peer: id, packet });
    }

    /// A ping or pong from the peer, authenticated by its session.
    fn probe(&mut self, id: PeerId, kind: u8, nonce: u64, via: Via) {
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
                        self.send_inner_udp(id, from, &pong);
                        // A ping from an address we are not using (peer-reflexive
                        // candidate, or the peer roamed): probe it ourselves.
                        if self
                            .peers
                            .get(&id)
                            .is_some_and(|p| p.agent.should_probe(from))
                        {
                            self.ping_udp(id, from);
                        }
                    }
                    Via::Relay => {
                        self.send_inner_relay(id, &pong);
                    }
                    Via::Bridge(_) => {}
                }
            }
            PROBE_PONG => {
                let now = self.now;
                let switched = self
                    .peers
                    .get_mut(&id)
                    .and_then(|p| p.agent.on_pong(now, nonce, via));
                if let Some(path) = switched {
                    tracing::debug!(peer = %hex::encode(&id[..4]), %path, "path: direct");
                    self.event(Event::PathChanged {
                        peer: id,
                        path,
                        reason: super::PathReason::DirectOk,
                    });
                }
            }
            _ => {}
        }
    }

    /// Sends one WireGuard packet on the peer's current path.
    pub(super) fn send_wg(&mut self, id: PeerId, bytes: Vec<u8>, is_data: bool) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let (route, bytes) = match peer.agent.route(now, bytes, is_data) {
            Routed::Send(route, bytes) => (route, bytes),
            Routed::Held => return,
            Routed::Dropped => {
                peer.drops += 1;
                return;
            }
        };
        match route {
            Route::Udp(dst) => self.transmit(Output::Udp {
                dst,
                payload: bytes,
            }),
            Route::Bridge { relay, tag } => {
                match (Frame::Bridge {
                    tag,
                    payload: &bytes,
                })
                .encode()
                {
                    Ok(frame) => self.transmit(Output::Relay { relay, frame }),
                    Err(_) => peer.drops += 1,
                }
            }
            Route::Relay { relay, also } => {
                match (Frame::Data {
                    peer: id,
                    payload: &bytes,
                })
                .encode()
                {
                    Ok(frame) => self.transmit(Output::Relay { relay, frame }),
                    Err(_) => peer.drops += 1,
                }
                for dst in also {
                    self.transmit(Output::Udp {
                        dst,
                        payload: bytes.clone(),
                    });
                }
            }
            Route::Fanout(dsts) => {
                for dst in dsts {
                    self.transmit(Output::Udp {
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
            self.transmit(Output::Udp { dst, payload: b });
        }
    }

    fn send_inner_relay(&mut self, id: PeerId, inner: &[u8]) -> bool {
        let Some(relay) = self.peers.get(&id).and_then(|p| p.agent.probe_relay()) else {
            return false;
        };
        if let Some(b) = self.encapsulate_inner(id, inner)
            && let Ok(frame) = (Frame::Data {
                peer: id,
                payload: &b,
            })
            .encode()
        {
            self.transmit(Output::Relay { relay, frame });
            return true;
        }
        false
    }

    /// A fresh ping for the peer (a nonce from the node's RNG), remembered by its agent.
    fn new_ping(&mut self, id: PeerId, to: Option<SocketAddr>) -> Option<Vec<u8>> {
        let nonce: u64 = self.rng.r#gen();
        let now = self.now;
        self.peers.get_mut(&id)?.agent.ping_sent(now, nonce, to);
        Some(probe_packet(PROBE_PING, nonce))
    }

    pub(super) fn ping_udp(&mut self, id: PeerId, addr: SocketAddr) {
        if let Some(p) = self.new_ping(id, Some(addr)) {
            self.send_inner_udp(id, addr, &p);
        }
    }

    /// Pings the peer through its relay; whether the ping went.
    pub(super) fn ping_relay(&mut self, id: PeerId) -> bool {
        match self.new_ping(id, None) {
            Some(p) => self.send_inner_relay(id, &p),
            None => false,
        }
    }
}
