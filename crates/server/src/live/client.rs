//! Clients in a live session: `POST /api/v1/sessions/{id}/join` registers the
//! client's fresh WireGuard key and answers with everything the tunnel needs;
//! `GET /api/v1/sessions/{id}/channel` (WebSocket) then carries updates
//! (edge keys as they arrive, path candidates, the session's end) and the
//! client's candidates and tunnel figures.

use super::{Poke, state as desired};
use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use drawbridge_proto::channel::{
    ClientToServer, JoinRequest, JoinResponse, MAX_CHANNEL_FRAME, MAX_SIGNAL_LEN, ServerToClient,
    ServerToEdge,
};
use drawbridge_proto::{Action, ApiError, ErrorCode, SessionState, WgKey};
use serde::Deserialize;
use sqlx::Row;
use std::time::Duration;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(join)).routes(routes!(channel))
}

/// The session, if the caller is assigned to it (another account's or someone
/// else's session is not found).
async fn own_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> AppResult<drawbridge_proto::api::Session> {
    let mut conn = state.store.pool.acquire().await?;
    let s = crate::sessions::load(&mut conn, &caller.account_id, id).await?;
    if !s.users.contains(&caller.user_id) {
        drop(conn);
        if caller.role.permits(Action::ViewAllSessions) {
            // Visible to the caller, but not prepared for them: a refusal, on the record.
            return caller.denied(state, "session.join").await;
        }
        return Err(AppError::not_found("session"));
    }
    Ok(s)
}

