//! Edge side: terminates the client's TCP, UDP and ICMP echo flows and opens ordinary
//! sockets to the released LAN targets (DESIGN §2, §6).
//!
//! Every inbound packet is classified by [`crate::policy::classify`] first; only packets
//! that pass reach smoltcp (TCP) or a per-flow UDP socket / ICMP echo socket. Replies
//! are emitted only for flows the client opened, with the client-visible (virtual)
//! address as source, so nothing the LAN sends can reach the overlay on its own.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drawbridge_proto::model::{NatMapping, Target};
use ipnet::IpNet;
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, IpListenEndpoint, IpProtocol, Ipv4Packet};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::policy::{DropReason, FlowKey, Policy, Verdict, classify};
use crate::pump::{self, Side};
use crate::stack::{Buffers, Shared, SockMeta, StackStream, wait_established};
use crate::wire;

/// Bounds and timeouts of a forwarder.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TCP + UDP flows at once.
    pub max_flows: usize,
    /// TCP + UDP flows at once from one client address (so one client of a shared
    /// session cannot starve the others).
    pub max_flows_per_source: usize,
    /// Receive and send buffer of each smoltcp TCP socket (bytes, each direction) for
    /// the first `tcp_large_flows` flows open at once: the TCP window, so it bounds a
    /// flow's speed (1 MiB: about 4 Gbit/s at 2 ms round trip, 170 Mbit/s at 50 ms).
    pub tcp_buffer: usize,
    /// How many flows at once get `tcp_buffer`; later ones get `tcp_buffer_small`.
    pub tcp_large_flows: usize,
    /// Buffers of the flows beyond `tcp_large_flows`, so that memory stays bounded
    /// (`tcp_large_flows × 2 × tcp_buffer + (max_flows − tcp_large_flows) × 2 ×
    /// tcp_buffer_small`: 64 MiB + 124 MiB by default).
    pub tcp_buffer_small: usize,
    /// A TCP flow with no data either way for this long is reset.
    pub tcp_idle: Duration,
    /// A UDP flow with no datagram either way for this long is closed.
    pub udp_idle: Duration,
    /// Connecting to the LAN target gives up after this long (the client gets a RST).
    pub connect_timeout: Duration,
    /// ICMP echo requests in flight at once; more are dropped (`too_many_flows`).
    pub max_pings: usize,
    /// How long to wait for a LAN echo reply.
    pub ping_timeout: Duration,
    /// Datagrams queued towards one UDP flow's socket.
    pub udp_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: 1024,
            max_flows_per_source: 512,
            tcp_buffer: Buffers::DEFAULT.large,
            tcp_large_flows: Buffers::DEFAULT.large_sockets,
            tcp_buffer_small: Buffers::DEFAULT.small,
            tcp_idle: Duration::from_secs(30 * 60),
            udp_idle: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_pings: 64,
            ping_timeout: Duration::from_secs(2),
            udp_queue: 64,
        }
    }
}

/// Forwarder settings.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// The edge's own overlay address (the smoltcp interface address).
    pub local_ip: Ipv4Addr,
    /// Released targets, in real LAN addresses.
    pub targets: Vec<Target>,
    /// 1:1 NAT mappings (the client addresses the virtual subnet).
    pub nat: Vec<NatMapping>,
    /// Client overlay addresses that may send (e.g. `100.64.0.2/32`).
    pub allowed_sources: Vec<IpNet>,
    pub limits: Limits,
}

impl ForwarderConfig {
    fn policy(&self) -> Policy {
        Policy {
            targets: self.targets.clone(),
            nat: self.nat.clone(),
            allowed_sources: self.allowed_sources.clone(),
        }
    }
}

