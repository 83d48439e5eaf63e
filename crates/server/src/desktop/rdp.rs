//! RDP desktops in the browser. A device marks a released TCP target as an
//! `rdp` service; its desktop origin serves our page and script
//! (`crates/server/assets/desktop/rdp*`) and Devolutions' IronRDP web client
//! (two files from npm, found on the server, never part of this repository).
//! The web client cannot open TCP or do TLS, so it speaks RDCleanPath to
//! `/.drawbridge/rdcleanpath`: this module checks the page's one-time ticket,
//! connects to the RDP server through the session's tunnel (the server's own
//! peer, as for VNC), sends the client's X.224 request, does TLS with the RDP
//! server under the same trust-on-first-use pins as HTTPS device pages, hands
//! the client the server's certificate chain, and then relays RDP
//! (`drawbridge_desktop::rdp::RdpBridge`: view-only for monitor grants,
//! autologon with typed credentials, or credentials stored for the desktop
//! injected in the Client Info PDU, the browser only sending placeholders:
//! TLS security only, a server that requires NLA is refused in words). What the browser is sent is recorded in
//! the same sealed chunks as VNC, under a `DBRDP1` header, with the
//! RDCleanPath response a replaying client needs as the first frame.
//!
//! Watching and replaying answer the web client as a gateway would, with the
//! recorded response and the recorded stream (from its start: RDP's state is
//! cumulative); whatever that client sends is dropped.
//!
//! Errors before the relay reach the client as RDCleanPath error PDUs (code 1
//! with an HTTP status, which the npm client of 0.7.0 shows) and as the
//! WebSocket's close reason, which our page shows.

use super::bridge::{self, Kind, Opened, TICK, close};
use crate::auth::Caller;
use crate::secret;
use crate::state::AppState;
use crate::web::origin::{Origin, View};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use drawbridge_desktop::rdp::{RdpBridge, RdpConfig, http_error_pdu, tls_error_pdu};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PAGE: &str = include_str!("../../assets/desktop/rdp.html");
const MISSING: &str = include_str!("../../assets/desktop/rdp-missing.html");
const SCRIPT: &str = include_str!("../../assets/desktop/rdp-viewer.js");
const STYLE: &str = include_str!("../../assets/desktop/viewer.css");

/// The IronRDP web client's two files.
pub const UI_FILE: &str = "iron-remote-desktop.js";
pub const RDP_FILE: &str = "iron-remote-desktop-rdp.js";
/// The npm versions the docs and tests pin.
pub const PINNED: &str =
    "@devolutions/iron-remote-desktop@0.11.0 @devolutions/iron-remote-desktop-rdp@0.7.0";
/// Largest IronRDP file served (0.7.0's is 6.1 MB, its WebAssembly inlined).
const MAX_FILE: u64 = 32 * 1024 * 1024;
/// Each step before the relay (the request, connecting, the X.224 confirm,
/// TLS) has this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ticket from `/.drawbridge/rdp-ticket` may wait for its WebSocket.
const TICKET_SECS: i64 = 60;
/// How long a replay stays open after its last frame.
const REPLAY_LINGER: Duration = Duration::from_secs(30 * 60);

/// Where the IronRDP web client was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IronRdp {
    pub ui: PathBuf,
    pub rdp: PathBuf,
    /// The packages' versions, from their package.json ("unknown" when absent).
    pub versions: String,
}