/// Join an active session with a fresh WireGuard key: records the tunnel and
/// tells the session's edges about the new peer.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/join", tag = "live", params(("id" = String, Path)),
    request_body = JoinRequest,
    responses((status = 200, body = JoinResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> AppResult<Json<JoinResponse>> {
    Ok(Json(join_tunnel(&state, &caller, &id, &req, false).await?))
}

/// Joins session `id` as `caller` with the key in `req`: checks the role, the
/// assignment, the session's state and the key's uniqueness, records one
/// tunnel per approved device, and answers the join data. The API's `join` and
/// the server's own browser-access peer both come here.
pub(crate) async fn join_tunnel(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: &JoinRequest,
    server_peer: bool,
) -> AppResult<JoinResponse> {
    caller
        .require(state, Action::UseSessions, "session.join")
        .await?;
    let s = own_session(state, caller, id).await?;
    match s.state {
        SessionState::Active => {}
        SessionState::PendingApproval => {
            return Err(AppError::conflict("the session is waiting for approval"));
        }
        _ => {
            return Err(AppError::conflict(
                "only an active session can be joined; start it first",
            ));
        }
    }
    if !server_peer {
        // A monitor grant has desktops through the server's peer, never a tunnel.
        for d in &s.devices {
            crate::desktop::require_tunnel_rights(state, caller, &d.device_id).await?;
        }
    }
    // The key was parsed with the body (`WgKey`); it travels as text from here.
    let public_key = req.public_key.to_string();
    if req.standard_client {
        if state.bridge_endpoint().is_none() {
            return Err(AppError::conflict(
                "this server's relay runs no UDP bridge for standard WireGuard clients (bridge_listen)",
            ));
        }
        // A standard client's config names the edges' keys: they must be known now.
        let mut conn = state.store.pool.acquire().await?;
        let missing: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM session_devices WHERE session_id = $1 AND edge_public_key IS NULL AND approval = 'approved'",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        if missing > 0 {
            return Err(AppError::conflict(
                "an edge of this session has not announced its session key yet; try again in a few seconds",
            ));
        }
    }
    {
        // Grants may have changed since the session started.
        let mut conn = state.store.pool.acquire().await?;
        crate::sessions::check_assignment(
            &mut conn,
            &caller.account_id,
            Some((&caller.user_id, caller.role)),
            &s.devices,
            &[],
        )
        .await?;
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let taken: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM tunnels WHERE client_public_key = $1")
            .bind(&public_key)
            .fetch_one(&mut *tx)
            .await?;
    // Nor may it be an edge's session key (any account): the relay admits one
    // connection per key, so reusing an edge's key would knock that edge off it.
    let edge_taken: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM session_devices WHERE edge_public_key = $1")
            .bind(&public_key)
            .fetch_one(&mut *tx)
            .await?;
    if taken > 0 || edge_taken > 0 {
        return Err(AppError::conflict(
            "this key was used before; generate a fresh key per session",
        ));
    }
    // Overlay addresses are per session: the n-th join gets 100.64.0.(n+1) (the
    // edge is .1). The counter is bumped first, which takes the session's row
    // lock on PostgreSQL: concurrent joins get distinct addresses.
    sqlx::query("UPDATE sessions SET join_seq = join_seq + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT join_seq FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let host = u32::try_from(n + 1).map_err(|_| AppError::conflict("too many clients"))?;
    if host >= (1 << 22) - 1 {
        return Err(AppError::conflict("too many clients in this session"));
    }
    let overlay =
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + host)
            .to_string();
    // Devices refused or timed out are out of the session; those still
    // waiting get the tunnel's record now and run it once approved.
    let dropped = |d: &str| {
        s.approvals.iter().any(|a| {
            a.device_id == d
                && matches!(
                    a.state,
                    drawbridge_proto::ApprovalState::Refused
                        | drawbridge_proto::ApprovalState::TimedOut
                )
        })
    };
    for d in s.devices.iter().filter(|d| !dropped(&d.device_id)) {
        sqlx::query(
            "INSERT INTO tunnels (id, account_id, session_id, device_id, user_id, client_public_key, started_at, overlay_ip, standard_client)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(secret::new_id())
        .bind(&caller.account_id)
        .bind(id)
        .bind(&d.device_id)
        .bind(&caller.user_id)
        .bind(&public_key)
        .bind(now)
        .bind(&overlay)
        .bind(i64::from(req.standard_client))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            // Another join took the key at the same moment (the database's
            // unique index on live keys, migration 0009): the same answer.
            if crate::db::is_unique_violation(&e) {
                AppError::conflict("this key was used before; generate a fresh key per session")
            } else {
                e.into()
            }
        })?;
    }
    let ev = caller
        .event("tunnel.up", &format!("session:{id}"))
        .details(serde_json::json!({
            "username": caller.username, "public_key": public_key, "overlay_ip": overlay,
            "standard_client": req.standard_client,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    crate::live::notify_sessions(state, &[id.to_string()]).await?;
    desired::join_data(state, &caller.account_id, id, &public_key).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ChannelQuery {
    /// The client's WireGuard key the tunnel joined with.
    key: WgKey,
}

/// The client channel of a joined tunnel (WebSocket upgrade). Closing it ends the tunnel's record.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/channel", tag = "live", params(("id" = String, Path), ChannelQuery),
    responses((status = 101, description = "WebSocket: update/signal/ended from the server; signal/tunnel from the client"), (status = 404, body = ApiError)))]
async fn channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
    ws: WebSocketUpgrade,
) -> AppResult<Response> {
    // The channel changes things (candidates, tunnel records), although it opens
    // with a GET: a read-only API token may not open it, nor a role without sessions.
    if caller.read_only() {
        let ev = caller
            .event("session.channel", &format!("session:{id}"))
            .result("denied");
        audit::record(&state.store, state.now(), &ev).await?;
        return Err(AppError::new(
            ErrorCode::Forbidden,
            "this API token is read-only",
        ));
    }
    caller
        .require(&state, Action::UseSessions, "session.channel")
        .await?;
    own_session(&state, &caller, &id).await?;
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tunnels WHERE session_id = $1 AND user_id = $2 AND client_public_key = $3 AND ended_at IS NULL",
    )
    .bind(&id)
    .bind(&caller.user_id)
    .bind(q.key.to_string())
    .fetch_one(&state.store.pool)
    .await?;
    if open == 0 {
        return Err(AppError::not_found("tunnel"));
    }
    Ok(ws
        .max_message_size(MAX_CHANNEL_FRAME)
        .max_frame_size(MAX_CHANNEL_FRAME)
        // Small messages, like the edge channel's (see `edge::READ_BUFFER`).
        .read_buffer_size(super::edge::READ_BUFFER)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run(state, socket, caller, id, q.key).await {
                tracing::debug!(error = %e.message, "client channel ended");
            }
        }))
}