/// A snapshot of the forwarder's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwarderStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets handed to the tunnel.
    pub packets_out: u64,
    pub dropped_malformed: u64,
    pub dropped_bad_source: u64,
    pub dropped_not_released: u64,
    pub dropped_unsupported_protocol: u64,
    pub dropped_fragment: u64,
    pub dropped_too_many_flows: u64,
    /// Outbound packets dropped because the tunnel channel was full.
    pub dropped_queue_full: u64,
    /// ICMP echo requests for released targets that could not be sent: the OS allows
    /// neither an unprivileged ICMP socket (`net.ipv4.ping_group_range`) nor a raw one
    /// (CAP_NET_RAW). The edge never answers an echo itself.
    pub icmp_unavailable: u64,
    pub icmp_echo_answered: u64,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub tcp_flows_total: u64,
    pub udp_flows_total: u64,
    pub lan_connect_failed: u64,
    /// Flows cut because a policy update no longer allows them.
    pub flows_revoked: u64,
    /// Outbound TCP packets not addressed to an allowed client (never expected).
    pub egress_refused: u64,
}

/// The packet counters every forwarding path keeps: this forwarder and the edge's
/// kernel mode (which reports the same [`ForwarderStats`]).
#[derive(Debug, Default)]
pub struct PacketCounters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    drops: [AtomicU64; 6],
}

impl PacketCounters {
    /// A packet of `len` bytes came from the tunnel.
    pub fn inbound(&self, len: usize) {
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// `n` packets went to the tunnel.
    pub fn outbound(&self, n: u64) {
        self.packets_out.fetch_add(n, Ordering::Relaxed);
    }

    /// A packet was dropped for `r`.
    pub fn dropped(&self, r: DropReason) {
        let i = match r {
            DropReason::Malformed => 0,
            DropReason::BadSource => 1,
            DropReason::NotReleased => 2,
            DropReason::UnsupportedProtocol => 3,
            DropReason::Fragment => 4,
            DropReason::TooManyFlows => 5,
        };
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// These figures as stats (the ones they do not cover are zero).
    pub fn stats(&self) -> ForwarderStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ForwarderStats {
            packets_in: l(&self.packets_in),
            bytes_in: l(&self.bytes_in),
            packets_out: l(&self.packets_out),
            dropped_malformed: l(&self.drops[0]),
            dropped_bad_source: l(&self.drops[1]),
            dropped_not_released: l(&self.drops[2]),
            dropped_unsupported_protocol: l(&self.drops[3]),
            dropped_fragment: l(&self.drops[4]),
            dropped_too_many_flows: l(&self.drops[5]),
            ..ForwarderStats::default()
        }
    }
}

#[derive(Default)]
struct Counters {
    packets: PacketCounters,
    icmp_unavailable: AtomicU64,
    icmp_echo_answered: AtomicU64,
    tcp_flows: AtomicUsize,
    udp_flows: AtomicUsize,
    tcp_flows_total: AtomicU64,
    udp_flows_total: AtomicU64,
    lan_connect_failed: AtomicU64,
    flows_revoked: AtomicU64,
}

struct Common {
    counters: Counters,
    shared: Arc<Shared>,
    policy: RwLock<Policy>,
    policy_tx: watch::Sender<u64>,
}

impl Common {
    fn count_drop(&self, r: DropReason) {
        self.counters.packets.dropped(r);
        tracing::trace!(reason = r.as_str(), "forwarder dropped a packet");
    }
}

/// Control handle of a running forwarder (cheap to clone).
#[derive(Clone)]
pub struct ForwarderHandle {
    common: Arc<Common>,
}

impl ForwarderHandle {
    pub fn stats(&self) -> ForwarderStats {
        let c = &self.common.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ForwarderStats {
            dropped_queue_full: l(&self.common.shared.tx_dropped),
            icmp_unavailable: l(&c.icmp_unavailable),
            icmp_echo_answered: l(&c.icmp_echo_answered),
            tcp_flows: c.tcp_flows.load(Ordering::Relaxed) as u64,
            udp_flows: c.udp_flows.load(Ordering::Relaxed) as u64,
            tcp_flows_total: l(&c.tcp_flows_total),
            udp_flows_total: l(&c.udp_flows_total),
            lan_connect_failed: l(&c.lan_connect_failed),
            flows_revoked: l(&c.flows_revoked),
            egress_refused: l(&self.common.shared.egress_refused),
            ..c.packets.stats()
        }
    }

