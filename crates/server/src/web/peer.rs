//! The server as a peer of a session: per (session, user) a fresh WireGuard
//! key joined like any client (`live::client::join_tunnel`: a tunnel on the
//! record, the edge enforcing the session's released targets against it), a
//! `SessionPeer` following the session's device list through this replica's
//! hub, and a userspace dialer the proxy opens connections with. It leaves
//! (`tunnel.down`) when the session ends, the user loses it, or nobody used it
//! for the session's idle timeout.

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::live::Poke;
use crate::state::AppState;
use bytes::Bytes;
use drawbridge_netstack::Dialer;
use drawbridge_peer::{SessionPeer, active_devices, active_targets};
use drawbridge_proto::WgKey;
use drawbridge_proto::channel::{JoinRequest, ServerToClient};
use drawbridge_tunnel::driver::Connector;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Peers per replica at most (each holds a tunnel and a userspace stack).
pub const MAX_PEERS: usize = 256;
/// Requests one peer carries at once (per session and user); more wait.
pub const MAX_REQUESTS: usize = 64;

/// This replica's running peers, by (session, user).
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<(String, String), Arc<WebPeer>>>,
}

/// One running peer.
pub struct WebPeer {
    pub dialer: Dialer,
    alive: AtomicBool,
    /// Unix seconds of the last request through it.
    last_used: AtomicI64,
    /// Requests and bytes (both ways) not yet added to the session's figures.
    requests: AtomicI64,
    bytes: Arc<AtomicI64>,
    /// Places for requests in flight ([`MAX_REQUESTS`]).
    pub places: Arc<tokio::sync::Semaphore>,
}

impl WebPeer {
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    pub fn touch(&self, now: i64) {
        self.last_used.store(now, Ordering::Relaxed);
    }
    /// One more request through this peer.
    pub fn counted(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    /// Where the bytes of this peer's requests and answers are added.
    pub fn bytes(&self) -> Arc<AtomicI64> {
        self.bytes.clone()
    }
}

/// Adds what `peer` counted since the last time to the session's figures.
async fn flush(state: &AppState, session_id: &str, peer: &WebPeer) {
    let requests = peer.requests.swap(0, Ordering::Relaxed);
    let bytes = peer.bytes.swap(0, Ordering::Relaxed);
    if requests == 0 && bytes == 0 {
        return;
    }
    let r = sqlx::query(
        "UPDATE sessions SET web_requests = web_requests + $1, web_bytes = web_bytes + $2 WHERE id = $3",
    )
    .bind(requests)
    .bind(bytes)
    .bind(session_id)
    .execute(&state.store.pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "adding browser access figures failed");
    }
}

impl Peers {
    fn get(&self, key: &(String, String)) -> Option<Arc<WebPeer>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).filter(|p| p.alive()).cloned()
    }

    fn remove(&self, key: &(String, String), peer: &Arc<WebPeer>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            map.remove(key);
        }
    }

    /// Running peers (for tests and metrics).
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|p| p.alive()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The caller's peer in `session_id`, joined now if none runs on this replica.
pub async fn peer_for(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
) -> AppResult<Arc<WebPeer>> {
    let key = (session_id.to_string(), caller.user_id.clone());
    if let Some(p) = state.web.peers.get(&key) {
        p.touch(state.now());
        return Ok(p);
    }
    // One join at a time per replica: two first requests do not make two peers.
    let _guard = state.web.joining.lock().await;
    if let Some(p) = state.web.peers.get(&key) {
        return Ok(p);
    }
    if state.web.peers.len() >= MAX_PEERS {
        return Err(AppError::new(
            drawbridge_proto::ErrorCode::RateLimited,
            "this server runs as many browser sessions as it may; try again later",
        ));
    }
    let tls = state.web.tls().ok_or_else(|| {
        AppError::conflict(
            "browser access is not set up on this server (no TLS trust for its own relay)",
        )
    })?;
    let private_key = drawbridge_tunnel::keys::generate_private_key();
    let public = WgKey::from_bytes(drawbridge_tunnel::keys::public_key(&private_key));
    let join = crate::live::client::join_tunnel(
        state,
        caller,
        session_id,
        &JoinRequest {
            public_key: public,
            standard_client: false,
        },
        true,
    )
    .await?;
    let overlay = join
        .overlay_ip
        .parse()
        .map_err(|_| AppError::internal(anyhow::anyhow!("overlay address")))?;
    let dialer = Dialer::new(overlay, active_targets(&active_devices(&join)));
    let (to_dialer, dialer_in) = mpsc::channel::<Bytes>(1024);
    let (dialer_out, from_dialer) = mpsc::channel::<Bytes>(1024);
    let dialer_task = tokio::spawn(dialer.clone().run(dialer_in, dialer_out));
    let mut session = SessionPeer::new(
        private_key,
        join.clone(),
        Connector::Rustls(tls),
        from_dialer,
        to_dialer,
    )
    .with_local_relay(super::local_relay::local_relay(state));
    let text = public.to_string();
    let (conn, pokes) = state.hub.register_client(session_id, &text);
    if let Err(e) = session.apply(join).await {
        state.hub.unregister_client(session_id, conn);
        dialer_task.abort();
        let _ = crate::live::client::leave(state, caller, session_id, &text, "client_left").await;
        return Err(AppError::internal(anyhow::anyhow!(
            "starting the tunnel: {e}"
        )));
    }
    for (device_id, data) in crate::live::signals_for_client(state, session_id, &text).await? {
        session.signal(&device_id, &data).await;
    }
    let peer = Arc::new(WebPeer {
        dialer,
        alive: AtomicBool::new(true),
        last_used: AtomicI64::new(state.now()),
        requests: AtomicI64::new(0),
        bytes: Arc::new(AtomicI64::new(0)),
        places: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
    });
    state
        .web
        .peers
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), peer.clone());
    let idle = idle_secs(state, &caller.account_id).await?;
    let run = Run {
        state: state.clone(),
        caller: caller.clone(),
        session_id: session_id.to_string(),
        public,
        peer: peer.clone(),
        idle,
    };
    tokio::spawn(async move {
        let why = run.serve(&mut session, pokes).await;
        tracing::debug!(session = %run.session_id, why, "browser peer stopped");
        peer_stopped(&run, conn, key, why).await;
        drop(session);
        dialer_task.abort();
    });
    Ok(peer)
}

