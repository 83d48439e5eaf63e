//! Live sessions: the edge channel, the client join and channel, and the hub
//! that tells connected edges and clients when something they run changed.
//!
//! The database is the truth. A change commits first, then calls
//! [`Hub::session_changed`] / [`Hub::device_changed`]; each connected edge or
//! client task then re-reads its desired state from the database and sends it.
//! With several replicas over PostgreSQL, pokes and relayed candidates also
//! travel by LISTEN/NOTIFY (see the end of this file), so an edge connected to
//! one replica hears about changes made on another.

pub mod client;
pub mod edge;
mod edge_data;
pub mod revoke;
pub mod state;

use drawbridge_proto::channel::{ServerToClient, ServerToEdge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Queue of pokes per connection: messages to pass on, and at most one
/// refresh (a refresh already queued covers every later change).
const QUEUE: usize = 64;

/// What a connection task is asked to do.
#[derive(Debug, Clone)]
pub enum Poke<M> {
    /// Re-read the desired state and send it.
    Refresh,
    /// Pass this message on as is (boxed: the queue's slots stay small, and
    /// every connected edge has one queue).
    Send(Box<M>),
}

struct Reg<M> {
    conn: u64,
    tx: mpsc::Sender<Poke<M>>,
    /// A refresh is in the queue (cleared as the connection takes it).
    refresh_queued: Arc<AtomicBool>,
}

/// A connection's end of its queue of pokes.
pub struct Pokes<M> {
    rx: mpsc::Receiver<Poke<M>>,
    refresh_queued: Arc<AtomicBool>,
}

impl<M> Pokes<M> {
    /// The next poke; `None` once the hub dropped this connection (a newer
    /// one of the same edge replaced it). Cancel-safe, as `mpsc::Receiver::recv`.
    pub async fn recv(&mut self) -> Option<Poke<M>> {
        let p = self.rx.recv().await;
        if matches!(p, Some(Poke::Refresh)) {
            // Taken before the state is re-read: a change after this queues
            // a new refresh, so none is missed.
            self.refresh_queued.store(false, Ordering::SeqCst);
        }
        p
    }
}

fn channel<M>(conn: u64) -> (Reg<M>, Pokes<M>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let refresh_queued = Arc::new(AtomicBool::new(false));
    (
        Reg {
            conn,
            tx,
            refresh_queued: refresh_queued.clone(),
        },
        Pokes { rx, refresh_queued },
    )
}

/// A client connection: the tunnel's client key and its queue.
type ClientReg = (String, Reg<ServerToClient>);

/// Who is connected to this process.
pub struct Hub {
    /// This process's id on the replica bus (its own notifications are skipped).
    origin: String,
    next: AtomicU64,
    edges: Mutex<HashMap<String, Reg<ServerToEdge>>>,
    /// Client channels by session id; each carries the tunnel's client key.
    clients: Mutex<HashMap<String, Vec<ClientReg>>>,
}

fn poke<M>(reg: &Reg<M>, p: Poke<M>) {
    // A slow connection never blocks the caller. Refreshes are coalesced, so
    // they cannot fill the queue; a message to pass on is lost only when 64
    // wait already (the connection catches up at its next start): say so.
    let refresh = matches!(p, Poke::Refresh);
    if refresh && reg.refresh_queued.swap(true, Ordering::SeqCst) {
        return;
    }
    match reg.tx.try_send(p) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(Poke::Send(_))) => {
            tracing::warn!(
                conn = reg.conn,
                "a connection's queue is full: a message to it was dropped"
            );
        }
        Err(mpsc::error::TrySendError::Full(Poke::Refresh)) => {
            // Messages fill the queue; the next poke tries again.
            reg.refresh_queued.store(false, Ordering::SeqCst);
            tracing::warn!(
                conn = reg.conn,
                "a connection's queue is full: a refresh waits"
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            origin: crate::secret::new_id(),
            next: AtomicU64::new(0),
            edges: Mutex::default(),
            clients: Mutex::default(),
        }
    }
}

impl Hub {
    fn conn_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers an edge connection; a newer connection of the same device replaces the older.
    pub fn register_edge(&self, device_id: &str) -> (u64, Pokes<ServerToEdge>) {
        let conn = self.conn_id();
        let (reg, pokes) = channel(conn);
        let old = self
            .edges
            .lock()
            .expect("hub lock")
            .insert(device_id.to_string(), reg);
        drop(old); // dropping its sender ends the older connection's loop
        (conn, pokes)
    }

