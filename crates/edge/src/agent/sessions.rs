//! The sessions this edge runs: reconciliation of the server's list into
//! per-session tunnels (a fresh WireGuard key each), peers, candidates, the
//! path to the LAN (userspace stack or kernel), per-peer reports.

use super::data_thread::DataThread;
use super::{Agent, EDGE_OVERLAY_IP, now};
use crate::local::PeerStatus;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drawbridge_netstack::{Forwarder, ForwarderConfig, ForwarderHandle, Limits};
use drawbridge_proto::channel::{EdgeSession, EdgeToServer, TunnelReport};
use drawbridge_proto::{SessionState, WgKey};
use drawbridge_tunnel::driver::{Connector, DriverEvent, Tunnel};
use drawbridge_tunnel::session::{self, RelayLink, SessionTunnel, SessionTunnelConfig};
use drawbridge_tunnel::{IpNet, PeerConfig, Signal, keys};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How a session's packets reach the LAN.
pub(super) enum LanPath {
    Userspace(ForwarderHandle),
    Kernel(crate::kernel::KernelHandle),
}

impl LanPath {
    pub(super) fn stats(&self) -> drawbridge_netstack::ForwarderStats {
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
pub(super) struct Running {
    pub(super) info: EdgeSession,
    pub(super) private_key: [u8; 32],
    pub(super) public: WgKey,
    pub(super) key_sent: bool,
    pub(super) tunnel: Option<Arc<Tunnel>>,
    /// The path towards the LAN: the userspace stack terminating the clients'
    /// flows, or the kernel path (`run --tun`).
    pub(super) forwarder: Option<(LanPath, tokio::task::JoinHandle<()>)>,
    /// The policy the forwarder runs with: any change of targets, NAT or
    /// clients is applied at once (flows no longer allowed are cut).
    pub(super) applied: Option<PolicyParts>,
    /// Clients currently configured as peers (base64 keys).
    pub(super) peers: Vec<WgKey>,
    /// The relay connection as last given.
    pub(super) relay: RelayLink,
    /// Carries the tunnel's candidates to the control plane.
    pub(super) signals: Option<tokio::task::JoinHandle<()>>,
    pub(super) stats: HashMap<WgKey, PeerStatus>,
    /// The thread the tunnel and the LAN path run on (dropped last: it ends what
    /// is left on it).
    pub(super) data: Option<DataThread>,
}

impl Running {
    fn stop(&mut self) {
        if let Some(s) = self.signals.take() {
            s.abort();
        }
        if let Some((_, f)) = self.forwarder.take() {
            f.abort();
        }
        self.tunnel = None;
        self.data = None;
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

impl Agent {
    /// Reconciles with the server's complete list.
    pub(super) async fn apply(&mut self, list: Vec<EdgeSession>) {
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
                    signals: None,
                    stats: HashMap::new(),
                    data: None,
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
    pub(super) async fn converge(&mut self) {
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
                .follow(t, &r.info.relay_url, &token, &connector, None)
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

    pub(super) async fn signal(&mut self, session_id: &str, peer: WgKey, data: &str) {
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
    pub(super) async fn report(&mut self) {
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
    // In userspace mode the tunnel's driver and the LAN path share a thread of
    // their own (see `data_thread`; beyond its limit, the main runtime): started
    // there, they belong to its runtime. In
    // kernel mode the LAN's replies come from one TUN reader for all sessions on the
    // main runtime, so the tunnel stays there too: a session thread would add a
    // thread wake-up to every reply (the lab's ping went from 0.42 to 0.67 ms).
    let data = match gateway {
        Some(_) => None,
        None => {
            let name: String = format!("s-{}", r.info.session_id)
                .chars()
                .take(15)
                .collect();
            let thread = DataThread::start(&name).context("starting the session's thread")?;
            if thread.is_none() {
                tracing::info!(
                    session = %r.info.session_id,
                    max = super::data_thread::MAX_THREADS,
                    "every session thread is taken: this session runs on the main runtime"
                );
            }
            thread
        }
    };
    let config = SessionTunnelConfig {
        private_key: r.private_key,
        stun: r.info.stun.clone(),
        relay_url: r.info.relay_url.clone(),
        relay_token: token.to_string(),
        connector: Connector::Rustls(tls),
        local_relay: None,
    };
    let start = session::start(config, from_fwd, to_fwd);
    let started = match &data {
        Some(d) => d.spawn(start).await.context("the session's thread ended")?,
        None => start.await,
    }
    .context("starting the tunnel")?;
    let SessionTunnel { tunnel, mut events } = started;
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
                Err(e) => return Err(e),
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
            let run = fwd.run(from_tunnel, to_tunnel);
            let task = match &data {
                Some(d) => d.spawn(run),
                None => tokio::spawn(run),
            };
            (LanPath::Userspace(handle), task)
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
    r.forwarder = Some((lan, fwd_task));
    r.tunnel = Some(tunnel);
    r.data = data;
    r.relay = RelayLink::started(&r.info.relay_url, token);
    Ok(())
}
