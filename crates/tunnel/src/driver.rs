//! A thin tokio driver: runs a [`Node`] over a real UDP socket and relay WebSocket
//! connections (reconnecting with backoff and jitter), and hands IP packets to and from
//! channels. All queues are bounded and the driver never waits on a consumer: a dead
//! relay's queue drops, and an application whose queue stays full for 20 ms loses
//! packets instead of stalling other peers (until then datagrams wait in the socket).
//! The relay connections' tasks are in `driver/relay.rs`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use tokio_tungstenite::Connector;

use crate::engine::{
    Event, Node, NodeConfig, Output, PeerConfig, PeerId, PeerStats, RelayId, SendError, Signal,
};
mod relay;

use relay::{RelayHandle, RelayMsg, spawn_relay};

/// One relay connection.
#[derive(Clone)]
pub struct RelayEndpoint {
    pub id: RelayId,
    /// `ws://` or `wss://` URL of the relay endpoint (`.../relay/v1`).
    pub url: String,
    /// Bearer token issued by the control plane.
    pub token: String,
    /// TLS settings for `wss://` (None: tokio-tungstenite's default for the scheme).
    pub connector: Option<Connector>,
    /// Reach the relay through this HTTP proxy (CONNECT).
    pub proxy: Option<crate::proxy::Proxy>,
    /// The relay runs in this process: frames go to it in memory (no TCP, no
    /// TLS, no WebSocket, no proxy) instead.
    pub local: Option<LocalRelay>,
}

/// A relay inside this process, as the server's own peers (browser access)
/// reach the server's embedded relay: its URL, and how to connect to it with a
/// token. A relay connection to exactly that URL uses it; any other goes over
/// the network as usual.
#[derive(Clone)]
pub struct LocalRelay {
    pub url: String,
    /// Admits a connection with the token (as the relay's WebSocket endpoint
    /// would), or says why not.
    pub connect: Arc<LocalConnect>,
}

/// Connects to a relay in this process with a token: the link, or why not.
pub type LocalConnect = dyn Fn(&str) -> Result<Box<dyn LocalLink>, String> + Send + Sync;

/// One connection to a relay in this process: the same frames a relay
/// WebSocket carries, handed over in memory.
pub trait LocalLink: Send {
    /// Hands one frame to the relay; `false` once the relay has closed the
    /// connection.
    fn send(&mut self, frame: Vec<u8>) -> bool;
    /// Waits for frames from the relay and appends them to `buf`; 0 once the
    /// relay has closed the connection.
    fn recv<'a>(
        &'a mut self,
        buf: &'a mut Vec<Bytes>,
    ) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + 'a>>;
}

impl std::fmt::Debug for LocalRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRelay")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RelayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEndpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The engine's settings. Empty `local_addrs` are filled with the bound socket address
    /// when it is not unspecified.
    pub node: NodeConfig,
    /// UDP address to bind (WireGuard and STUN share it).
    pub bind: SocketAddr,
    pub relays: Vec<RelayEndpoint>,
    pub peers: Vec<PeerConfig>,
    /// Bound of every channel (app packets in/out, events, per-relay outbound frames).
    pub queue: usize,
}

/// What the driver reports besides IP packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// Carry this to `peer` through the control plane and feed it to its [`Tunnel::signal`].
    Signal {
        peer: PeerId,
        signal: Signal,
    },
    Engine(Event),
    RelayConnected {
        relay: RelayId,
    },
    RelayDisconnected {
        relay: RelayId,
    },
}

enum Command {
    AddPeer(
        PeerConfig,
        oneshot::Sender<Result<(), crate::engine::PeerError>>,
    ),
    RemovePeer(PeerId),
    SetPeerRelay(PeerId, Option<RelayId>),
    Signal(PeerId, Signal),
    Stats(PeerId, oneshot::Sender<Option<PeerStats>>),
    LocalSignal(oneshot::Sender<Signal>),
    SetRelayToken(RelayId, String),
    SetRelay(RelayEndpoint),
}

