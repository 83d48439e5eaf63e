//! Alarms: the account's (of the devices the caller may see), one device's,
//! its history, and acknowledgement (admins, and users with a full or
//! restricted grant on the device; a comment is kept with it).

use super::super::devices::visible_device;
use crate::audit;
use crate::auth::Caller;
use crate::data;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::rights;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::mailbox::{AckAlarm, Alarm, AlarmEvent, AlarmQuery, MAX_ACK_COMMENT};
use drawbridge_proto::{ApiError, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(account_alarms))
        .routes(routes!(device_alarms))
        .routes(routes!(device_history))
        .routes(routes!(acknowledge))
}

fn limit(l: Option<u32>) -> AppResult<i64> {
    match l {
        None => Ok(200),
        Some(n @ 1..=1000) => Ok(i64::from(n)),
        Some(_) => Err(AppError::invalid("limit must be between 1 and 1000")),
    }
}

/// Alarms of every device the caller may see, newest first (ended ones with `all=true`).
#[utoipa::path(get, path = "/api/v1/alarms", tag = "data", params(AlarmQuery),
    responses((status = 200, body = Vec<Alarm>), (status = 401, body = ApiError)))]
async fn account_alarms(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> AppResult<Json<Vec<Alarm>>> {
    let n = limit(q.limit)?;
    let mut conn = state.store.pool.acquire().await?;
    let visible =
        rights::visible_devices(&mut conn, &caller.account_id, &caller.user_id, caller.role)
            .await?;
    // The limit counts alarms the caller may see: pages of the account's
    // alarms are read until it is reached (at most 20 pages).
    let mut out = Vec::new();
    for page in 0..20 {
        let rows = data::alarms::list_page(&mut conn, &caller.account_id, None, q.all, n, page * n)
            .await?;
        let last = (rows.len() as i64) < n;
        out.extend(
            rows.into_iter()
                .filter(|a| visible.as_ref().is_none_or(|v| v.contains(&a.device_id))),
        );
        if last || out.len() as i64 >= n {
            break;
        }
    }
    out.truncate(n as usize);
    Ok(Json(out))
}

/// One device's alarms, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/alarms", tag = "data",
    params(("id" = String, Path), AlarmQuery),
    responses((status = 200, body = Vec<Alarm>), (status = 404, body = ApiError)))]
async fn device_alarms(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> AppResult<Json<Vec<Alarm>>> {
    visible_device(&state, &caller, &id).await?;
    let n = limit(q.limit)?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(
        data::alarms::list(&mut conn, &caller.account_id, Some(&id), q.all, n).await?,
    ))
}

/// One device's alarm history (raised, acknowledged, returned, ended), newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/alarms/history", tag = "data",
    params(("id" = String, Path), AlarmQuery),
    responses((status = 200, body = Vec<AlarmEvent>), (status = 404, body = ApiError)))]
async fn device_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> AppResult<Json<Vec<AlarmEvent>>> {
    visible_device(&state, &caller, &id).await?;
    let n = limit(q.limit)?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(data::alarms::device_history(&mut conn, &id, n).await?))
}

/// Acknowledges an alarm, with a comment. Of two acknowledgements at once one
/// succeeds, the other gets 409.
#[utoipa::path(post, path = "/api/v1/alarms/{id}/ack", tag = "data",
    params(("id" = String, Path)), request_body = AckAlarm,
    responses((status = 200, body = Alarm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AckAlarm>,
) -> AppResult<Json<Alarm>> {
    if req.comment.chars().count() > MAX_ACK_COMMENT
        || req.comment.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(AppError::invalid(format!(
            "comment: at most {MAX_ACK_COMMENT} characters, no control characters"
        )));
    }
    let mut conn = state.store.pool.acquire().await?;
    let alarm = data::alarms::get(&mut conn, &caller.account_id, &id).await?;
    let access = rights::access(
        &mut conn,
        &caller.account_id,
        &caller.user_id,
        caller.role,
        &alarm.device_id,
    )
    .await?;
    drop(conn);
    if !access.can_see() && caller.role != Role::Auditor {
        return Err(AppError::not_found("alarm"));
    }
    if !access.can_tunnel() {
        return caller.denied(&state, "alarm.ack").await;
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let next = data::alarms::acknowledge(&mut tx, &id, &caller.user_id, &req.comment, now).await?;
    let ev = caller
        .event("alarm.ack", &format!("alarm:{id}"))
        .device(&alarm.device_id)
        .details(serde_json::json!({
            "username": caller.username, "tag": alarm.tag, "comment": req.comment, "state": next,
        }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(
        data::alarms::get(&mut conn, &caller.account_id, &id).await?,
    ))
}
