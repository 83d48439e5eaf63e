//! API tokens for automation: named, expiring, revocable, acting with the owner's rights.

use crate::audit;
use crate::auth::{Caller, Via};
use crate::clock::from_unix;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::api::{ApiToken, CreateApiToken, CreatedApiToken};
use drawbridge_proto::{ApiError, Name};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list, create)).routes(routes!(revoke))
}

/// The caller's own API tokens that are neither revoked nor expired.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiToken>), (status = 401, body = ApiError)))]
async fn list(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Vec<ApiToken>>> {
    let rows = sqlx::query(
        "SELECT id, name, read_only, data_only, created_at, expires_at, last_used_at FROM auth_tokens
         WHERE user_id = $1 AND kind = 'api' AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at",
    )
    .bind(&caller.user_id)
    .bind(state.now())
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let created: i64 = r.try_get("created_at")?;
        let used: i64 = r.try_get("last_used_at")?;
        out.push(ApiToken {
            id: r.try_get("id")?,
            name: Name::try_from(r.try_get::<String, _>("name")?)
                .map_err(|_| AppError::internal(anyhow::anyhow!("name")))?,
            read_only: r.try_get::<i64, _>("read_only")? != 0,
            data_only: r.try_get::<i64, _>("data_only")? != 0,
            created_at: from_unix(created),
            expires_at: from_unix(r.try_get("expires_at")?),
            last_used_at: (used != created).then(|| from_unix(used)),
        });
    }
    Ok(Json(out))
}

/// Create an API token (shown once). Only an interactive login may create tokens.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateApiToken,
    responses((status = 200, body = CreatedApiToken), (status = 400, body = ApiError)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateApiToken>,
) -> AppResult<Json<CreatedApiToken>> {
    if caller.via != Via::Login {
        return Err(AppError::new(
            drawbridge_proto::ErrorCode::Forbidden,
            "API tokens cannot create API tokens",
        ));
    }
    if !(1..=365).contains(&req.expires_in_days) {
        return Err(AppError::invalid(
            "expires_in_days must be between 1 and 365",
        ));
    }
    // A data-only token only reads.
    let read_only = req.read_only || req.data_only;
    let now = state.now();
    let token = secret::new_token("dbt_");
    let id = secret::new_id();
    let expires_at = now + i64::from(req.expires_in_days) * 86_400;
    let mut tx = state.store.begin().await?;
    sqlx::query(
        "INSERT INTO auth_tokens (id, token_hash, account_id, user_id, kind, stage, name, read_only, data_only, created_at, last_used_at, expires_at)
         VALUES ($1, $2, $3, $4, 'api', 'complete', $5, $6, $7, $8, $8, $9)",
    )
    .bind(&id)
    .bind(secret::token_hash(&token))
    .bind(&caller.account_id)
    .bind(&caller.user_id)
    .bind(req.name.as_str())
    .bind(i64::from(read_only))
    .bind(i64::from(req.data_only))
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    let ev = caller.event("token.create", &format!("token:{id}")).details(serde_json::json!({
        "username": caller.username, "name": req.name.as_str(), "read_only": read_only, "data_only": req.data_only, "expires_in_days": req.expires_in_days
    }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(CreatedApiToken {
        token,
        info: ApiToken {
            id,
            name: req.name,
            read_only,
            data_only: req.data_only,
            created_at: from_unix(now),
            expires_at: from_unix(expires_at),
            last_used_at: None,
        },
    }))
}

/// Revoke one of the caller's API tokens.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let r = sqlx::query(
        "UPDATE auth_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND kind = 'api' AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(&id)
    .bind(&caller.user_id)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::not_found("token"));
    }
    audit::append(
        &mut tx,
        now,
        &caller.event("token.revoke", &format!("token:{id}")),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
