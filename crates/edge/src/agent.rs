//! `drawbridge-edge run`: the edge channel and the per-session tunnels.
//!
//! One outbound WebSocket to the control plane, re-established forever with
//! backoff and jitter. The server sends the complete set of sessions this edge
//! must run; the agent reconciles: a fresh WireGuard key per session (only its
//! public half is sent), a tunnel once the session is active and the relay
//! token has come, peers as clients join and leave, candidates both ways.
//! Running tunnels survive a lost control plane until their session's end; the
//! switch is enforced locally too — turning it off stops every tunnel at once,
//! reachable control plane or not.

use crate::local::{PeerStatus, SessionStatus, StateDir, Status, SwitchSource};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drawbridge_netstack::{Forwarder, ForwarderConfig, ForwarderHandle, Limits};
use drawbridge_proto::channel::{
    EDGE_AUTH_CONTEXT, EdgeSession, EdgeStatus, EdgeToServer, MAX_CHANNEL_FRAME, ServerToEdge,
    TunnelReport,
};
use drawbridge_proto::{SessionState, WgKey};
use drawbridge_tunnel::driver::{Connector, DriverEvent, Tunnel};
use drawbridge_tunnel::session::{self, RelayLink, SessionTunnel, SessionTunnelConfig};
use drawbridge_tunnel::{IpNet, PeerConfig, Signal, keys};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use ring::signature::Ed25519KeyPair;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The edge's own address inside a session's overlay (clients get .2 onwards).
const EDGE_OVERLAY_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 1);
const TICK: Duration = Duration::from_secs(1);
const STATUS_EVERY: u32 = 15;
const REPORT_EVERY: u32 = 5;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// How a session's packets reach the LAN.
enum LanPath {
    Userspace(ForwarderHandle),
    Kernel(crate::kernel::KernelHandle),
}

impl LanPath {
    fn stats(&self) -> drawbridge_netstack::ForwarderStats {
        match self {
            LanPath::Userspace(f) => f.stats(),
            LanPath::Kernel(k) => k.stats(),
        }
    }

    fn update(
        &self,
        targets: Vec<drawbridge_proto::Target>,
        nat: Vec<drawbridge_proto::NatMapping>,
        allowed_sources: Vec<ipnet::IpNet>,
    ) {
        match self {
            LanPath::Userspace(f) => f.update_config(targets, nat, allowed_sources),
            LanPath::Kernel(k) => k.update_policy(drawbridge_netstack::Policy {
                targets,
                nat,
                allowed_sources,
            }),
        }
    }
}

/// A forwarder policy: released targets, 1:1 NAT, the clients' overlay addresses.
type PolicyParts = (
    Vec<drawbridge_proto::Target>,
    Vec<drawbridge_proto::NatMapping>,
    Vec<ipnet::IpNet>,
);

/// One session this edge runs.
struct Running {
    info: EdgeSession,
    private_key: [u8; 32],
    public: WgKey,
    key_sent: bool,
    tunnel: Option<Arc<Tunnel>>,
    /// The path towards the LAN: the userspace stack terminating the clients'
    /// flows, or the kernel path (`run --tun`).
    forwarder: Option<(LanPath, tokio::task::JoinHandle<()>)>,
    /// The policy the forwarder runs with: any change of targets, NAT or
    /// clients is applied at once (flows no longer allowed are cut).
    applied: Option<PolicyParts>,
    /// Clients currently configured as peers (base64 keys).
    peers: Vec<WgKey>,
    /// The relay connection as last given.
    relay: RelayLink,
    /// Moves packets between the tunnel and the LAN path.
    pump: Option<tokio::task::JoinHandle<()>>,
    /// Carries the tunnel's candidates to the control plane.
    signals: Option<tokio::task::JoinHandle<()>>,
    stats: HashMap<WgKey, PeerStatus>,
}

impl Running {
    fn stop(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        if let Some(s) = self.signals.take() {
            s.abort();
        }
        if let Some((_, f)) = self.forwarder.take() {
            f.abort();
        }
        self.tunnel = None;
        self.peers.clear();
        self.applied = None;
    }