fn package_version(dir: Option<&Path>) -> String {
    dir.and_then(|d| std::fs::read(d.join("package.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// The IronRDP web client in `dir`: npm's layout (`@devolutions/iron-remote-desktop{,-rdp}/`)
/// in `dir`, `dir/@devolutions` or `dir/node_modules/@devolutions`, or the two files side by side.
pub fn ironrdp_in(dir: &Path) -> Option<IronRdp> {
    for base in [
        dir.to_path_buf(),
        dir.join("@devolutions"),
        dir.join("node_modules/@devolutions"),
    ] {
        let npm = (
            base.join("iron-remote-desktop").join(UI_FILE),
            base.join("iron-remote-desktop-rdp").join(RDP_FILE),
        );
        let flat = (base.join(UI_FILE), base.join(RDP_FILE));
        for (ui, rdp) in [npm, flat] {
            if ui.is_file() && rdp.is_file() {
                let versions = format!(
                    "iron-remote-desktop {}, iron-remote-desktop-rdp {}",
                    package_version(ui.parent()),
                    package_version(rdp.parent())
                );
                return Some(IronRdp { ui, rdp, versions });
            }
        }
    }
    None
}

/// Where IronRDP is looked for when the configuration names no directory:
/// `node_modules` in the working directory and next to the server's binary,
/// then `/usr/local/share/ironrdp`.
pub fn find_ironrdp() -> Option<IronRdp> {
    let mut dirs = vec![PathBuf::from("node_modules")];
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.join("node_modules"));
    }
    dirs.push(PathBuf::from("/usr/local/share/ironrdp"));
    dirs.iter().find_map(|d| ironrdp_in(d))
}

/// Our headers; the policy lets the web client instantiate its WebAssembly
/// (inlined as a `data:` URL it fetches) and set inline styles.
fn with_headers(mut r: Response, content_type: &'static str, cache: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: blob:; connect-src 'self' data:; frame-ancestors 'none'; \
             form-action 'none'; base-uri 'none'",
        ),
    );
    r
}

fn text(status: StatusCode, t: &str) -> Response {
    with_headers(
        (status, t.to_string()).into_response(),
        "text/plain; charset=utf-8",
        "no-store",
    )
}

fn page(o: &Origin, view_only: bool, stored: bool) -> String {
    let (mode, title) = match &o.recording {
        None => ("desktop", "Desktop"),
        Some((_, View::Watch)) => ("watch", "Watching a desktop"),
        Some((_, View::Replay)) => ("replay", "Desktop recording"),
    };
    PAGE.replace("{{MODE}}", mode)
        .replace("{{VIEW_ONLY}}", if view_only { "true" } else { "false" })
        .replace("{{STORED}}", if stored { "true" } else { "false" })
        .replace("{{TITLE}}", &format!("{title} · {} (RDP)", o.target))
}

async fn ironrdp_file(path: &Path) -> Response {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => {}
        _ => return text(StatusCode::NOT_FOUND, "no such file"),
    }
    match tokio::fs::read(path).await {
        Ok(b) => with_headers(
            (StatusCode::OK, b).into_response(),
            "text/javascript; charset=utf-8",
            "private, max-age=86400",
        ),
        Err(_) => text(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// Whether a WebSocket's `Origin` is this origin (a page elsewhere may not
/// open it, even with the cookie).
fn same_origin(req: &Request) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok());
    match (host, origin) {
        (Some(h), Some(o)) => o.eq_ignore_ascii_case(&format!("https://{h}")),
        _ => false,
    }
}

