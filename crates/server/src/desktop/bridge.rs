//! The browser's noVNC WebSocket bridged to the VNC server through the
//! session's tunnel (the server's own peer dials it), with the RFB bytes
//! passed as they are (`drawbridge_desktop::Bridge` only answers a stored
//! password and drops input of view-only users), recorded, and copied to
//! watchers. The desktop closes within a second or two of the session's end,
//! of the peer leaving, or of an end asked for.

use super::live::LiveDesktop;
use super::recording::Recording;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::web::origin::Origin;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use drawbridge_desktop::{Auth, Bridge, Config};
use drawbridge_proto::{RecordingMode, SessionState};
use sqlx::Row;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest message a browser may send (a clipboard of 1 MiB and its header).
const MAX_BROWSER_MESSAGE: usize = (1 << 20) + 64;
/// What one read from a browser's WebSocket takes. A browser sends small
/// messages (input, update requests); tungstenite zero-fills its whole read
/// buffer each time the socket is polled, and the bridge polls it on every
/// turn of its loop, so axum's 128 KiB default cost a memset per VNC read.
const BROWSER_READ: usize = 8 * 1024;

/// A desktop's WebSocket from a browser (viewer or watcher), bounded.
pub fn browser_socket(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_BROWSER_MESSAGE)
        .read_buffer_size(BROWSER_READ)
}
/// How long the VNC server has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the session is checked and the recording stored.
pub(super) const TICK: Duration = Duration::from_millis(500);

/// Which protocol a desktop speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Vnc,
    Rdp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Vnc => "vnc",
            Kind::Rdp => "rdp",
        }
    }
}

/// Everything decided before the bridge connects.
pub(super) struct Opened {
    pub dial: std::net::SocketAddrV4,
    pub peer: Arc<crate::web::peer::WebPeer>,
    pub config: Config,
    /// An RDP desktop's stored credentials, for the bridge to inject.
    pub rdp_credentials: Option<drawbridge_desktop::rdp::RdpCredentials>,
    pub desktop: Arc<LiveDesktop>,
    pub required: bool,
}

/// `GET /.drawbridge/websockify` on a desktop origin: the checks, the
/// recording's start (a required one that cannot start refuses the desktop),
/// then the bridge. A refusal opens the WebSocket and closes it with the
/// reason, so that the viewer can say it.
pub async fn open(
    state: AppState,
    caller: Caller,
    origin: Origin,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = browser_socket(ws);
    match prepare(&state, &caller, &origin, Kind::Vnc).await {
        Ok(o) => ws.on_upgrade(move |socket| async move {
            run(state, caller, origin, o, socket).await;
        }),
        Err(e) => ws.on_upgrade(move |mut socket| async move {
            close(&mut socket, &e.message).await;
        }),
    }
}