    /// The forwarder's policy from the session: released targets, NAT, the clients' overlay addresses.
    fn policy(&self) -> PolicyParts {
        let sources = self
            .info
            .peers
            .iter()
            .filter_map(|p| p.overlay_ip.parse::<std::net::IpAddr>().ok())
            .map(ipnet::IpNet::from)
            .collect();
        (self.info.targets.clone(), self.info.nat.clone(), sources)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// All sessions, and the queue of messages for the control plane.
struct Agent {
    dir: StateDir,
    device_id: String,
    switch: SwitchSource,
    switch_on: bool,
    connected: bool,
    sessions: HashMap<String, Running>,
    out_tx: mpsc::Sender<EdgeToServer>,
    tls: Arc<rustls::ClientConfig>,
    /// The kernel path, with `run --tun`.
    gateway: Option<crate::kernel::Gateway>,
    /// Round-trip times to the relays, reported in the status.
    rtt: crate::rtt::Probes,
}

impl Agent {
    fn send(&self, m: EdgeToServer) {
        // Only while connected; what is lost is re-sent on reconnect (status, keys) or re-emitted by the engine.
        if self.connected {
            let _ = self.out_tx.try_send(m);
        }
    }

    fn status_msg(&self) -> EdgeToServer {
        EdgeToServer::Status(self.status())
    }

    fn status(&self) -> EdgeStatus {
        EdgeStatus {
            switch_on: self.switch_on,
            agent_version: VERSION.into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }
    }

    /// The status with the relay round-trip times: at connect and after each round
    /// of measurements only, so the heartbeat every 15 s stays one statement.
    fn status_with_rtt(&self) -> EdgeToServer {
        EdgeToServer::Status(EdgeStatus {
            relay_rtt: self.rtt.results(),
            ..self.status()
        })
    }

    /// Reconciles with the server's complete list.
    async fn apply(&mut self, list: Vec<EdgeSession>) {
        let wanted: Vec<String> = list.iter().map(|s| s.session_id.clone()).collect();
        self.sessions.retain(|id, _| wanted.contains(id));
        self.dir.forget_session_keys(&wanted);
        for info in list {
            let id = info.session_id.clone();
            let dir = &self.dir;
            let r = self.sessions.entry(id.clone()).or_insert_with(|| {
                let private_key = dir.session_key(&id);
                let public = WgKey::from_bytes(keys::public_key(&private_key));
                Running {
                    info: info.clone(),
                    private_key,
                    public,
                    key_sent: false,
                    tunnel: None,
                    forwarder: None,
                    applied: None,
                    peers: Vec::new(),
                    relay: RelayLink::default(),
                    pump: None,
                    signals: None,
                    stats: HashMap::new(),
                }
            });
            r.info = info;
        }
        for (id, r) in self.sessions.iter_mut() {
            if !r.key_sent && self.connected {
                let _ = self.out_tx.try_send(EdgeToServer::SessionKey {
                    session_id: id.clone(),
                    public_key: r.public,
                });
                r.key_sent = true;
            }
        }
        self.converge().await;
    }

    /// Starts, updates or stops tunnels so that they match the sessions, the switch and the time.
    async fn converge(&mut self) {
        let now = now();
        let switch_on = self.switch_on;
        let tls = self.tls.clone();
        let out = self.out_tx.clone();
        let gateway = self.gateway.clone();
        for (id, r) in self.sessions.iter_mut() {
            let allowed =
                switch_on && r.info.state == SessionState::Active && now < r.info.valid_until;
            if !allowed {
                if r.tunnel.is_some() {
                    tracing::info!(session = %id, "tunnel stopped");
                }
                r.stop();
                continue;
            }
            let Some(token) = r.info.relay_token.clone() else {
                continue;
            };
            if r.tunnel.is_none() {
                match start_tunnel(r, &token, tls.clone(), out.clone(), gateway.as_ref()).await {
                    Ok(()) => tracing::info!(session = %id, "tunnel up"),
                    Err(e) => {
                        tracing::warn!(session = %id, error = %e, "tunnel start failed");
                        continue;
                    }
                }
            }
            let Some(t) = &r.tunnel else { continue };
            let connector = Connector::Rustls(tls.clone());
            if r.relay
                .follow(t, &r.info.relay_url, &token, &connector)
                .await
            {
                tracing::info!(session = %id, relay = %r.info.relay_url, "session moved to another relay");
            }
            let wanted: Vec<WgKey> = r.info.peers.iter().map(|p| p.public_key).collect();
            for gone in r.peers.iter().filter(|p| !wanted.contains(p)) {
                let _ = t.remove_peer(gone.to_bytes()).await;
            }
            for p in &r.info.peers {
                if r.peers.contains(&p.public_key) {
                    continue;
                }
                let Ok(ip) = p.overlay_ip.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let cfg = PeerConfig {
                    public_key: p.public_key.to_bytes(),
                    allowed_ips: vec![IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 })],
                    relay: Some(0),
                    // A standard WireGuard client keeps its own keepalive; it
                    // comes in through the relay's UDP bridge only.
                    persistent_keepalive: (!p.bridged).then_some(25),
                    bridged: p.bridged,
                };
                if t.add_peer(cfg).await.is_ok()
                    && !p.bridged
                    && let Ok(sig) = t.local_signal().await
                {
                    let _ = out.try_send(EdgeToServer::Signal {
                        session_id: id.clone(),
                        peer: p.public_key,
                        data: STANDARD.encode(sig.encode()),
                    });
                }
            }
            // Targets, NAT and clients: a narrower policy cuts the flows it no longer allows.
            let policy = r.policy();
            if r.applied.as_ref() != Some(&policy)
                && let Some((f, _)) = &r.forwarder
            {
                let (targets, nat, sources) = policy.clone();
                f.update(targets, nat, sources);
                r.applied = Some(policy);
            }
            r.peers = wanted;
        }
    }