/// Handle to a running tunnel. Dropping it stops the driver.
pub struct Tunnel {
    cmd: mpsc::Sender<Command>,
    /// `None` when the application's own channel feeds the driver ([`Tunnel::start_with_app`]).
    ip_tx: Option<mpsc::Sender<Bytes>>,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

/// The receiving side: packets for the application and events.
pub struct TunnelIo {
    /// Decrypted IP packets and the peer they came from.
    pub incoming: mpsc::Receiver<(PeerId, Vec<u8>)>,
    pub events: mpsc::Receiver<DriverEvent>,
}

/// The driver stopped.
#[derive(Debug, thiserror::Error)]
#[error("tunnel driver stopped")]
pub struct Stopped;

impl Tunnel {
    /// Binds the socket, connects the relays and starts the engine.
    pub async fn start(config: DriverConfig) -> io::Result<(Tunnel, TunnelIo)> {
        let q = config.queue.max(16);
        let (ip_tx, ip_rx) = mpsc::channel(q);
        let (in_tx, in_rx) = mpsc::channel(q);
        let (tunnel, events) =
            Tunnel::launch(config, Some(ip_tx), ip_rx, Deliver::Tagged(in_tx)).await?;
        Ok((
            tunnel,
            TunnelIo {
                incoming: in_rx,
                events,
            },
        ))
    }

    /// Like [`Tunnel::start`], but the driver itself reads the application's packets
    /// from `from_app` and puts decrypted ones into `to_app` (full: dropped, as a wire
    /// would). No task sits in between, so each batch costs one wake-up less in each
    /// direction. The driver stops when `from_app` closes or the handle is dropped;
    /// [`Tunnel::try_send_ip`] and [`Tunnel::send_ip`] answer that the tunnel is
    /// stopped, since packets come from `from_app` only.
    pub async fn start_with_app(
        config: DriverConfig,
        from_app: mpsc::Receiver<Bytes>,
        to_app: mpsc::Sender<Bytes>,
    ) -> io::Result<(Tunnel, mpsc::Receiver<DriverEvent>)> {
        Tunnel::launch(config, None, from_app, Deliver::App(to_app)).await
    }

    async fn launch(
        mut config: DriverConfig,
        ip_tx: Option<mpsc::Sender<Bytes>>,
        ip_rx: mpsc::Receiver<Bytes>,
        incoming: Deliver,
    ) -> io::Result<(Tunnel, mpsc::Receiver<DriverEvent>)> {
        let socket = UdpSocket::bind(config.bind).await?;
        size_buffers(&socket);
        let local_addr = socket.local_addr()?;
        if config.node.local_addrs.is_empty() {
            config.node.local_addrs = host_candidates(local_addr, &config.node.stun_servers);
        }
        let q = config.queue.max(16);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(q);
        let (relay_in_tx, relay_in_rx) = mpsc::channel::<(RelayId, RelayMsg)>(q);
        let mut relays = HashMap::new();
        for ep in config.relays.iter().cloned() {
            relays.insert(ep.id, spawn_relay(ep, relay_in_tx.clone(), q));
        }
        let mut node = Node::new(config.node.clone(), Instant::now());
        for p in config.peers {
            let _ = node.add_peer(Instant::now(), p);
        }
        let gso = offload_state(&socket);
        let driver = Driver {
            node,
            socket: Arc::new(socket),
            gso,
            relays,
            relay_in: relay_in_tx,
            queue: q,
            incoming,
            events: ev_tx,
            udp_out: Vec::new(),
            gso_buf: Vec::new(),
        };
        // The driver owns the relay tasks: they stop with it.
        let task = tokio::spawn(driver.run(cmd_rx, ip_rx, relay_in_rx));
        Ok((
            Tunnel {
                cmd: cmd_tx,
                ip_tx,
                local_addr,
                task,
            },
            ev_rx,
        ))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues an IP packet (routed by destination). Fails at once when the queue is full.
    pub fn try_send_ip(
        &self,
        packet: impl Into<Bytes>,
    ) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        let packet = packet.into();
        match &self.ip_tx {
            Some(tx) => tx.try_send(packet),
            None => Err(mpsc::error::TrySendError::Closed(packet)),
        }
    }

