//! Drawbridge relay and STUN services.
//!
//! The relay forwards end-to-end encrypted WireGuard packets between peers over WebSocket
//! (`GET /relay/v1`, `Authorization: Bearer <token>`). A connection is admitted only with a
//! valid token ([`token`]); a DATA frame is forwarded only when the sender's token names the
//! destination, the destination's token names the sender, and both belong to the same
//! session. The relay rewrites the frame's key to the sender's and never sees plaintext.
//! Every length is bounded; a malformed or oversized frame closes that one connection; a
//! receiver whose queue is full is disconnected rather than buffered without bound.
//!
//! The relay also bridges standard WireGuard clients from a UDP port to edges whose token
//! has the `bridge` claim ([`bridge`], [`RelayState::serve_bridge`]).

pub mod bridge;
mod conn;
pub mod feed;
#[doc(hidden)]
pub mod fuzz;
pub mod stun;
pub mod switchboard;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drawbridge_wire::frame::{MAX_FRAME, READ_BUFFER};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};

use switchboard::{Full, Grant, Key, Switchboard};

pub use conn::{LocalConn, Refused};
pub use token::{Claims, SigningKey, TokenError, VerifyingKey};

/// Path of the relay WebSocket endpoint.
pub const RELAY_PATH: &str = "/relay/v1";

/// Most revoked sessions remembered at once (each only until its tokens expire).
const MAX_REVOKED: usize = 100_000;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The control plane's token verifying key.
    pub verifying_key: VerifyingKey,
    /// Frames queued per receiving connection. A frame that finds the queue full is
    /// dropped (tail drop, as a router does: the tunnel's TCP slows down).
    pub send_queue: usize,
    /// A receiver whose queue stays full this long (it takes nothing off it) is
    /// disconnected as slow instead of being buffered for.
    pub slow_after: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
}

impl RelayConfig {
    pub fn new(verifying_key: VerifyingKey) -> Self {
        RelayConfig {
            verifying_key,
            send_queue: 1024,
            slow_after: Duration::from_secs(2),
            max_connections: 10_000,
        }
    }
}

/// Counters, also exported through the `metrics` facade.
#[derive(Debug, Default)]
struct Counters {
    connections_total: AtomicU64,
    refused: AtomicU64,
    frames_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    drop_not_allowed: AtomicU64,
    drop_no_route: AtomicU64,
    drop_slow_receiver: AtomicU64,
    drop_queue_full: AtomicU64,
    closed_malformed: AtomicU64,
    bridge_datagrams_in: AtomicU64,
    bridge_datagrams_out: AtomicU64,
    bridge_drops: AtomicU64,
    bridge_rate_limited: AtomicU64,
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub connections: u64,
    pub connections_total: u64,
    pub refused: u64,
    pub frames_forwarded: u64,
    pub bytes_forwarded: u64,
    pub drop_not_allowed: u64,
    pub drop_no_route: u64,
    pub drop_slow_receiver: u64,
    /// Frames dropped because the receiver's queue was full (it stays connected).
    pub drop_queue_full: u64,
    pub closed_malformed: u64,
    /// UDP bridge: client datagrams handed to an edge.
    pub bridge_datagrams_in: u64,
    /// UDP bridge: edge packets sent to a client endpoint.
    pub bridge_datagrams_out: u64,
    /// UDP bridge: datagrams or frames dropped (malformed, no route, not allowed, ...).
    pub bridge_drops: u64,
    /// Handshake initiations refused by the per-address limit (also in `bridge_drops`).
    pub bridge_rate_limited: u64,
    /// UDP bridge: client endpoints currently tracked.
    pub bridge_tags: u64,
}

/// The shell's side of one connection: its queue and its kill switch (the rules about it
/// live in the [`Switchboard`]).
struct Conn {
    tx: mpsc::Sender<Bytes>,
    kill: watch::Sender<bool>,
}

/// What became of a frame queued for a connection.
enum Push {
    Sent,
    /// The receiver's queue was full: the frame was dropped (and the receiver
    /// disconnected if that has lasted `slow_after`).
    Full,
    /// No such connection, or it is closing.
    Gone,
}

struct Inner {
    config: RelayConfig,
    conns: Mutex<Switchboard<Conn>>,
    next_id: AtomicU64,
    counters: Counters,
    bridge: bridge::Bridge,
    /// Sessions the control plane revoked (ended, or a device of theirs disabled),
    /// each with the time after which no token of the session can be valid.
    revoked: Mutex<HashMap<String, u64>>,
    /// Stopping: the heartbeat asks the control plane to move the sessions away.
    draining: std::sync::atomic::AtomicBool,
    /// Wakes the feed loop for a heartbeat now (when draining starts).
    feed_wake: tokio::sync::Notify,
}