/// A request on an RDP desktop origin (its cookie already checked).
pub async fn serve(state: AppState, caller: Caller, o: Origin, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if req.method() != axum::http::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "a desktop origin only answers GET",
        );
    }
    let ironrdp = state.web.ironrdp();
    match path.as_str() {
        "/" => match ironrdp {
            Some(_) => {
                let view_only = super::view_only(&state, &caller, &o.device_id)
                    .await
                    .unwrap_or(true);
                // With stored credentials the page asks for none: the server logs on.
                let stored = o.recording.is_none()
                    && super::has_stored(&state, &o.device_id, o.target, "rdp")
                        .await
                        .unwrap_or(false);
                with_headers(
                    (StatusCode::OK, page(&o, view_only, stored)).into_response(),
                    "text/html; charset=utf-8",
                    "no-store",
                )
            }
            None => with_headers(
                (StatusCode::OK, MISSING).into_response(),
                "text/html; charset=utf-8",
                "no-store",
            ),
        },
        "/.drawbridge/rdp-viewer.js" => with_headers(
            (StatusCode::OK, SCRIPT).into_response(),
            "text/javascript; charset=utf-8",
            "no-store",
        ),
        "/.drawbridge/viewer.css" => with_headers(
            (StatusCode::OK, STYLE).into_response(),
            "text/css; charset=utf-8",
            "no-store",
        ),
        "/.drawbridge/ironrdp/iron-remote-desktop.js" => match ironrdp {
            Some(i) => ironrdp_file(&i.ui).await,
            None => text(
                StatusCode::NOT_FOUND,
                "IronRDP is not installed on this server",
            ),
        },
        "/.drawbridge/ironrdp/iron-remote-desktop-rdp.js" => match ironrdp {
            Some(i) => ironrdp_file(&i.rdp).await,
            None => text(
                StatusCode::NOT_FOUND,
                "IronRDP is not installed on this server",
            ),
        },
        "/.drawbridge/rdp-ticket" if o.recording.is_none() => {
            match new_ticket(&state, &caller, &o.label).await {
                Ok(t) => text(StatusCode::OK, &t),
                Err(e) => text(e.status(), &e.message),
            }
        }
        "/.drawbridge/rdcleanpath" | "/.drawbridge/watch" | "/.drawbridge/replay" => {
            let same = same_origin(&req);
            let from_ms = req
                .uri()
                .query()
                .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "from"))
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(0);
            let (mut parts, _) = req.into_parts();
            let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
                return text(StatusCode::BAD_REQUEST, "this path takes a WebSocket");
            };
            let ws = bridge::browser_socket(ws);
            if !same {
                return ws.on_upgrade(|mut socket| async move {
                    refuse(
                        &mut socket,
                        403,
                        "this desktop opens from its own page only",
                    )
                    .await;
                });
            }
            match (&o.recording, path.as_str()) {
                (None, "/.drawbridge/rdcleanpath") => ws.on_upgrade(move |socket| async move {
                    live(state, caller, o, socket).await;
                }),
                (Some((id, View::Watch)), "/.drawbridge/watch") => {
                    let id = id.clone();
                    super::watch::watch(state, id, ws, true).await
                }
                (Some((id, View::Replay)), "/.drawbridge/replay") => {
                    let id = id.clone();
                    ws.on_upgrade(move |socket| async move {
                        replay(state, caller, id, from_ms, socket).await;
                    })
                }
                _ => text(StatusCode::NOT_FOUND, "no such path"),
            }
        }
        "/.drawbridge/replay-info" => match &o.recording {
            Some((id, View::Replay)) => match replay_info(&state, &caller, id).await {
                Ok(body) => with_headers(
                    (StatusCode::OK, body.to_string()).into_response(),
                    "application/json",
                    "no-store",
                ),
                Err(e) => text(e.status(), &e.message),
            },
            _ => text(StatusCode::NOT_FOUND, "no such path"),
        },
        "/.drawbridge/recording" => match &o.recording {
            Some((id, View::Replay)) => super::download_response(&state, &caller, id).await,
            _ => text(StatusCode::NOT_FOUND, "no such path"),
        },
        _ => text(StatusCode::NOT_FOUND, "no such path"),
    }
}

fn ticket_hash(ticket: &str) -> String {
    // Apart from entry links (the same table): a ticket is no entry link.
    secret::token_hash(&format!("rdcleanpath:{ticket}"))
}

/// A one-time ticket for the page's RDCleanPath WebSocket (its `proxy_auth`):
/// it binds the WebSocket to a script of this origin.
async fn new_ticket(
    state: &AppState,
    caller: &Caller,
    label: &str,
) -> crate::error::AppResult<String> {
    let now = state.now();
    let ticket = secret::new_token("dbt_");
    sqlx::query(
        "INSERT INTO web_handoffs (handoff_hash, label, token_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(ticket_hash(&ticket))
    .bind(label)
    .bind(&caller.token_id)
    .bind(now + TICKET_SECS)
    .execute(&state.store.pool)
    .await?;
    Ok(ticket)
}

/// Takes a ticket of this origin and login (once, in time).
async fn take_ticket(state: &AppState, caller: &Caller, label: &str, ticket: &str) -> bool {
    if ticket.len() > 128 {
        return false;
    }
    sqlx::query(
        "DELETE FROM web_handoffs WHERE handoff_hash = $1 AND label = $2 AND token_id = $3 AND expires_at >= $4",
    )
    .bind(ticket_hash(ticket))
    .bind(label)
    .bind(&caller.token_id)
    .bind(state.now())
    .execute(&state.store.pool)
    .await
    .is_ok_and(|r| r.rows_affected() == 1)
}

/// Sends the client an RDCleanPath error PDU, then closes with `reason`.
async fn refuse(ws: &mut WebSocket, status: u16, reason: &str) {
    let _ = ws
        .send(Message::Binary(Bytes::from(http_error_pdu(status))))
        .await;
    close(ws, reason).await;
}

/// Why a connection ended before the relay: the PDU the client gets, and words.
struct Early {
    pdu: Vec<u8>,
    reason: String,
}

fn early(status: u16, reason: impl Into<String>) -> Early {
    Early {
        pdu: http_error_pdu(status),
        reason: reason.into(),
    }
}

/// Reads the client's RDCleanPath request into `rdp`.
async fn read_request(ws: &mut WebSocket, rdp: &mut RdpBridge) -> Result<(), Early> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while rdp.request().is_none() {
        match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => {
                return Err(early(
                    408,
                    "the browser sent no RDCleanPath request in time",
                ));
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Err(e) = rdp.from_browser(&b) {
                    return Err(early(e.http_status(), e.to_string()));
                }
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Text(_)))) => {
                return Err(early(400, "the browser sent text, not RDCleanPath"));
            }
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                return Err(Early {
                    pdu: Vec::new(),
                    reason: "the viewer was closed".into(),
                });
            }
        }
    }
    Ok(())
}