async fn send(ws: &mut WebSocket, msg: &ServerToClient) -> AppResult<()> {
    let text = serde_json::to_string(msg).map_err(AppError::internal)?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|_| AppError::conflict("client channel closed"))
}

async fn run(
    state: AppState,
    mut ws: WebSocket,
    caller: Caller,
    session_id: String,
    key: WgKey,
) -> AppResult<()> {
    let text = key.to_string();
    let (conn, mut pokes) = state.hub.register_client(&session_id, &text);
    let result = serve(&state, &caller, &session_id, key, &mut ws, &mut pokes).await;
    state.hub.unregister_client(&session_id, conn);
    leave(&state, &caller, &session_id, &text, "client_left").await?;
    result
}

/// Sends the current join data, or the end. Returns false when the session is over.
async fn refresh(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    key: &str,
    ws: &mut WebSocket,
) -> AppResult<bool> {
    let m = latest(state, caller, session_id, key).await?;
    let going_on = matches!(m, ServerToClient::Update(_));
    send(ws, &m).await?;
    Ok(going_on)
}

/// What a joined client must know now: the session's current join data, or
/// its end (the tunnel was closed under the client, e.g. its user was
/// disabled, or the session ended).
pub(crate) async fn latest(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    key: &str,
) -> AppResult<ServerToClient> {
    let closed: Option<String> = sqlx::query_scalar(
        // Closed when no device's record of it is open any more: one device
        // dropped from the session (refused, timed out) leaves the others.
        "SELECT end_reason FROM tunnels WHERE session_id = $1 AND client_public_key = $2 AND ended_at IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM tunnels o WHERE o.session_id = $1 AND o.client_public_key = $2 AND o.ended_at IS NULL)
         LIMIT 1",
    )
    .bind(session_id)
    .bind(key)
    .fetch_optional(&state.store.pool)
    .await?
    .flatten();
    if let Some(reason) = closed {
        return Ok(ServerToClient::Ended { reason });
    }
    let data = desired::join_data(state, &caller.account_id, session_id, key).await?;
    if data.state == SessionState::Ended {
        let mut conn = state.store.pool.acquire().await?;
        let s = crate::sessions::load(&mut conn, &caller.account_id, session_id).await?;
        let reason = s
            .end_reason
            .map(|r| r.as_str().to_string())
            .unwrap_or_else(|| "ended".into());
        return Ok(ServerToClient::Ended { reason });
    }
    Ok(ServerToClient::Update(data))
}

/// A joined client's candidates for one of the session's devices: kept for an
/// edge that is away, and sent to it (on whichever replica holds its channel).
pub(crate) async fn signal_to_edge(
    state: &AppState,
    session_id: &str,
    key: WgKey,
    device_id: &str,
    data: String,
) -> AppResult<()> {
    if data.len() > MAX_SIGNAL_LEN {
        return Err(AppError::invalid("signal too large"));
    }
    // Only to the session's own devices.
    let devices = {
        let mut conn = state.store.pool.acquire().await?;
        desired::session_device_ids(&mut conn, session_id).await?
    };
    if devices.iter().any(|d| d == device_id) {
        crate::live::keep_signal(state, session_id, &key.to_string(), device_id, false, &data)
            .await?;
        crate::live::to_edge(
            state,
            device_id,
            ServerToEdge::Signal {
                session_id: session_id.to_string(),
                peer: key,
                data,
            },
        );
    }
    Ok(())
}