async fn peer_stopped(run: &Run, conn: u64, key: (String, String), why: &str) {
    run.peer.alive.store(false, Ordering::Relaxed);
    // Requests in flight fail now rather than wait for a device that is out of reach.
    run.peer.dialer.close();
    flush(&run.state, &run.session_id, &run.peer).await;
    run.state.web.peers.remove(&key, &run.peer);
    run.state.hub.unregister_client(&run.session_id, conn);
    if let Err(e) = crate::live::client::leave(
        &run.state,
        &run.caller,
        &run.session_id,
        &run.public.to_string(),
        if why == "idle" { "idle" } else { "client_left" },
    )
    .await
    {
        tracing::warn!(error = %e.message, "recording the browser tunnel's end failed");
    }
}

async fn idle_secs(state: &AppState, account_id: &str) -> AppResult<i64> {
    let row = sqlx::query("SELECT settings FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_one(&state.store.pool)
        .await?;
    let settings: drawbridge_proto::AccountSettings = crate::records::json_col(&row, "settings")?;
    Ok(i64::from(settings.session_idle_minutes) * 60)
}

struct Run {
    state: AppState,
    caller: Caller,
    session_id: String,
    public: WgKey,
    peer: Arc<WebPeer>,
    idle: i64,
}

impl Run {
    /// Follows the session until it ends for this peer; says why.
    async fn serve(
        &self,
        session: &mut SessionPeer,
        mut pokes: crate::live::Pokes<ServerToClient>,
    ) -> &'static str {
        let text = self.public.to_string();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                poke = pokes.recv() => {
                    let m = match poke {
                        None => return "hub closed",
                        Some(Poke::Refresh) => match crate::live::client::latest(&self.state, &self.caller, &self.session_id, &text).await {
                            Ok(m) => m,
                            Err(_) => return "session gone",
                        },
                        Some(Poke::Send(m)) => *m,
                    };
                    match m {
                        ServerToClient::Update(j) => {
                            self.peer.dialer.set_routes(active_targets(&active_devices(&j)));
                            if session.apply(j).await.is_err() {
                                return "tunnel failed";
                            }
                        }
                        ServerToClient::Signal { device_id, data } => session.signal(&device_id, &data).await,
                        ServerToClient::Ended { .. } => return "session ended",
                    }
                }
                ev = session.event() => {
                    let Some(ev) = ev else { return "tunnel stopped" };
                    if let Some((device_id, data)) = session.outgoing_signal(&ev) {
                        let _ = crate::live::client::signal_to_edge(&self.state, &self.session_id, self.public, &device_id, data).await;
                    }
                }
                _ = tick.tick() => {
                    flush(&self.state, &self.session_id, &self.peer).await;
                    let now = self.state.now();
                    if now - self.peer.last_used.load(Ordering::Relaxed) >= self.idle {
                        return "idle";
                    }
                }
            }
        }
    }
}