async fn send_early(ws: &mut WebSocket, e: &Early) {
    if !e.pdu.is_empty() {
        let _ = ws.send(Message::Binary(Bytes::from(e.pdu.clone()))).await;
    }
}

/// `GET /.drawbridge/rdcleanpath`: the user's own desktop.
async fn live(state: AppState, caller: Caller, origin: Origin, mut ws: WebSocket) {
    let view_only = match super::view_only(&state, &caller, &origin.device_id).await {
        Ok(v) => v,
        Err(e) => return refuse(&mut ws, e.status().as_u16(), &e.message).await,
    };
    let mut rdp = RdpBridge::new(RdpConfig { view_only });
    if let Err(e) = read_request(&mut ws, &mut rdp).await {
        send_early(&mut ws, &e).await;
        return close(&mut ws, &e.reason).await;
    }
    let Some(request) = rdp.request().cloned() else {
        return;
    };
    if !take_ticket(&state, &caller, &origin.label, &request.proxy_auth).await {
        return refuse(
            &mut ws,
            401,
            "the page's ticket was refused (used, expired or not this page's); reload the page",
        )
        .await;
    }
    if request.destination != "desktop" {
        tracing::debug!(destination = %request.destination, target = %origin.target, "RDCleanPath destination ignored: the origin names the target");
    }
    let o = match bridge::prepare(&state, &caller, &origin, Kind::Rdp).await {
        Ok(o) => o,
        Err(e) => return refuse(&mut ws, e.status().as_u16(), &e.message).await,
    };
    if let Some(c) = o.rdp_credentials.clone() {
        // The browser sent placeholders; the server logs on with these.
        if let Err(e) = rdp.inject(c) {
            send_early(&mut ws, &early(e.http_status(), e.to_string())).await;
            close(&mut ws, &e.to_string()).await;
            return bridge::finish(&state, &caller, &o.desktop, &e.to_string()).await;
        }
    }
    state.desktops.insert(o.desktop.clone());
    let reason = match connect(&state, &caller, &origin, &o, &mut rdp, &mut ws).await {
        Ok(tls) => relay(&state, &origin, &o, &mut rdp, tls, &mut ws).await,
        Err(e) => {
            send_early(&mut ws, &e).await;
            e.reason
        }
    };
    close(&mut ws, &reason).await;
    state.desktops.remove(&o.desktop.id);
    bridge::finish(&state, &caller, &o.desktop, &reason).await;
}

/// The TLS alert the RDP server sent, if that is why TLS failed.
fn tls_alert(e: &std::io::Error) -> Option<u8> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(u8::from(*a)),
        _ => None,
    }
}

