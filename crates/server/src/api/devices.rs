//! Devices (edge gateways): records, firewall, 1:1 NAT, activation keys,
//! fleet keys, approval of self-registered devices, and the logbook.

mod access;
mod lifecycle;

pub(crate) use lifecycle::{after_commit, replaced_on_enrolment};

use crate::audit;
use crate::auth::Caller;
use crate::clock::from_unix;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::records::{self, DEVICE_COLS};
use crate::rights;
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::api::{
    ActivationKey, CreateDevice, CreateFleetKey, CreateLogEntry, CreatedDevice, CreatedFleetKey,
    Device, DeviceFilter, FleetKey, LogEntry, MAX_LIST, UpdateDevice,
};
use drawbridge_proto::{Action, ApiError, LongText, Name, NatMapping, Role, Target};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long an activation key works.
pub const ACTIVATION_TTL: i64 = 7 * 86_400;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let r = access::routes(r);
    lifecycle::routes(r)
        .routes(routes!(list, create))
        .routes(routes!(get_device, update, delete))
        .routes(routes!(new_activation_key))
        .routes(routes!(approve))
        .routes(routes!(logbook, add_log))
        .routes(routes!(list_fleet_keys, create_fleet_key))
        .routes(routes!(revoke_fleet_key))
}

fn check_shape(
    subnets: Option<&Vec<ipnet::IpNet>>,
    nat: Option<&Vec<NatMapping>>,
    firewall: Option<&Vec<Target>>,
) -> AppResult<()> {
    let too_many = |n: usize| n > MAX_LIST;
    if subnets.is_some_and(|s| too_many(s.len()))
        || nat.is_some_and(|s| too_many(s.len()))
        || firewall.is_some_and(|s| too_many(s.len()))
    {
        return Err(AppError::invalid(format!(
            "at most {MAX_LIST} entries per list"
        )));
    }
    for m in nat.into_iter().flatten() {
        m.check().map_err(AppError::invalid)?;
    }
    Ok(())
}

/// The device if the caller may see it; another account's device or one
/// outside the caller's grants is "not found".
pub async fn visible_device(state: &AppState, caller: &Caller, id: &str) -> AppResult<Device> {
    let mut conn = state.store.pool.acquire().await?;
    let d = records::device(&mut conn, &caller.account_id, id).await?;
    if !matches!(caller.role, Role::Admin | Role::Auditor) {
        let a = rights::access(
            &mut conn,
            &caller.account_id,
            &caller.user_id,
            caller.role,
            id,
        )
        .await?;
        if !a.can_see() {
            return Err(AppError::not_found("device"));
        }
    }
    Ok(d)
}

/// Devices the caller can see: admins and auditors all, others those their grants cover.
/// Archived devices only with `?archived=true` (and then only they).
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceFilter),
    responses((status = 200, body = Vec<Device>), (status = 401, body = ApiError)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(f): ApiQuery<DeviceFilter>,
) -> AppResult<Json<Vec<Device>>> {
    let mut conn = state.store.pool.acquire().await?;
    let visible =
        rights::visible_devices(&mut conn, &caller.account_id, &caller.user_id, caller.role)
            .await?;
    let rows = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices WHERE account_id = $1 AND archived = $2 ORDER BY name"
    ))
    .bind(&caller.account_id)
    .bind(i64::from(f.archived.unwrap_or(false)))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let d = records::device_from(&r)?;
        if visible.as_ref().is_none_or(|v| v.contains(&d.id)) {
            out.push(d);
        }
    }
    Ok(Json(out))
}