    async fn signal(&mut self, session_id: &str, peer: WgKey, data: &str) {
        let Some(r) = self.sessions.get(session_id) else {
            return;
        };
        let Some(t) = &r.tunnel else {
            return;
        };
        let k = peer.to_bytes();
        let Some(sig) = STANDARD
            .decode(data)
            .ok()
            .and_then(|b| Signal::decode(&b).ok())
        else {
            tracing::debug!("undecodable signal ignored");
            return;
        };
        let _ = t.signal(k, sig).await;
    }

    /// Per-peer figures: to the control plane and into status.json.
    async fn report(&mut self) {
        let mut reports = Vec::new();
        for (id, r) in self.sessions.iter_mut() {
            let Some(t) = &r.tunnel else { continue };
            for p in &r.info.peers {
                let Ok(Some(s)) = t.stats(p.public_key.to_bytes()).await else {
                    continue;
                };
                let path = s.path.kind().to_string();
                let reason = s.reason.to_string();
                r.stats.insert(
                    p.public_key,
                    PeerStatus {
                        user: p.user.clone(),
                        overlay_ip: p.overlay_ip.clone(),
                        path: path.clone(),
                        reason: reason.clone(),
                        bytes_to_device: s.rx_bytes,
                        bytes_from_device: s.tx_bytes,
                        drops: s.drops,
                        handshake_secs_ago: s.last_handshake.map(|t| t.elapsed().as_secs()),
                    },
                );
                reports.push(EdgeToServer::Tunnel(TunnelReport {
                    session_id: id.clone(),
                    peer: p.public_key,
                    path,
                    reason,
                    bytes_to_device: s.rx_bytes,
                    bytes_from_device: s.tx_bytes,
                }));
            }
        }
        for m in reports {
            self.send(m);
        }
    }