/// Shared relay state; cheap to clone.
#[derive(Clone)]
pub struct RelayState {
    inner: Arc<Inner>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn drop_reason(reason: &'static str) {
    metrics::counter!("relay_drops_total", "reason" => reason).increment(1);
}

impl RelayState {
    pub fn new(config: RelayConfig) -> Self {
        RelayState {
            inner: Arc::new(Inner {
                config,
                conns: Mutex::new(Switchboard::default()),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
                bridge: bridge::Bridge::new(),
                revoked: Mutex::new(HashMap::new()),
                draining: std::sync::atomic::AtomicBool::new(false),
                feed_wake: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Starts draining: the next heartbeat (sent at once) tells the control plane
    /// to move this relay's sessions to another relay and to give it no new ones.
    /// Connections stay served until their peers have moved.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.feed_wake.notify_one();
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Resolves when draining starts (for the feed loop).
    pub(crate) async fn feed_woken(&self) {
        self.inner.feed_wake.notified().await
    }

    /// Sessions with a peer connected now.
    pub fn sessions(&self) -> u64 {
        self.lock().sessions() as u64
    }

    /// Peer connections now.
    pub fn connections(&self) -> u64 {
        self.lock().len() as u64
    }

    /// Current counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.inner.counters;
        RelayStats {
            connections: self.lock().len() as u64,
            connections_total: c.connections_total.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            frames_forwarded: c.frames_forwarded.load(Ordering::Relaxed),
            bytes_forwarded: c.bytes_forwarded.load(Ordering::Relaxed),
            drop_not_allowed: c.drop_not_allowed.load(Ordering::Relaxed),
            drop_no_route: c.drop_no_route.load(Ordering::Relaxed),
            drop_slow_receiver: c.drop_slow_receiver.load(Ordering::Relaxed),
            drop_queue_full: c.drop_queue_full.load(Ordering::Relaxed),
            closed_malformed: c.closed_malformed.load(Ordering::Relaxed),
            bridge_datagrams_in: c.bridge_datagrams_in.load(Ordering::Relaxed),
            bridge_datagrams_out: c.bridge_datagrams_out.load(Ordering::Relaxed),
            bridge_drops: c.bridge_drops.load(Ordering::Relaxed),
            bridge_rate_limited: c.bridge_rate_limited.load(Ordering::Relaxed),
            bridge_tags: self.inner.bridge.table().len() as u64,
        }
    }

    /// Disconnects every peer of a session (e.g. when the control plane ends it).
    pub fn disconnect_session(&self, session_id: &str) {
        let mut conns = self.lock();
        for c in conns.remove_session(session_id) {
            let _ = c.kill.send(true);
        }
        metrics::gauge!("relay_connections").set(conns.len() as f64);
    }

    /// Revokes a session: its connections close now, and until `until` (unix seconds;
    /// the latest expiry any of its tokens can have) its tokens are refused, both for
    /// new connections and as `TOKEN` refreshes. Only this relay process knows: the
    /// server calls it for the relay it mounts, a standalone relay from the control
    /// plane's revocation feed ([`feed`]).
    pub fn revoke_session(&self, session_id: &str, until: u64) {
        {
            let mut revoked = self.revoked();
            if revoked.len() >= MAX_REVOKED && !revoked.contains_key(session_id) {
                let now = unix_now();
                revoked.retain(|_, u| *u > now);
                if revoked.len() >= MAX_REVOKED {
                    // Still full: forget the one whose tokens expire first.
                    if let Some(k) = revoked
                        .iter()
                        .min_by_key(|(_, u)| **u)
                        .map(|(k, _)| k.clone())
                    {
                        revoked.remove(&k);
                    }
                }
            }
            let e = revoked.entry(session_id.to_string()).or_insert(until);
            *e = (*e).max(until);
        }
        // After the entry exists: a connection admitted meanwhile is closed here or
        // sees the entry itself (`connection` checks after registering).
        self.disconnect_session(session_id);
    }

    /// Whether the session's tokens are refused now.
    fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked()
            .get(session_id)
            .is_some_and(|until| *until >= unix_now())
    }

    fn revoked(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.inner.revoked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Switchboard<Conn>> {
        // A poisoned map is still consistent (every mutation is a single insert/remove).
        self.inner.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies a token sent on connection `id` (held by `current`'s key): valid,
    /// for the same key and session. Then the connection's grants become the new
    /// token's. `None` refuses it (the connection is closed).
    fn refresh(&self, id: u64, current: &Claims, token: &[u8]) -> Option<Claims> {
        let text = std::str::from_utf8(token).ok()?;
        let fresh = token::verify(&self.inner.config.verifying_key, text, unix_now()).ok()?;
        let same_session: bool = fresh
            .session_id
            .as_bytes()
            .ct_eq(current.session_id.as_bytes())
            .into();
        if fresh.peer != current.peer || !same_session || self.is_revoked(&fresh.session_id) {
            return None;
        }
        self.lock()
            .regrant(&fresh.peer, id, Grant::from_claims(&fresh))
            .then_some(fresh)
    }

    /// Routes one DATA frame from `src` by the [`Switchboard`]'s rules (never waits: a full
    /// receiver is disconnected).
    fn forward(&self, src: &Key, src_grant: &Grant, mut frame: Vec<u8>) {
        let c = &self.inner.counters;
        let mut conns = self.lock();
        let dst = match conns.route(src, src_grant, &mut frame) {
            Ok(dst) => dst,
            Err(drop) => {
                match drop {
                    switchboard::Drop::NotAllowed => &c.drop_not_allowed,
                    switchboard::Drop::NoRoute => &c.drop_no_route,
                    // Only decoded DATA frames come here.
                    switchboard::Drop::Malformed => return,
                }
                .fetch_add(1, Ordering::Relaxed);
                drop_reason(drop.reason());
                return;
            }
        };
        let len = frame.len() as u64;
        match self.push(&mut conns, &dst, Bytes::from(frame)) {
            Push::Sent => {
                c.frames_forwarded.fetch_add(1, Ordering::Relaxed);
                c.bytes_forwarded.fetch_add(len, Ordering::Relaxed);
                metrics::counter!("relay_frames_forwarded_total").increment(1);
                metrics::counter!("relay_bytes_forwarded_total").increment(len);
            }
            Push::Full => {}
            Push::Gone => {
                c.drop_no_route.fetch_add(1, Ordering::Relaxed);
                drop_reason("no_route");
            }
        }
    }

    /// Queues `frame` for connection `dst` without waiting. A full queue drops the frame
    /// (counted); a receiver whose queue has stayed full for `slow_after` is disconnected
    /// (and counted) rather than buffered for without bound.
    fn push(&self, conns: &mut Switchboard<Conn>, dst: &Key, frame: Bytes) -> Push {
        let Some(target) = conns.get(dst) else {
            return Push::Gone;
        };
        match target.handle.tx.try_send(frame) {
            Ok(()) => {
                conns.queued(dst);
                Push::Sent
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let c = &self.inner.counters;
                c.drop_queue_full.fetch_add(1, Ordering::Relaxed);
                drop_reason("queue_full");
                let now = std::time::Instant::now();
                if let Full::Disconnected(t) =
                    conns.queue_full(dst, now, self.inner.config.slow_after)
                {
                    c.drop_slow_receiver.fetch_add(1, Ordering::Relaxed);
                    drop_reason("slow_receiver");
                    let _ = t.kill.send(true);
                    tracing::info!(peer = %short(dst), "relay: slow receiver disconnected");
                    metrics::gauge!("relay_connections").set(conns.len() as f64);
                }
                Push::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Gone,
        }
    }
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(TokenError::Malformed)?;
    Ok(value
        .strip_prefix("Bearer ")
        .ok_or(TokenError::Malformed)?
        .trim())
}

fn short(k: &Key) -> String {
    hex::encode(&k[..4])
}

/// The relay's routes: `GET /relay/v1` (WebSocket). Merge into the server's router.
pub fn router(state: RelayState) -> Router {
    Router::new()
        .route(RELAY_PATH, get(ws_handler))
        .with_state(state)
}

async fn ws_handler(
    State(state): State<RelayState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let claims = match state.admit(bearer(&headers)) {
        Ok(c) => c,
        Err(e @ (conn::Refused::Token(_) | conn::Refused::Revoked)) => {
            let text = match e {
                conn::Refused::Revoked => "relay token revoked",
                _ => "invalid relay token",
            };
            return (StatusCode::UNAUTHORIZED, text).into_response();
        }
        Err(conn::Refused::Full) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "relay full").into_response();
        }
    };
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| conn::websocket(state, claims, socket))
}

/// Settings for running relay + STUN on their own.
#[derive(Clone)]
pub struct StandaloneConfig {
    /// TCP address of the relay's WebSocket listener.
    pub relay_listen: SocketAddr,
    /// UDP address of the STUN service.
    pub stun_listen: SocketAddr,
    /// UDP address of the bridge for standard WireGuard clients ([`RelayState::serve_bridge`]);
    /// `None` runs no bridge.
    pub bridge_listen: Option<SocketAddr>,
    pub relay: RelayConfig,
    /// TLS for the relay listener (`wss://`); `None` serves plain `ws://` (tests, or behind
    /// a TLS-terminating proxy).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The control plane's revocation feed ([`feed`]); `None`: a revoked session's tokens
    /// stay admitted here until they expire.
    pub revocations: Option<feed::poll::RevocationFeed>,
}

impl std::fmt::Debug for StandaloneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandaloneConfig")
            .field("relay_listen", &self.relay_listen)
            .field("stun_listen", &self.stun_listen)
            .field("bridge_listen", &self.bridge_listen)
            .field("tls", &self.tls.is_some())
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

/// A standalone relay with its sockets bound, not yet serving.
pub struct Standalone {
    listener: tokio::net::TcpListener,
    udp: tokio::net::UdpSocket,
    bridge_udp: Option<tokio::net::UdpSocket>,
    state: RelayState,
    tls: Option<Arc<rustls::ServerConfig>>,
    revocations: Option<feed::poll::RevocationFeed>,
}

impl Standalone {
    /// Binds the relay listener, the STUN socket and (when configured) the bridge socket.
    pub async fn bind(config: StandaloneConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.relay_listen).await?;
        let udp = tokio::net::UdpSocket::bind(config.stun_listen).await?;
        let bridge_udp = match config.bridge_listen {
            Some(a) => Some(tokio::net::UdpSocket::bind(a).await?),
            None => None,
        };
        Ok(Standalone {
            listener,
            udp,
            bridge_udp,
            state: RelayState::new(config.relay),
            tls: config.tls,
            revocations: config.revocations,
        })
    }

    /// The relay listener's address.
    pub fn relay_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The relay's state.
    pub fn state(&self) -> RelayState {
        self.state.clone()
    }

    /// Serves until one of the services fails.
    pub async fn run(self) -> std::io::Result<()> {
        let Standalone {
            listener,
            udp,
            bridge_udp,
            state,
            tls,
            revocations,
        } = self;
        tracing::info!(relay = %listener.local_addr()?, stun = %udp.local_addr()?, tls = tls.is_some(), "relay and STUN listening");
        let bridge = {
            let state = state.clone();
            async move {
                match bridge_udp {
                    Some(sock) => state.serve_bridge(sock).await,
                    None => std::future::pending().await,
                }
            }
        };
        let feed = {
            let state = state.clone();
            async move {
                match revocations {
                    Some(f) => f.run(state).await,
                    None => tracing::warn!(
                        "relay: no control-plane URL, so no revocation feed: a revoked \
                         session's tokens are admitted here until they expire"
                    ),
                }
                std::future::pending::<std::io::Result<()>>().await
            }
        };
        // Sessions with a peer here (a walk over the connections, so not on every change).
        let gauges = {
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    metrics::gauge!("relay_sessions").set(state.sessions() as f64);
                }
            }
        };
        let app = router(state);
        match tls {
            Some(tls) => {
                tokio::select! {
                    r = serve_tls(listener, app, tls) => r,
                    () = gauges => Ok(()),
                    r = stun::serve(udp) => r,
                    r = bridge => r,
                    r = feed => r,
                }
            }
            None => {
                tokio::select! {
                    r = axum::serve(listener, app) => r,
                    () = gauges => Ok(()),
                    r = stun::serve(udp) => r,
                    r = bridge => r,
                    r = feed => r,
                }
            }
        }
    }
}

/// Runs the relay, the STUN service, (when configured) the UDP bridge and the
/// revocation feed until one fails.
pub async fn run_standalone(config: StandaloneConfig) -> std::io::Result<()> {
    Standalone::bind(config).await?.run().await
}

/// Serves `app` over TLS on `listener` (HTTP/1.1 and HTTP/2, with WebSocket upgrades).
/// A client that does not finish its TLS handshake within 10 s is dropped.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}