/// The checks, the desktop's record (`desktop.open` on the audit chain) and
/// the recording's start (a required one that cannot start refuses the desktop).
pub(super) async fn prepare(
    state: &AppState,
    caller: &Caller,
    o: &Origin,
    kind: Kind,
) -> AppResult<Opened> {
    let dial =
        crate::web::origin::check_target(state, caller, &o.session_id, &o.device_id, o.target)
            .await?;
    let view_only = super::view_only(state, caller, &o.device_id).await?;
    let mut conn = state.store.pool.acquire().await?;
    let settings = crate::records::account(&mut conn, &caller.account_id)
        .await?
        .settings;
    let (password, rdp_credentials) = match kind {
        Kind::Vnc => (
            super::stored_password(state, &mut conn, &o.device_id, o.target).await?,
            None,
        ),
        // RDP credentials are stored (and injected), or typed in the browser.
        Kind::Rdp => (
            None,
            super::stored_rdp_credentials(state, &mut conn, &o.device_id, o.target).await?,
        ),
    };
    let stored = password.is_some() || rdp_credentials.is_some();
    drop(conn);
    let peer = crate::web::peer::peer_for(state, caller, &o.session_id).await?;
    let id = crate::secret::new_id();
    let mode = settings.desktop_recording;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    sqlx::query(
        "INSERT INTO desktop_recordings (id, account_id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at, protocol)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'live', $8, $9, $10, $11)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(&o.session_id)
    .bind(&o.device_id)
    .bind(o.target.to_string())
    .bind(&caller.user_id)
    .bind(i64::from(view_only))
    .bind(mode.as_str())
    .bind(i64::from(mode != RecordingMode::Off))
    .bind(now)
    .bind(kind.as_str())
    .execute(&mut *tx)
    .await?;
    let ev = caller
        .event("desktop.open", &format!("session:{}", o.session_id))
        .device(&o.device_id)
        .details(serde_json::json!({
            "username": caller.username, "recording": id, "target": o.target.to_string(),
            "protocol": kind.as_str(), "view_only": view_only, "recording_mode": mode.as_str(),
            "password": if stored { "stored" } else { "typed" },
        }));
    crate::audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    // The site sees the desktop in `drawbridge-edge status`.
    let _ = crate::live::notify_sessions(state, std::slice::from_ref(&o.session_id)).await;
    let header: &[u8] = match kind {
        Kind::Vnc => drawbridge_desktop::recording::HEADER,
        Kind::Rdp => drawbridge_desktop::recording::RDP_HEADER,
    };
    let recording = Recording::new(id, mode, settings.recording_max_mb, header);
    let desktop = LiveDesktop::new(recording);
    // The header goes to storage now: a required recording that cannot be
    // stored refuses the desktop before a byte of it is shown.
    if desktop.store(state).await.is_err() {
        if mode == RecordingMode::Required {
            finish(state, caller, &desktop, "recording storage failed").await;
            return Err(AppError::conflict(
                "the desktop's recording cannot be stored, and this account requires it",
            ));
        }
        desktop.stop_recording().await;
    }
    Ok(Opened {
        dial,
        peer,
        config: Config {
            auth: password.map_or(Auth::Typed, Auth::Stored),
            view_only,
        },
        rdp_credentials,
        required: mode == RecordingMode::Required,
        desktop,
    })
}

/// Ends a desktop's record: state, hash and size, and `desktop.end` on the audit chain.
pub(super) async fn finish(state: &AppState, caller: &Caller, desktop: &LiveDesktop, reason: &str) {
    let _ = desktop.store(state).await;
    let (sha256, bytes) = desktop.finish().await;
    let recorded = desktop.recorded().await;
    let now = state.now();
    let r = async {
        let mut tx = state.store.begin().await?;
        let row = sqlx::query(
            "UPDATE desktop_recordings SET state = 'ended', ended_at = $1, end_reason = $2, sha256 = $3, recorded = $4
             WHERE id = $5 RETURNING session_id, device_id",
        )
        .bind(now)
        .bind(reason)
        .bind(&sha256)
        .bind(i64::from(recorded))
        .bind(&desktop.id)
        .fetch_one(&mut *tx)
        .await?;
        let session: String = row.try_get("session_id")?;
        let device: String = row.try_get("device_id")?;
        let ev = caller
            .event("desktop.end", &format!("session:{session}"))
            .device(&device)
            .details(serde_json::json!({
                "username": caller.username, "recording": desktop.id, "reason": reason,
                "sha256": sha256, "bytes": bytes,
            }));
        crate::audit::append(&mut tx, now, &ev).await?;
        tx.commit().await?;
        let _ = crate::live::notify_sessions(state, &[session]).await;
        Ok::<_, AppError>(())
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(recording = %desktop.id, error = %e.message, "ending a desktop's record failed");
    }
}

/// Whether the session still lets this desktop run.
pub(super) async fn session_open(state: &AppState, session_id: &str) -> bool {
    let s: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT state FROM sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(&state.store.pool)
            .await;
    match s {
        Ok(Some(s)) => s == SessionState::Active.as_str(),
        Ok(None) => false,
        // A database hiccup does not cut a desktop; the peer's end still does.
        Err(_) => true,
    }
}

pub(super) async fn close(ws: &mut WebSocket, reason: &str) {
    // A close reason has at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: 4000,
            reason: reason[..end].into(),
        })))
        .await;
}

