//! A deterministic in-memory network for tests: virtual time, seeded randomness, no sockets.
//!
//! Two hosts run one [`Node`] each, optionally behind a NAT. Two STUN servers (at different
//! public addresses), a relay and a "control plane" that carries signals complete the picture.
//! The relay is the real relay's [`Switchboard`]: the hosts are admitted with grants naming
//! each other in one session, and every DATA frame is routed (or dropped) by its rules.
//! All addresses here are simulated values; nothing ever reaches a real socket.
//!
//! NAT models (RFC 4787 terms):
//! - [`NatType::EndpointIndependent`]: endpoint-independent mapping, address-dependent
//!   filtering (a "restricted cone").
//! - [`NatType::AddressDependent`]: address-dependent mapping and filtering.
//! - [`NatType::Symmetric`]: address-and-port-dependent mapping and filtering.
//! - [`NatType::UdpBlocked`]: every UDP datagram is dropped; only the relay works.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use drawbridge_relay::switchboard::{Grant, Switchboard};
use drawbridge_tunnel::engine::{
    Event, IpNet, Node, NodeConfig, Output, PeerConfig, PeerId, PeerStats, Signal,
};
use drawbridge_tunnel::frame::Frame;
use drawbridge_tunnel::stun;

/// How a host is attached to the (simulated) internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatType {
    /// A public address, no NAT.
    None,
    EndpointIndependent,
    AddressDependent,
    Symmetric,
    UdpBlocked,
}

/// Link properties.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// One-way delay of a UDP datagram between any two public endpoints.
    pub udp_delay: Duration,
    /// One-way delay through the relay (host → relay → host).
    pub relay_delay: Duration,
    /// Probability of losing a UDP datagram.
    pub loss: f64,
    /// Delay of a signal through the control plane.
    pub signal_delay: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            udp_delay: Duration::from_millis(10),
            relay_delay: Duration::from_millis(40),
            loss: 0.0,
            signal_delay: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MapKey {
    Any,
    Ip(IpAddr),
    IpPort(SocketAddr),
}

struct Nat {
    kind: NatType,
    public_ip: IpAddr,
    next_port: u16,
    out: BTreeMap<MapKey, u16>,
    /// external port -> remote endpoints contacted through it
    contacted: BTreeMap<u16, BTreeSet<SocketAddr>>,
}

impl Nat {
    fn key(&self, dst: SocketAddr) -> MapKey {
        match self.kind {
            NatType::AddressDependent => MapKey::Ip(dst.ip()),
            NatType::Symmetric => MapKey::IpPort(dst),
            _ => MapKey::Any,
        }
    }

    fn outbound(&mut self, dst: SocketAddr) -> u16 {
        let key = self.key(dst);
        let port = match self.out.get(&key) {
            Some(p) => *p,
            None => {
                let p = self.next_port;
                self.next_port = self.next_port.wrapping_add(1).max(1024);
                self.out.insert(key, p);
                p
            }
        };
        self.contacted.entry(port).or_default().insert(dst);
        port
    }

    fn inbound_allowed(&self, port: u16, from: SocketAddr) -> bool {
        let Some(set) = self.contacted.get(&port) else {
            return false;
        };
        match self.kind {
            NatType::Symmetric => set.contains(&from),
            _ => set.iter().any(|c| c.ip() == from.ip()),
        }
    }

    /// The NAT reboots or rebinds: every mapping is forgotten and new ones get new ports.
    fn rebind(&mut self) {
        self.out.clear();
        self.contacted.clear();
        self.next_port = self.next_port.wrapping_add(1000).max(1024);
    }
}

struct Host {
    node: Node,
    key: PeerId,
    private: SocketAddr,
    nat: Nat,
    delivered: Vec<Vec<u8>>,
    events: Vec<(Duration, Event)>,
}

enum Ev {
    /// A datagram arriving at public endpoint `dst` from `src`.
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    /// A relay frame arriving at host `host`.
    Relay { host: usize, frame: Vec<u8> },
    Signal {
        host: usize,
        from: PeerId,
        bytes: Vec<u8>,
    },
}

/// The simulated world.
pub struct Sim {
    start: Instant,
    now: Instant,
    rng: StdRng,
    link: LinkConfig,
    hosts: Vec<Host>,
    stun_servers: [SocketAddr; 2],
    /// The relay: who is connected, and what may reach whom (handle: the host's index).
    relay: Switchboard<usize>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    /// UDP datagrams dropped by NAT filters (for assertions and debugging).
    pub nat_drops: u64,
}

/// The overlay address of host `i` (only ever inside the simulated tunnels).
pub fn overlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1 + i as u8)
}

