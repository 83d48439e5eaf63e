//! The simulated edges: one tokio task per enrolled device, each holding one
//! edge channel like `drawbridge-edge run` does (challenge–response with the
//! identity key, a status with the switch on, a status every 15 s, a fresh
//! session key for every session it is told about, pongs through the WebSocket
//! library) but running no tunnels. It reconnects as the agent does (its
//! `Backoff`); only the first connection waits for the `--concurrency` gate,
//! as a fleet that comes online over a while; reconnects do not, as real edges
//! have no global gate.

use drawbridge_edge::agent::{self, Backoff, Channel, ChannelError};
use drawbridge_proto::SessionState;
use drawbridge_proto::channel::{EdgeSession, EdgeStatus, EdgeToServer, ServerToEdge};
use ring::signature::Ed25519KeyPair;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// As the real agent: a status every 15 s keeps the device "heard from".
const STATUS_EVERY: Duration = Duration::from_secs(15);

/// The most local addresses `--source-ips` may name.
pub const MAX_SOURCE_IPS: u32 = 256;

/// `--source-ips`: loopback addresses the edges connect from, round robin by
/// edge index, so that N is not bounded by the local ports of one address.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceIps(pub Vec<IpAddr>);

/// One address or a range `FIRST-LAST` in 127.0.0.0/8 (not 127.255.255.255,
/// not HAProxy's source address), at most [`MAX_SOURCE_IPS`].
pub fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let parse = |v: &str| {
        v.trim().parse::<Ipv4Addr>().map_err(|_| {
            format!("{v:?} is not an IPv4 address (expected e.g. 127.0.0.2-127.0.0.41)")
        })
    };
    let (a, b) = (parse(a)?, parse(b)?);
    for ip in [a, b] {
        if !ip.is_loopback() || ip == Ipv4Addr::new(127, 255, 255, 255) {
            return Err(format!(
                "{ip} is not a loopback address: the edges connect from 127.0.0.0/8 only"
            ));
        }
    }
    let (lo, hi) = (u32::from(a), u32::from(b));
    if lo > hi {
        return Err(format!("{a} comes after {b}"));
    }
    if hi - lo + 1 > MAX_SOURCE_IPS {
        return Err(format!(
            "{} addresses: at most {MAX_SOURCE_IPS}",
            u64::from(hi - lo) + 1
        ));
    }
    let haproxy = u32::from(crate::cluster::HAPROXY_SOURCE);
    if (lo..=hi).contains(&haproxy) {
        return Err(format!(
            "{} is HAProxy's source address towards the replicas in cluster mode",
            crate::cluster::HAPROXY_SOURCE
        ));
    }
    Ok(SourceIps(
        (lo..=hi).map(|v| IpAddr::V4(Ipv4Addr::from(v))).collect(),
    ))
}

/// One enrolled device as the simulator holds it.
pub struct Device {
    pub index: usize,
    pub device_id: String,
    pub key: Ed25519KeyPair,
}

/// What all simulated edges share.
pub struct Fleet {
    pub server: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: Option<drawbridge_tunnel::proxy::Proxy>,
    /// Local addresses to connect from, by edge index (empty: the system's choice).
    sources: Vec<IpAddr>,
    /// Bounds how many edges are connecting (TCP + TLS + upgrade + auth) for
    /// the first time at once.
    pub gate: Semaphore,
    /// Session id → who waits for the first `sessions` message listing it as active.
    waiters: Mutex<HashMap<String, oneshot::Sender<Instant>>>,
    /// Edges whose channel is up (authenticated, first `sessions` received).
    pub online: AtomicUsize,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Channels that ended after being up.
    pub drops: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Fleet {
    pub fn new(
        server: String,
        tls: Arc<rustls::ClientConfig>,
        proxy: Option<drawbridge_tunnel::proxy::Proxy>,
        sources: Vec<IpAddr>,
        concurrency: usize,
    ) -> Fleet {
        Fleet {
            server,
            tls,
            proxy,
            sources,
            gate: Semaphore::new(concurrency.max(1)),
            waiters: Mutex::default(),
            online: AtomicUsize::new(0),
            connect_failures: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            errors: Mutex::default(),
        }
    }

    /// Be told when an edge first hears that `session_id` is active.
    pub fn expect_active(&self, session_id: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(session_id.to_string(), tx);
        }
        rx
    }

    pub fn forget(&self, session_id: &str) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(session_id);
        }
    }

    /// The most frequent errors, most frequent first.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .errors
            .lock()
            .map(|e| e.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.truncate(8);
        v
    }

    fn error(&self, e: &ChannelError) {
        let mut text = e.to_string();
        text.truncate(160);
        if let Ok(mut m) = self.errors.lock()
            && (m.len() < 64 || m.contains_key(&text))
        {
            *m.entry(text).or_default() += 1;
        }
    }

    async fn send(&self, ws: &mut Channel, m: &EdgeToServer) -> Result<(), ChannelError> {
        agent::send(ws, m).await?;
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn recv(&self, ws: &mut Channel) -> Result<Option<ServerToEdge>, ChannelError> {
        let m = agent::recv(ws).await?;
        if m.is_some() {
            self.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        Ok(m)
    }
}

/// A status with the switch on, as the agent sends it.
pub(crate) fn status() -> EdgeToServer {
    EdgeToServer::Status(EdgeStatus {
        switch_on: true,
        agent_version: concat!("loadtest-", env!("CARGO_PKG_VERSION")).into(),
        endpoints: vec![],
        relay_rtt: vec![],
    })
}

/// The session list the server pushed: announce a key for every new session
/// (as the agent does, a fresh one each), and tell whoever waits for one to be active.
async fn on_sessions(
    fleet: &Fleet,
    ws: &mut Channel,
    sessions: Vec<EdgeSession>,
    at: Instant,
    known: &mut HashSet<String>,
) -> Result<(), ChannelError> {
    for s in &sessions {
        if s.state == SessionState::Active
            && let Some(tx) = fleet
                .waiters
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&s.session_id))
        {
            let _ = tx.send(at);
        }
    }
    known.retain(|id| sessions.iter().any(|s| &s.session_id == id));
    for s in sessions {
        if known.insert(s.session_id.clone()) {
            let key: [u8; 32] = rand::random();
            let m = EdgeToServer::SessionKey {
                session_id: s.session_id,
                public_key: drawbridge_proto::WgKey::from_bytes(key),
            };
            fleet.send(ws, &m).await?;
        }
    }
    Ok(())
}

