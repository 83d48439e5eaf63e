//! Users of the caller's account.

use crate::audit;
use crate::auth::{self, Caller};
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::records::{self, USER_COLS};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::api::{CreateUser, UpdateUser, User};
use drawbridge_proto::{Action, ApiError, EndReason, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list, create))
        .routes(routes!(get_user, update))
}

fn sees_all_users(role: Role) -> bool {
    matches!(role, Role::Admin | Role::SessionAdmin | Role::Auditor)
}

/// Users of the account (a `user` sees only themself).
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 401, body = ApiError)))]
async fn list(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Vec<User>>> {
    let now = state.now();
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLS} FROM users WHERE account_id = $1 ORDER BY username"
    ))
    .bind(&caller.account_id)
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let u = records::user_row(&r)?;
        if sees_all_users(caller.role) || u.id == caller.user_id {
            out.push(u.to_api(now));
        }
    }
    Ok(Json(out))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ApiError)))]
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<User>> {
    let mut conn = state.store.pool.acquire().await?;
    let u = records::user(&mut conn, &caller.account_id, &id).await?;
    if !sees_all_users(caller.role) && u.id != caller.user_id {
        return Err(AppError::not_found("user"));
    }
    Ok(Json(u.to_api(state.now())))
}

/// Add a user (admins).
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateUser,
    responses((status = 200, body = User), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> AppResult<Json<User>> {
    caller
        .require(&state, Action::ManageUsers, "user.create")
        .await?;
    // Checked and hashed before the write transaction (argon2 must not hold it).
    let policy = {
        let mut conn = state.store.pool.acquire().await?;
        records::account(&mut conn, &caller.account_id)
            .await?
            .settings
            .password_policy
    };
    let password = crate::bootstrap::new_password(&policy, &req.username, &req.password).await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let user = crate::bootstrap::insert_user(
        &mut tx,
        &caller.account_id,
        &req.username,
        req.role,
        &password,
        now,
    )
    .await?;
    let ev = caller.event("user.create", &format!("user:{}", user.id)).details(serde_json::json!({
        "username": caller.username, "new_user": req.username.as_str(), "role": req.role.as_str()
    }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(user.to_api(now)))
}

/// Change a user's role, disable or enable them, reset their password, lift a
/// lockout or reset their second factor (admins).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = User), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> AppResult<Json<User>> {
    caller
        .require(&state, Action::ManageUsers, "user.update")
        .await?;
    let now = state.now();
    // A new password is checked and hashed before the write transaction
    // (argon2 must not hold it); `set_password` applies it only if unchanged.
    let new_password = match &req.password {
        Some(password) => {
            let mut conn = state.store.pool.acquire().await?;
            let user = records::user(&mut conn, &caller.account_id, &id).await?;
            let account = records::account(&mut conn, &caller.account_id).await?;
            drop(conn);
            Some(super::me::prepare_password(&state, &user, &account.settings, password).await?)
        }
        None => None,
    };
    let mut tx = state.store.begin().await?;
    let user = records::user(&mut tx, &caller.account_id, &id).await?;
    if req.reset_totp == Some(true) && user.totp_secret.is_none() {
        // Resetting nothing would still end every login and API token of the user.
        return Err(AppError::conflict(
            "this user has no second factor to reset; nothing was changed",
        ));
    }
    let demoted = req.role.is_some_and(|r| r != Role::Admin) && user.role == Role::Admin;
    let disabling = req.disabled == Some(true) && !user.disabled;
    if (demoted || disabling) && user.role == Role::Admin {
        let admins: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE account_id = $1 AND role = 'admin' AND disabled = $2",
        )
        .bind(&caller.account_id)
        .bind(0i64)
        .fetch_one(&mut *tx)
        .await?;
        if admins <= 1 {
            return Err(AppError::conflict(
                "the account must keep at least one enabled admin",
            ));
        }
    }
    let mut changes = serde_json::Map::new();
    if let Some(role) = req.role {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        changes.insert(
            "role".into(),
            serde_json::json!({ "from": user.role, "to": role }),
        );
        if role != user.role {
            // New rights, new logins.
            auth::revoke_all(&mut tx, &id, now).await?;
        }
    }
    let mut touched: Vec<String> = Vec::new();
    if let Some(disabled) = req.disabled {
        sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        changes.insert("disabled".into(), disabled.into());
        if disabled {
            auth::revoke_all(&mut tx, &id, now).await?;
            let ended = crate::sessions::end_for_user(
                &mut tx,
                &caller.account_id,
                &id,
                EndReason::UserDisabled,
                &caller.actor(),
                now,
            )
            .await?;
            changes.insert("sessions_affected".into(), ended.clone().into());
            touched = ended;
        }
    }
    if let Some(new) = &new_password {
        super::me::set_password(&mut tx, &user, new, now).await?;
        changes.insert("password".into(), "reset".into());
    }
    if req.unlock == Some(true) {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        changes.insert("unlock".into(), true.into());
    }
    if req.reset_totp == Some(true) {
        sqlx::query(
            "UPDATE users SET totp_secret = NULL, totp_pending_secret = NULL WHERE id = $1",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        auth::revoke_all(&mut tx, &id, now).await?;
        changes.insert("reset_totp".into(), true.into());
    }
    changes.insert("username".into(), caller.username.clone().into());
    changes.insert("target_user".into(), user.username.clone().into());
    let ev = caller
        .event("user.update", &format!("user:{id}"))
        .details(changes.into());
    audit::append(&mut tx, now, &ev).await?;
    if req.role.is_some_and(|r| r != user.role) {
        // A new role may reach less: live tunnels follow at once.
        touched.extend(
            crate::live::revoke::revalidate(
                &mut tx,
                &caller.account_id,
                &caller.actor(),
                "user.update",
                now,
            )
            .await?,
        );
        touched.sort();
        touched.dedup();
    }
    let after = records::user(&mut tx, &caller.account_id, &id).await?;
    tx.commit().await?;
    crate::live::notify_sessions(&state, &touched).await?;
    Ok(Json(after.to_api(now)))
}
