//! The caller's account: name, settings, admin notifications.

use crate::audit;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::records;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use drawbridge_proto::api::{Account, Notification, UpdateAccount};
use drawbridge_proto::{AccountSettings, AccountSettingsPatch, Action, ApiError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(get_account, update_account))
        .routes(routes!(notifications))
}

/// The caller's account and its settings.
#[utoipa::path(get, path = "/api/v1/account", tag = "account",
    responses((status = 200, body = Account), (status = 401, body = ApiError)))]
async fn get_account(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Account>> {
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(records::account(&mut conn, &caller.account_id).await?))
}

/// Rename the account or change its settings (admins).
#[utoipa::path(patch, path = "/api/v1/account", tag = "account",
    request_body = UpdateAccount,
    responses((status = 200, body = Account), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn update_account(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<UpdateAccount>,
) -> AppResult<Json<Account>> {
    caller
        .require(&state, Action::ManageUsers, "account.update")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let before = records::account(&mut tx, &caller.account_id).await?;
    if let Some(name) = &req.name {
        let r = sqlx::query("UPDATE accounts SET name = $1 WHERE id = $2")
            .bind(name.as_str())
            .bind(&caller.account_id)
            .execute(&mut *tx)
            .await;
        if let Err(e) = r {
            return Err(if crate::db::is_unique_violation(&e) {
                AppError::conflict("an account with this name exists")
            } else {
                e.into()
            });
        }
    }
    let mut logins_revoked = 0;
    if let Some(patch) = &req.settings {
        let settings = merge_settings(&before.settings, patch)?;
        sqlx::query("UPDATE accounts SET settings = $1 WHERE id = $2")
            .bind(serde_json::to_string(&settings).map_err(AppError::internal)?)
            .bind(&caller.account_id)
            .execute(&mut *tx)
            .await?;
        if settings.require_totp && !before.settings.require_totp {
            // Password-only logins end now (the next login enrols a second
            // factor); API tokens of such users are refused until they enrol
            // (`auth::resolve`). The admin's own current login stays.
            logins_revoked = crate::auth::revoke_logins_without_totp(
                &mut tx,
                &caller.account_id,
                &caller.token_id,
                now,
            )
            .await?;
        }
    }
    let after = records::account(&mut tx, &caller.account_id).await?;
    let ev = caller
        .event("account.update", &format!("account:{}", caller.account_id))
        .details(serde_json::json!({
            "username": caller.username,
            "before": { "name": before.name, "settings": before.settings },
            "after": { "name": after.name, "settings": after.settings },
            "logins_revoked": logins_revoked,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(after))
}

/// Notifications for the account's admins (lockouts and the like), newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "account",
    responses((status = 200, body = Vec<Notification>), (status = 403, body = ApiError)))]
async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<Notification>>> {
    caller
        .require(&state, Action::ManageUsers, "notification.list")
        .await?;
    Ok(Json(
        crate::notifications::list(&state.store, &caller.account_id).await?,
    ))
}

/// The current settings with the patch applied; the result must be within bounds.
fn merge_settings(
    current: &AccountSettings,
    patch: &AccountSettingsPatch,
) -> AppResult<AccountSettings> {
    let settings = patch.apply(current);
    settings.check().map_err(AppError::invalid)?;
    Ok(settings)
}