    fn save_status(&self) {
        let mut sessions: Vec<SessionStatus> = self
            .sessions
            .values()
            .map(|r| SessionStatus {
                session_id: r.info.session_id.clone(),
                name: r.info.name.clone(),
                state: if r.tunnel.is_some() {
                    "running".into()
                } else {
                    r.info.state.as_str().into()
                },
                valid_until: r.info.valid_until,
                relay: r.info.relay_url.clone(),
                requested_by: r.info.requested_by.clone(),
                forwarder: r.forwarder.as_ref().map(|(f, _)| f.stats()),
                targets: r.info.targets.iter().map(|t| t.to_string()).collect(),
                peers: r
                    .info
                    .peers
                    .iter()
                    .map(|p| {
                        r.stats.get(&p.public_key).cloned().unwrap_or(PeerStatus {
                            user: p.user.clone(),
                            overlay_ip: p.overlay_ip.clone(),
                            path: "connecting".into(),
                            ..Default::default()
                        })
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        let s = Status {
            device_id: self.device_id.clone(),
            connected: self.connected,
            switch_on: self.switch_on,
            updated_at: now(),
            sessions,
            forwarding: match &self.gateway {
                Some(g) => format!("kernel ({})", g.interface()),
                None => "userspace".into(),
            },
        };
        if let Err(e) = self.dir.save_status(&s) {
            tracing::warn!(error = %e, "writing status.json");
        }
    }

    /// Local duties every tick: the switch, on-site decisions, session ends.
    async fn tick(&mut self) {
        let on = self.dir.switch_on(&self.switch);
        if on != self.switch_on {
            self.switch_on = on;
            tracing::info!(on, "remote-access switch changed");
            self.send(self.status_msg());
        }
        if self.rtt.tick(std::time::Instant::now()) {
            self.send(self.status_with_rtt());
        }
        for (session_id, approve) in self.dir.take_decisions() {
            tracing::info!(%session_id, approve, "on-site decision");
            self.send(EdgeToServer::Decision {
                session_id,
                approve,
            });
        }
        self.converge().await;
    }
}

async fn start_tunnel(
    r: &mut Running,
    token: &str,
    tls: Arc<rustls::ClientConfig>,
    out: mpsc::Sender<EdgeToServer>,
    gateway: Option<&crate::kernel::Gateway>,
) -> anyhow::Result<()> {
    let (to_fwd, from_tunnel) = mpsc::channel::<Bytes>(1024);
    let (to_tunnel, from_fwd) = mpsc::channel::<Bytes>(1024);
    let started = session::start(
        SessionTunnelConfig {
            private_key: r.private_key,
            stun: r.info.stun.clone(),
            relay_url: r.info.relay_url.clone(),
            relay_token: token.to_string(),
            connector: Connector::Rustls(tls),
        },
        from_fwd,
        to_fwd,
    )
    .await
    .context("starting the tunnel")?;
    let SessionTunnel {
        tunnel,
        mut events,
        pump,
    } = started;
    // Client packets go to the userspace stack, which opens ordinary sockets to
    // the released targets only (or, in kernel mode, through the policy check
    // to the TUN); the replies go back into the tunnel.
    r.applied = Some(r.policy());
    let (targets, nat, sources) = r.policy();
    let (lan, fwd_task) = match gateway {
        Some(g) => {
            let policy = drawbridge_netstack::Policy {
                targets,
                nat,
                allowed_sources: sources,
            };
            let (h, task) = match g.attach(policy, from_tunnel, to_tunnel) {
                Ok(attached) => attached,
                Err(e) => {
                    pump.abort();
                    return Err(e);
                }
            };
            (LanPath::Kernel(h), task)
        }
        None => {
            let (fwd, handle) = Forwarder::new(ForwarderConfig {
                local_ip: EDGE_OVERLAY_IP,
                targets,
                nat,
                allowed_sources: sources,
                limits: Limits::default(),
            });
            (
                LanPath::Userspace(handle),
                tokio::spawn(fwd.run(from_tunnel, to_tunnel)),
            )
        }
    };
    let session_id = r.info.session_id.clone();
    r.signals = Some(tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let DriverEvent::Signal { peer, signal } = ev {
                let _ = out.try_send(EdgeToServer::Signal {
                    session_id: session_id.clone(),
                    peer: WgKey::from_bytes(peer),
                    data: STANDARD.encode(signal.encode()),
                });
            }
        }
    }));
    r.pump = Some(pump);
    r.forwarder = Some((lan, fwd_task));
    r.tunnel = Some(tunnel);
    r.relay = RelayLink::started(&r.info.relay_url, token);
    Ok(())
}

/// The edge channel: one WebSocket over TLS, directly or through the plant's proxy.
pub type Channel = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<Box<dyn drawbridge_tunnel::proxy::Io>>,
>;

/// Why the edge channel could not be opened, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connecting timed out")]
    Timeout,
    #[error("the server did not send a challenge")]
    NoChallenge,
    #[error("refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected answer to auth: {0}")]
    Unexpected(String),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
}