pub(crate) async fn insert_activation_key(
    tx: &mut crate::db::Tx<'_>,
    account: &str,
    device: &str,
    now: i64,
) -> AppResult<ActivationKey> {
    let key = secret::new_token("dba_");
    sqlx::query(
        "INSERT INTO activation_keys (key_hash, account_id, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(secret::token_hash(&key))
    .bind(account)
    .bind(device)
    .bind(now)
    .bind(now + ACTIVATION_TTL)
    .execute(&mut **tx)
    .await?;
    Ok(ActivationKey {
        key,
        expires_at: from_unix(now + ACTIVATION_TTL),
    })
}

/// Add a device (admins). Answers with its one-time activation key.
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = CreateDevice,
    responses((status = 200, body = CreatedDevice), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateDevice>,
) -> AppResult<Json<CreatedDevice>> {
    caller
        .require(&state, Action::ManageDevices, "device.create")
        .await?;
    check_shape(Some(&req.lan_subnets), Some(&req.nat), Some(&req.firewall))?;
    let now = state.now();
    let id = secret::new_id();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query(
        "INSERT INTO devices (id, account_id, name, serial, lan_subnets, nat, firewall, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(req.name.as_str())
    .bind(req.serial.as_ref().map(|s| s.as_str().to_string()))
    .bind(serde_json::to_string(&req.lan_subnets).map_err(AppError::internal)?)
    .bind(serde_json::to_string(&req.nat).map_err(AppError::internal)?)
    .bind(serde_json::to_string(&req.firewall).map_err(AppError::internal)?)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("a device with this name exists")
        } else {
            e.into()
        });
    }
    let activation = insert_activation_key(&mut tx, &caller.account_id, &id, now).await?;
    let device = records::device(&mut tx, &caller.account_id, &id).await?;
    let ev = caller
        .event("device.create", &format!("device:{id}"))
        .device(&id)
        .details(serde_json::json!({ "username": caller.username, "device": device }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(CreatedDevice { device, activation }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Device), (status = 404, body = ApiError)))]
async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Device>> {
    Ok(Json(visible_device(&state, &caller, &id).await?))
}

/// Web services name released single TCP ports, each once, at most 64.
fn check_web_services<'a>(
    web: &'a [drawbridge_proto::api::WebService],
    firewall: &[drawbridge_proto::Target],
) -> AppResult<&'a [drawbridge_proto::api::WebService]> {
    if web.len() > 64 {
        return Err(AppError::invalid("at most 64 web services per device"));
    }
    for (i, w) in web.iter().enumerate() {
        if web[..i].iter().any(|o| o.target == w.target) {
            return Err(AppError::invalid(format!("{} is listed twice", w.target)));
        }
        if !crate::web::origin::released(firewall, w.target) {
            return Err(AppError::invalid(format!(
                "{} is not released by the device's firewall (tcp:{}:{})",
                w.target,
                w.target.ip(),
                w.target.port()
            )));
        }
    }
    Ok(web)
}