    /// Removes the edge's registration if it is still this connection's. Returns whether it was.
    pub fn unregister_edge(&self, device_id: &str, conn: u64) -> bool {
        let mut edges = self.edges.lock().expect("hub lock");
        if edges.get(device_id).is_some_and(|r| r.conn == conn) {
            edges.remove(device_id);
            true
        } else {
            false
        }
    }

    pub fn register_client(
        &self,
        session_id: &str,
        client_key: &str,
    ) -> (u64, Pokes<ServerToClient>) {
        let conn = self.conn_id();
        let (reg, pokes) = channel(conn);
        self.clients
            .lock()
            .expect("hub lock")
            .entry(session_id.to_string())
            .or_default()
            .push((client_key.to_string(), reg));
        (conn, pokes)
    }

    pub fn unregister_client(&self, session_id: &str, conn: u64) {
        let mut clients = self.clients.lock().expect("hub lock");
        if let Some(v) = clients.get_mut(session_id) {
            v.retain(|(_, r)| r.conn != conn);
            if v.is_empty() {
                clients.remove(session_id);
            }
        }
    }

    pub fn device_changed(&self, device_id: &str) {
        if let Some(r) = self.edges.lock().expect("hub lock").get(device_id) {
            poke(r, Poke::Refresh);
        }
    }

    /// Every connection of this replica re-reads its state: after the replica
    /// may have missed other replicas' notifications.
    pub fn refresh_all(&self) {
        for r in self.edges.lock().expect("hub lock").values() {
            poke(r, Poke::Refresh);
        }
        for v in self.clients.lock().expect("hub lock").values() {
            for (_, r) in v {
                poke(r, Poke::Refresh);
            }
        }
    }

    /// Every edge of the session and every client in it re-read their state.
    pub fn session_changed(&self, device_ids: &[String], session_id: &str) {
        for d in device_ids {
            self.device_changed(d);
        }
        if let Some(v) = self.clients.lock().expect("hub lock").get(session_id) {
            for (_, r) in v {
                poke(r, Poke::Refresh);
            }
        }
    }

    pub fn to_edge(&self, device_id: &str, msg: ServerToEdge) {
        if let Some(r) = self.edges.lock().expect("hub lock").get(device_id) {
            poke(r, Poke::Send(Box::new(msg)));
        }
    }

    /// Sends to the session's client connections holding `client_key`.
    pub fn to_client(&self, session_id: &str, client_key: &str, msg: ServerToClient) {
        if let Some(v) = self.clients.lock().expect("hub lock").get(session_id) {
            for (k, r) in v {
                if k == client_key {
                    poke(r, Poke::Send(Box::new(msg.clone())));
                }
            }
        }
    }

    pub fn edge_connected(&self, device_id: &str) -> bool {
        self.edges.lock().expect("hub lock").contains_key(device_id)
    }
}

/// After a commit: every edge and client of these sessions re-reads its state.
pub async fn notify_sessions(
    state: &crate::state::AppState,
    session_ids: &[String],
) -> crate::error::AppResult<()> {
    if session_ids.is_empty() {
        return Ok(());
    }
    let mut conn = state.store.pool.acquire().await?;
    for id in session_ids {
        publish(state, serde_json::json!({ "k": "session", "session": id }));
        let devices = self::state::session_device_ids(&mut conn, id).await?;
        state.hub.session_changed(&devices, id);
        close_on_relay_if_ended(state, &mut conn, id).await?;
    }
    Ok(())
}