impl From<tokio_tungstenite::tungstenite::Error> for ChannelError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ChannelError::WebSocket(Box::new(e))
    }
}

/// The edge channel's WebSocket read buffer. The library's default (128 KiB,
/// zero-filled on the first read, so all of it resident) is far more than the
/// server's small messages need; a larger one (up to `MAX_CHANNEL_FRAME`) still
/// arrives whole, the buffer grown for it. The server reads with the same size.
pub const CHANNEL_READ_BUFFER: usize = 8 * 1024;

/// Opens the edge channel (`GET /api/v1/edge/channel`) to `server` (`https://…`),
/// not yet authenticated; see [`authenticate`]. The TCP connection leaves from
/// `local` when given (the load tool's many loopback addresses), else from
/// wherever the system routes it.
pub async fn connect(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<&drawbridge_tunnel::proxy::Proxy>,
    local: Option<std::net::IpAddr>,
) -> Result<Channel, ChannelError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/edge/channel",
        server.replacen("https://", "wss://", 1)
    );
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_CHANNEL_FRAME);
    cfg.max_frame_size = Some(MAX_CHANNEL_FRAME);
    cfg.read_buffer_size = CHANNEL_READ_BUFFER;
    let ws = tokio::time::timeout(
        Duration::from_secs(15),
        drawbridge_tunnel::proxy::websocket(
            url.into_client_request()?,
            Some(cfg),
            Some(Connector::Rustls(tls)),
            proxy,
            local,
        ),
    )
    .await
    .map_err(|_| ChannelError::Timeout)??;
    Ok(ws)
}

/// Answers the server's challenge: signs `EDGE_AUTH_CONTEXT || nonce || device_id`
/// with the identity key and waits for the welcome.
pub async fn authenticate(
    ws: &mut Channel,
    device_id: &str,
    key: &Ed25519KeyPair,
) -> Result<(), ChannelError> {
    let Some(ServerToEdge::Challenge { nonce }) = recv(ws).await? else {
        return Err(ChannelError::NoChallenge);
    };
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(device_id.as_bytes());
    send(
        ws,
        &EdgeToServer::Auth {
            device_id: device_id.to_string(),
            signature: STANDARD.encode(key.sign(&msg).as_ref()),
        },
    )
    .await?;
    match recv(ws).await? {
        Some(ServerToEdge::Welcome { .. }) => Ok(()),
        Some(ServerToEdge::Error { code, message }) => Err(ChannelError::Refused { code, message }),
        other => Err(ChannelError::Unexpected(format!("{other:?}"))),
    }
}

/// The next message from the server; None when the channel closed.
pub async fn recv(ws: &mut Channel) -> Result<Option<ServerToEdge>, ChannelError> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends one message to the server.
pub async fn send(ws: &mut Channel, m: &EdgeToServer) -> Result<(), ChannelError> {
    ws.send(Message::Text(serde_json::to_string(m)?.into()))
        .await?;
    Ok(())
}