/// Change a device's name, serial, LAN subnets, 1:1 NAT, firewall or web services (admins).
#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)), request_body = UpdateDevice,
    responses((status = 200, body = Device), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateDevice>,
) -> AppResult<Json<Device>> {
    caller
        .require(&state, Action::ManageDevices, "device.update")
        .await?;
    check_shape(
        req.lan_subnets.as_ref(),
        req.nat.as_ref(),
        req.firewall.as_ref(),
    )?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = records::device(&mut tx, &caller.account_id, &id).await?;
    let name = req
        .name
        .as_ref()
        .unwrap_or(&before.name)
        .as_str()
        .to_string();
    let serial = match &req.serial {
        Some(s) => Some(s.as_str().to_string()),
        None => before.serial.clone(),
    };
    let json = |v: serde_json::Result<String>| v.map_err(AppError::internal);
    let subnets = json(serde_json::to_string(
        req.lan_subnets.as_ref().unwrap_or(&before.lan_subnets),
    ))?;
    let nat = json(serde_json::to_string(
        req.nat.as_ref().unwrap_or(&before.nat),
    ))?;
    let firewall = json(serde_json::to_string(
        req.firewall.as_ref().unwrap_or(&before.firewall),
    ))?;
    let r = sqlx::query("UPDATE devices SET name = $1, serial = $2, lan_subnets = $3, nat = $4, firewall = $5 WHERE id = $6 AND account_id = $7")
        .bind(name)
        .bind(serial)
        .bind(subnets)
        .bind(nat)
        .bind(firewall)
        .bind(&id)
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("a device with this name exists")
        } else {
            e.into()
        });
    }
    if let Some(web) = &req.web_services {
        let firewall = req.firewall.as_ref().unwrap_or(&before.firewall);
        let text = json(serde_json::to_string(&check_web_services(web, firewall)?))?;
        sqlx::query("UPDATE devices SET web_services = $1 WHERE id = $2 AND account_id = $3")
            .bind(text)
            .bind(&id)
            .bind(&caller.account_id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(region) = &req.region {
        sqlx::query("UPDATE devices SET region = $1 WHERE id = $2 AND account_id = $3")
            .bind(region.as_ref().map(|r| r.as_str()))
            .bind(&id)
            .bind(&caller.account_id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(on) = req.onsite_approval {
        sqlx::query("UPDATE devices SET onsite_approval = $1 WHERE id = $2 AND account_id = $3")
            .bind(i64::from(on))
            .bind(&id)
            .bind(&caller.account_id)
            .execute(&mut *tx)
            .await?;
    }
    let after = records::device(&mut tx, &caller.account_id, &id).await?;
    let ev = caller
        .event("device.update", &format!("device:{id}"))
        .device(&id)
        .details(
            serde_json::json!({ "username": caller.username, "before": before, "after": after }),
        );
    audit::append(&mut tx, now, &ev).await?;
    let mut touched = Vec::new();
    if before.firewall != after.firewall || before.nat != after.nat {
        // A narrower firewall narrows running sessions and may close tunnels; a
        // new 1:1 NAT changes what the edge forwards and what clients route.
        touched = crate::live::revoke::revalidate(
            &mut tx,
            &caller.account_id,
            &caller.actor(),
            "device.update",
            now,
        )
        .await?;
        touched.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT s.id FROM sessions s JOIN session_devices sd ON sd.session_id = s.id
                 WHERE sd.device_id = $1 AND s.state IN ('active', 'pending_approval')",
            )
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?,
        );
        touched.sort();
        touched.dedup();
    }
    tx.commit().await?;
    crate::live::notify_sessions(&state, &touched).await?;
    Ok(Json(after))
}

/// Remove a device that was never used in a session (admins).
#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageDevices, "device.delete")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    records::device(&mut tx, &caller.account_id, &id).await?;
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM session_devices WHERE device_id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    if used > 0 {
        return Err(AppError::conflict(
            "the device appears in sessions, so its record and history must stay: archive it instead (POST /api/v1/devices/{id}/archive, `drawbridge device archive NAME`)",
        ));
    }
    sqlx::query("DELETE FROM devices WHERE id = $1 AND account_id = $2")
        .bind(&id)
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    let ev = caller
        .event("device.delete", &format!("device:{id}"))
        .device(&id);
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new activation key for a device that is not enrolled yet (admins); older keys stop working.
#[utoipa::path(post, path = "/api/v1/devices/{id}/activation-key", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = ActivationKey), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn new_activation_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<ActivationKey>> {
    caller
        .require(&state, Action::ManageDevices, "device.activation_key")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = records::device(&mut tx, &caller.account_id, &id).await?;
    if d.status.enrolled {
        return Err(AppError::conflict(
            "the device is enrolled already; for a replacement gateway use replace (POST /api/v1/devices/{id}/replace)",
        ));
    }
    if d.status.archived {
        return Err(AppError::conflict("the device is archived"));
    }
    sqlx::query("UPDATE activation_keys SET used_at = $1 WHERE device_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let key = insert_activation_key(&mut tx, &caller.account_id, &id, now).await?;
    audit::append(
        &mut tx,
        now,
        &caller
            .event("device.activation_key", &format!("device:{id}"))
            .device(&id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(key))
}

/// Approve a device that registered itself with the fleet key (admins): it gets its certificate.
#[utoipa::path(post, path = "/api/v1/devices/{id}/approve", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Device), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Device>> {
    caller
        .require(&state, Action::ManageDevices, "device.approve")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = sqlx::query(
        "SELECT public_key, pending_approval FROM devices WHERE id = $1 AND account_id = $2",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("device"))?;
    let pending = row.try_get::<i64, _>(1)? != 0;
    let key: Option<String> = row.try_get(0)?;
    let (true, Some(key)) = (pending, key) else {
        return Err(AppError::conflict("the device is not waiting for approval"));
    };
    let raw = crate::pki::decode_key(&key)?;
    let cert = state.device_ca.issue(&id, &caller.account_id, raw)?;
    sqlx::query(
        "UPDATE devices SET pending_approval = $1, enrolled = $2, certificate = $3 WHERE id = $4",
    )
    .bind(0i64)
    .bind(1i64)
    .bind(&cert)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        now,
        &caller
            .event("device.approve", &format!("device:{id}"))
            .device(&id),
    )
    .await?;
    let d = records::device(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    Ok(Json(d))
}

/// The device's logbook, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/logbook", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Vec<LogEntry>), (status = 404, body = ApiError)))]
async fn logbook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<LogEntry>>> {
    visible_device(&state, &caller, &id).await?;
    let rows = sqlx::query(
        "SELECT l.id, l.device_id, l.text, l.created_at, u.username FROM logbook l JOIN users u ON u.id = l.author_id
         WHERE l.device_id = $1 AND l.account_id = $2 ORDER BY l.created_at DESC, l.id DESC LIMIT 500",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(LogEntry {
            id: r.try_get("id")?,
            device_id: r.try_get("device_id")?,
            author: r.try_get("username")?,
            text: LongText::try_from(r.try_get::<String, _>("text")?)
                .map_err(|_| AppError::internal(anyhow::anyhow!("log text")))?,
            created_at: from_unix(r.try_get("created_at")?),
        });
    }
    Ok(Json(out))
}

