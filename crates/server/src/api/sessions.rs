//! Sessions: prepare, add devices, start (or ad-hoc connect), end, list.

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::records;
use crate::rights;
use crate::sessions;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::api::{
    AdhocSession, NarrowSession, PrepareSession, Session, SessionDevice, SessionFilter,
};
use drawbridge_proto::{Action, ApiError, EndReason, ErrorCode, Name, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list, prepare))
        .routes(routes!(get_session))
        .routes(routes!(add_device))
        .routes(routes!(start))
        .routes(routes!(end))
        .routes(routes!(adhoc))
        .routes(routes!(approve))
        .routes(routes!(tunnels))
        .routes(routes!(narrow))
}

fn is_assigned(s: &Session, caller: &Caller) -> bool {
    s.users.contains(&caller.user_id)
}

/// The session if the caller may see it (all for admins, session admins and
/// auditors; own for users); otherwise not found.
async fn visible(state: &AppState, caller: &Caller, id: &str) -> AppResult<Session> {
    let mut conn = state.store.pool.acquire().await?;
    let s = sessions::load(&mut conn, &caller.account_id, id).await?;
    if caller.role.permits(Action::ViewAllSessions) || is_assigned(&s, caller) {
        Ok(s)
    } else {
        Err(AppError::not_found("session"))
    }
}

/// A refusal by the grant rules (a `forbidden` from `check_assignment`) goes on
/// the record like a refusal by role. The caller drops its transaction first,
/// so the entry commits on its own.
async fn refused<T>(
    state: &AppState,
    caller: &Caller,
    what: &str,
    object: &str,
    e: AppError,
) -> AppResult<T> {
    if e.code == ErrorCode::Forbidden {
        let ev = caller
            .event(what, object)
            .result("denied")
            .details(serde_json::json!({ "username": caller.username, "reason": e.message }));
        audit::record(&state.store, state.now(), &ev).await?;
    }
    Err(e)
}

/// Sessions the caller may see, newest first.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(SessionFilter),
    responses((status = 200, body = Vec<Session>), (status = 401, body = ApiError)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(f): ApiQuery<SessionFilter>,
) -> AppResult<Json<Vec<Session>>> {
    let mut conn = state.store.pool.acquire().await?;
    // The state filter goes into the query, before the limit.
    let state = f.state.map(|s| s.as_str()).unwrap_or("");
    let ids: Vec<String> = if caller.role.permits(Action::ViewAllSessions) {
        sqlx::query_scalar(
            "SELECT id FROM sessions WHERE account_id = $1 AND ($2 = '' OR state = $2)
             ORDER BY created_at DESC, id DESC LIMIT 1000",
        )
        .bind(&caller.account_id)
        .bind(state)
        .fetch_all(&mut *conn)
        .await?
    } else {
        sqlx::query_scalar(
            "SELECT s.id FROM sessions s JOIN session_users u ON u.session_id = s.id
             WHERE s.account_id = $1 AND u.user_id = $2 AND ($3 = '' OR s.state = $3)
             ORDER BY s.created_at DESC, s.id DESC LIMIT 1000",
        )
        .bind(&caller.account_id)
        .bind(&caller.user_id)
        .bind(state)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut out = Vec::new();
    for id in ids {
        out.push(sessions::load(&mut conn, &caller.account_id, &id).await?);
    }
    Ok(Json(out))
}

/// Prepare a session: devices with released targets, users, validity window
/// (admins; session admins within their grants).
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = PrepareSession,
    responses((status = 200, body = Session), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn prepare(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PrepareSession>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::PrepareSessions, "session.prepare")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let account = records::account(&mut tx, &caller.account_id).await?;
    let from = req.valid_from.map(|t| t.unix_timestamp()).unwrap_or(now);
    let max = i64::from(account.settings.max_session_minutes) * 60;
    let until = req
        .valid_until
        .map(|t| t.unix_timestamp())
        .unwrap_or(from + max);
    if until <= from || until - from > max || until <= now {
        return Err(AppError::invalid(format!(
            "the validity window must end in the future, after it starts, and last at most {} minutes",
            account.settings.max_session_minutes
        )));
    }
    if let Err(e) = sessions::check_assignment(
        &mut tx,
        &caller.account_id,
        Some((&caller.user_id, caller.role)),
        &req.devices,
        &req.users,
    )
    .await
    {
        drop(tx);
        return refused(&state, &caller, "session.prepare", "-", e).await;
    }
    let id = sessions::insert(
        &mut tx,
        &caller.account_id,
        &req.name,
        &req.devices,
        &req.users,
        &caller.actor(),
        from,
        until,
        false,
        now,
    )
    .await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    let ev = caller
        .event("session.prepare", &format!("session:{id}"))
        .details(serde_json::json!({ "username": caller.username, "session": s }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(s))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 404, body = ApiError)))]