/// Builds an IPv4/UDP packet from host `from` to host `to` carrying a sequence number.
pub fn numbered_packet(from: usize, to: usize, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 4];
    let len = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&overlay_ip(from).octets());
    p[16..20].copy_from_slice(&overlay_ip(to).octets());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&4000u16.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The sequence number of a [`numbered_packet`].
pub fn packet_seq(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(28..32)?.try_into().ok()?))
}

impl Sim {
    /// Two hosts with the given NAT types, connected to a relay and to each other's signals.
    pub fn new(seed: u64, nats: [NatType; 2], link: LinkConfig) -> Self {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let stun_servers = [
            SocketAddr::from(([198, 51, 100, 1], 3478)),
            SocketAddr::from(([198, 51, 100, 2], 3478)),
        ];
        let mut hosts = Vec::new();
        for (i, kind) in nats.iter().enumerate() {
            let public_ip = IpAddr::from([203, 0, 113, 10 + i as u8]);
            let private = if *kind == NatType::None {
                SocketAddr::new(public_ip, 51820)
            } else {
                SocketAddr::from(([10, 0, i as u8, 2], 51820))
            };
            let mut private_key = [0u8; 32];
            rng.fill(&mut private_key);
            let node = Node::new(
                NodeConfig {
                    private_key,
                    stun_servers: stun_servers.to_vec(),
                    local_addrs: vec![private],
                    seed: Some(rng.r#gen()),
                },
                start,
            );
            let key = node.public_key();
            hosts.push(Host {
                node,
                key,
                private,
                nat: Nat {
                    kind: *kind,
                    public_ip,
                    next_port: 40000 + 1000 * i as u16,
                    out: BTreeMap::new(),
                    contacted: BTreeMap::new(),
                },
                delivered: Vec::new(),
                events: Vec::new(),
            });
        }
        let mut sim = Sim {
            start,
            now: start,
            rng,
            link,
            hosts,
            stun_servers,
            relay: Switchboard::default(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            nat_drops: 0,
        };
        for i in 0..2 {
            let other = 1 - i;
            let cfg = PeerConfig {
                public_key: sim.hosts[other].key,
                allowed_ips: vec![IpNet::new(IpAddr::V4(overlay_ip(other)), 32)],
                relay: Some(0),
                persistent_keepalive: None,
                bridged: false,
            };
            let now = sim.now;
            sim.hosts[i]
                .node
                .add_peer(now, cfg)
                .expect("distinct random keys");
        }
        sim.set_relay_up(true);
        for i in 0..2 {
            sim.drain(i);
        }
        sim
    }

    /// What host `i`'s relay token grants: the other host, in the one session.
    fn grant(&self, i: usize) -> Grant {
        Grant {
            session: "sim".into(),
            allowed: [self.hosts[1 - i].key].into(),
            bridge: None,
        }
    }

    fn relay_connected(&self, i: usize) -> bool {
        self.relay.get(&self.hosts[i].key).is_some()
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The engine of host `i` (for inspection).
    pub fn node(&self, i: usize) -> &Node {
        &self.hosts[i].node
    }

    /// Host `i`'s view of the other host.
    pub fn stats(&self, i: usize) -> PeerStats {
        let other = self.hosts[1 - i].key;
        self.hosts[i]
            .node
            .peer_stats(&other)
            .expect("the other host is always a peer")
    }

    /// IP packets delivered to host `i`'s application so far.
    pub fn delivered(&self, i: usize) -> &[Vec<u8>] {
        &self.hosts[i].delivered
    }

    /// Events host `i`'s engine reported, with their virtual time.
    pub fn events(&self, i: usize) -> &[(Duration, Event)] {
        &self.hosts[i].events
    }

    /// The application on host `i` sends an IP packet.
    pub fn send_ip(&mut self, i: usize, packet: &[u8]) {
        let now = self.now;
        let _ = self.hosts[i].node.send_ip(now, packet);
        self.drain(i);
    }

    /// Changes host `i`'s NAT type (e.g. to block UDP mid-test).
    pub fn set_nat(&mut self, i: usize, kind: NatType) {
        self.hosts[i].nat.kind = kind;
        self.hosts[i].nat.rebind();
    }

    /// Host `i`'s NAT forgets its mappings: its public port changes (roaming).
    pub fn rebind_nat(&mut self, i: usize) {
        self.hosts[i].nat.rebind();
    }

    /// Takes the relay down (all connections dropped) or brings it back up.
    pub fn set_relay_up(&mut self, up: bool) {
        for i in 0..self.hosts.len() {
            let key = self.hosts[i].key;
            if up {
                let grant = self.grant(i);
                self.relay.admit(key, i as u64, grant, i);
            } else {
                self.relay.leave(&key, i as u64);
            }
        }
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn drain(&mut self, i: usize) {
        while let Some(o) = self.hosts[i].node.poll_output() {
            match o {
                Output::Udp { dst, payload } => {
                    tracing::trace!(t = ?self.elapsed(), host = i, %dst, len = payload.len(), "sim udp");
                    self.udp_out(i, dst, payload)
                }
                Output::Relay { frame, .. } => {
                    tracing::trace!(t = ?self.elapsed(), host = i, len = frame.len(), "sim relay");
                    self.relay_out(i, frame)
                }
                Output::Deliver { packet, .. } => self.hosts[i].delivered.push(packet),
                Output::Signal { signal, .. } => {
                    let at = self.now + self.link.signal_delay;
                    let from = self.hosts[i].key;
                    self.schedule(
                        at,
                        Ev::Signal {
                            host: 1 - i,
                            from,
                            bytes: signal.encode(),
                        },
                    );
                }
                Output::Event(e) => {
                    let t = self.elapsed();
                    self.hosts[i].events.push((t, e));
                }
            }
        }
    }

    fn udp_out(&mut self, i: usize, dst: SocketAddr, payload: Vec<u8>) {
        let h = &mut self.hosts[i];
        let src = match h.nat.kind {
            NatType::UdpBlocked => return,
            NatType::None => h.private,
            _ => SocketAddr::new(h.nat.public_ip, h.nat.outbound(dst)),
        };
        if self.link.loss > 0.0 && self.rng.gen_bool(self.link.loss) {
            return;
        }
        let at = self.now + self.link.udp_delay;
        self.schedule(at, Ev::Udp { src, dst, payload });
    }

    fn relay_out(&mut self, i: usize, mut frame: Vec<u8>) {
        let src = self.hosts[i].key;
        let Some(grant) = self.relay.get(&src).map(|m| m.grant.clone()) else {
            return;
        };
        match Frame::decode(&frame) {
            Ok(Frame::Data { .. }) => {}
            _ => return,
        }
        let Ok(dst) = self.relay.route(&src, &grant, &mut frame) else {
            return;
        };
        let Some(&target) = self.relay.get(&dst).map(|m| &m.handle) else {
            return;
        };
        let at = self.now + self.link.relay_delay;
        self.schedule(
            at,
            Ev::Relay {
                host: target,
                frame,
            },
        );
    }

    fn deliver_udp(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        if self.stun_servers.contains(&dst) {
            if let Some(resp) = stun::answer_binding_request(&payload, src) {
                let at = self.now + self.link.udp_delay;
                self.schedule(
                    at,
                    Ev::Udp {
                        src: dst,
                        dst: src,
                        payload: resp,
                    },
                );
            }
            return;
        }
        let Some(i) = self.hosts.iter().position(|h| match h.nat.kind {
            NatType::None => h.private == dst,
            _ => h.nat.public_ip == dst.ip(),
        }) else {
            return;
        };
        let h = &mut self.hosts[i];
        match h.nat.kind {
            NatType::UdpBlocked => return,
            NatType::None => {}
            _ => {
                if !h.nat.inbound_allowed(dst.port(), src) {
                    self.nat_drops += 1;
                    return;
                }
            }
        }
        let now = self.now;
        self.hosts[i].node.handle_udp(now, src, &payload);
        self.drain(i);
    }

    /// Runs the world for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_ev = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = (0..self.hosts.len())
                .map(|i| (self.hosts[i].node.poll_timeout(), i))
                .min();
            let (t_timer, timer_host) = next_timer.expect("two hosts");
            let t = match next_ev {
                Some(te) if te <= t_timer => te,
                _ => t_timer,
            };
            if t > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(t);
            let now = self.now;
            if next_ev.is_some_and(|te| te <= t_timer) {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    continue;
                };
                let Some(ev) = self.events.remove(&seq) else {
                    continue;
                };
                match ev {
                    Ev::Udp { src, dst, payload } => self.deliver_udp(src, dst, payload),
                    Ev::Relay { host, frame } => {
                        if self.relay_connected(host) {
                            self.hosts[host].node.handle_relay_frame(now, 0, &frame);
                            self.drain(host);
                        }
                    }
                    Ev::Signal { host, from, bytes } => {
                        if let Ok(sig) = Signal::decode(&bytes) {
                            self.hosts[host].node.handle_signal(now, &from, sig);
                            self.drain(host);
                        }
                    }
                }
            } else {
                self.hosts[timer_host].node.handle_timeout(now);
                self.drain(timer_host);
            }
        }
    }

    /// Sends numbered packets from host `from` to the other host, one every `interval`,
    /// running the world in between.
    pub fn stream(&mut self, from: usize, first: u32, count: u32, interval: Duration) {
        for seq in first..first + count {
            let p = numbered_packet(from, 1 - from, seq);
            self.send_ip(from, &p);
            self.run_for(interval);
        }
    }
}