/// Connects, authenticates, reports the switch on and waits for the first
/// session list: the edge is online. Returns the channel.
async fn open(
    fleet: &Fleet,
    d: &Device,
    known: &mut HashSet<String>,
) -> Result<Channel, ChannelError> {
    let local = (!fleet.sources.is_empty()).then(|| fleet.sources[d.index % fleet.sources.len()]);
    let mut ws = agent::connect(
        &fleet.server,
        fleet.tls.clone(),
        fleet.proxy.as_ref(),
        local,
    )
    .await?;
    agent::authenticate(&mut ws, &d.device_id, &d.key).await?;
    fleet.send(&mut ws, &status()).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), fleet.recv(&mut ws))
            .await
            .map_err(|_| ChannelError::Timeout)??;
        match m {
            None => {
                return Err(ChannelError::Unexpected(
                    "closed before the session list".into(),
                ));
            }
            Some(ServerToEdge::Sessions { sessions, .. }) => {
                on_sessions(fleet, &mut ws, sessions, Instant::now(), known).await?;
                return Ok(ws);
            }
            Some(_) => {}
        }
    }
}

/// The channel's life after it is up: until it ends.
async fn serve(
    fleet: &Fleet,
    ws: &mut Channel,
    known: &mut HashSet<String>,
) -> Result<(), ChannelError> {
    let mut tick = tokio::time::interval_at(Instant::now() + STATUS_EVERY, STATUS_EVERY);
    loop {
        tokio::select! {
            m = fleet.recv(ws) => {
                let at = Instant::now();
                match m? {
                    None => return Ok(()),
                    Some(ServerToEdge::Sessions { sessions, .. }) => on_sessions(fleet, ws, sessions, at, known).await?,
                    Some(_) => {}
                }
            }
            _ = tick.tick() => fleet.send(ws, &status()).await?,
        }
    }
}

/// One simulated edge, forever (reconnecting with the agent's backoff and
/// jitter). The first time it is online it sends its handshake time on `online`.
pub async fn run(fleet: Arc<Fleet>, d: Device, online: mpsc::UnboundedSender<(usize, Duration)>) {
    let mut first = true;
    let mut backoff = Backoff::default();
    loop {
        let mut known = HashSet::new();
        let started = Instant::now();
        let opened = {
            // Only the first connection waits its turn; reconnects go at once.
            let _permit = if first {
                let Ok(p) = fleet.gate.acquire().await else {
                    return;
                };
                Some(p)
            } else {
                None
            };
            let t = Instant::now();
            // Boxed: the handshake's futures (about 11 KiB) live only while
            // connecting, not in every idle edge's task for good.
            Box::pin(open(&fleet, &d, &mut known))
                .await
                .map(|ws| (ws, t.elapsed()))
        };
        match opened {
            Ok((mut ws, took)) => {
                fleet.online.fetch_add(1, Ordering::Relaxed);
                if first {
                    first = false;
                    let _ = online.send((d.index, took));
                }
                let r = serve(&fleet, &mut ws, &mut known).await;
                fleet.online.fetch_sub(1, Ordering::Relaxed);
                fleet.drops.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    fleet.error(&e);
                }
            }
            Err(e) => {
                fleet.connect_failures.fetch_add(1, Ordering::Relaxed);
                fleet.error(&e);
            }
        }
        tokio::time::sleep(backoff.after(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_are_a_bounded_loopback_range() {
        let r = parse_source_ips("127.0.0.2-127.0.0.41").unwrap();
        assert_eq!(r.0.len(), 40);
        assert_eq!(r.0[0], IpAddr::from([127, 0, 0, 2]));
        assert_eq!(r.0[39], IpAddr::from([127, 0, 0, 41]));
        assert_eq!(parse_source_ips("127.0.0.9").unwrap().0.len(), 1);
        assert_eq!(
            parse_source_ips("127.0.0.0-127.0.0.255").unwrap().0.len(),
            256
        );
        for bad in [
            "127.0.0.0-127.0.1.0", // 257
            "10.0.0.1-10.0.0.2",   // not loopback
            "127.0.0.5-127.0.0.2", // backwards
            "127.0.0.1-::1",       // not IPv4
            "localhost",           // not an address
            "127.255.255.255",     // broadcast
            "127.1.0.0-127.1.0.9", // HAProxy's source
        ] {
            assert!(parse_source_ips(bad).is_err(), "{bad}");
        }
        assert!(
            parse_source_ips("10.0.0.1")
                .unwrap_err()
                .contains("127.0.0.0/8")
        );
    }
}
