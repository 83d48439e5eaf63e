//! Taking a device out of service and back: disable, enable, replace, archive.
//!
//! A disabled or archived device's edge channel is refused (a live one is
//! closed, on every replica), its running sessions end (`device_disabled`) and
//! the relay of every replica closes their connections and refuses their tokens
//! ([`crate::live::notify_sessions`]). `replace` issues a new activation key for
//! the same record; enrolling with it makes the old identity key stop working
//! at once ([`replaced_on_enrolment`]). History, logbook and audit stay.

use crate::audit;
use crate::auth::Caller;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::records;
use crate::sessions;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::api::{ActivationKey, Device};
use drawbridge_proto::{Action, ApiError, EndReason};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(replace))
        .routes(routes!(archive))
}

/// Ends the device's running sessions (active or waiting for approval) with
/// `reason`, each on the record; returns their ids for `notify_sessions`.
pub(crate) async fn end_device_sessions(
    tx: &mut Tx<'_>,
    account_id: &str,
    device_id: &str,
    actor: &str,
    reason: EndReason,
    source: Option<&str>,
    now: i64,
) -> AppResult<Vec<String>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT s.id FROM sessions s JOIN session_devices sd ON sd.session_id = s.id
         WHERE sd.device_id = $1 AND s.account_id = $2 AND s.state IN ('active', 'pending_approval')
         ORDER BY s.id",
    )
    .bind(device_id)
    .bind(account_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut ended = Vec::new();
    for id in ids {
        if sessions::end(tx, account_id, &id, actor, reason, now).await? {
            let mut ev =
                audit::Event::new(account_id, actor, "session.end", &format!("session:{id}"))
                    .device(device_id)
                    .details(
                        serde_json::json!({ "reason": reason.as_str(), "device_id": device_id }),
                    );
            if let Some(s) = source {
                ev = ev.source(s);
            }
            audit::append(tx, now, &ev).await?;
            ended.push(id);
        }
    }
    Ok(ended)
}

/// After the commit: the sessions' edges, clients and relay connections learn
/// they ended, and the device's edge channel re-checks that it may stay.
pub(crate) async fn after_commit(
    state: &AppState,
    device_id: &str,
    ended: &[String],
) -> AppResult<()> {
    crate::live::notify_sessions(state, ended).await?;
    crate::live::device_changed(state, device_id);
    Ok(())
}

/// Called by enrolment inside its transaction when an activation key enrols a
/// device that already had an identity key: the replacement takes over, the old
/// gateway's running sessions end (`device_replaced`). Returns their ids.
pub(crate) async fn replaced_on_enrolment(
    tx: &mut Tx<'_>,
    account_id: &str,
    device_id: &str,
    now: i64,
) -> AppResult<Vec<String>> {
    end_device_sessions(
        tx,
        account_id,
        device_id,
        &format!("device:{device_id}"),
        EndReason::DeviceReplaced,
        None,
        now,
    )
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Disable,
    Enable,
    Archive,
}

impl Change {
    fn action(self) -> &'static str {
        match self {
            Change::Disable => "device.disable",
            Change::Enable => "device.enable",
            Change::Archive => "device.archive",
        }
    }
}

async fn change(state: &AppState, caller: &Caller, id: &str, change: Change) -> AppResult<Device> {
    caller
        .require(state, Action::ManageDevices, change.action())
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = records::device(&mut tx, &caller.account_id, id).await?;
    let st = &before.status;
    let (disabled, archived) = match change {
        _ if st.archived => {
            return Err(AppError::conflict(
                "the device is archived: it stays out of service (its record and history are kept)",
            ));
        }
        Change::Disable if st.disabled => {
            return Err(AppError::conflict("the device is disabled already"));
        }
        Change::Enable if !st.disabled => {
            return Err(AppError::conflict("the device is not disabled"));
        }
        Change::Disable => (true, false),
        Change::Enable => (false, false),
        Change::Archive => (st.disabled, true),
    };
    // Compare-and-set on the flags read above: of concurrent changes, one wins.
    let r = sqlx::query(
        "UPDATE devices SET disabled = $1, archived = $2
         WHERE id = $3 AND account_id = $4 AND disabled = $5 AND archived = 0",
    )
    .bind(i64::from(disabled))
    .bind(i64::from(archived))
    .bind(id)
    .bind(&caller.account_id)
    .bind(i64::from(st.disabled))
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict(
            "the device changed meanwhile; look at it again",
        ));
    }
    let mut ended = Vec::new();
    if change != Change::Enable {
        ended = end_device_sessions(
            &mut tx,
            &caller.account_id,
            id,
            &caller.actor(),
            EndReason::DeviceDisabled,
            Some(&caller.source),
            now,
        )
        .await?;
    }
    if change == Change::Archive {
        // Activation keys not used yet die with it.
        sqlx::query(
            "UPDATE activation_keys SET used_at = $1 WHERE device_id = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    let ev = caller
        .event(change.action(), &format!("device:{id}"))
        .device(id)
        .details(serde_json::json!({
            "username": caller.username,
            "name": before.name.as_str(),
            "sessions_ended": ended,
        }));
    audit::append(&mut tx, now, &ev).await?;
    let after = records::device(&mut tx, &caller.account_id, id).await?;
    tx.commit().await?;
    after_commit(state, id, &ended).await?;
    Ok(after)
}

/// Disable a device (admins): its edge channel is refused and a live one closed,
/// its running sessions end (reason `device_disabled`), their relay connections
/// close and their relay tokens are refused. Nothing else changes; `enable` undoes it.
#[utoipa::path(post, path = "/api/v1/devices/{id}/disable", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Device), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Device>> {
    Ok(Json(change(&state, &caller, &id, Change::Disable).await?))
}

/// Enable a disabled device again (admins): its edge may connect, it may be put in sessions.
#[utoipa::path(post, path = "/api/v1/devices/{id}/enable", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Device), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Device>> {
    Ok(Json(change(&state, &caller, &id, Change::Enable).await?))
}

/// Archive a device (admins): out of service for good, as when disabled, and hidden
/// from the device list (`?archived=true` lists archived devices). It can no longer be
/// put in sessions or enrolled; its record, sessions, logbook and audit trail stay readable.
#[utoipa::path(post, path = "/api/v1/devices/{id}/archive", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Device), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Device>> {
    Ok(Json(change(&state, &caller, &id, Change::Archive).await?))
}

/// A new activation key for the same device record, for a replacement gateway (admins).
/// Older unused keys stop working. The current gateway keeps working until the new one
/// enrols with this key; from then on the old identity key is refused and its live
/// channel closed, and sessions running on the old gateway end (`device_replaced`).
/// Disable the device first if the old gateway was stolen; a disabled device stays
/// disabled when its replacement enrols.
#[utoipa::path(post, path = "/api/v1/devices/{id}/replace", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = ActivationKey), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<ActivationKey>> {
    caller
        .require(&state, Action::ManageDevices, "device.replace")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = records::device(&mut tx, &caller.account_id, &id).await?;
    if d.status.archived {
        return Err(AppError::conflict(
            "the device is archived: it stays out of service (add a new device instead)",
        ));
    }
    sqlx::query("UPDATE activation_keys SET used_at = $1 WHERE device_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let key = super::insert_activation_key(&mut tx, &caller.account_id, &id, now).await?;
    let ev = caller
        .event("device.replace", &format!("device:{id}"))
        .device(&id)
        .details(serde_json::json!({
            "username": caller.username,
            "name": d.name.as_str(),
            "enrolled": d.status.enrolled,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(key))
}