/// An ended session's connections to this process's relay close now, and its
/// still unexpired tokens are refused from now on (not only at token expiry).
async fn close_on_relay_if_ended(
    state: &crate::state::AppState,
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> crate::error::AppResult<()> {
    use sqlx::Row;
    let row = sqlx::query("SELECT state, valid_until FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = row
        && r.try_get::<String, _>(0)? == "ended"
    {
        // No token of the session expires later than its validity.
        let until = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
        state.relay.revoke_session(id, until);
    }
    Ok(())
}

/// After a commit that changed whether a device may stay connected (disabled,
/// archived, replaced): its edge channel re-checks, on whichever replica it is.
pub fn device_changed(state: &crate::state::AppState, device_id: &str) {
    publish(
        state,
        serde_json::json!({ "k": "device", "device": device_id }),
    );
    state.hub.device_changed(device_id);
}

// ------------------------------------------------------------------ replicas
//
// With several control-plane replicas over one PostgreSQL, an edge or client
// may be connected to another replica than the one where a change happened.
// Every poke and relayed signal is therefore also published with
// PostgreSQL NOTIFY; each replica LISTENs and applies what others published.

const CHANNEL: &str = "drawbridge_live";

/// Publishes to the other replicas (PostgreSQL only; a single SQLite node has none).
fn publish(state: &crate::state::AppState, mut msg: serde_json::Value) {
    if state.store.backend != crate::db::Backend::Postgres {
        return;
    }
    msg["o"] = state.hub.origin.clone().into();
    let pool = state.store.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(msg.to_string())
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "publishing to the other replicas failed");
        }
    });
}

/// Candidates for an edge, wherever it is connected.
pub fn to_edge(state: &crate::state::AppState, device_id: &str, msg: ServerToEdge) {
    publish(
        state,
        serde_json::json!({ "k": "to_edge", "device": device_id, "msg": msg }),
    );
    state.hub.to_edge(device_id, msg);
}

/// Candidates for a client, wherever it is connected.
pub fn to_client(
    state: &crate::state::AppState,
    session_id: &str,
    client_key: &str,
    msg: ServerToClient,
) {
    publish(
        state,
        serde_json::json!({ "k": "to_client", "session": session_id, "key": client_key, "msg": msg }),
    );
    state.hub.to_client(session_id, client_key, msg);
}