    /// Replaces the released targets, NAT mappings and allowed sources (a session
    /// changed). Flows the new policy no longer allows are cut at once (TCP: RST).
    pub fn update_config(
        &self,
        targets: Vec<Target>,
        nat: Vec<NatMapping>,
        allowed_sources: Vec<IpNet>,
    ) {
        *self
            .common
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Policy {
            targets,
            nat,
            allowed_sources,
        };
        self.common.policy_tx.send_modify(|v| *v += 1);
    }
}

/// The edge's userspace forwarder. Run it with [`Forwarder::run`].
pub struct Forwarder {
    common: Arc<Common>,
    limits: Limits,
    policy_rx: watch::Receiver<u64>,
}

struct UdpFlow {
    tx: mpsc::Sender<Bytes>,
}

impl Forwarder {
    pub fn new(config: ForwarderConfig) -> (Forwarder, ForwarderHandle) {
        let l = &config.limits;
        let buffers = Buffers {
            large: l.tcp_buffer.max(4096),
            small: l.tcp_buffer_small.max(4096),
            large_sockets: l.tcp_large_flows,
        };
        let shared = Shared::new(config.local_ip, true, buffers);
        let (policy_tx, policy_rx) = watch::channel(0);
        let common = Arc::new(Common {
            counters: Counters::default(),
            shared,
            policy: RwLock::new(config.policy()),
            policy_tx,
        });
        (
            Forwarder {
                common: common.clone(),
                limits: config.limits,
                policy_rx,
            },
            ForwarderHandle { common },
        )
    }

    /// Moves packets until `from_tunnel` closes. Packets for the client go to
    /// `to_tunnel` with `try_send` (a full channel drops and counts, never stalls).
    pub async fn run(mut self, from_tunnel: mpsc::Receiver<Bytes>, to_tunnel: mpsc::Sender<Bytes>) {
        let shared = self.common.shared.clone();
        let (conn_tx, conn_rx) = mpsc::channel(self.limits.max_flows.max(1));
        let mut turn = Turn {
            st: RunState {
                udp: HashMap::new(),
                pending: HashMap::new(),
                pings: Arc::new(Semaphore::new(self.limits.max_pings)),
                conn_tx,
                to_tunnel: to_tunnel.clone(),
            },
            fwd: &mut self,
            conn_rx,
        };
        pump::run(&shared, &mut turn, from_tunnel, &to_tunnel).await;
        // Tunnel gone: reset every TCP flow, stop the UDP flows.
        shared.abort_where(|_| true);
        turn.st.udp.clear();
    }

    fn revoke(&self, st: &mut RunState) {
        let policy = self
            .common
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut n = self.common.shared.abort_where(|k| !policy.allows_flow(k));
        let before = st.udp.len();
        st.udp.retain(|k, _| policy.allows_flow(k));
        n += before - st.udp.len();
        let before = st.pending.len();
        st.pending.retain(|k, _| policy.allows_flow(k));
        let gone = before - st.pending.len();
        // Their connect results are discarded in `lan_connected`.
        self.common
            .counters
            .tcp_flows
            .fetch_sub(gone, Ordering::Relaxed);
        n += gone;
        self.common
            .counters
            .udp_flows
            .store(st.udp.len(), Ordering::Relaxed);
        self.common
            .counters
            .flows_revoked
            .fetch_add(n as u64, Ordering::Relaxed);
        self.common.shared.notify.notify_one();
    }

    /// TCP flows (pending, live and closing) plus UDP flows.
    fn flows(&self, st: &RunState) -> usize {
        self.common.counters.tcp_flows.load(Ordering::Relaxed) + st.udp.len()
    }

    /// May `src` open one more flow? (Linear in the flows: runs only for new flows.)
    fn room_for(&self, st: &RunState, src: Ipv4Addr) -> bool {
        if self.flows(st) >= self.limits.max_flows {
            return false;
        }
        let mine = st.udp.keys().filter(|k| k.src == src).count()
            + st.pending.keys().filter(|k| k.src == src).count()
            + self
                .common
                .shared
                .lock()
                .by_key
                .keys()
                .filter(|k| k.src == src)
                .count();
        mine < self.limits.max_flows_per_source
    }