    /// Queues an IP packet, waiting for room.
    pub async fn send_ip(&self, packet: impl Into<Bytes>) -> Result<(), Stopped> {
        let tx = self.ip_tx.as_ref().ok_or(Stopped)?;
        tx.send(packet.into()).await.map_err(|_| Stopped)
    }

    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), Stopped> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::AddPeer(peer, tx))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)?.map_err(|_| Stopped)
    }

    pub async fn remove_peer(&self, peer: PeerId) -> Result<(), Stopped> {
        self.cmd
            .send(Command::RemovePeer(peer))
            .await
            .map_err(|_| Stopped)
    }

    /// Moves `peer` to another relay connection of this tunnel (sessions are kept).
    pub async fn set_peer_relay(
        &self,
        peer: PeerId,
        relay: Option<RelayId>,
    ) -> Result<(), Stopped> {
        self.cmd
            .send(Command::SetPeerRelay(peer, relay))
            .await
            .map_err(|_| Stopped)
    }

    /// Candidates received for `peer` through the control plane.
    pub async fn signal(&self, peer: PeerId, signal: Signal) -> Result<(), Stopped> {
        self.cmd
            .send(Command::Signal(peer, signal))
            .await
            .map_err(|_| Stopped)
    }

    /// Replaces a relay's token (used on the next reconnect).
    pub async fn set_relay_token(&self, relay: RelayId, token: String) -> Result<(), Stopped> {
        self.cmd
            .send(Command::SetRelayToken(relay, token))
            .await
            .map_err(|_| Stopped)
    }

    /// Connects relay `ep.id` to another relay instance (the control plane moved the
    /// session there): the old connection closes, the peers on it stay with their
    /// WireGuard sessions and go on over the new one once it is up.
    pub async fn set_relay(&self, ep: RelayEndpoint) -> Result<(), Stopped> {
        self.cmd
            .send(Command::SetRelay(ep))
            .await
            .map_err(|_| Stopped)
    }

    /// This node's current candidates and NAT kind (the same content as the latest
    /// `DriverEvent::Signal`), for a control plane that polls instead of listening.
    pub async fn local_signal(&self) -> Result<Signal, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::LocalSignal(tx))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    pub async fn stats(&self, peer: PeerId) -> Result<Option<PeerStats>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Stats(peer, tx))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Host candidates for a socket bound to `local`: the address itself, or, when bound to the
/// unspecified address, the source address the OS would use towards each STUN server
/// (found with `connect` on a throwaway UDP socket, which sends nothing).
fn host_candidates(local: SocketAddr, stun_servers: &[SocketAddr]) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for server in stun_servers.iter().take(4) {
        if server.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let probe = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))
            .and_then(|s| s.connect(server).map(|_| s))
            .and_then(|s| s.local_addr());
        if let Ok(a) = probe {
            let cand = SocketAddr::new(a.ip(), local.port());
            if !a.ip().is_unspecified() && !out.contains(&cand) {
                out.push(cand);
            }
        }
    }
    out
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Driver {
    node: Node,
    socket: Arc<UdpSocket>,
    /// Segmentation offloads of the socket (GSO sends, GRO reads), where the OS has them.
    gso: Option<quinn_udp::UdpSocketState>,
    relays: HashMap<RelayId, RelayHandle>,
    /// Where relay tasks send what they receive (for relays replaced later).
    relay_in: mpsc::Sender<(RelayId, RelayMsg)>,
    queue: usize,
    incoming: Deliver,
    events: mpsc::Sender<DriverEvent>,
    /// Datagrams of one flush, sent together.
    udp_out: Vec<(SocketAddr, Vec<u8>)>,
    /// One GSO send's datagrams back to back, kept between sends.
    gso_buf: Vec<u8>,
}

