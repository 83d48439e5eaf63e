//! The mailbox: `GET /api/v1/data/sync` hands out every point of the account
//! once, in order, behind an opaque cursor; `POST /api/v1/data/delete` forgets
//! points up to a cursor (admins).

use super::page_limit;
use crate::audit;
use crate::auth::Caller;
use crate::data::mailbox;
use crate::error::AppResult;
use crate::extract::{ApiJson, ApiQuery};
use crate::rights;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use drawbridge_proto::mailbox::{DeleteData, Deleted, SyncPage, SyncQuery};
use drawbridge_proto::{Action, ApiError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(sync)).routes(routes!(delete))
}

/// The next page of historian points after `after`, oldest first. Loop with
/// `after = cursor` while `more_data_available`: each point comes exactly
/// once, also across server restarts and replicas. Points of devices the
/// caller may not see are skipped (the cursor passes them).
#[utoipa::path(get, path = "/api/v1/data/sync", tag = "data", params(SyncQuery),
    responses((status = 200, body = SyncPage), (status = 400, body = ApiError), (status = 422, body = ApiError)))]
async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> AppResult<Json<SyncPage>> {
    let after = mailbox::parse_cursor(q.after.as_deref())?;
    let limit = page_limit(q.limit)?;
    let mut conn = state.store.pool.acquire().await?;
    let visible =
        rights::visible_devices(&mut conn, &caller.account_id, &caller.user_id, caller.role)
            .await?;
    let (points, last, more) = mailbox::sync(
        &mut conn,
        &caller.account_id,
        visible.as_deref(),
        after,
        limit,
    )
    .await?;
    Ok(Json(SyncPage {
        points,
        cursor: mailbox::cursor(last),
        more_data_available: more,
    }))
}

/// Deletes the account's points up to and including a cursor (admins).
#[utoipa::path(post, path = "/api/v1/data/delete", tag = "data", request_body = DeleteData,
    responses((status = 200, body = Deleted), (status = 403, body = ApiError), (status = 422, body = ApiError)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<DeleteData>,
) -> AppResult<Json<Deleted>> {
    caller
        .require(&state, Action::ManageDevices, "data.delete")
        .await?;
    let up_to = mailbox::parse_cursor(Some(&req.up_to))?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let deleted = mailbox::delete_up_to(&mut tx, &caller.account_id, up_to).await?;
    let ev = caller
        .event("data.delete", "historian")
        .details(serde_json::json!({
            "username": caller.username, "up_to": req.up_to, "deleted": deleted,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(Deleted { deleted }))
}
