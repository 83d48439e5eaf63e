//! Groups of users, pools of devices, and grants of a level on a pool to a group.

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::live::revoke;
use crate::records;
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::api::{CreateGrant, CreateNamed, Grant, Group, MAX_LIST, Pool};
use drawbridge_proto::{Action, ApiError, GrantLevel, Name, Role};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, delete_group))
        .routes(routes!(add_member, remove_member))
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(get_pool, delete_pool))
        .routes(routes!(add_device, remove_device))
        .routes(routes!(list_grants, create_grant))
        .routes(routes!(delete_grant))
}

/// Admins manage; session admins and auditors may read (session admins need to
/// see who and what they can put into sessions).
async fn require_read(state: &AppState, caller: &Caller, what: &str) -> AppResult<()> {
    if matches!(
        caller.role,
        Role::Admin | Role::SessionAdmin | Role::Auditor
    ) {
        Ok(())
    } else {
        caller.denied(state, what).await
    }
}

fn bad_name() -> AppError {
    AppError::internal(anyhow::anyhow!("stored name does not parse"))
}

/// `table` and `member_table` are fixed identifiers from this file, never input.
async fn members(state: &AppState, sql: &str, id: &str) -> AppResult<Vec<String>> {
    Ok(sqlx::query_scalar(sql)
        .bind(id)
        .fetch_all(&state.store.pool)
        .await?)
}

async fn load_group(state: &AppState, account: &str, id: &str) -> AppResult<Group> {
    let row = sqlx::query("SELECT id, name FROM groups_ WHERE id = $1 AND account_id = $2")
        .bind(id)
        .bind(account)
        .fetch_optional(&state.store.pool)
        .await?
        .ok_or_else(|| AppError::not_found("group"))?;
    Ok(Group {
        id: row.try_get("id")?,
        name: Name::try_from(row.try_get::<String, _>("name")?).map_err(|_| bad_name())?,
        members: members(
            state,
            "SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id",
            id,
        )
        .await?,
    })
}

async fn load_pool(state: &AppState, account: &str, id: &str) -> AppResult<Pool> {
    let row = sqlx::query("SELECT id, name FROM pools WHERE id = $1 AND account_id = $2")
        .bind(id)
        .bind(account)
        .fetch_optional(&state.store.pool)
        .await?
        .ok_or_else(|| AppError::not_found("pool"))?;
    Ok(Pool {
        id: row.try_get("id")?,
        name: Name::try_from(row.try_get::<String, _>("name")?).map_err(|_| bad_name())?,
        devices: members(
            state,
            "SELECT device_id FROM pool_devices WHERE pool_id = $1 ORDER BY device_id",
            id,
        )
        .await?,
    })
}

async fn ids(state: &AppState, table: &str, account: &str) -> AppResult<Vec<String>> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE account_id = $1 ORDER BY name"
    ))
    .bind(account)
    .fetch_all(&state.store.pool)
    .await?)
}