async fn run(state: AppState, caller: Caller, origin: Origin, o: Opened, mut ws: WebSocket) {
    state.desktops.insert(o.desktop.clone());
    let reason = bridge(&state, &origin, &o, &mut ws).await;
    close(&mut ws, &reason).await;
    state.desktops.remove(&o.desktop.id);
    finish(&state, &caller, &o.desktop, &reason).await;
}

/// Bytes read from the VNC server at most at once.
const READ: usize = 256 * 1024;

/// Sends `down` to the browser: counted as use of the peer, recorded first
/// (a required recording that fails ends the desktop: `Err` with why).
async fn to_browser(
    state: &AppState,
    o: &Opened,
    ws: &mut WebSocket,
    down: Bytes,
) -> Result<(), String> {
    o.peer.touch(state.now());
    if let Err(stop) = o.desktop.sent(state, &down).await {
        if o.required {
            return Err(format!(
                "{}; this account requires recording",
                stop.message()
            ));
        }
        o.desktop.stop_recording().await;
    }
    if ws.send(Message::Binary(down)).await.is_err() {
        return Err("the browser went away".into());
    }
    Ok(())
}

/// Runs the bridge until one side ends; answers why, in words for the user.
async fn bridge(state: &AppState, origin: &Origin, o: &Opened, ws: &mut WebSocket) -> String {
    let mut tcp = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        o.peer.dialer.connect(SocketAddr::V4(o.dial)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("the VNC server did not accept a connection: {e}"),
        Err(_) => return "the VNC server did not answer in time".into(),
    };
    let mut rfb = Bridge::new(o.config.clone());
    let mut buf = BytesMut::new();
    // What was read and passes to the browser as it is (no copy through the bridge).
    let mut passed: Option<Bytes> = None;
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        // What the bridge has for either side goes out first.
        let up = rfb.take_to_server();
        if !up.is_empty() && tcp.write_all(&up).await.is_err() {
            return super::server_closed(&o.peer, "VNC");
        }
        if let Some(down) = passed.take()
            && let Err(reason) = to_browser(state, o, ws, down).await
        {
            return reason;
        }
        let down = rfb.take_to_browser();
        if !down.is_empty()
            && let Err(reason) = to_browser(state, o, ws, Bytes::from(down)).await
        {
            return reason;
        }
        if buf.capacity() - buf.len() < READ / 4 {
            buf.reserve(READ);
        }
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = rfb.from_browser(&b) {
                        return e.to_string();
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => return "the browser sent text, not RFB".into(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "the viewer was closed".into(),
            },
            n = tcp.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => return super::server_closed(&o.peer, "VNC"),
                Ok(_) if rfb.passes_server_bytes() => passed = Some(buf.split().freeze()),
                Ok(_) => {
                    let read = buf.split();
                    if let Err(e) = rfb.from_server(&read) {
                        // What the bridge queued for the browser (a reason) still goes.
                        let down = rfb.take_to_browser();
                        if !down.is_empty() {
                            let _ = ws.send(Message::Binary(down.into())).await;
                        }
                        return e.to_string();
                    }
                }
            },
            _ = tick.tick() => {
                ticks += 1;
                if !o.peer.alive() {
                    return "the session ended".into();
                }
                if ticks.is_multiple_of(2) {
                    if !session_open(state, &origin.session_id).await {
                        return "the session ended".into();
                    }
                    if let Err(stop) = o.desktop.store(state).await {
                        if o.required {
                            return format!("{}; this account requires recording", stop.message());
                        }
                        o.desktop.stop_recording().await;
                    }
                }
            }
        }
    }
}
