//! Remote desktops in the browser (VNC and RDP). A device marks a released
//! TCP target as a `vnc` or `rdp` service; a user of an active session that
//! releases it opens it like a device web page, on an origin of its own, where
//! the server's noVNC page talks to [`bridge`] over a WebSocket (IronRDP's
//! web client to [`rdp`], over RDCleanPath), and the bridge to the desktop's
//! server through the session's tunnel. Every desktop is recorded
//! ([`recording`]) unless the account says otherwise, can be watched live by
//! admins and auditors ([`live`]), and replayed by them later ([`viewer`]).
//!
//! **API Boundary:** `GET /api/v1/desktops`, `POST /api/v1/desktops/{id}/watch`,
//! `POST /api/v1/desktops/{id}/replay`, `GET /api/v1/desktops/{id}/recording`,
//! `GET|PUT /api/v1/devices/{id}/desktop-passwords`; the origins' own paths
//! (`/.drawbridge/…`) are in [`viewer`].

pub mod bridge;
pub mod live;
pub mod rdp;
pub mod recording;
pub mod viewer;
pub mod watch;

use crate::api::devices::visible_device;
use crate::auth::Caller;
use crate::clock::from_unix;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::rights::{self, Access};
use crate::state::AppState;
use crate::web::origin::{self, OriginKey, View};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drawbridge_proto::api::OpenedWeb;
use drawbridge_proto::desktop::{DesktopQuery, DesktopRecording, SetDesktopPassword};
use drawbridge_proto::{Action, ApiError, RecordingMode};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::net::SocketAddrV4;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Why a bridge's connection to the desktop server ended: the session, when
/// the peer under it stopped (its dialer ends every connection then), or else
/// the server (`kind`: "VNC", "RDP").
pub fn server_closed(peer: &crate::web::peer::WebPeer, kind: &str) -> String {
    if peer.alive() {
        format!("the {kind} server closed the connection")
    } else {
        "the session ended".into()
    }
}

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list))
        .routes(routes!(watch))
        .routes(routes!(replay))
        .routes(routes!(download))
        .routes(routes!(passwords, set_password))
}

fn password_context(device_id: &str, target: SocketAddrV4) -> String {
    format!("desktop_passwords:{device_id}:{target}")
}

/// Where an RDP desktop's credentials are sealed (apart from VNC passwords, so
/// that one is never opened as the other).
fn rdp_context(device_id: &str, target: SocketAddrV4) -> String {
    format!("desktop_passwords:rdp:{device_id}:{target}")
}

/// An RDP desktop's stored credentials, as sealed.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedRdp {
    domain: String,
    username: String,
    password: String,
}

/// Whether a desktop has stored credentials of its kind (`vnc` or `rdp`),
/// without opening them.
pub async fn has_stored(
    state: &AppState,
    device_id: &str,
    target: SocketAddrV4,
    kind: &str,
) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM desktop_passwords WHERE device_id = $1 AND target = $2 AND kind = $3",
    )
    .bind(device_id)
    .bind(target.to_string())
    .bind(kind)
    .fetch_one(&state.store.pool)
    .await?;
    Ok(n > 0)
}