    fn inbound(&self, st: &mut RunState, packet: Bytes) {
        let c = &self.common.counters;
        c.packets.inbound(packet.len());
        let verdict = {
            let policy = self.common.policy.read().unwrap_or_else(|e| e.into_inner());
            classify(&policy, &packet)
        };
        match verdict {
            Err(r) => self.common.count_drop(r),
            Ok(Verdict::Tcp { key, syn }) => self.tcp(st, packet, key, syn),
            Ok(Verdict::Udp { key, payload }) => {
                let data = packet.slice(payload);
                if let Some(f) = st.udp.get(&key) {
                    if !f.tx.is_closed() {
                        // A full per-flow queue drops the datagram (UDP semantics).
                        let _ = f.tx.try_send(data);
                        return;
                    }
                    st.udp.remove(&key);
                }
                if !self.room_for(st, key.src) {
                    self.common.count_drop(DropReason::TooManyFlows);
                    return;
                }
                let (tx, rx) = mpsc::channel(self.limits.udp_queue.max(1));
                let _ = tx.try_send(data);
                st.udp.insert(key, UdpFlow { tx });
                c.udp_flows.store(st.udp.len(), Ordering::Relaxed);
                c.udp_flows_total.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(udp_flow(
                    key,
                    rx,
                    st.to_tunnel.clone(),
                    self.limits.udp_idle,
                    self.common.clone(),
                ));
            }
            Ok(Verdict::IcmpEcho {
                key,
                ident,
                seq,
                data,
            }) => {
                let Ok(permit) = st.pings.clone().try_acquire_owned() else {
                    self.common.count_drop(DropReason::TooManyFlows);
                    return;
                };
                let data = packet.slice(data);
                let common = self.common.clone();
                let to = st.to_tunnel.clone();
                let timeout = self.limits.ping_timeout;
                tokio::spawn(async move {
                    let _permit = permit;
                    match icmp_echo(key.real, &data, timeout).await {
                        Ok(Some(reply_data)) => {
                            let reply =
                                wire::icmp_echo(key.dst, key.src, ident, seq, &reply_data, true);
                            if to.try_send(Bytes::from(reply)).is_ok() {
                                common.counters.packets.outbound(1);
                                common
                                    .counters
                                    .icmp_echo_answered
                                    .fetch_add(1, Ordering::Relaxed);
                            } else {
                                common.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "no unprivileged ICMP echo socket");
                            common
                                .counters
                                .icmp_unavailable
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }

    fn tcp(&self, st: &mut RunState, packet: Bytes, key: FlowKey, syn: bool) {
        let shared = &self.common.shared;
        if let Some(stored) = st.pending.get_mut(&key) {
            // Still connecting to the LAN: keep the latest SYN (a retransmission), drop
            // anything else.
            if syn {
                *stored = packet;
            }
            return;
        }
        let mut g = shared.lock();
        if let Some(h) = g.by_key.get(&key).copied() {
            if let Some(m) = g.meta.get_mut(&h) {
                m.last_active = Instant::now();
            }
            shared.ingress(&mut g, packet.into());
            return;
        }
        if !syn {
            // No flow: smoltcp answers with a RST (the target is released, so the
            // client may learn that the connection is gone).
            shared.ingress(&mut g, packet.into());
            return;
        }
        drop(g);
        if !self.room_for(st, key.src) {
            self.common.count_drop(DropReason::TooManyFlows);
            return;
        }
        // Connect to the LAN first; the client's SYN is answered only once the target
        // accepted (a refused or unreachable target gets the client a RST).
        let c = &self.common.counters;
        c.tcp_flows.fetch_add(1, Ordering::Relaxed);
        c.tcp_flows_total.fetch_add(1, Ordering::Relaxed);
        st.pending.insert(key, packet);
        let lan = SocketAddr::V4(SocketAddrV4::new(key.real, key.dst_port_raw));
        let timeout = self.limits.connect_timeout;
        let done = st.conn_tx.clone();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(timeout, TcpStream::connect(lan)).await {
                Ok(Ok(s)) => Some(s),
                _ => None,
            };
            let _ = done.send((key, r)).await;
        });
    }

    fn lan_connected(&self, st: &mut RunState, key: FlowKey, lan: Option<TcpStream>) {
        let Some(syn) = st.pending.remove(&key) else {
            // Revoked meanwhile (already uncounted).
            return;
        };
        let c = &self.common.counters;
        let Some(lan) = lan else {
            c.lan_connect_failed.fetch_add(1, Ordering::Relaxed);
            c.tcp_flows.fetch_sub(1, Ordering::Relaxed);
            if let Some(rst) = wire::tcp_rst_for_syn(&syn)
                && st.to_tunnel.try_send(Bytes::from(rst)).is_ok()
            {
                c.packets.outbound(1);
            }
            return;
        };
        let shared = &self.common.shared;
        let mut g = shared.lock();
        let (mut sock, large) = shared.new_socket(&g);
        if sock
            .listen(IpListenEndpoint {
                addr: Some(key.dst.into()),
                port: key.dst_port_raw,
            })
            .is_err()
        {
            c.tcp_flows.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let handle = g.sockets.add(sock);
        g.meta.insert(
            handle,
            SockMeta {
                key: Some(key),
                orphaned: None,
                last_active: Instant::now(),
                large,
            },
        );
        g.by_key.insert(key, handle);
        // One packet, right after creating the socket: it can only take its own SYN.
        shared.ingress(&mut g, syn.into());
        drop(g);
        let stream = StackStream {
            shared: shared.clone(),
            handle,
            local: SocketAddr::V4(SocketAddrV4::new(key.dst, key.dst_port_raw)),
            peer: SocketAddr::V4(SocketAddrV4::new(key.src, key.src_port)),
            abort: false,
            large,
        };
        tokio::spawn(tcp_flow(stream, lan, self.limits.connect_timeout));
    }
}

/// The forwarder's side of the pump: LAN connects that finished and policy
/// updates wake it; only packets to an allowed client leave.
struct Turn<'a> {
    fwd: &'a mut Forwarder,
    st: RunState,
    conn_rx: mpsc::Receiver<(FlowKey, Option<TcpStream>)>,
}

enum Wake {
    LanConnected(FlowKey, Option<TcpStream>),
    PolicyChanged,
}

impl Side for Turn<'_> {
    type Wake = Wake;

    fn inbound(&mut self, packet: Bytes) {
        self.fwd.inbound(&mut self.st, packet);
    }

    fn wake(&mut self) -> impl std::future::Future<Output = Wake> + Send {
        let (conn_rx, policy_rx) = (&mut self.conn_rx, &mut self.fwd.policy_rx);
        async move {
            tokio::select! {
                Some((key, lan)) = conn_rx.recv() => Wake::LanConnected(key, lan),
                Ok(()) = policy_rx.changed() => Wake::PolicyChanged,
                else => std::future::pending().await,
            }
        }
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::LanConnected(key, lan) => self.fwd.lan_connected(&mut self.st, key, lan),
            Wake::PolicyChanged => self.fwd.revoke(&mut self.st),
        }
    }

    fn sweep(&mut self) {
        let common = &self.fwd.common;
        for _ in common.shared.sweep(Some(self.fwd.limits.tcp_idle)) {
            common.counters.tcp_flows.fetch_sub(1, Ordering::Relaxed);
        }
        self.st.udp.retain(|_, f| !f.tx.is_closed());
        common
            .counters
            .udp_flows
            .store(self.st.udp.len(), Ordering::Relaxed);
    }

    fn egress(&mut self, to_tunnel: &mpsc::Sender<Bytes>) -> bool {
        let common = &self.fwd.common;
        // Defence in depth: whatever smoltcp emits goes only to an allowed client.
        let policy = common.policy.read().unwrap_or_else(|e| e.into_inner());
        let (blocked, sent) = common.shared.egress(to_tunnel, |p| {
            crate::wire::addrs(p).is_some_and(|(_, dst)| policy.source_allowed(dst))
        });
        common.counters.packets.outbound(sent);
        blocked
    }
}

struct RunState {
    udp: HashMap<FlowKey, UdpFlow>,
    /// TCP flows whose LAN connect is in progress: the client's latest SYN.
    pending: HashMap<FlowKey, Bytes>,
    pings: Arc<Semaphore>,
    conn_tx: mpsc::Sender<(FlowKey, Option<TcpStream>)>,
    to_tunnel: mpsc::Sender<Bytes>,
}

async fn tcp_flow(mut stream: StackStream, mut lan: TcpStream, timeout: Duration) {
    let _ = lan.set_nodelay(true);
    match tokio::time::timeout(timeout, wait_established(&stream.shared, stream.handle)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let n = stream.copy_buffer();
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut lan, n, n).await;
}

async fn udp_flow(
    key: FlowKey,
    mut rx: mpsc::Receiver<Bytes>,
    to: mpsc::Sender<Bytes>,
    idle: Duration,
    common: Arc<Common>,
) {
    let lan = SocketAddr::V4(SocketAddrV4::new(key.real, key.dst_port_raw));
    let sock = match UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await {
        Ok(s) => s,
        Err(_) => return,
    };
    if sock.connect(lan).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; crate::stack::MTU - 28];
    loop {
        tokio::select! {
            d = rx.recv() => {
                let Some(d) = d else { return };
                let _ = sock.send(&d).await;
            }
            r = sock.recv(&mut buf) => {
                // A connected UDP socket only receives from the target itself.
                let Ok(n) = r else { continue };
                let pkt = wire::udp(key.dst, key.dst_port_raw, key.src, key.src_port, &buf[..n]);
                if to.try_send(Bytes::from(pkt)).is_ok() {
                    common.counters.packets.outbound(1);
                } else {
                    common.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = tokio::time::sleep(idle) => return,
        }
    }
}

/// Sends one ICMP echo to `dst` and waits for the reply: through an unprivileged ICMP
/// datagram socket when `net.ipv4.ping_group_range` allows it, else through a raw ICMP
/// socket when the process has CAP_NET_RAW. `Ok(None)`: no reply in time; `Err`: the OS
/// allows neither (the request is dropped, never answered by the edge itself).
async fn icmp_echo(
    dst: Ipv4Addr,
    data: &[u8],
    timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    use socket2::{Domain, Protocol as SProto, Socket, Type};
    let (s, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(SProto::ICMPV4)) {
        Ok(s) => (s, false),
        Err(_) => (
            Socket::new(Domain::IPV4, Type::RAW, Some(SProto::ICMPV4))?,
            true,
        ),
    };
    s.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(s))?;
    sock.connect(SocketAddr::V4(SocketAddrV4::new(dst, 0)))
        .await?;
    // A datagram socket's identifier is set and checked by the kernel; a raw socket sees
    // every ICMP packet of the host, so it matches source, identifier and sequence itself.
    let ident: u16 = rand::random();
    let seq: u16 = rand::random();
    sock.send(&wire::icmp_echo_body(ident, seq, data, false))
        .await?;
    let mut buf = vec![0u8; 20 + 8 + data.len() + 64];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(n)) => n,
        };
        let icmp = if raw {
            match Ipv4Packet::new_checked(&buf[..n]) {
                Ok(ip) if ip.src_addr() == dst && ip.next_header() == IpProtocol::Icmp => {
                    &buf[ip.header_len() as usize..n]
                }
                _ => continue,
            }
        } else {
            &buf[..n]
        };
        let Ok(p) = Icmpv4Packet::new_checked(icmp) else {
            continue;
        };
        if p.msg_type() == Icmpv4Message::EchoReply
            && p.echo_seq_no() == seq
            && (!raw || p.echo_ident() == ident)
        {
            return Ok(Some(p.data().to_vec()));
        }
    }
}

#[allow(dead_code)]
fn assert_send() {
    fn s<T: Send + 'static>() {}
    s::<Forwarder>();
    s::<ForwarderHandle>();
}