async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Session>> {
    Ok(Json(visible(&state, &caller, &id).await?))
}

/// Add a device with its targets to a prepared session (admins, session admins within grants).
#[utoipa::path(post, path = "/api/v1/sessions/{id}/devices", tag = "sessions", params(("id" = String, Path)), request_body = SessionDevice,
    responses((status = 200, body = Session), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn add_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SessionDevice>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::AddSessionDevices, "session.add_device")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    if s.state != drawbridge_proto::SessionState::Prepared {
        return Err(AppError::conflict(
            "devices can be added only to a prepared session",
        ));
    }
    if let Err(e) = sessions::check_assignment(
        &mut tx,
        &caller.account_id,
        Some((&caller.user_id, caller.role)),
        std::slice::from_ref(&req),
        &s.users,
    )
    .await
    {
        drop(tx);
        let object = format!("session:{id}");
        return refused(&state, &caller, "session.add_device", &object, e).await;
    }
    sessions::add_device(&mut tx, &id, &req).await?;
    let ev = caller
        .event("session.add_device", &format!("session:{id}"))
        .device(&req.device_id)
        .details(serde_json::json!({ "username": caller.username, "device": req }));
    audit::append(&mut tx, now, &ev).await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    Ok(Json(s))
}

/// Start a session prepared for the caller. Under dual control it waits for approval.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/start", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::UseSessions, "session.start")
        .await?;
    let s = visible(&state, &caller, &id).await?;
    if !is_assigned(&s, &caller) {
        return caller.denied(&state, "session.start").await;
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let account = records::account(&mut tx, &caller.account_id).await?;
    // Grants may have changed since the session was prepared.
    if let Err(e) = sessions::check_assignment(
        &mut tx,
        &caller.account_id,
        Some((&caller.user_id, caller.role)),
        &s.devices,
        &[],
    )
    .await
    {
        drop(tx);
        let object = format!("session:{id}");
        return refused(&state, &caller, "session.start", &object, e).await;
    }
    let st = sessions::start(
        &mut tx,
        &caller.account_id,
        &id,
        &caller.actor(),
        account.settings.dual_control,
        now,
    )
    .await?;
    let mut ev = caller
        .event("session.start", &format!("session:{id}"))
        .details(serde_json::json!({ "username": caller.username, "state": st }));
    if let [d] = s.devices.as_slice() {
        ev = ev.device(&d.device_id);
    }
    audit::append(&mut tx, now, &ev).await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, std::slice::from_ref(&s.id)).await?;
    Ok(Json(s))
}

/// End a session: admins and session admins any, users their own.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/end", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn end(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::EndOwnSession, "session.end")
        .await?;
    let s = visible(&state, &caller, &id).await?;
    let own = is_assigned(&s, &caller);
    if !own && !caller.role.permits(Action::EndAnySession) {
        return caller.denied(&state, "session.end").await;
    }
    let reason = if own {
        EndReason::User
    } else {
        EndReason::Admin
    };
    let now = state.now();
    let mut tx = state.store.begin().await?;
    if !sessions::end(
        &mut tx,
        &caller.account_id,
        &id,
        &caller.actor(),
        reason,
        now,
    )
    .await?
    {
        return Err(AppError::conflict("the session has ended already"));
    }
    let ev = caller
        .event("session.end", &format!("session:{id}"))
        .details(serde_json::json!({ "username": caller.username, "reason": reason }));
    audit::append(&mut tx, now, &ev).await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, std::slice::from_ref(&s.id)).await?;
    Ok(Json(s))
}