/// The credentials stored for a device's RDP desktop, opened (for the bridge
/// to inject; never shown).
pub async fn stored_rdp_credentials(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    device_id: &str,
    target: SocketAddrV4,
) -> AppResult<Option<drawbridge_desktop::rdp::RdpCredentials>> {
    let sealed: Option<String> = sqlx::query_scalar(
        "SELECT sealed FROM desktop_passwords WHERE device_id = $1 AND target = $2 AND kind = 'rdp'",
    )
    .bind(device_id)
    .bind(target.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let bad = |e: String| AppError::internal(anyhow::anyhow!("stored RDP credentials: {e}"));
    let plain = state
        .store
        .unseal(&rdp_context(device_id, target), &sealed)
        .map_err(|e| bad(e.to_string()))?;
    let c: SealedRdp = serde_json::from_str(&plain).map_err(|_| bad("not JSON".into()))?;
    Ok(Some(drawbridge_desktop::rdp::RdpCredentials {
        domain: c.domain,
        username: c.username,
        password: c.password,
    }))
}

/// The VNC password stored for a device's desktop, opened.
pub async fn stored_password(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    device_id: &str,
    target: SocketAddrV4,
) -> AppResult<Option<String>> {
    let sealed: Option<String> = sqlx::query_scalar(
        "SELECT sealed FROM desktop_passwords WHERE device_id = $1 AND target = $2 AND kind = 'vnc'",
    )
    .bind(device_id)
    .bind(target.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    match sealed {
        None => Ok(None),
        Some(s) => Ok(Some(
            state
                .store
                .unseal(&password_context(device_id, target), &s)
                .map_err(|e| AppError::internal(anyhow::anyhow!("{e}")))?,
        )),
    }
}

/// Whether `t` is exactly one of the device's desktops (a single TCP host and
/// port marked `vnc` or `rdp`).
pub fn is_desktop_target(
    services: &[drawbridge_proto::api::WebService],
    t: &drawbridge_proto::Target,
) -> bool {
    let std::net::IpAddr::V4(ip) = t.address.addr() else {
        return false;
    };
    let Some(p) = t.ports else { return false };
    t.protocol == drawbridge_proto::Protocol::Tcp
        && t.address.prefix_len() == 32
        && p.start == p.end
        && services
            .iter()
            .any(|w| w.scheme.is_desktop() && w.target == SocketAddrV4::new(ip, p.start))
}

/// The caller's access to a device (the one rule in `rights`).
async fn access_of(state: &AppState, caller: &Caller, device_id: &str) -> AppResult<Access> {
    let mut conn = state.store.pool.acquire().await?;
    rights::access(
        &mut conn,
        &caller.account_id,
        &caller.user_id,
        caller.role,
        device_id,
    )
    .await
}

/// Refuses a caller whose grant on the device is only `monitor`: such a user
/// has desktops in the browser (view-only) and nothing else. No grant at all
/// is the assignment check's to refuse, in its words.
pub async fn require_tunnel_rights(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
) -> AppResult<()> {
    if access_of(state, caller, device_id).await? == Access::Monitor {
        return Err(AppError::new(
            drawbridge_proto::ErrorCode::Forbidden,
            "a monitor grant opens this device's desktops in the browser, view-only, and nothing else",
        ));
    }
    Ok(())
}

/// Whether the caller only watches a device's desktops (a `monitor` grant).
pub async fn view_only(state: &AppState, caller: &Caller, device_id: &str) -> AppResult<bool> {
    Ok(!access_of(state, caller, device_id).await?.can_tunnel())
}

const COLS: &str = "id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at, ended_at, end_reason, bytes, sha256";

fn from_row(r: &AnyRow) -> AppResult<DesktopRecording> {
    let bad = || AppError::internal(anyhow::anyhow!("stored desktop recording"));
    Ok(DesktopRecording {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        device_id: r.try_get("device_id")?,
        target: r
            .try_get::<String, _>("target")?
            .parse()
            .map_err(|_| bad())?,
        user_id: r.try_get("user_id")?,
        view_only: r.try_get::<i64, _>("view_only")? != 0,
        live: r.try_get::<String, _>("state")? == "live",
        mode: serde_json::from_value(serde_json::Value::String(r.try_get("mode")?))
            .map_err(|_| bad())?,
        recorded: r.try_get::<i64, _>("recorded")? != 0,
        started_at: from_unix(r.try_get("started_at")?),
        ended_at: r.try_get::<Option<i64>, _>("ended_at")?.map(from_unix),
        end_reason: r.try_get("end_reason")?,
        bytes: r.try_get::<i64, _>("bytes")?.max(0) as u64,
        sha256: r.try_get("sha256")?,
    })
}

/// One recording of the caller's account.
async fn one(state: &AppState, caller: &Caller, id: &str) -> AppResult<DesktopRecording> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM desktop_recordings WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(&caller.account_id)
    .fetch_optional(&state.store.pool)
    .await?
    .ok_or_else(|| AppError::not_found("desktop"))?;
    from_row(&row)
}

/// Desktops opened in browsers, newest first: all of the account's for
/// admins, session admins and auditors, the caller's own for others.
#[utoipa::path(get, path = "/api/v1/desktops", tag = "desktops", params(DesktopQuery),
    responses((status = 200, body = Vec<DesktopRecording>), (status = 400, body = ApiError)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DesktopQuery>,
) -> AppResult<Json<Vec<DesktopRecording>>> {
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=500).contains(&n) => i64::from(n),
        Some(_) => return Err(AppError::invalid("limit must be between 1 and 500")),
    };
    let all = caller.role.permits(Action::ViewAllSessions);
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM desktop_recordings WHERE account_id = $1
           AND ($2 = 1 OR user_id = $3)
           AND ($4 = '' OR state = $4)
           AND ($5 = '' OR session_id = $5)
         ORDER BY started_at DESC, id DESC LIMIT $6"
    ))
    .bind(&caller.account_id)
    .bind(i64::from(all))
    .bind(&caller.user_id)
    .bind(match q.live {
        None => "",
        Some(true) => "live",
        Some(false) => "ended",
    })
    .bind(q.session_id.as_deref().unwrap_or(""))
    .bind(limit)
    .fetch_all(&state.store.pool)
    .await?;
    Ok(Json(rows.iter().map(from_row).collect::<AppResult<_>>()?))
}