async fn create_named(
    state: &AppState,
    caller: &Caller,
    table: &str,
    kind: &str,
    name: &Name,
) -> AppResult<String> {
    caller
        .require(state, Action::ManageUsers, &format!("{kind}.create"))
        .await?;
    let now = state.now();
    let id = secret::new_id();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query(&format!(
        "INSERT INTO {table} (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)"
    ))
    .bind(&id)
    .bind(&caller.account_id)
    .bind(name.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict(format!("a {kind} with this name exists"))
        } else {
            e.into()
        });
    }
    let ev = caller
        .event(&format!("{kind}.create"), &format!("{kind}:{id}"))
        .details(serde_json::json!({ "username": caller.username, "name": name.as_str() }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(id)
}

async fn delete_named(
    state: &AppState,
    caller: &Caller,
    table: &str,
    kind: &str,
    id: &str,
) -> AppResult<StatusCode> {
    caller
        .require(state, Action::ManageUsers, &format!("{kind}.delete"))
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query(&format!(
        "DELETE FROM {table} WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(&caller.account_id)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::not_found(kind));
    }
    let action = format!("{kind}.delete");
    audit::append(
        &mut tx,
        now,
        &caller.event(&action, &format!("{kind}:{id}")),
    )
    .await?;
    // Whatever the group, pool or grant gave is gone: live tunnels follow at once.
    let touched =
        revoke::revalidate(&mut tx, &caller.account_id, &caller.actor(), &action, now).await?;
    tx.commit().await?;
    crate::live::notify_sessions(state, &touched).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds or removes a link row after checking both ends belong to the caller's account.
#[allow(clippy::too_many_arguments)]
async fn link(
    state: &AppState,
    caller: &Caller,
    add: bool,
    (parent_table, parent_kind, parent_id): (&str, &str, &str),
    (child_table, child_kind, child_id): (&str, &str, &str),
    link_table: &str,
    (parent_col, child_col): (&str, &str),
) -> AppResult<StatusCode> {
    let action = format!("{parent_kind}.{}", if add { "add" } else { "remove" });
    caller.require(state, Action::ManageUsers, &action).await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    for (table, kind, id) in [
        (parent_table, parent_kind, parent_id),
        (child_table, child_kind, child_id),
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id = $1 AND account_id = $2"
        ))
        .bind(id)
        .bind(&caller.account_id)
        .fetch_one(&mut *tx)
        .await?;
        if n != 1 {
            return Err(AppError::not_found(kind));
        }
    }
    if add {
        sqlx::query(&format!(
            "INSERT INTO {link_table} ({parent_col}, {child_col}) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        ))
        .bind(parent_id)
        .bind(child_id)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(&format!(
            "DELETE FROM {link_table} WHERE {parent_col} = $1 AND {child_col} = $2"
        ))
        .bind(parent_id)
        .bind(child_id)
        .execute(&mut *tx)
        .await?;
    }
    let mut ev = caller
        .event(&action, &format!("{parent_kind}:{parent_id}"))
        .details(serde_json::json!({ "username": caller.username, child_kind: child_id }));
    if child_kind == "device" {
        ev = ev.device(child_id);
    }
    audit::append(&mut tx, now, &ev).await?;
    // A removal may narrow someone's rights: live tunnels follow at once.
    let touched = if add {
        Vec::new()
    } else {
        revoke::revalidate(&mut tx, &caller.account_id, &caller.actor(), &action, now).await?
    };
    tx.commit().await?;
    crate::live::notify_sessions(state, &touched).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Groups of the account.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = Vec<Group>), (status = 403, body = ApiError)))]
async fn list_groups(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Vec<Group>>> {
    require_read(&state, &caller, "group.list").await?;
    let mut out = Vec::new();
    for id in ids(&state, "groups_", &caller.account_id).await? {
        out.push(load_group(&state, &caller.account_id, &id).await?);
    }
    Ok(Json(out))
}

/// Create a group (admins).
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateNamed,
    responses((status = 200, body = Group), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateNamed>,
) -> AppResult<Json<Group>> {
    let id = create_named(&state, &caller, "groups_", "group", &req.name).await?;
    Ok(Json(load_group(&state, &caller.account_id, &id).await?))
}

/// One group.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ApiError)))]
async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Group>> {
    require_read(&state, &caller, "group.get").await?;
    Ok(Json(load_group(&state, &caller.account_id, &id).await?))
}

/// Delete a group and its grants (admins).
#[utoipa::path(delete, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    delete_named(&state, &caller, "groups_", "group", &id).await
}

/// Put a user into a group (admins).
#[utoipa::path(put, path = "/api/v1/groups/{id}/members/{user_id}", tag = "groups",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    link(
        &state,
        &caller,
        true,
        ("groups_", "group", &id),
        ("users", "user", &user),
        "group_members",
        ("group_id", "user_id"),
    )
    .await
}

/// Take a user out of a group (admins).
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{user_id}", tag = "groups",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    link(
        &state,
        &caller,
        false,
        ("groups_", "group", &id),
        ("users", "user", &user),
        "group_members",
        ("group_id", "user_id"),
    )
    .await
}

/// Device pools of the account.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools", responses((status = 200, body = Vec<Pool>), (status = 403, body = ApiError)))]
async fn list_pools(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Vec<Pool>>> {
    require_read(&state, &caller, "pool.list").await?;
    let mut out = Vec::new();
    for id in ids(&state, "pools", &caller.account_id).await? {
        out.push(load_pool(&state, &caller.account_id, &id).await?);
    }
    Ok(Json(out))
}

/// Create a pool (admins).
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = CreateNamed,
    responses((status = 200, body = Pool), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create_pool(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateNamed>,
) -> AppResult<Json<Pool>> {
    let id = create_named(&state, &caller, "pools", "pool", &req.name).await?;
    Ok(Json(load_pool(&state, &caller.account_id, &id).await?))
}

/// One pool.
#[utoipa::path(get, path = "/api/v1/pools/{id}", tag = "pools", params(("id" = String, Path)),
    responses((status = 200, body = Pool), (status = 404, body = ApiError)))]