/// Connects to the RDP server, passes the X.224 exchange, does TLS and
/// checks its pin, and sends the client the response.
async fn connect(
    state: &AppState,
    caller: &Caller,
    origin: &Origin,
    o: &Opened,
    rdp: &mut RdpBridge,
    ws: &mut WebSocket,
) -> Result<impl AsyncRead + AsyncWrite + Unpin + use<>, Early> {
    let mut tcp =
        match tokio::time::timeout(STEP_TIMEOUT, o.peer.dialer.connect(SocketAddr::V4(o.dial)))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(early(
                    502,
                    format!("the RDP server did not accept a connection: {e}"),
                ));
            }
            Err(_) => return Err(early(504, "the RDP server did not answer in time")),
        };
    let failed = |rdp: &mut RdpBridge, e: drawbridge_desktop::rdp::RdpError| {
        // A refused negotiation goes to the client in the server's words.
        let queued = rdp.take_to_browser().bytes;
        Early {
            pdu: if queued.is_empty() {
                http_error_pdu(e.http_status())
            } else {
                queued
            },
            reason: e.to_string(),
        }
    };
    if let Err(e) = rdp.connected() {
        return Err(failed(rdp, e));
    }
    let request = rdp.take_to_server();
    let gone = || early(502, "the RDP server closed the connection");
    if tcp.write_all(&request).await.is_err() {
        return Err(gone());
    }
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut buf = [0u8; 1024];
    while !rdp.wants_tls() {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => {
                return Err(early(
                    504,
                    "the RDP server did not confirm the connection in time",
                ));
            }
            Ok(Ok(0) | Err(_)) => return Err(gone()),
            Ok(Ok(n)) => {
                if let Err(e) = rdp.from_server(&buf[..n]) {
                    return Err(failed(rdp, e));
                }
            }
        }
    }
    let (tls, seen) = match tokio::time::timeout(
        STEP_TIMEOUT,
        crate::web::pins::handshake_alpn(tcp, *o.dial.ip(), &[]),
    )
    .await
    {
        Err(_) => return Err(early(504, "TLS with the RDP server did not finish in time")),
        Ok(Err(e)) => {
            let reason = format!("TLS with the RDP server failed: {e}");
            return Err(match tls_alert(&e) {
                Some(alert) => Early {
                    pdu: tls_error_pdu(alert),
                    reason,
                },
                None => early(502, reason),
            });
        }
        Ok(Ok(v)) => v,
    };
    if let Err(e) =
        crate::web::pins::check(state, caller, &origin.device_id, origin.target, &seen).await
    {
        return Err(early(e.status().as_u16(), e.message));
    }
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    if let Err(e) = rdp.tls_established(chain, origin.target.to_string()) {
        return Err(failed(rdp, e));
    }
    // The first frame of the recording: what a replaying client is answered.
    let replay = Bytes::copy_from_slice(rdp.replay_response());
    if o.desktop.sent(state, &replay).await.is_err() {
        if o.required {
            return Err(early(
                409,
                "the desktop's recording cannot be stored, and this account requires it",
            ));
        }
        o.desktop.stop_recording().await;
    }
    let response = rdp.take_to_browser().bytes;
    if ws
        .send(Message::Binary(Bytes::from(response)))
        .await
        .is_err()
    {
        return Err(Early {
            pdu: Vec::new(),
            reason: "the browser went away".into(),
        });
    }
    Ok(tls)
}