async fn open_view(
    state: &AppState,
    caller: &Caller,
    id: &str,
    view: View,
) -> AppResult<Json<OpenedWeb>> {
    caller
        .require(
            state,
            Action::ReadAudit,
            &format!("desktop.{}", view.as_str()),
        )
        .await?;
    let d = one(state, caller, id).await?;
    match view {
        View::Watch if !d.live => {
            return Err(AppError::conflict(
                "this desktop has ended; replay its recording instead",
            ));
        }
        View::Watch if d.mode == RecordingMode::Off || !d.recorded => {
            return Err(AppError::conflict(
                "this desktop is not being recorded, so it cannot be watched",
            ));
        }
        View::Replay if d.mode == RecordingMode::Off => {
            return Err(AppError::conflict("this desktop was not recorded"));
        }
        _ => {}
    }
    let ev = caller
        .event(
            &format!("desktop.{}", view.as_str()),
            &format!("session:{}", d.session_id),
        )
        .device(&d.device_id)
        .details(serde_json::json!({"username": caller.username, "recording": d.id}));
    let key = OriginKey {
        session_id: &d.session_id,
        device_id: &d.device_id,
        target: d.target,
        recording_id: &d.id,
    };
    let rdp = recording::is_rdp(state, &d.id).await?;
    let (label, handoff) = origin::open_view(state, caller, &key, view, rdp, ev).await?;
    let origin = crate::web::origin_url(state, &label);
    Ok(Json(OpenedWeb {
        url: format!("{origin}{}?t={handoff}", origin::ENTER_PATH),
        origin,
    }))
}

/// Watch an open desktop live, read-only (admins and auditors): answers the
/// one-time link of an origin that shows it from its start.
#[utoipa::path(post, path = "/api/v1/desktops/{id}/watch", tag = "desktops", params(("id" = String, Path)),
    responses((status = 200, body = OpenedWeb), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn watch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<OpenedWeb>> {
    open_view(&state, &caller, &id, View::Watch).await
}

/// Replay a desktop's recording (admins and auditors): answers the one-time
/// link of an origin that plays it, with a time slider.
#[utoipa::path(post, path = "/api/v1/desktops/{id}/replay", tag = "desktops", params(("id" = String, Path)),
    responses((status = 200, body = OpenedWeb), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<OpenedWeb>> {
    open_view(&state, &caller, &id, View::Replay).await
}

/// Whether the caller may read this recording: admins and auditors of the
/// desktop's account.
pub async fn may_read_recording(state: &AppState, caller: &Caller, id: &str) -> AppResult<()> {
    caller
        .require(state, Action::ReadAudit, "desktop.recording")
        .await?;
    one(state, caller, id).await?;
    Ok(())
}

/// The recording's framed stream (what the player plays), with whether the
/// recording is the one on the record.
/// Streamed: the server holds a few chunks of it at a time.
pub async fn replay_stream(state: &AppState, caller: &Caller, id: &str) -> Response {
    match streamed_recording(state, caller, id, recording::Keep::Stream).await {
        Ok(s) => recording_response(s.body, &s.sha256, s.intact),
        Err(e) => e.into_response(),
    }
}

/// A recording of the caller's account as a streamed body, checked before it
/// starts (admins and auditors).
async fn streamed_recording(
    state: &AppState,
    caller: &Caller,
    id: &str,
    keep: recording::Keep,
) -> AppResult<recording::Streamed> {
    may_read_recording(state, caller, id).await?;
    recording::streamed(state, id, keep).await
}

/// Bytes of a recording with its hash and whether that is the one on the record.
fn recording_response(body: axum::body::Body, sha256: &str, intact: bool) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-recording-intact",
        HeaderValue::from_static(if intact { "true" } else { "false" }),
    );
    if let Ok(v) = HeaderValue::from_str(sha256) {
        h.insert("x-recording-sha256", v);
    }
    res
}