/// Write a note into the device's logbook (anyone who can see the device, except auditors).
#[utoipa::path(post, path = "/api/v1/devices/{id}/logbook", tag = "devices", params(("id" = String, Path)), request_body = CreateLogEntry,
    responses((status = 200, body = LogEntry), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn add_log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateLogEntry>,
) -> AppResult<Json<LogEntry>> {
    visible_device(&state, &caller, &id).await?;
    if caller.role == Role::Auditor {
        return caller.denied(&state, "logbook.write").await;
    }
    let now = state.now();
    let entry_id = secret::new_id();
    let mut tx = state.store.begin().await?;
    sqlx::query("INSERT INTO logbook (id, account_id, device_id, author_id, text, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&entry_id)
        .bind(&caller.account_id)
        .bind(&id)
        .bind(&caller.user_id)
        .bind(req.text.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        now,
        &caller
            .event("logbook.write", &format!("device:{id}"))
            .device(&id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(LogEntry {
        id: entry_id,
        device_id: id,
        author: caller.username,
        text: req.text,
        created_at: from_unix(now),
    }))
}

/// Fleet keys of the account (admins).
#[utoipa::path(get, path = "/api/v1/fleet-keys", tag = "devices",
    responses((status = 200, body = Vec<FleetKey>), (status = 403, body = ApiError)))]
async fn list_fleet_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<FleetKey>>> {
    caller
        .require(&state, Action::ManageDevices, "fleet_key.list")
        .await?;
    let rows = sqlx::query("SELECT id, name, expires_at, revoked FROM fleet_keys WHERE account_id = $1 ORDER BY created_at")
        .bind(&caller.account_id)
        .fetch_all(&state.store.pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(FleetKey {
            id: r.try_get("id")?,
            name: Name::try_from(r.try_get::<String, _>("name")?)
                .map_err(|_| AppError::internal(anyhow::anyhow!("name")))?,
            expires_at: from_unix(r.try_get("expires_at")?),
            revoked: r.try_get::<i64, _>("revoked")? != 0,
        });
    }
    Ok(Json(out))
}

/// Create a fleet key (admins): devices enrolling with it wait for approval.
#[utoipa::path(post, path = "/api/v1/fleet-keys", tag = "devices", request_body = CreateFleetKey,
    responses((status = 200, body = CreatedFleetKey), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn create_fleet_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateFleetKey>,
) -> AppResult<Json<CreatedFleetKey>> {
    caller
        .require(&state, Action::ManageDevices, "fleet_key.create")
        .await?;
    if !(1..=365).contains(&req.expires_in_days) {
        return Err(AppError::invalid(
            "expires_in_days must be between 1 and 365",
        ));
    }
    let now = state.now();
    let key = secret::new_token("dbf_");
    let id = secret::new_id();
    let expires = now + i64::from(req.expires_in_days) * 86_400;
    let mut tx = state.store.begin().await?;
    sqlx::query("INSERT INTO fleet_keys (id, key_hash, account_id, name, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(secret::token_hash(&key))
        .bind(&caller.account_id)
        .bind(req.name.as_str())
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        now,
        &caller.event("fleet_key.create", &format!("fleet_key:{id}")),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(CreatedFleetKey {
        key,
        info: FleetKey {
            id,
            name: req.name,
            expires_at: from_unix(expires),
            revoked: false,
        },
    }))
}

/// Revoke a fleet key (admins).
#[utoipa::path(delete, path = "/api/v1/fleet-keys/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn revoke_fleet_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageDevices, "fleet_key.revoke")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query("UPDATE fleet_keys SET revoked = $1 WHERE id = $2 AND account_id = $3")
        .bind(1i64)
        .bind(&id)
        .bind(&caller.account_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::not_found("fleet key"));
    }
    audit::append(
        &mut tx,
        now,
        &caller.event("fleet_key.revoke", &format!("fleet_key:{id}")),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
