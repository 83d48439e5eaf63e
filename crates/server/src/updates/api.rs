//! The admins' API for edge updates: the server's releases and the account's
//! rollouts (start, list, pause, resume, cancel), and the edges' download.

use super::{rollouts, store};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::update::{CreateRollout, Release, Rollout};
use drawbridge_proto::{Action, ApiError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list_releases))
        .routes(routes!(list_rollouts, create_rollout))
        .routes(routes!(get_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(cancel_rollout))
        .routes(routes!(super::offer::download))
}

async fn admin(state: &AppState, caller: &Caller, what: &str) -> AppResult<()> {
    caller.require(state, Action::ManageDevices, what).await
}

/// The edge releases on this server, newest first (admins).
#[utoipa::path(get, path = "/api/v1/releases", tag = "updates",
    responses((status = 200, body = Vec<Release>), (status = 403, body = ApiError)))]
async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<Release>>> {
    admin(&state, &caller, "release.list").await?;
    Ok(Json(store::list(&state.store).await?))
}

/// The account's rollouts, newest first (admins).
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "updates",
    responses((status = 200, body = Vec<Rollout>), (status = 403, body = ApiError)))]
async fn list_rollouts(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<Rollout>>> {
    admin(&state, &caller, "rollout.list").await?;
    Ok(Json(
        rollouts::list(&state, &caller.account_id, None).await?,
    ))
}

/// Install a release on devices and pools: canaries first, then the rest after
/// the soak without failures; only inside the window; never during a session
/// on the device; paused when failures reach the threshold (admins).
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "updates", request_body = CreateRollout,
    responses((status = 201, body = Rollout), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn create_rollout(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateRollout>,
) -> AppResult<(StatusCode, Json<Rollout>)> {
    admin(&state, &caller, "rollout.create").await?;
    let id = rollouts::create(
        &state,
        &caller.account_id,
        &caller.username,
        caller.event("rollout.create", "-"),
        &req,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(one(&state, &caller, &id).await?)))
}

async fn one(state: &AppState, caller: &Caller, id: &str) -> AppResult<Rollout> {
    rollouts::list(state, &caller.account_id, Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| AppError::not_found("rollout"))
}

/// One rollout with its devices (admins).
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "updates", params(("id" = String, Path)),
    responses((status = 200, body = Rollout), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Rollout>> {
    admin(&state, &caller, "rollout.read").await?;
    Ok(Json(one(&state, &caller, &id).await?))
}

async fn change(
    state: AppState,
    caller: Caller,
    id: String,
    to: &str,
    action: &str,
) -> AppResult<Json<Rollout>> {
    admin(&state, &caller, action).await?;
    let ev = caller.event(action, &format!("rollout:{id}"));
    rollouts::set_state(&state, &caller.account_id, &id, to, ev).await?;
    Ok(Json(one(&state, &caller, &id).await?))
}

/// Pause a running rollout: offers not yet being installed are withdrawn (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "updates", params(("id" = String, Path)),
    responses((status = 200, body = Rollout), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn pause_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Rollout>> {
    change(state, caller, id, "paused", "rollout.pause").await
}

/// Resume a paused rollout (after a pause for failures too) (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "updates", params(("id" = String, Path)),
    responses((status = 200, body = Rollout), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn resume_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Rollout>> {
    change(state, caller, id, "running", "rollout.resume").await
}

/// Cancel a rollout: devices not yet updating never will (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/cancel", tag = "updates", params(("id" = String, Path)),
    responses((status = 200, body = Rollout), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn cancel_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Rollout>> {
    change(state, caller, id, "cancelled", "rollout.cancel").await
}
