//! `GET /api/v1/devices/{id}/access`: the caller's own rights on one device, as
//! [`rights::access`] computes them, so that the portal (and any client) can
//! leave out controls the caller could not use. It decides nothing: every
//! route still checks for itself.

use super::visible_device;
use crate::auth::Caller;
use crate::error::AppResult;
use crate::rights::{self, Access};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::api::DeviceAccess;
use drawbridge_proto::{Action, ApiError, GrantLevel};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(my_access))
}

/// What the caller may do with the device (404 when they may not see it).
#[utoipa::path(get, path = "/api/v1/devices/{id}/access", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceAccess), (status = 404, body = ApiError)))]
async fn my_access(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<DeviceAccess>> {
    visible_device(&state, &caller, &id).await?;
    let mut conn = state.store.pool.acquire().await?;
    let a = rights::access(
        &mut conn,
        &caller.account_id,
        &caller.user_id,
        caller.role,
        &id,
    )
    .await?;
    Ok(Json(DeviceAccess {
        level: match a {
            Access::None => None,
            Access::Monitor => Some(GrantLevel::Monitor),
            Access::Restricted(_) => Some(GrantLevel::Restricted),
            Access::Full => Some(GrantLevel::Full),
        },
        can_tunnel: a.can_tunnel(),
        can_manage: caller.role.permits(Action::ManageDevices),
    }))
}