/// Ad-hoc connect: create and start a session for the caller on one device
/// their grant covers, where the account allows it.
#[utoipa::path(post, path = "/api/v1/sessions/adhoc", tag = "sessions", request_body = AdhocSession,
    responses((status = 200, body = Session), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn adhoc(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AdhocSession>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::UseSessions, "session.adhoc")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let account = records::account(&mut tx, &caller.account_id).await?;
    if !account.settings.adhoc_allowed {
        drop(tx);
        return caller.denied(&state, "session.adhoc").await;
    }
    let device = records::device(&mut tx, &caller.account_id, &req.device_id).await?;
    let access = rights::access(
        &mut tx,
        &caller.account_id,
        &caller.user_id,
        caller.role,
        &device.id,
    )
    .await?;
    if !access.can_see() {
        return Err(AppError::not_found("device"));
    }
    if !access.can_tunnel() {
        // A monitor grant shows the device but gives no tunnel.
        drop(tx);
        return caller.denied(&state, "session.adhoc").await;
    }
    let targets = match req.targets {
        Some(t) => t,
        None => access.default_targets(&device.firewall),
    };
    if targets.is_empty() {
        return Err(AppError::invalid(
            "nothing on this device is released to you",
        ));
    }
    let devices = vec![SessionDevice {
        device_id: device.id.clone(),
        targets,
    }];
    let users = vec![caller.user_id.clone()];
    if let Err(e) =
        sessions::check_assignment(&mut tx, &caller.account_id, None, &devices, &users).await
    {
        drop(tx);
        return refused(&state, &caller, "session.adhoc", "-", e).await;
    }
    let name = Name::try_from(
        format!("Ad-hoc {}", device.name)
            .chars()
            .take(Name::MAX)
            .collect::<String>(),
    )
    .map_err(|_| AppError::internal(anyhow::anyhow!("session name")))?;
    let until = now + i64::from(account.settings.max_session_minutes) * 60;
    let id = sessions::insert(
        &mut tx,
        &caller.account_id,
        &name,
        &devices,
        &users,
        &caller.actor(),
        now,
        until,
        true,
        now,
    )
    .await?;
    let st = sessions::start(
        &mut tx,
        &caller.account_id,
        &id,
        &caller.actor(),
        account.settings.dual_control,
        now,
    )
    .await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    let ev = caller
        .event("session.adhoc", &format!("session:{id}"))
        .device(&device.id)
        .details(serde_json::json!({ "username": caller.username, "session": s, "state": st }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, std::slice::from_ref(&s.id)).await?;
    Ok(Json(s))
}

/// Approve or refuse devices of a session waiting for their approval (dual
/// control per device) as an approver in the cloud: an admin or session admin
/// other than the person who started it. `device_id` picks one device; without
/// it, every waiting device an approver may decide. A device that always needs
/// on-site approval is approved only by its site (403 here).
#[utoipa::path(post, path = "/api/v1/sessions/{id}/approve", tag = "sessions", params(("id" = String, Path)),
    request_body = drawbridge_proto::api::Decision,
    responses((status = 200, body = Session), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<drawbridge_proto::api::Decision>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::EndAnySession, "session.approve")
        .await?;
    let s = visible(&state, &caller, &id).await?;
    if s.started_by.as_deref() == Some(caller.actor().as_str()) {
        // Four eyes: whoever asked cannot also approve.
        return caller.denied(&state, "session.approve").await;
    }
    let action = if req.approve {
        "session.approve"
    } else {
        "session.refuse"
    };
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let decided = match crate::sessions::decide(
        &mut tx,
        &caller.account_id,
        &id,
        sessions::Decider::Cloud(req.device_id.as_deref()),
        req.approve,
        &caller.actor(),
        now,
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            // A device that always needs on-site approval: a refusal, on the record.
            drop(tx);
            return refused(&state, &caller, action, &format!("session:{id}"), e).await;
        }
    };
    let mut ev = caller
        .event(action, &format!("session:{id}"))
        .details(serde_json::json!({ "username": caller.username, "devices": decided.devices }));
    if let [d] = decided.devices.as_slice() {
        ev = ev.device(d);
    }
    audit::append(&mut tx, now, &ev).await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, std::slice::from_ref(&s.id)).await?;
    Ok(Json(s))
}