/// Where decrypted packets go.
#[derive(Clone)]
enum Deliver {
    /// With the peer they came from ([`TunnelIo::incoming`]).
    Tagged(mpsc::Sender<(PeerId, Vec<u8>)>),
    /// Straight into the application's channel ([`Tunnel::start_with_app`]).
    App(mpsc::Sender<Bytes>),
}

impl Deliver {
    /// Room for a whole wake-up's work ([`DRAIN`] packets, or the whole queue when it is
    /// smaller), or nobody to deliver to.
    fn has_room(&self) -> bool {
        match self {
            Deliver::Tagged(tx) => has_room(tx),
            Deliver::App(tx) => has_room(tx),
        }
    }

    /// Resolves once [`Deliver::has_room`] holds (the permits are given back at once).
    async fn room(&self) {
        match self {
            Deliver::Tagged(tx) => room(tx).await,
            Deliver::App(tx) => room(tx).await,
        }
    }
}

fn batch_room<T>(tx: &mpsc::Sender<T>) -> usize {
    DRAIN.min(tx.max_capacity())
}

fn has_room<T>(tx: &mpsc::Sender<T>) -> bool {
    tx.is_closed() || tx.capacity() >= batch_room(tx)
}

async fn room<T>(tx: &mpsc::Sender<T>) {
    // Closed: `has_room` holds from now on.
    let _ = tx.reserve_many(batch_room(tx)).await;
}

/// How long the driver waits for room in the application's queue before it reads the
/// socket anyway (and a full queue drops, as a wire would): an application that stopped
/// reading must not stall the tunnel's handshakes and keepalives.
const STALL: Duration = Duration::from_millis(20);

/// Work taken from one source per wake-up before the outputs are flushed.
const DRAIN: usize = 64;

/// Socket buffers of the tunnel's UDP socket, each direction. The default (about
/// 200 KiB, some 90 datagrams) overflows under one TCP window's burst; the kernel drops
/// what does not fit and the inner TCP slows down.
const SOCKET_BUFFER: usize = 4 << 20;

