//! `POST /api/v1/setup`: the first account and admin, with the one-time setup token.

use crate::error::AppResult;
use crate::extract::ApiJson;
use crate::extract::Source;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use drawbridge_proto::ApiError;
use drawbridge_proto::api::{SetupRequest, SetupResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(setup))
}

/// Create the first account and its admin with the setup token printed at first start.
#[utoipa::path(post, path = "/api/v1/setup", tag = "setup", security(()),
    request_body = SetupRequest,
    responses((status = 200, body = SetupResponse), (status = 401, body = ApiError, description = "token wrong, expired or used")))]
async fn setup(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<SetupRequest>,
) -> AppResult<Json<SetupResponse>> {
    state.attempt(&source)?;
    let resp = crate::bootstrap::setup_with_token(
        &state,
        &req.token,
        &req.account,
        &req.admin_username,
        &req.admin_password,
        &source,
    )
    .await?;
    Ok(Json(resp))
}