/// Listens for the other replicas' notifications (PostgreSQL only), reconnecting forever.
/// Notifications sent while the listener was disconnected are gone (PostgreSQL
/// keeps none for a listener that is not there), so after every reconnection
/// each connection of this replica re-reads its state once.
pub fn spawn_listener(state: crate::state::AppState) {
    if state.store.backend != crate::db::Backend::Postgres {
        return;
    }
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match sqlx::postgres::PgListener::connect(&state.store.url).await {
                Ok(mut l) => {
                    if l.listen(CHANNEL).await.is_ok() {
                        if !first {
                            tracing::info!(
                                "replica listener back: every connection re-reads its state"
                            );
                            state.hub.refresh_all();
                        }
                        first = false;
                        loop {
                            match l.try_recv().await {
                                Ok(Some(n)) => apply(&state, n.payload()).await,
                                // The connection was lost and is back (sqlx
                                // reconnects at once): what came between is lost.
                                Ok(None) => state.hub.refresh_all(),
                                Err(_) => break,
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "replica listener cannot connect"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

async fn apply(state: &crate::state::AppState, payload: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return;
    };
    if v["o"].as_str() == Some(state.hub.origin.as_str()) {
        return; // our own
    }
    match v["k"].as_str() {
        Some("session") => {
            let Some(id) = v["session"].as_str() else {
                return;
            };
            let Ok(mut conn) = state.store.pool.acquire().await else {
                return;
            };
            if let Ok(devices) = self::state::session_device_ids(&mut conn, id).await {
                state.hub.session_changed(&devices, id);
            }
            let _ = close_on_relay_if_ended(state, &mut conn, id).await;
        }
        Some("device") => {
            if let Some(d) = v["device"].as_str() {
                state.hub.device_changed(d);
            }
        }
        Some("to_edge") => {
            if let (Some(d), Ok(m)) = (
                v["device"].as_str(),
                serde_json::from_value::<ServerToEdge>(v["msg"].clone()),
            ) {
                state.hub.to_edge(d, m);
            }
        }
        Some("to_client") => {
            if let (Some(s), Some(k), Ok(m)) = (
                v["session"].as_str(),
                v["key"].as_str(),
                serde_json::from_value::<ServerToClient>(v["msg"].clone()),
            ) {
                state.hub.to_client(s, k, m);
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------ candidates
//
// The latest candidates per tunnel and direction live in the database, so a
// channel that connects later, or to another replica, still gets them.

/// At most this many kept candidate rows per session, device and direction
/// (i.e. peers an edge keeps candidates for in one session, or client keys
/// that keep candidates for one device of a session), whatever a hostile edge
/// or client sends: each (session, client key, device, direction) has one row,
/// replaced by the latest, and a new peer beyond the bound is refused.
pub const MAX_SIGNAL_ROWS: i64 = 64;

/// Remembers the latest candidates one side sent the other (see [`MAX_SIGNAL_ROWS`]).
pub async fn keep_signal(
    state: &crate::state::AppState,
    session_id: &str,
    client_key: &str,
    device_id: &str,
    from_edge: bool,
    data: &str,
) -> crate::error::AppResult<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tunnel_signals WHERE session_id = $1 AND device_id = $2 AND from_edge = $3 AND client_key <> $4",
    )
    .bind(session_id)
    .bind(device_id)
    .bind(i64::from(from_edge))
    .bind(client_key)
    .fetch_one(&state.store.pool)
    .await?;
    if others >= MAX_SIGNAL_ROWS {
        return Err(crate::error::AppError::conflict(
            "too many peers with candidates in this session",
        ));
    }
    sqlx::query(
        "INSERT INTO tunnel_signals (session_id, client_key, device_id, from_edge, data, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (session_id, client_key, device_id, from_edge) DO UPDATE SET data = $5, updated_at = $6",
    )
    .bind(session_id)
    .bind(client_key)
    .bind(device_id)
    .bind(i64::from(from_edge))
    .bind(data)
    .bind(state.now())
    .execute(&state.store.pool)
    .await?;
    Ok(())
}

/// Candidates the edges of a session sent to `client_key`: (device, data).
pub async fn signals_for_client(
    state: &crate::state::AppState,
    session_id: &str,
    client_key: &str,
) -> crate::error::AppResult<Vec<(String, String)>> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT device_id, data FROM tunnel_signals WHERE session_id = $1 AND client_key = $2 AND from_edge = 1",
    )
    .bind(session_id)
    .bind(client_key)
    .fetch_all(&state.store.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Candidates clients of running sessions sent to `device_id`: (session, client key, data).
pub async fn signals_for_edge(
    state: &crate::state::AppState,
    device_id: &str,
) -> crate::error::AppResult<Vec<(String, drawbridge_proto::WgKey, String)>> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT g.session_id, g.client_key, g.data FROM tunnel_signals g JOIN sessions s ON s.id = g.session_id
         WHERE g.device_id = $1 AND g.from_edge = 0 AND s.state = 'active' LIMIT 256",
    )
    .bind(device_id)
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        // Keys were parsed before they were stored; one that is not a key is skipped.
        if let Ok(peer) = r.try_get::<String, _>(1)?.parse() {
            out.push((r.try_get(0)?, peer, r.try_get(2)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize) -> ServerToClient {
        ServerToClient::Signal {
            device_id: "d".into(),
            data: n.to_string(),
        }
    }

    #[tokio::test]
    async fn a_storm_of_refreshes_queues_one_and_never_crowds_out_a_message() {
        let hub = Hub::default();
        let (_, mut pokes) = hub.register_client("s", "k");
        for _ in 0..1_000 {
            hub.session_changed(&[], "s");
        }
        hub.to_client("s", "k", signal(1));
        assert!(matches!(pokes.recv().await, Some(Poke::Refresh)));
        assert!(
            matches!(pokes.recv().await, Some(Poke::Send(m)) if matches!(*m, ServerToClient::Signal { ref data, .. } if data == "1"))
        );
        assert!(pokes.rx.try_recv().is_err(), "one refresh for the storm");
        // Once the refresh is taken, a later change queues a new one.
        hub.session_changed(&[], "s");
        assert!(matches!(pokes.recv().await, Some(Poke::Refresh)));
    }

    #[tokio::test]
    async fn a_refresh_refused_by_a_full_queue_is_queued_by_the_next_change() {
        let hub = Hub::default();
        let (_, mut pokes) = hub.register_client("s", "k");
        for n in 0..QUEUE {
            hub.to_client("s", "k", signal(n));
        }
        hub.session_changed(&[], "s"); // full: refused
        for _ in 0..QUEUE {
            assert!(matches!(pokes.recv().await, Some(Poke::Send(_))));
        }
        assert!(pokes.rx.try_recv().is_err());
        hub.session_changed(&[], "s");
        assert!(matches!(pokes.recv().await, Some(Poke::Refresh)));
    }
}
