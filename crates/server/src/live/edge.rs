//! The edge channel: `GET /api/v1/edge/channel` (WebSocket).
//!
//! The server opens with a random challenge; the edge answers with its device id
//! and an Ed25519 signature over the challenge made with the identity key bound
//! at enrolment. Identity is the server's record of that key — never a name the
//! edge claims. Afterwards the edge reports status, per-session keys, path
//! candidates, on-site approvals and tunnel figures; the server sends the
//! complete set of sessions the edge must run whenever it changes.

use super::{Poke, state as desired};
use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::extract::Source;
use crate::secret;
use crate::sessions;
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::channel::{
    EDGE_AUTH_CONTEXT, EdgeStatus, EdgeToServer, MAX_CHANNEL_FRAME, MAX_SIGNAL_LEN, ServerToClient,
    ServerToEdge, TunnelReport,
};
use drawbridge_proto::{EndReason, SessionState};
use ring::signature::{ED25519, UnparsedPublicKey};
use sqlx::Row;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the connection per call. The WebSocket library's default
/// (128 KiB) is allocated and zero-filled for every connection, i.e. 128 KiB
/// of resident memory per connected edge; edges send small messages (a status
/// is about 200 bytes), and a larger one (up to `MAX_CHANNEL_FRAME`) still
/// arrives whole, its buffer grown for it. The bytes come out of TLS's own
/// buffer, so a small one costs copies, not system calls.
pub(crate) const READ_BUFFER: usize = 2 * 1024;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(channel))
}

/// The edge channel (WebSocket upgrade). Messages: `drawbridge_proto::channel`.
#[utoipa::path(get, path = "/api/v1/edge/channel", tag = "live", security(()),
    responses((status = 101, description = "WebSocket: challenge, auth, then status/sessions/signals")))]
async fn channel(
    State(state): State<AppState>,
    Source(source): Source,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_CHANNEL_FRAME)
        .max_frame_size(MAX_CHANNEL_FRAME)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run(state, socket, source).await {
                tracing::debug!(error = %e.message, "edge channel ended");
            }
        })
}

async fn send(ws: &mut WebSocket, msg: &ServerToEdge) -> AppResult<()> {
    let text = serde_json::to_string(msg).map_err(AppError::internal)?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|_| AppError::conflict("edge channel closed"))
}

