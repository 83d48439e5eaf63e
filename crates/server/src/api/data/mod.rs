//! The data services' routes (DESIGN §7): tags (admins write, anyone who may
//! see the device reads), historian points per device and the account-wide
//! mailbox sync, alarms and their acknowledgement, live KPIs.
//!
//! Tag changes and acknowledgements are on the audit chain; data points are not.

mod alarms;
mod stream;
mod sync;

use super::devices::visible_device;
use crate::audit;
use crate::auth::Caller;
use crate::data;
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drawbridge_proto::data::TagSpec;
use drawbridge_proto::mailbox::{DEFAULT_PAGE, DataPoint, DataStatus, Kpi, MAX_PAGE, RangeQuery};
use drawbridge_proto::{Action, ApiError, TagName};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes a data-only API token may call (all GET): who the token's owner
/// is, the device list, tag
/// lists, historian points and status, the mailbox sync, KPIs and their
/// stream, alarms and their history. A test checks each is a GET route.
pub const DATA_SCOPE: &[&str] = &[
    "/api/v1/me",
    "/api/v1/devices",
    "/api/v1/devices/{id}/tags",
    "/api/v1/devices/{id}/data",
    "/api/v1/devices/{id}/data/status",
    "/api/v1/devices/{id}/kpis",
    "/api/v1/kpis/stream",
    "/api/v1/data/sync",
    "/api/v1/alarms",
    "/api/v1/devices/{id}/alarms",
    "/api/v1/devices/{id}/alarms/history",
];

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    let r = r
        .routes(routes!(list_tags, put_tag))
        .routes(routes!(delete_tag))
        .routes(routes!(points))
        .routes(routes!(status))
        .routes(routes!(kpis));
    let r = alarms::routes(r);
    let r = sync::routes(r);
    stream::routes(r)
}

/// `limit` within 1..=MAX_PAGE, default DEFAULT_PAGE.
pub(crate) fn page_limit(limit: Option<u32>) -> AppResult<u32> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(AppError::invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// The device's tags (anyone who may see the device).
#[utoipa::path(get, path = "/api/v1/devices/{id}/tags", tag = "data", params(("id" = String, Path)),
    responses((status = 200, body = Vec<TagSpec>), (status = 404, body = ApiError)))]
async fn list_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<TagSpec>>> {
    visible_device(&state, &caller, &id).await?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(data::tags::list(&mut conn, &id).await?))
}

/// Creates or replaces a tag, by its name (admins). Its Modbus host must be in
/// the device's LAN subnets; the edge polls it within seconds.
#[utoipa::path(put, path = "/api/v1/devices/{id}/tags", tag = "data", params(("id" = String, Path)),
    request_body = TagSpec,
    responses((status = 200, body = TagSpec), (status = 201, body = TagSpec), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
async fn put_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<TagSpec>,
) -> AppResult<(StatusCode, Json<TagSpec>)> {
    caller
        .require(&state, Action::ManageDevices, "tag.put")
        .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let device = crate::records::device(&mut tx, &caller.account_id, &id).await?;
    let created = data::tags::put(&mut tx, &caller.account_id, &device, &spec, now).await?;
    let ev = caller
        .event(
            if created { "tag.create" } else { "tag.update" },
            &format!("device:{id}"),
        )
        .device(&id)
        .details(serde_json::json!({ "username": caller.username, "tag": spec }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    crate::live::device_changed(&state, &id);
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(spec)))
}

/// Deletes a tag (admins): the edge stops polling it, its alarms end; its
/// stored points stay until retention or a mailbox delete.
#[utoipa::path(delete, path = "/api/v1/devices/{id}/tags/{name}", tag = "data",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    caller
        .require(&state, Action::ManageDevices, "tag.delete")
        .await?;
    let name = TagName::try_from(name).map_err(|_| AppError::not_found("tag"))?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    crate::records::device(&mut tx, &caller.account_id, &id).await?;
    if !data::tags::delete(&mut tx, &id, name.as_str(), now).await? {
        return Err(AppError::not_found("tag"));
    }
    let ev = caller
        .event("tag.delete", &format!("device:{id}"))
        .device(&id)
        .details(serde_json::json!({ "username": caller.username, "tag": name }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    crate::live::device_changed(&state, &id);
    Ok(StatusCode::NO_CONTENT)
}

/// One tag's historian points in a time range, oldest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/data", tag = "data",
    params(("id" = String, Path), RangeQuery),
    responses((status = 200, body = Vec<DataPoint>), (status = 404, body = ApiError)))]
async fn points(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> AppResult<Json<Vec<DataPoint>>> {
    visible_device(&state, &caller, &id).await?;
    let limit = page_limit(q.limit)?;
    let (from, to) = (q.from_ms.unwrap_or(0), q.to_ms.unwrap_or(i64::MAX));
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(
        data::mailbox::range(&mut conn, &id, q.tag.as_str(), from, to, limit).await?,
    ))
}

/// What the historian holds for a device, and the edge buffer as last reported.
#[utoipa::path(get, path = "/api/v1/devices/{id}/data/status", tag = "data",
    params(("id" = String, Path)),
    responses((status = 200, body = DataStatus), (status = 404, body = ApiError)))]
async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<DataStatus>> {
    visible_device(&state, &caller, &id).await?;
    let mut conn = state.store.pool.acquire().await?;
    Ok(Json(data::mailbox::status(&mut conn, &id).await?))
}

/// The device's KPI tags with their latest values. Reading them counts as
/// watching for a few seconds: poll every second or two for fresh values, or
/// use `/api/v1/kpis/stream`.
#[utoipa::path(get, path = "/api/v1/devices/{id}/kpis", tag = "data",
    params(("id" = String, Path)),
    responses((status = 200, body = Vec<Kpi>), (status = 404, body = ApiError)))]
async fn kpis(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<Kpi>>> {
    let device = visible_device(&state, &caller, &id).await?;
    data::live::watch(
        &state,
        &format!("token:{}", caller.token_id),
        std::slice::from_ref(&id),
    )
    .await?;
    Ok(Json(
        stream::kpis_of(&state, &id, device.name.as_str()).await?,
    ))
}