/// Download a desktop's recording (admins and auditors): its file, the
/// stored LZ4 frames of the framed RFB stream (`lz4 -d` gives the stream), so
/// `sha256sum` of the file is the SHA-256 on the audit chain
/// (`x-recording-sha256`; `x-recording-intact` says whether they match).
/// Recordings from before LZ4 frames download as the framed stream itself.
#[utoipa::path(get, path = "/api/v1/desktops/{id}/recording", tag = "desktops", params(("id" = String, Path)),
    responses((status = 200, description = "the recording (application/octet-stream)"), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    download_response(&state, &caller, &id).await
}

/// The recording as a file to save, its download on the audit chain.
pub async fn download_response(state: &AppState, caller: &Caller, id: &str) -> Response {
    let s = match streamed_recording(state, caller, id, recording::Keep::File).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ev = caller.event("desktop.download", &format!("recording:{id}"));
    if let Err(e) = crate::audit::record(&state.store, state.now(), &ev).await {
        return AppError::from(e).into_response();
    }
    let name = format!("attachment; filename=\"desktop-{id}.{}\"", s.extension);
    let mut res = recording_response(s.body, &s.sha256, s.intact);
    if let Ok(v) = HeaderValue::from_str(&name) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// The device's desktops that have stored credentials for what they are now
/// (a VNC password, or RDP credentials), never the credentials.
#[utoipa::path(get, path = "/api/v1/devices/{id}/desktop-passwords", tag = "desktops", params(("id" = String, Path)),
    responses((status = 200, body = Vec<String>), (status = 404, body = ApiError)))]
async fn passwords(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<String>>> {
    let d = visible_device(&state, &caller, &id).await?;
    let rows = sqlx::query(
        "SELECT target, kind FROM desktop_passwords WHERE device_id = $1 ORDER BY target",
    )
    .bind(&id)
    .fetch_all(&state.store.pool)
    .await?;
    let mut targets = Vec::new();
    for r in rows {
        let (target, kind): (String, String) = (r.try_get("target")?, r.try_get("kind")?);
        if d.web_services
            .iter()
            .any(|w| w.target.to_string() == target && w.scheme.as_str() == kind)
        {
            targets.push(target);
        }
    }
    Ok(Json(targets))
}

/// Store (or forget) the credentials of one of the device's desktops
/// (admins): a VNC desktop's password, an RDP desktop's user name, password
/// and domain. The server answers the VNC server with the password, or logs on
/// to the RDP server with the credentials (TLS security only, not NLA), so
/// users never see them.
#[utoipa::path(put, path = "/api/v1/devices/{id}/desktop-passwords", tag = "desktops", params(("id" = String, Path)),
    request_body = SetDesktopPassword,
    responses((status = 204), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetDesktopPassword>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageDevices, "desktop.password")
        .await?;
    let d = visible_device(&state, &caller, &id).await?;
    let Some(scheme) = d
        .web_services
        .iter()
        .find(|w| w.target == req.target && w.scheme.is_desktop())
        .map(|w| w.scheme)
    else {
        return Err(AppError::invalid(format!(
            "{} is not a desktop of this device (mark it `vnc` or `rdp` first)",
            req.target
        )));
    };
    let rdp = scheme == drawbridge_proto::api::WebScheme::Rdp;
    req.check(rdp).map_err(AppError::invalid)?;
    let kind = if rdp { "rdp" } else { "vnc" };
    let now = state.now();
    let mut tx = state.store.begin().await?;
    // One statement either way, so that writes at the same moment each succeed
    // and the last one stays.
    match &req.password {
        Some(p) => {
            let sealed = if rdp {
                let plain = serde_json::to_string(&SealedRdp {
                    domain: req.domain.clone().unwrap_or_default(),
                    username: req.username.clone().unwrap_or_default(),
                    password: p.clone(),
                })
                .map_err(|e| AppError::internal(anyhow::Error::from(e)))?;
                state.store.seal(&rdp_context(&id, req.target), &plain)
            } else {
                state.store.seal(&password_context(&id, req.target), p)
            };
            sqlx::query(
                "INSERT INTO desktop_passwords (device_id, target, sealed, set_at, kind) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (device_id, target) DO UPDATE SET sealed = excluded.sealed, set_at = excluded.set_at, kind = excluded.kind",
            )
            .bind(&id)
            .bind(req.target.to_string())
            .bind(sealed)
            .bind(now)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM desktop_passwords WHERE device_id = $1 AND target = $2")
                .bind(&id)
                .bind(req.target.to_string())
                .execute(&mut *tx)
                .await?;
        }
    }
    let ev = caller
        .event("desktop.password", &format!("device:{id}"))
        .device(&id)
        .details(serde_json::json!({
            "username": caller.username, "target": req.target.to_string(),
            "stored": req.password.is_some(), "protocol": kind,
        }));
    crate::audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