/// Narrow a session's targets: per listed device, the targets it keeps (each
/// inside one it has now; never wider). Running tunnels follow within seconds:
/// the edge cuts flows to removed targets, clients lose their routes. The
/// session's requester (who started or prepared it) and account admins may.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/narrow", tag = "sessions", params(("id" = String, Path)),
    request_body = NarrowSession,
    responses((status = 200, body = Session), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn narrow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NarrowSession>,
) -> AppResult<Json<Session>> {
    caller
        .require(&state, Action::EndOwnSession, "session.narrow")
        .await?;
    sessions::narrow::check_request(&req.devices)?;
    let s = visible(&state, &caller, &id).await?;
    let actor = caller.actor();
    let requester = s.started_by.as_deref() == Some(actor.as_str()) || s.created_by == actor;
    if !requester && caller.role != Role::Admin {
        return caller.denied(&state, "session.narrow").await;
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    let changed = sessions::narrow::apply(
        &mut tx,
        &caller.account_id,
        &id,
        s.state,
        &caller,
        &req.devices,
        now,
    )
    .await?;
    if !changed {
        // The same targets again: nothing to do, nothing on the record.
        return Ok(Json(s));
    }
    // The live revocation path: tunnels whose users' grants no longer fit are
    // cut, and every touched session is poked on every replica after the commit.
    let mut touched =
        crate::live::revoke::revalidate(&mut tx, &caller.account_id, &actor, "session.narrow", now)
            .await?;
    if !touched.contains(&id) {
        touched.push(id.clone());
    }
    let s = sessions::load(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, &touched).await?;
    Ok(Json(s))
}

/// The session's client tunnels: who, to which device, since when, path and bytes.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/tunnels", tag = "sessions", params(("id" = String, Path)),
    responses((status = 200, body = Vec<drawbridge_proto::api::TunnelInfo>), (status = 404, body = ApiError)))]
async fn tunnels(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<drawbridge_proto::api::TunnelInfo>>> {
    use sqlx::Row;
    visible(&state, &caller, &id).await?;
    let rows = sqlx::query(
        "SELECT t.id, u.username, t.device_id, t.overlay_ip, t.started_at, t.ended_at, t.path, t.path_reason,
                t.bytes_to_device, t.bytes_from_device, t.end_reason
         FROM tunnels t JOIN users u ON u.id = t.user_id
         WHERE t.session_id = $1 AND t.account_id = $2 ORDER BY t.started_at DESC, t.id LIMIT 500",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(drawbridge_proto::api::TunnelInfo {
            id: r.try_get(0)?,
            user: r.try_get(1)?,
            device_id: r.try_get(2)?,
            overlay_ip: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            started_at: crate::clock::from_unix(r.try_get(4)?),
            ended_at: r.try_get::<Option<i64>, _>(5)?.map(crate::clock::from_unix),
            path: r.try_get(6)?,
            path_reason: r.try_get(7)?,
            bytes_to_device: r.try_get(8)?,
            bytes_from_device: r.try_get(9)?,
            end_reason: r.try_get(10)?,
        });
    }
    Ok(Json(out))
}