/// One connection's life: authenticate, then serve until it drops.
async fn session(
    agent: &mut Agent,
    key: &Ed25519KeyPair,
    server: &str,
    out_rx: &mut mpsc::Receiver<EdgeToServer>,
) -> anyhow::Result<()> {
    // Through the plant's HTTP proxy when DRAWBRIDGE_PROXY / HTTPS_PROXY says so.
    let proxy = drawbridge_tunnel::proxy::Proxy::from_env()?;
    let mut ws = connect(server, agent.tls.clone(), proxy.as_ref(), None).await?;
    authenticate(&mut ws, &agent.device_id, key).await?;
    tracing::info!("connected to the control plane");
    agent.connected = true;
    while out_rx.try_recv().is_ok() {} // stale messages from before
    for r in agent.sessions.values_mut() {
        r.key_sent = false; // re-announce keys after a reconnect
    }
    send(&mut ws, &agent.status_with_rtt()).await?;
    let mut tick = tokio::time::interval(TICK);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            m = recv(&mut ws) => match m? {
                None => return Ok(()),
                Some(ServerToEdge::Sessions { sessions, relays }) => {
                    agent.rtt.set_relays(relays);
                    agent.apply(sessions).await;
                    agent.save_status();
                }
                Some(ServerToEdge::Signal { session_id, peer, data }) => agent.signal(&session_id, peer, &data).await,
                Some(ServerToEdge::Error { code, message }) => tracing::warn!(%code, %message, "control plane reported an error"),
                Some(_) => {}
            },
            Some(m) = out_rx.recv() => send(&mut ws, &m).await?,
            _ = tick.tick() => {
                n = n.wrapping_add(1);
                agent.tick().await;
                if n.is_multiple_of(REPORT_EVERY) {
                    agent.report().await;
                }
                if n.is_multiple_of(STATUS_EVERY) {
                    send(&mut ws, &agent.status_msg()).await?;
                }
                agent.save_status();
            }
        }
    }
}

/// Runs until the process is stopped.
/// Runs the agent forever; `kernel` forwards through a TUN interface (root).
pub async fn run(dir: StateDir, switch: SwitchSource, kernel: bool) -> anyhow::Result<()> {
    let device = dir.device()?;
    let key = dir.identity()?;
    let mut tls = drawbridge_api_client::tls_config(device.ca_file.as_deref())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()]; // WebSockets upgrade over HTTP/1.1
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    let mut agent = Agent {
        switch_on: dir.switch_on(&switch),
        dir,
        device_id: device.device_id.clone(),
        switch,
        connected: false,
        sessions: HashMap::new(),
        out_tx,
        tls: Arc::new(tls),
        rtt: Default::default(),
        gateway: if kernel {
            Some(crate::kernel::Gateway::start().await?)
        } else {
            None
        },
    };
    tracing::info!(device = %agent.device_id, server = %device.server, switch_on = agent.switch_on, "edge agent starting");
    let mut backoff = Backoff::default();
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = session(&mut agent, &key, &device.server, &mut out_rx).await {
            tracing::warn!(error = %format!("{e:#}"), "control plane connection failed");
        }
        agent.connected = false;
        agent.save_status();
        // Keep enforcing the switch and session ends while disconnected.
        let until = tokio::time::Instant::now() + backoff.after(started.elapsed());
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(TICK.min(until - tokio::time::Instant::now())).await;
            agent.tick().await;
            agent.save_status();
        }
    }
}

/// The wait before the agent's next connection attempt: 1 s, doubling up to
/// 60 s, plus a random jitter of up to half of it so that a fleet cut off at
/// once does not come back at once; 1 s again after a connection that lasted
/// over a minute. The load tool's simulated edges use it too.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Backoff::MIN }
    }
}

impl Backoff {
    pub const MIN: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    /// The wait after a connection (or attempt) that lasted `lasted`.
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > Backoff::MAX {
            self.next = Backoff::MIN;
        }
        let base = self.next;
        self.next = (base * 2).min(Backoff::MAX);
        let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 2);
        base + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter_and_restarts_after_a_long_connection() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.after(Duration::ZERO)).collect();
        for (w, base) in waits.iter().zip([1, 2, 4, 8, 16, 32, 60, 60]) {
            let base = Duration::from_secs(base);
            assert!(*w >= base && *w <= base + base / 2, "{w:?} for {base:?}");
        }
        assert!(b.after(Duration::from_secs(61)) <= Duration::from_millis(1500));
    }
}