/// Relays RDP until one side ends; answers why, in words for the user.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    state: &AppState,
    origin: &Origin,
    o: &Opened,
    rdp: &mut RdpBridge,
    mut tls: S,
    ws: &mut WebSocket,
) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        let up = rdp.take_to_server();
        if !up.is_empty() && tls.write_all(&up).await.is_err() {
            return super::server_closed(&o.peer, "RDP");
        }
        let down = rdp.take_to_browser();
        if !down.bytes.is_empty() {
            o.peer.touch(state.now());
            let recorded = down.recorded();
            if !recorded.is_empty() {
                let recorded = Bytes::copy_from_slice(recorded);
                if let Err(stop) = o.desktop.sent(state, &recorded).await {
                    if o.required {
                        return format!("{}; this account requires recording", stop.message());
                    }
                    o.desktop.stop_recording().await;
                }
            }
            if ws
                .send(Message::Binary(Bytes::from(down.bytes)))
                .await
                .is_err()
            {
                return "the browser went away".into();
            }
        }
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = rdp.from_browser(&b) {
                        return e.to_string();
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => return "the browser sent text, not RDP".into(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "the viewer was closed".into(),
            },
            n = tls.read(&mut buf) => match n {
                Ok(0) | Err(_) => return super::server_closed(&o.peer, "RDP"),
                Ok(n) => {
                    if let Err(e) = rdp.from_server(&buf[..n]) {
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
                    if !bridge::session_open(state, &origin.session_id).await {
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

/// Answers a watcher's or a replay's client like a gateway: reads its
/// request (whatever its ticket) and answers nothing yet.
pub(super) async fn answer_as_gateway(ws: &mut WebSocket) -> Result<(), String> {
    let mut rdp = RdpBridge::new(RdpConfig { view_only: true });
    match read_request(ws, &mut rdp).await {
        Ok(()) => Ok(()),
        Err(e) => {
            send_early(ws, &e).await;
            Err(e.reason)
        }
    }
}

/// `GET /.drawbridge/replay-info`: the recording's length (the last frame's
/// time), its hash and whether it is the one on the record; only the last
/// chunk is opened ([`super::recording::length`]).
async fn replay_info(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> crate::error::AppResult<serde_json::Value> {
    super::may_read_recording(state, caller, id).await?;
    let l = super::recording::length(state, id).await?;
    Ok(serde_json::json!({"end_ms": l.end_ms, "intact": l.intact, "sha256": l.sha256}))
}

/// `GET /.drawbridge/replay?from=MS`: the recording played to the client,
/// everything up to `from` at once, the rest at its pace.
async fn replay(state: AppState, caller: Caller, id: String, from_ms: u64, mut ws: WebSocket) {
    if let Err(e) = super::may_read_recording(&state, &caller, &id).await {
        return refuse(&mut ws, e.status().as_u16(), &e.message).await;
    }
    match super::recording::is_rdp(&state, &id).await {
        Ok(true) => {}
        Ok(false) => return refuse(&mut ws, 409, "this recording is not of an RDP desktop").await,
        Err(e) => return refuse(&mut ws, e.status().as_u16(), &e.message).await,
    }
    // Read a chunk at a time: the server holds one chunk's frames, not the recording.
    let mut frames = match super::recording::FrameReader::open(&state, &id).await {
        Ok(f) => f,
        Err(e) => return refuse(&mut ws, e.status().as_u16(), &e.message).await,
    };
    if let Err(reason) = answer_as_gateway(&mut ws).await {
        return close(&mut ws, &reason).await;
    }
    let start = tokio::time::Instant::now();
    loop {
        let batch = match frames.next_frames().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => return close(&mut ws, &e.message).await,
        };
        for (t_ms, data) in batch {
            let due = u64::from(t_ms).saturating_sub(from_ms);
            if due > 0 {
                let at = start + Duration::from_millis(due);
                // Input from the client is dropped while waiting; a close ends the replay.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => break,
                        m = ws.recv() => match m {
                            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                            Some(Ok(_)) => {}
                        },
                    }
                }
            }
            if ws.send(Message::Binary(data)).await.is_err() {
                return;
            }
        }
    }
    let _ = tokio::time::timeout(REPLAY_LINGER, async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    close(&mut ws, "the recording ended").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ironrdp_is_found_in_npms_layout_and_flat() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(ironrdp_in(d.path()), None);
        let ui = d
            .path()
            .join("node_modules/@devolutions/iron-remote-desktop");
        let rdp = d
            .path()
            .join("node_modules/@devolutions/iron-remote-desktop-rdp");
        std::fs::create_dir_all(&ui).unwrap();
        std::fs::create_dir_all(&rdp).unwrap();
        std::fs::write(ui.join(UI_FILE), "export {}").unwrap();
        assert_eq!(ironrdp_in(d.path()), None, "one file is not enough");
        std::fs::write(rdp.join(RDP_FILE), "export {}").unwrap();
        std::fs::write(rdp.join("package.json"), r#"{"version":"0.7.0"}"#).unwrap();
        for dir in [
            d.path().to_path_buf(),
            d.path().join("node_modules"),
            d.path().join("node_modules/@devolutions"),
        ] {
            let found = ironrdp_in(&dir).unwrap();
            assert_eq!(found.rdp, rdp.join(RDP_FILE));
            assert_eq!(
                found.versions,
                "iron-remote-desktop unknown, iron-remote-desktop-rdp 0.7.0"
            );
        }
        let flat = tempfile::tempdir().unwrap();
        std::fs::write(flat.path().join(UI_FILE), "").unwrap();
        std::fs::write(flat.path().join(RDP_FILE), "").unwrap();
        assert_eq!(
            ironrdp_in(flat.path()).unwrap().ui,
            flat.path().join(UI_FILE)
        );
    }
}