async fn get_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Pool>> {
    require_read(&state, &caller, "pool.get").await?;
    Ok(Json(load_pool(&state, &caller.account_id, &id).await?))
}

/// Delete a pool and its grants (admins).
#[utoipa::path(delete, path = "/api/v1/pools/{id}", tag = "pools", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    delete_named(&state, &caller, "pools", "pool", &id).await
}

/// Put a device into a pool (admins).
#[utoipa::path(put, path = "/api/v1/pools/{id}/devices/{device_id}", tag = "pools",
    params(("id" = String, Path), ("device_id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn add_device(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, dev)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    link(
        &state,
        &caller,
        true,
        ("pools", "pool", &id),
        ("devices", "device", &dev),
        "pool_devices",
        ("pool_id", "device_id"),
    )
    .await
}

/// Take a device out of a pool (admins).
#[utoipa::path(delete, path = "/api/v1/pools/{id}/devices/{device_id}", tag = "pools",
    params(("id" = String, Path), ("device_id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn remove_device(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, dev)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    link(
        &state,
        &caller,
        false,
        ("pools", "pool", &id),
        ("devices", "device", &dev),
        "pool_devices",
        ("pool_id", "device_id"),
    )
    .await
}

fn grant_from(row: &sqlx::any::AnyRow) -> AppResult<Grant> {
    Ok(Grant {
        id: row.try_get("id")?,
        group_id: row.try_get("group_id")?,
        pool_id: row.try_get("pool_id")?,
        level: row
            .try_get::<String, _>("level")?
            .parse()
            .map_err(|_| AppError::internal(anyhow::anyhow!("grant level")))?,
        targets: records::json_col(row, "targets")?,
    })
}

/// Grants of the account.
#[utoipa::path(get, path = "/api/v1/grants", tag = "grants", responses((status = 200, body = Vec<Grant>), (status = 403, body = ApiError)))]
async fn list_grants(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Vec<Grant>>> {
    require_read(&state, &caller, "grant.list").await?;
    let rows = sqlx::query("SELECT id, group_id, pool_id, level, targets FROM grants WHERE account_id = $1 ORDER BY created_at")
        .bind(&caller.account_id)
        .fetch_all(&state.store.pool)
        .await?;
    Ok(Json(rows.iter().map(grant_from).collect::<AppResult<_>>()?))
}

/// Give a group a level on a pool (admins). `restricted` needs its targets.
#[utoipa::path(post, path = "/api/v1/grants", tag = "grants", request_body = CreateGrant,
    responses((status = 200, body = Grant), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn create_grant(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateGrant>,
) -> AppResult<Json<Grant>> {
    caller
        .require(&state, Action::ManageUsers, "grant.create")
        .await?;
    match req.level {
        GrantLevel::Restricted if req.targets.is_empty() => {
            return Err(AppError::invalid("a restricted grant lists its targets"));
        }
        GrantLevel::Full | GrantLevel::Monitor if !req.targets.is_empty() => {
            return Err(AppError::invalid("only restricted grants list targets"));
        }
        _ => {}
    }
    if req.targets.len() > MAX_LIST {
        return Err(AppError::invalid(format!("at most {MAX_LIST} targets")));
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    for (table, kind, id) in [
        ("groups_", "group", &req.group_id),
        ("pools", "pool", &req.pool_id),
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id = $1 AND account_id = $2"
        ))
        .bind(id)
        .bind(&caller.account_id)
        .fetch_one(&mut *tx)
        .await?;
        if n != 1 {
            return Err(AppError::not_found(kind));
        }
    }
    let id = secret::new_id();
    let r = sqlx::query(
        "INSERT INTO grants (id, account_id, group_id, pool_id, level, targets, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&caller.account_id)
    .bind(&req.group_id)
    .bind(&req.pool_id)
    .bind(req.level.as_str())
    .bind(serde_json::to_string(&req.targets).map_err(AppError::internal)?)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("this group already has a grant on this pool")
        } else {
            e.into()
        });
    }
    let grant = Grant {
        id: id.clone(),
        group_id: req.group_id,
        pool_id: req.pool_id,
        level: req.level,
        targets: req.targets,
    };
    let ev = caller
        .event("grant.create", &format!("grant:{id}"))
        .details(serde_json::json!({ "username": caller.username, "grant": grant }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(grant))
}

/// Remove a grant (admins).
#[utoipa::path(delete, path = "/api/v1/grants/{id}", tag = "grants", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    delete_named(&state, &caller, "grants", "grant", &id).await
}