/// Enlarges the socket's buffers to [`SOCKET_BUFFER`]: beyond `net.core.rmem_max` /
/// `wmem_max` when the process may (CAP_NET_ADMIN), else up to those limits.
fn size_buffers(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        tracing::debug!(
            rcvbuf = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
            sndbuf = getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
            "tunnel socket buffers"
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Segmentation offloads for `socket` (quinn-udp): GSO for runs of datagrams sent, GRO
/// for runs received (one read returns up to 64 KiB of datagrams from one sender, cut
/// at `stride`). `None` where the state cannot be set up; the socket then reads and
/// writes single datagrams.
fn offload_state(socket: &UdpSocket) -> Option<quinn_udp::UdpSocketState> {
    let state = quinn_udp::UdpSocketState::new(socket.into()).ok();
    #[cfg(target_os = "linux")]
    if state.is_none() {
        use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
        // Without the state nothing splits coalesced reads: make sure there are none.
        let _ = setsockopt(socket, UdpGroSegment, &false);
    }
    state
}

impl Driver {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut ip_rx: mpsc::Receiver<Bytes>,
        mut relay_rx: mpsc::Receiver<(RelayId, RelayMsg)>,
    ) {
        let socket = self.socket.clone();
        let deliver = self.incoming.clone();
        let mut buf = vec![0u8; 65536];
        // The application's queue stayed full for STALL: read (and drop) until it drains.
        let mut overrun = false;
        self.flush();
        loop {
            let deadline = tokio::time::Instant::from_std(self.node.poll_timeout());
            // Backpressure: while the application's queue has no room for another
            // batch, what arrives waits in the socket's 4 MiB buffer (and the relay
            // connection's queue) instead of being decrypted only to be dropped; the
            // sender's TCP then sees a delay, not a loss.
            let room = deliver.has_room();
            overrun &= !room;
            let wait = !room && !overrun;
            tokio::select! {
                waited = tokio::time::timeout(STALL, deliver.room()), if wait => {
                    overrun = waited.is_err();
                    continue;
                }
                r = socket.readable(), if !wait => match r {
                    // What has arrived (up to DRAIN datagrams), before flushing the
                    // answers together.
                    Ok(()) => self.read_udp(&socket, &mut buf, overrun),
                    Err(e) => tracing::debug!(error = %e, "udp recv"),
                },
                Some((relay, msg)) = relay_rx.recv(), if !wait => {
                    self.relay_msg(relay, msg);
                    // Frames that arrived meanwhile, before flushing the answers together.
                    for _ in 1..DRAIN {
                        match relay_rx.try_recv() {
                            Ok((relay, msg)) => self.relay_msg(relay, msg),
                            Err(_) => break,
                        }
                    }
                }
                p = ip_rx.recv() => match p {
                    Some(p) => {
                        self.send_ip(&p);
                        // The packets queued behind it go out in the same flush (GSO).
                        for _ in 1..DRAIN {
                            match ip_rx.try_recv() {
                                Ok(p) => self.send_ip(&p),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                c = cmd_rx.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => self.node.handle_timeout(Instant::now()),
            }
            self.flush();
        }
    }

    /// Reads datagrams until the socket is empty, [`DRAIN`] were handled or (unless
    /// `overrun`: the queue stayed full for [`STALL`] and what arrives is read and
    /// dropped) the application's queue is short of room for another batch. With GRO one
    /// read can return a run of datagrams from one sender, `stride` bytes each (the last
    /// may be shorter).
    fn read_udp(&mut self, socket: &UdpSocket, buf: &mut [u8], overrun: bool) {
        let mut handled = 0;
        // One GRO read can hold dozens of datagrams: read only while the application's
        // queue has room for a whole batch (backpressure, as in `run`). The caller saw
        // room (or an overrun), so at least one read happens and a readable socket is
        // never left unread in a busy loop.
        while handled < DRAIN && (overrun || self.incoming.has_room()) {
            let now = Instant::now();
            let Some(state) = &self.gso else {
                match socket.try_recv_from(buf) {
                    Ok((n, from)) => self.node.handle_udp(now, from, &buf[..n]),
                    Err(_) => return,
                }
                handled += 1;
                continue;
            };
            let mut meta = [quinn_udp::RecvMeta::default()];
            let read = socket.try_io(tokio::io::Interest::READABLE, || {
                let mut bufs = [std::io::IoSliceMut::new(buf)];
                state.recv(socket.into(), &mut bufs, &mut meta)
            });
            match read {
                Ok(1) => {}
                Ok(_) => return,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "udp recv");
                    }
                    return;
                }
            }
            let [m] = meta;
            let data = &buf[..m.len.min(buf.len())];
            for datagram in data.chunks(m.stride.max(1)) {
                self.node.handle_udp(now, m.addr, datagram);
                handled += 1;
            }
        }
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::AddPeer(p, reply) => {
                let _ = reply.send(self.node.add_peer(now, p));
            }
            Command::RemovePeer(p) => self.node.remove_peer(&p),
            Command::SetPeerRelay(p, r) => self.node.set_peer_relay(now, &p, r),
            Command::Signal(p, s) => self.node.handle_signal(now, &p, s),
            Command::Stats(p, reply) => {
                let _ = reply.send(self.node.peer_stats(&p));
            }
            Command::LocalSignal(reply) => {
                let _ = reply.send(self.node.local_signal());
            }
            Command::SetRelayToken(r, t) => {
                if let Some(h) = self.relays.get(&r) {
                    let _ = h.token.send(t);
                }
            }
            Command::SetRelay(ep) => {
                // The old connection closes (its task is aborted when its handle
                // drops); the peers on this relay id stay and use the new one as
                // soon as it is up.
                tracing::info!(relay = ep.id, url = %ep.url, "relay moved");
                let id = ep.id;
                let h = spawn_relay(ep, self.relay_in.clone(), self.queue);
                self.relays.insert(id, h);
            }
        }
    }

    fn relay_msg(&mut self, relay: RelayId, msg: RelayMsg) {
        match msg {
            RelayMsg::Frame(frame) => {
                self.node.handle_relay_frame(Instant::now(), relay, &frame);
            }
            RelayMsg::Up => {
                self.node.relay_connected(Instant::now(), relay);
                let _ = self.events.try_send(DriverEvent::RelayConnected { relay });
            }
            RelayMsg::Down => {
                let _ = self
                    .events
                    .try_send(DriverEvent::RelayDisconnected { relay });
            }
        }
    }

    fn send_ip(&mut self, p: &[u8]) {
        if let Err(e) = self.node.send_ip(Instant::now(), p)
            && e != SendError::NoRoute
        {
            tracing::trace!(error = %e, "packet from app refused");
        }
    }

    /// Sends the collected datagrams: runs of equal-sized ones to the same
    /// address (the last may be shorter) as one GSO send each. Never waits on
    /// the socket: a full send buffer drops datagrams, as a router would.
    fn send_udp(&mut self) {
        let out = std::mem::take(&mut self.udp_out);
        let max = self
            .gso
            .as_ref()
            .map(|g| g.max_gso_segments().min(DRAIN))
            .unwrap_or(1);
        let mut i = 0;
        while i < out.len() {
            let (dst, first) = &out[i];
            let seg = first.len();
            let mut j = i + 1;
            while j < out.len()
                && j - i < max
                && out[j].0 == *dst
                && out[j].1.len() <= seg
                && (j - i + 1) * seg <= 60_000
            {
                j += 1;
                if out[j - 1].1.len() < seg {
                    break;
                }
            }
            let sent = match (&self.gso, j - i) {
                (Some(g), n) if n > 1 => {
                    // One memcpy per datagram into a buffer that is reused.
                    self.gso_buf.clear();
                    for (_, p) in &out[i..j] {
                        self.gso_buf.extend_from_slice(p);
                    }
                    let t = quinn_udp::Transmit {
                        destination: *dst,
                        ecn: None,
                        contents: &self.gso_buf,
                        segment_size: Some(seg),
                        src_ip: None,
                    };
                    g.try_send((&*self.socket).into(), &t).is_ok()
                }
                _ => false,
            };
            if !sent {
                for (dst, p) in &out[i..j] {
                    let _ = self.socket.try_send_to(p, *dst);
                }
            }
            i = j;
        }
        self.udp_out = out;
        self.udp_out.clear();
    }

    fn flush(&mut self) {
        while let Some(o) = self.node.poll_output() {
            if !matches!(o, Output::Udp { .. }) && !self.udp_out.is_empty() {
                // Keep the order of datagrams and everything else.
                self.send_udp();
            }
            match o {
                Output::Udp { dst, payload } => self.udp_out.push((dst, payload)),
                Output::Relay { relay, frame } => {
                    if let Some(RelayHandle { out: tx, .. }) = self.relays.get(&relay) {
                        let _ = tx.try_send(frame);
                    }
                }
                Output::Deliver { peer, packet } => {
                    let _ = match &self.incoming {
                        Deliver::Tagged(tx) => tx.try_send((peer, packet)).is_ok(),
                        Deliver::App(tx) => tx.try_send(Bytes::from(packet)).is_ok(),
                    };
                }
                Output::Signal { peer, signal } => {
                    let _ = self.events.try_send(DriverEvent::Signal { peer, signal });
                }
                Output::Event(e) => {
                    let _ = self.events.try_send(DriverEvent::Engine(e));
                }
            }
        }
        if !self.udp_out.is_empty() {
            self.send_udp();
        }
    }
}
