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

mod channel;
mod data_thread;
mod push;
mod sessions;
mod updates;

pub use channel::{
    Backoff, CHANNEL_READ_BUFFER, Channel, ChannelError, Liveness, QUIET_LIMIT, QUIET_PING, Quiet,
    authenticate, connect, recv, recv_noting, send,
};

use crate::local::{PeerStatus, SessionStatus, StateDir, Status, SwitchSource};
use anyhow::Context;
use drawbridge_proto::channel::{EdgeStatus, EdgeToServer, ServerToEdge};
use ring::signature::Ed25519KeyPair;
use sessions::Running;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The edge's own address inside a session's overlay (clients get .2 onwards).
const EDGE_OVERLAY_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 1);
const TICK: Duration = Duration::from_secs(1);
const STATUS_EVERY: u32 = 15;
const REPORT_EVERY: u32 = 5;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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
    rtt: drawbridge_api_client::rtt::Probes,
    /// The data services: polling (always), historian pushes and live values.
    push: push::Push,
    /// Signed updates of this binary.
    update: crate::update::Updater,
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
            agent_version: crate::version().into(),
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
                desktops: r.info.desktops.clone(),
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
            data: Some(self.push.data.status()),
            version: crate::version().into(),
            update: self.update.status(),
            heap_bytes: drawbridge_tunnel::malloc::heap_in_use(),
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
    // Authenticated: a new version on trial has proved itself.
    let update_reports = agent.update.on_welcome();
    tracing::info!(version = crate::version(), "connected to the control plane");
    agent.connected = true;
    while out_rx.try_recv().is_ok() {} // stale messages from before
    for r in agent.sessions.values_mut() {
        r.key_sent = false; // re-announce keys after a reconnect
    }
    agent.push.reset();
    send(&mut ws, &agent.status_with_rtt()).await?;
    agent.report_updates(&mut ws, update_reports).await?;
    let mut tick = tokio::time::interval(TICK);
    let mut n: u32 = 0;
    let data = agent.push.data.clone();
    let live = Liveness::new(std::time::Instant::now());
    loop {
        tokio::select! {
            m = recv_noting(&mut ws, &live) => match m? {
                None => return Ok(()),
                Some(ServerToEdge::Tags { tags }) => {
                    agent.push.on_tags(tags);
                    agent.push.records(&mut ws).await?;
                }
                Some(ServerToEdge::RecordsAck { stream, seq }) => {
                    agent.push.on_ack(stream, seq).await;
                    agent.push.records(&mut ws).await?;
                }
                Some(ServerToEdge::Watch { for_ms }) => {
                    agent.push.on_watch(for_ms);
                    agent.push.live(&mut ws).await?;
                }
                Some(ServerToEdge::Sessions { sessions, relays }) => {
                    agent.rtt.set_relays(relays);
                    agent.apply(sessions).await;
                    agent.save_status();
                }
                Some(ServerToEdge::Signal { session_id, peer, data }) => agent.signal(&session_id, peer, &data).await,
                Some(ServerToEdge::Update { offer }) => {
                    let reports = agent.update.on_offer(offer).await;
                    agent.report_updates(&mut ws, reports).await?;
                    agent.step_update(&mut ws).await?;
                }
                Some(ServerToEdge::Error { code, message }) => tracing::warn!(%code, %message, "control plane reported an error"),
                Some(_) => {}
            },
            Some(m) = out_rx.recv() => send(&mut ws, &m).await?,
            Some(o) = agent.update.next() => {
                let reports = agent.update.on_outcome(o);
                agent.report_updates(&mut ws, reports).await?;
                agent.step_update(&mut ws).await?;
            }
            () = data.appended() => agent.push.records(&mut ws).await?,
            () = data.kpi_changed() => agent.push.live(&mut ws).await?,
            _ = tick.tick() => {
                match live.check(std::time::Instant::now()) {
                    Quiet::Fine => {}
                    Quiet::Ping => {
                        use futures_util::SinkExt;
                        ws.send(tokio_tungstenite::tungstenite::Message::Ping(Vec::new().into()))
                            .await
                            .map_err(ChannelError::from)?;
                    }
                    Quiet::GiveUp => return Err(ChannelError::Silent.into()),
                }
                n = n.wrapping_add(1);
                agent.tick().await;
                agent.step_update(&mut ws).await?;
                agent.push.records(&mut ws).await?;
                agent.push.live(&mut ws).await?;
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

/// Runs the agent forever; `kernel` forwards through a TUN interface (root);
/// `historian` bounds the data services' buffer; `update_health`: how long a
/// new version has to come online before it is rolled back.
pub async fn run(
    dir: StateDir,
    switch: SwitchSource,
    kernel: bool,
    historian: crate::data::buffer::BufferConfig,
    update_health: Duration,
) -> anyhow::Result<()> {
    // First thing: a new version on trial past its deadline is rolled back
    // (this does not return then), one within it gets its timer.
    crate::update::at_start(&dir.0, now()).context("checking the last update")?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let device = dir.device()?;
    let key = Arc::new(dir.identity()?);
    // Polling starts now, with the tags kept from last time, whether or not
    // the control plane is reachable.
    let data = crate::data::Data::start(&dir.0, historian)
        .with_context(|| format!("opening the historian in {}", dir.0.display()))?;
    let mut tls = drawbridge_api_client::tls_config(device.ca_file.as_deref())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()]; // WebSockets upgrade over HTTP/1.1
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    let tls = Arc::new(tls);
    let update = crate::update::Updater::new(crate::update::Config {
        dir: dir.clone(),
        exe,
        pinned: device.release_root.clone(),
        source: crate::update::Source {
            server: device.server.clone(),
            tls: tls.clone(),
            device_id: device.device_id.clone(),
            key: key.clone(),
        },
        health: update_health,
    });
    let mut agent = Agent {
        switch_on: dir.switch_on(&switch),
        dir,
        device_id: device.device_id.clone(),
        switch,
        connected: false,
        sessions: HashMap::new(),
        out_tx,
        tls,
        update,
        rtt: Default::default(),
        push: push::Push::new(data),
        gateway: if kernel {
            Some(crate::kernel::Gateway::start().await?)
        } else {
            None
        },
    };
    tracing::info!(device = %agent.device_id, server = %device.server, switch_on = agent.switch_on, version = crate::version(), "edge agent starting");
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