async fn serve(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    key: WgKey,
    ws: &mut WebSocket,
    pokes: &mut super::Pokes<ServerToClient>,
) -> AppResult<()> {
    let text = key.to_string();
    if !refresh(state, caller, session_id, &text, ws).await? {
        return Ok(());
    }
    // Candidates the edges sent before this channel was open.
    for (device_id, data) in crate::live::signals_for_client(state, session_id, &text).await? {
        send(ws, &ServerToClient::Signal { device_id, data }).await?;
    }
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            msg = ws.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return Ok(()),
                };
                match serde_json::from_str::<ClientToServer>(&text) {
                    Ok(ClientToServer::Signal { device_id, data }) => {
                        if let Err(e) = signal_to_edge(state, session_id, key, &device_id, data).await {
                            if e.code == drawbridge_proto::ErrorCode::Internal {
                                return Err(e);
                            }
                            return Ok(()); // too large: close this connection only
                        }
                    }
                    Ok(ClientToServer::Tunnel(mut r)) => {
                        // A client reports only on its own tunnel.
                        r.session_id = session_id.to_string();
                        r.peer = key;
                        // A report out of bounds is ignored; the channel stays up.
                        if let Err(e) = super::edge::tunnel_report(state, None, &r, state.now()).await {
                            if e.code == drawbridge_proto::ErrorCode::Internal {
                                return Err(e);
                            }
                            tracing::debug!(error = %e.message, "client report ignored");
                        }
                    }
                    Ok(ClientToServer::RelayRtt { relay_rtt }) => {
                        // Out of bounds: ignored; the channel stays up.
                        if crate::relays::rtt_in_bounds(&relay_rtt) {
                            crate::relays::record_rtt(
                                state,
                                crate::relays::Measurer::User(&caller.user_id),
                                &relay_rtt,
                            )
                            .await?;
                        } else {
                            tracing::debug!("client relay measurements out of bounds, ignored");
                        }
                    }
                    Err(_) => return Ok(()), // malformed: close this connection only
                }
            }
            poke = pokes.recv() => match poke {
                None => return Ok(()),
                Some(Poke::Refresh) => {
                    if !refresh(state, caller, session_id, &text, ws).await? {
                        return Ok(());
                    }
                }
                Some(Poke::Send(m)) => send(ws, &m).await?,
            },
            _ = ping.tick() => {
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Ends the tunnel's record (bytes and duration on the audit log) and tells the edges.
/// `why` is the end reason when nothing else (the session's end, a revocation)
/// ended the tunnel first: `client_left`, or `idle` for a browser peer nobody used.
pub(crate) async fn leave(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    key: &str,
    why: &str,
) -> AppResult<()> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let rows = sqlx::query(
        "SELECT started_at, ended_at, bytes_to_device, bytes_from_device, path, end_reason FROM tunnels
         WHERE session_id = $1 AND client_public_key = $2",
    )
    .bind(session_id)
    .bind(key)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("UPDATE tunnels SET ended_at = $1, end_reason = $4 WHERE session_id = $2 AND client_public_key = $3 AND ended_at IS NULL")
        .bind(now)
        .bind(session_id)
        .bind(key)
        .bind(why)
        .execute(&mut *tx)
        .await?;
    let mut to = 0i64;
    let mut from = 0i64;
    let mut started = now;
    let mut path = None;
    let mut reason = None;
    for r in &rows {
        started = started.min(r.try_get::<i64, _>(0)?);
        to += r.try_get::<i64, _>(2)?;
        from += r.try_get::<i64, _>(3)?;
        path = path.or(r.try_get::<Option<String>, _>(4)?);
        reason = reason.or(r.try_get::<Option<String>, _>(5)?);
    }
    let ev = caller
        .event("tunnel.down", &format!("session:{session_id}"))
        .details(serde_json::json!({
            "username": caller.username,
            "public_key": key,
            "seconds": now - started,
            "bytes_to_device": to,
            "bytes_from_device": from,
            "path": path,
            "reason": reason.unwrap_or_else(|| why.to_string()),
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    crate::live::notify_sessions(state, &[session_id.to_string()]).await
}