/// The next text message, or None when the connection ended. Anything else closes it.
async fn next_text(ws: &mut WebSocket) -> Option<String> {
    loop {
        match ws.recv().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

async fn fail(ws: &mut WebSocket, code: &str, message: &str) {
    let _ = send(
        ws,
        &ServerToEdge::Error {
            code: code.into(),
            message: message.into(),
        },
    )
    .await;
    let _ = ws.send(Message::Close(None)).await;
}

struct Edge {
    device_id: String,
    account_id: String,
    source: String,
    /// The identity key this channel authenticated with.
    public_key: String,
    /// What this connection last wrote to the device's row (see [`HEARD_EVERY_SECS`]).
    written: std::sync::Mutex<Written>,
}

/// How stale `devices.last_seen` may get while the edge's channel is up. A
/// status that changes nothing (the usual heartbeat, every 15 s) is written at
/// most this often, and so is any other sign of life: most of an idle server's
/// database statements were these writes. `sessions::ONLINE_WINDOW_SECS` (90)
/// is well above this plus the status interval.
const HEARD_EVERY_SECS: i64 = 45;

/// The channel's ping timer.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The disabled/replaced check on the ping timer is the backstop for a lost
/// replica notification (a notification applies it at once): every third ping.
const ADMISSION_BACKSTOP_PINGS: u32 = 3;

/// The status fields a heartbeat writes: switch, agent version, first endpoint.
type StatusKey = (bool, String, Option<String>);

#[derive(Default)]
struct Written {
    /// When this connection last wrote `last_seen`.
    at: Option<i64>,
    /// The status it last wrote.
    status: Option<StatusKey>,
}

/// Why a device may not (or no longer) hold a channel, for the edge.
const DISABLED: &str = "the device is disabled or archived by an admin of its account";
const REPLACED: &str = "the device's identity key was replaced or withdrawn";

/// Whether the edge may keep its channel: the device still exists with the key
/// the channel authenticated with, enrolled, neither disabled nor archived.
/// `Some((code, message))` when not.
async fn still_admitted(
    state: &AppState,
    edge: &Edge,
) -> AppResult<Option<(&'static str, &'static str)>> {
    let row =
        sqlx::query("SELECT public_key, enrolled, disabled, archived FROM devices WHERE id = $1")
            .bind(&edge.device_id)
            .fetch_optional(&state.store.pool)
            .await?;
    let Some(row) = row else {
        return Ok(Some(("unauthenticated", REPLACED)));
    };
    let key: Option<String> = row.try_get(0)?;
    if key.as_deref() != Some(edge.public_key.as_str()) || row.try_get::<i64, _>(1)? == 0 {
        return Ok(Some(("unauthenticated", REPLACED)));
    }
    if row.try_get::<i64, _>(2)? != 0 || row.try_get::<i64, _>(3)? != 0 {
        return Ok(Some(("device_disabled", DISABLED)));
    }
    Ok(None)
}

impl Edge {
    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        // Poisoned only by a panic while holding it, which nothing here can do.
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Whether this connection wrote `last_seen` less than [`HEARD_EVERY_SECS`] ago
    /// (and, with `status`, wrote that same status).
    fn heard_recently(&self, now: i64, status: Option<&StatusKey>) -> bool {
        let w = self.written();
        w.at.is_some_and(|at| (0..HEARD_EVERY_SECS).contains(&(now - at)))
            && status.is_none_or(|s| w.status.as_ref() == Some(s))
    }
    fn wrote(&self, now: i64, status: Option<StatusKey>) {
        let mut w = self.written();
        w.at = Some(now);
        if status.is_some() {
            w.status = status;
        }
    }
    fn actor(&self) -> String {
        format!("device:{}", self.device_id)
    }
    fn event(&self, action: &str, object: &str) -> Event {
        Event::new(&self.account_id, &self.actor(), action, object)
            .source(&self.source)
            .device(&self.device_id)
    }
}

async fn authenticate(
    state: &AppState,
    ws: &mut WebSocket,
    source: &str,
) -> AppResult<Option<Edge>> {
    let nonce = secret::new_token("");
    send(
        ws,
        &ServerToEdge::Challenge {
            nonce: nonce.clone(),
        },
    )
    .await?;
    let Ok(Some(text)) = tokio::time::timeout(AUTH_TIMEOUT, next_text(ws)).await else {
        return Ok(None);
    };
    let Ok(EdgeToServer::Auth {
        device_id,
        signature,
    }) = serde_json::from_str::<EdgeToServer>(&text)
    else {
        fail(ws, "bad_request", "expected an auth message").await;
        return Ok(None);
    };
    // Every attempt from an address counts against its allowance at the
    // unauthenticated routes, before any lookup or signature check: a stranger
    // hammering the channel costs little and soon gets refused.
    if let Err(e) = state.attempt(source) {
        fail(ws, "rate_limited", &e.message).await;
        return Ok(None);
    }
    let row = if device_id.len() <= 64 {
        sqlx::query(
            "SELECT account_id, public_key, enrolled, disabled, archived FROM devices WHERE id = $1",
        )
            .bind(&device_id)
            .fetch_optional(&state.store.pool)
            .await?
    } else {
        None
    };
    let refused = "the device is unknown, not enrolled, or the signature does not match its key";
    let Some(row) = row else {
        fail(ws, "unauthenticated", refused).await;
        return Ok(None);
    };
    let account_id: String = row.try_get(0)?;
    let key: Option<String> = row.try_get(1)?;
    let enrolled = row.try_get::<i64, _>(2)? != 0;
    let out_of_service = row.try_get::<i64, _>(3)? != 0 || row.try_get::<i64, _>(4)? != 0;
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(device_id.as_bytes());
    let ok = enrolled
        && key
            .as_deref()
            .and_then(|k| crate::pki::decode_key(k).ok())
            .zip(STANDARD.decode(signature.as_bytes()).ok())
            .is_some_and(|(k, sig)| {
                UnparsedPublicKey::new(&ED25519, k)
                    .verify(&msg, &sig)
                    .is_ok()
            });
    let edge = Edge {
        device_id,
        account_id,
        source: source.to_string(),
        public_key: key.unwrap_or_default(),
        written: Default::default(),
    };
    if !ok {
        let ev = edge
            .event("device.auth", &edge.actor())
            .result("failed")
            .details(serde_json::json!({ "coalesced_secs": audit::EDGE_AUTH_REFUSAL_WINDOW }));
        record_refusal(state, &ev).await?;
        fail(ws, "unauthenticated", refused).await;
        return Ok(None);
    }
    if out_of_service {
        // The right key, but an admin took the device out of service: on the
        // record (where a stolen gateway calls from), and told so.
        let ev = edge
            .event("device.auth", &edge.actor())
            .result("refused")
            .details(serde_json::json!({
                "reason": "device_disabled",
                "coalesced_secs": audit::EDGE_AUTH_REFUSAL_WINDOW,
            }));
        record_refusal(state, &ev).await?;
        fail(ws, "device_disabled", DISABLED).await;
        return Ok(None);
    }
    Ok(Some(edge))
}

/// Records a failed or refused authentication, at most once per device and
/// result in [`audit::EDGE_AUTH_REFUSAL_WINDOW`] (the entry counts the rest):
/// anyone who knows a device id can cause these at will.
async fn record_refusal(state: &AppState, ev: &Event) -> AppResult<()> {
    let mut tx = state.store.begin().await?;
    audit::append_coalesced(&mut tx, state.now(), ev, audit::EDGE_AUTH_REFUSAL_WINDOW).await?;
    tx.commit().await?;
    Ok(())
}

async fn run(state: AppState, mut ws: WebSocket, source: String) -> AppResult<()> {
    // Every connected edge's task holds this future for as long as it is
    // connected: the rarely taken steps that await the database are boxed, so
    // their state takes memory only while they run.
    let Some(edge) = Box::pin(authenticate(&state, &mut ws, &source)).await? else {
        return Ok(());
    };
    send(
        &mut ws,
        &ServerToEdge::Welcome {
            device_id: edge.device_id.clone(),
            account_id: edge.account_id.clone(),
        },
    )
    .await?;
    let (conn, mut pokes) = state.hub.register_edge(&edge.device_id);
    Box::pin(online(&state, &edge, true)).await?;
    metrics::gauge!("edges_connected").increment(1.0);
    let result = serve(&state, &edge, &mut ws, &mut pokes).await;
    metrics::gauge!("edges_connected").decrement(1.0);
    if state.hub.unregister_edge(&edge.device_id, conn) {
        Box::pin(online(&state, &edge, false)).await?;
    }
    result
}

/// Records the edge coming online (heard from now) or going offline, with its audit entry.
async fn online(state: &AppState, edge: &Edge, on: bool) -> AppResult<()> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    if on {
        let before: Option<i64> = sqlx::query_scalar("SELECT last_seen FROM devices WHERE id = $1")
            .bind(&edge.device_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("UPDATE devices SET online = 1, last_seen = $1 WHERE id = $2")
            .bind(now)
            .bind(&edge.device_id)
            .execute(&mut *tx)
            .await?;
        if let Some(before) = before {
            crate::outbox::producers::device_back_online(
                &mut tx,
                &edge.account_id,
                &edge.device_id,
                before,
                now,
            )
            .await?;
        }
    } else {
        // Only if no newer connection (on this or another replica) wrote the
        // row since this one last did: an edge that moved to another replica
        // stays online when this old connection's end is noticed late.
        let last = edge.written().at.unwrap_or(i64::MIN);
        let gone = sqlx::query("UPDATE devices SET online = 0 WHERE id = $1 AND (last_seen IS NULL OR last_seen <= $2)")
            .bind(&edge.device_id)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(());
        }
    }
    let what = if on {
        "device.online"
    } else {
        "device.offline"
    };
    audit::append(&mut tx, now, &edge.event(what, &edge.actor())).await?;
    tx.commit().await?;
    if on {
        edge.wrote(now, None);
    }
    Ok(())
}

async fn serve(
    state: &AppState,
    edge: &Edge,
    ws: &mut WebSocket,
    pokes: &mut super::Pokes<ServerToEdge>,
) -> AppResult<()> {
    // Disabled or replaced between authentication and registration (its poke found no channel).
    if let Some((code, message)) = Box::pin(still_admitted(state, edge)).await? {
        fail(ws, code, message).await;
        return Ok(());
    }
    send(ws, &Box::pin(desired_state(state, &edge.device_id)).await?).await?;
    let mut data = super::edge_data::DataLink::default();
    for m in Box::pin(data.refresh(state, &edge.device_id)).await? {
        send(ws, &m).await?;
    }
    // The update offer, sent at connect and again whenever it changes (an edge
    // starts with none, so "none" is not sent: older edges do not know it).
    let mut offer = Some(None);
    if let Some(m) = Box::pin(update_offer(state, &edge.device_id, &mut offer)).await? {
        send(ws, &m).await?;
    }
    // Candidates clients sent while this edge was away.
    for (session_id, peer, data) in
        Box::pin(crate::live::signals_for_edge(state, &edge.device_id)).await?
    {
        send(
            ws,
            &ServerToEdge::Signal {
                session_id,
                peer,
                data,
            },
        )
        .await?;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut pings = 0u32;
    // Edges send a status every 15 s: a ping goes only to one silent for a
    // whole ping interval (it keeps idle middleboxes open and finds a dead peer).
    let mut heard = tokio::time::Instant::now();
    let mut watch = tokio::time::interval(Duration::from_secs(2));
    // Polled only while the edge has KPIs (below): no burst of missed ticks after.
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = next_text(ws) => {
                let Some(text) = msg else { return Ok(()) };
                heard = tokio::time::Instant::now();
                let parsed = serde_json::from_str::<EdgeToServer>(&text);
                let Ok(parsed) = parsed else {
                    fail(ws, "bad_request", "malformed message").await;
                    return Ok(());
                };
                let parsed = match Box::pin(data.handle(state, &edge.account_id, &edge.device_id, parsed)).await {
                    Ok(Ok(reply)) => {
                        if let Some(m) = reply {
                            send(ws, &m).await?;
                        }
                        continue;
                    }
                    Ok(Err(e)) if e.code == drawbridge_proto::ErrorCode::Internal => return Err(e),
                    Ok(Err(e)) => {
                        send(ws, &ServerToEdge::Error { code: e.code.as_str().into(), message: e.message }).await?;
                        continue;
                    }
                    Err(other) => other,
                };
                if let Err(e) = Box::pin(handle(state, edge, parsed)).await {
                    if e.code == drawbridge_proto::ErrorCode::Internal {
                        return Err(e);
                    }
                    send(ws, &ServerToEdge::Error { code: e.code.as_str().into(), message: e.message }).await?;
                }
            }
            poke = pokes.recv() => match poke {
                None => {
                    fail(ws, "conflict", "another connection of this device took over").await;
                    return Ok(());
                }
                Some(Poke::Refresh) => {
                    if let Some((code, message)) = Box::pin(still_admitted(state, edge)).await? {
                        fail(ws, code, message).await;
                        return Ok(());
                    }
                    send(ws, &Box::pin(desired_state(state, &edge.device_id)).await?).await?;
                    for m in Box::pin(data.refresh(state, &edge.device_id)).await? {
                        send(ws, &m).await?;
                    }
                    if let Some(m) = Box::pin(update_offer(state, &edge.device_id, &mut offer)).await? {
                        send(ws, &m).await?;
                    }
                }
                Some(Poke::Send(m)) => send(ws, &m).await?,
            },
            _ = watch.tick(), if data.wants_watch() => {
                if let Some(m) = Box::pin(data.watch(state, &edge.device_id)).await? {
                    send(ws, &m).await?;
                }
            }
            _ = ping.tick() => {
                // Also a backstop for a lost replica notification.
                pings = pings.wrapping_add(1);
                if pings.is_multiple_of(ADMISSION_BACKSTOP_PINGS)
                    && let Some((code, message)) = Box::pin(still_admitted(state, edge)).await?
                {
                    fail(ws, code, message).await;
                    return Ok(());
                }
                if heard.elapsed() >= PING_EVERY
                    && ws.send(Message::Ping(Vec::new().into())).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The session, if it includes this edge's device; its state.
async fn session_of_edge(
    state: &AppState,
    edge: &Edge,
    session_id: &str,
) -> AppResult<SessionState> {
    let st: Option<String> = sqlx::query_scalar(
        "SELECT s.state FROM sessions s JOIN session_devices sd ON sd.session_id = s.id
         WHERE s.id = $1 AND sd.device_id = $2 AND s.account_id = $3",
    )
    .bind(session_id)
    .bind(&edge.device_id)
    .bind(&edge.account_id)
    .fetch_optional(&state.store.pool)
    .await?;
    st.and_then(|s| s.parse().ok())
        .ok_or_else(|| AppError::not_found("session"))
}

async fn notify(state: &AppState, session_id: &str) -> AppResult<()> {
    crate::live::notify_sessions(state, &[session_id.to_string()]).await
}

async fn handle(state: &AppState, edge: &Edge, msg: EdgeToServer) -> AppResult<()> {
    let now = state.now();
    // Heard from now. A status (most messages: every edge sends one every
    // 15 s) records that in its own update.
    if !matches!(msg, EdgeToServer::Status(_)) {
        touch(state, edge, now).await?;
    }
    match msg {
        EdgeToServer::Auth { .. } => Err(AppError::bad_request("already authenticated")),
        EdgeToServer::Status(s) => status(state, edge, s, now).await,
        EdgeToServer::SessionKey {
            session_id,
            public_key,
        } => {
            // Parsed with the message (`WgKey`); stored as text.
            let public_key = public_key.to_string();
            let st = session_of_edge(state, edge, &session_id).await?;
            if !matches!(st, SessionState::Active | SessionState::PendingApproval) {
                return Err(AppError::conflict("the session is not running"));
            }
            // A key is unique among peers (any account): another peer's key would
            // let this edge knock that peer off the relay, and the reverse.
            if key_in_use(state, &public_key, &session_id, &edge.device_id).await? {
                return Err(AppError::conflict(
                    "this key is in use by another peer; make a fresh key for the session",
                ));
            }
            sqlx::query("UPDATE session_devices SET edge_public_key = $1 WHERE session_id = $2 AND device_id = $3")
                .bind(&public_key)
                .bind(&session_id)
                .bind(&edge.device_id)
                .execute(&state.store.pool)
                .await
                .map_err(|e| {
                    // Taken at the same moment by another edge (unique index, migration 0009).
                    if crate::db::is_unique_violation(&e) {
                        AppError::conflict(
                            "this key is in use by another peer; make a fresh key for the session",
                        )
                    } else {
                        e.into()
                    }
                })?;
            notify(state, &session_id).await
        }
        EdgeToServer::Signal {
            session_id,
            peer,
            data,
        } => {
            if data.len() > MAX_SIGNAL_LEN {
                return Err(AppError::invalid("signal too large"));
            }
            let peer = peer.to_string();
            session_of_edge(state, edge, &session_id).await?;
            crate::live::keep_signal(state, &session_id, &peer, &edge.device_id, true, &data)
                .await?;
            crate::live::to_client(
                state,
                &session_id,
                &peer,
                ServerToClient::Signal {
                    device_id: edge.device_id.clone(),
                    data,
                },
            );
            Ok(())
        }
        EdgeToServer::Decision {
            session_id,
            approve,
        } => {
            // The site decides for its own device only (dual control per device).
            session_of_edge(state, edge, &session_id).await?;
            let mut tx = state.store.begin().await?;
            sessions::decide(
                &mut tx,
                &edge.account_id,
                &session_id,
                sessions::Decider::OnSite(&edge.device_id),
                approve,
                &edge.actor(),
                now,
            )
            .await?;
            let ev = edge
                .event(
                    if approve {
                        "session.approve"
                    } else {
                        "session.refuse"
                    },
                    &format!("session:{session_id}"),
                )
                .details(serde_json::json!({ "on_site": true, "devices": [edge.device_id] }));
            audit::append(&mut tx, now, &ev).await?;
            tx.commit().await?;
            notify(state, &session_id).await
        }
        EdgeToServer::Tunnel(report) => {
            tunnel_report(state, Some(&edge.device_id), &report, now).await
        }
        EdgeToServer::Update(report) => {
            crate::updates::offer::on_report(state, &edge.account_id, &edge.device_id, &report)
                .await
        }
        // Handled by the data link before this.
        EdgeToServer::Records { .. } | EdgeToServer::Live { .. } => Ok(()),
    }
}

/// The edge's update offer when it differs from the one it was sent last
/// (`sent`: `None` before the first).
async fn update_offer(
    state: &AppState,
    device_id: &str,
    sent: &mut Option<Option<drawbridge_proto::update::UpdateOffer>>,
) -> AppResult<Option<ServerToEdge>> {
    let offer = crate::updates::offer::offer_for(state, device_id).await?;
    if sent.as_ref() == Some(&offer) {
        return Ok(None);
    }
    *sent = Some(offer.clone());
    Ok(Some(ServerToEdge::Update { offer }))
}

/// The complete desired state of an edge: its sessions and the relays to measure.
async fn desired_state(state: &AppState, device_id: &str) -> AppResult<ServerToEdge> {
    Ok(ServerToEdge::Sessions {
        sessions: desired::edge_sessions(state, device_id).await?,
        relays: crate::relays::probes(state),
    })
}

async fn status(state: &AppState, edge: &Edge, s: EdgeStatus, now: i64) -> AppResult<()> {
    if s.agent_version.len() > 64
        || s.endpoints.len() > 8
        || s.endpoints.iter().any(|e| e.len() > 64)
        || !crate::relays::rtt_in_bounds(&s.relay_rtt)
    {
        touch(state, edge, now).await?;
        return Err(AppError::invalid("status out of bounds"));
    }
    if !s.relay_rtt.is_empty() {
        crate::relays::record_rtt(
            state,
            crate::relays::Measurer::Device(&edge.device_id),
            &s.relay_rtt,
        )
        .await?;
    }
    // The usual case, a heartbeat with the switch as it was: nothing at all
    // when this connection wrote the same status lately, else one statement
    // with nothing to record. It changes nothing if the switch differs.
    let key: StatusKey = (
        s.switch_on,
        s.agent_version.clone(),
        s.endpoints.first().cloned(),
    );
    if edge.heard_recently(now, Some(&key)) {
        return Ok(());
    }
    let same = sqlx::query(
        "UPDATE devices SET agent_version = $1, public_endpoint = $2, online = 1, last_seen = $3
         WHERE id = $4 AND switch_on = $5",
    )
    .bind(&s.agent_version)
    .bind(s.endpoints.first())
    .bind(now)
    .bind(&edge.device_id)
    .bind(i64::from(s.switch_on))
    .execute(&state.store.pool)
    .await?;
    if same.rows_affected() == 1 {
        edge.wrote(now, Some(key));
        return Ok(());
    }
    let was_on: i64 = sqlx::query_scalar("SELECT switch_on FROM devices WHERE id = $1")
        .bind(&edge.device_id)
        .fetch_one(&state.store.pool)
        .await?;
    let mut tx = state.store.begin().await?;
    sqlx::query("UPDATE devices SET switch_on = $1, agent_version = $2, public_endpoint = $3, online = 1, last_seen = $4 WHERE id = $5")
        .bind(i64::from(s.switch_on))
        .bind(&s.agent_version)
        .bind(s.endpoints.first())
        .bind(now)
        .bind(&edge.device_id)
        .execute(&mut *tx)
        .await?;
    let mut ended = Vec::new();
    if (was_on != 0) != s.switch_on {
        let ev = edge
            .event("device.switch", &edge.actor())
            .details(serde_json::json!({ "on": s.switch_on }));
        audit::append(&mut tx, now, &ev).await?;
        if !s.switch_on {
            // Site consent withdrawn: every running session of this edge ends now.
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT s.id FROM sessions s JOIN session_devices sd ON sd.session_id = s.id
                 WHERE sd.device_id = $1 AND s.state IN ('active', 'pending_approval')",
            )
            .bind(&edge.device_id)
            .fetch_all(&mut *tx)
            .await?;
            for id in ids {
                if sessions::end(
                    &mut tx,
                    &edge.account_id,
                    &id,
                    &edge.actor(),
                    EndReason::SiteSwitch,
                    now,
                )
                .await?
                {
                    let ev = edge
                        .event("session.end", &format!("session:{id}"))
                        .details(serde_json::json!({ "reason": "site_switch" }));
                    audit::append(&mut tx, now, &ev).await?;
                    ended.push(id);
                }
            }
        }
    }
    tx.commit().await?;
    edge.wrote(now, Some(key));
    for id in ended {
        notify(state, &id).await?;
    }
    Ok(())
}

/// Is `key` a client's key or another edge session's key (any account)?
async fn key_in_use(
    state: &AppState,
    key: &str,
    session_id: &str,
    device_id: &str,
) -> AppResult<bool> {
    let clients: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM tunnels WHERE client_public_key = $1")
            .bind(key)
            .fetch_one(&state.store.pool)
            .await?;
    let edges: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM session_devices WHERE edge_public_key = $1 AND NOT (session_id = $2 AND device_id = $3)",
    )
    .bind(key)
    .bind(session_id)
    .bind(device_id)
    .fetch_one(&state.store.pool)
    .await?;
    Ok(clients + edges > 0)
}

/// The edge was heard from now (written at most every [`HEARD_EVERY_SECS`]).
async fn touch(state: &AppState, edge: &Edge, now: i64) -> AppResult<()> {
    if edge.heard_recently(now, None) {
        return Ok(());
    }
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(&edge.device_id)
        .execute(&state.store.pool)
        .await?;
    edge.wrote(now, None);
    Ok(())
}

/// Records a tunnel's path and, from the edge only, its byte counts and the session's activity.
pub async fn tunnel_report(
    state: &AppState,
    device: Option<&str>,
    r: &TunnelReport,
    now: i64,
) -> AppResult<()> {
    if r.path.len() > 16 || r.reason.len() > 128 || r.session_id.len() > 64 {
        return Err(AppError::invalid("report out of bounds"));
    }
    let Some(device) = device else {
        // A client's report shows its path only: the figures on the record, and
        // the activity that keeps a session from its idle timeout, are what the
        // edge forwarded, never what a client claims.
        sqlx::query(
            "UPDATE tunnels SET path = $1, path_reason = $2
             WHERE session_id = $3 AND client_public_key = $4 AND ended_at IS NULL",
        )
        .bind(&r.path)
        .bind(&r.reason)
        .bind(&r.session_id)
        .bind(r.peer.to_string())
        .execute(&state.store.pool)
        .await?;
        return Ok(());
    };
    let bytes_to = i64::try_from(r.bytes_to_device).unwrap_or(i64::MAX);
    let bytes_from = i64::try_from(r.bytes_from_device).unwrap_or(i64::MAX);
    let before: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(bytes_to_device + bytes_from_device) AS BIGINT) FROM tunnels
         WHERE session_id = $1 AND client_public_key = $2 AND ended_at IS NULL AND device_id = $3",
    )
    .bind(&r.session_id)
    .bind(r.peer.to_string())
    .bind(device)
    .fetch_one(&state.store.pool)
    .await?;
    let Some(before) = before else {
        return Ok(()); // no open tunnel with this key: nothing to record
    };
    sqlx::query(
        "UPDATE tunnels SET path = $4, path_reason = $5, bytes_to_device = $6, bytes_from_device = $7
         WHERE session_id = $1 AND client_public_key = $2 AND ended_at IS NULL AND device_id = $3",
    )
    .bind(&r.session_id)
    .bind(r.peer.to_string())
    .bind(device)
    .bind(&r.path)
    .bind(&r.reason)
    .bind(bytes_to)
    .bind(bytes_from)
    .execute(&state.store.pool)
    .await?;
    if bytes_to.saturating_add(bytes_from) > before {
        // Traffic moved: the session is not idle.
        sqlx::query("UPDATE sessions SET last_activity = $1 WHERE id = $2")
            .bind(now)
            .bind(&r.session_id)
            .execute(&state.store.pool)
            .await?;
    }
    Ok(())
}
