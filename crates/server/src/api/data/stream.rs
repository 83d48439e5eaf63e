//! `GET /api/v1/kpis/stream`: live KPI values as server-sent events. While the
//! stream is open it watches its devices (so their edges send values, on
//! whichever replica they are connected), and sends each value that changed,
//! checked every half second. It ends when the caller's token is revoked or
//! expires, or the caller loses sight of every device.

use super::super::devices::visible_device;
use crate::auth::Caller;
use crate::data;
use crate::error::{AppError, AppResult};
use crate::extract::ApiQuery;
use crate::rights;
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use drawbridge_proto::ApiError;
use drawbridge_proto::data::TagSpec;
use drawbridge_proto::mailbox::{Kpi, KpiStreamQuery};
use futures_util::Stream;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most devices one stream watches.
const MAX_STREAM_DEVICES: i64 = 100;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(kpi_stream))
}

/// The KPI tags of a device with their stored live values.
pub async fn kpis_of(state: &AppState, device_id: &str, device: &str) -> AppResult<Vec<Kpi>> {
    let mut conn = state.store.pool.acquire().await?;
    let tags: Vec<TagSpec> = data::tags::list(&mut conn, device_id).await?;
    drop(conn);
    let mut live: HashMap<String, data::live::Stored> = data::live::read(state, device_id)
        .await?
        .into_iter()
        .collect();
    Ok(tags
        .into_iter()
        .filter(|t| t.kpi)
        .map(|t| {
            let v = live.remove(t.name.as_str());
            Kpi {
                device_id: device_id.to_string(),
                device: device.to_string(),
                tag: t.name.to_string(),
                description: t.description,
                unit: t.unit,
                time_ms: v.as_ref().map(|v| v.time_ms),
                value: v.as_ref().and_then(|v| v.value),
                quality: v.and_then(|v| v.quality),
            }
        })
        .collect())
}

/// Ends the watch when the stream is dropped (the viewer left).
struct Watcher {
    state: AppState,
    id: String,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let (state, id) = (self.state.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move {
            if let Err(e) = data::live::unwatch(&state, &id).await {
                tracing::debug!(error = %e.message, "forgetting a KPI watcher failed");
            }
        });
    }
}

struct Viewing {
    watcher: Watcher,
    caller: Caller,
    devices: Vec<(String, String)>,
    sent: HashMap<(String, String), Option<i64>>,
    round: u64,
}

/// Live KPI values as server-sent events (`event: kpi`, data: a `Kpi`): first
/// every KPI of the watched devices, then each value that changes. One device
/// with `device=ID`, else every device the caller may see that has KPI tags
/// (at most 100). Values flow while the stream is open.
#[utoipa::path(get, path = "/api/v1/kpis/stream", tag = "data", params(KpiStreamQuery),
    responses((status = 200, description = "text/event-stream of `kpi` events whose data is a Kpi", content_type = "text/event-stream", body = Kpi),
        (status = 404, body = ApiError)))]
async fn kpi_stream(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<KpiStreamQuery>,
) -> AppResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let devices = match &q.device {
        Some(id) => {
            let d = visible_device(&state, &caller, id).await?;
            vec![(d.id, d.name.to_string())]
        }
        None => kpi_devices(&state, &caller).await?,
    };
    let watcher = Watcher {
        state: state.clone(),
        id: format!("sse:{}", crate::secret::new_id()),
    };
    let ids: Vec<String> = devices.iter().map(|d| d.0.clone()).collect();
    data::live::watch(&state, &watcher.id, &ids).await?;
    let viewing = Viewing {
        watcher,
        caller,
        devices,
        sent: HashMap::new(),
        round: 0,
    };
    let events = futures_util::stream::unfold(Some(viewing), |v| async move {
        let mut v = v?;
        if v.round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        v.round += 1;
        match step(&mut v).await {
            Ok(Some(events)) => Some((events, Some(v))),
            // The caller's right ended: one last event, then the stream ends.
            Ok(None) => Some((
                vec![Ok(Event::default().event("end").data("access ended"))],
                None,
            )),
            Err(e) => {
                tracing::debug!(error = %e.message, "KPI stream round failed");
                Some((Vec::new(), Some(v)))
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

use futures_util::StreamExt;

/// One round: renew the watch now and then, check the caller still may look,
/// and the events for what changed. None: the stream must end.
async fn step(v: &mut Viewing) -> AppResult<Option<Vec<Result<Event, Infallible>>>> {
    let state = v.watcher.state.clone();
    if v.round % 4 == 1 {
        if !still_allowed(&state, &v.caller, &mut v.devices).await? {
            return Ok(None);
        }
        let ids: Vec<String> = v.devices.iter().map(|d| d.0.clone()).collect();
        data::live::watch(&state, &v.watcher.id, &ids).await?;
    }
    let mut out = Vec::new();
    for (id, name) in &v.devices {
        for k in kpis_of(&state, id, name).await? {
            let key = (k.device_id.clone(), k.tag.clone());
            if v.sent.get(&key) == Some(&k.time_ms) {
                continue;
            }
            v.sent.insert(key, k.time_ms);
            if let Ok(e) = Event::default().event("kpi").json_data(&k) {
                out.push(Ok(e));
            }
        }
    }
    Ok(Some(out))
}

/// The token still works and the caller still sees at least one device
/// (devices they lost sight of are dropped from the stream).
async fn still_allowed(
    state: &AppState,
    caller: &Caller,
    devices: &mut Vec<(String, String)>,
) -> AppResult<bool> {
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM auth_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.id = $1 AND t.revoked_at IS NULL AND t.expires_at > $2 AND u.disabled = 0",
    )
    .bind(&caller.token_id)
    .bind(state.now())
    .fetch_one(&state.store.pool)
    .await?;
    if live == 0 {
        return Ok(false);
    }
    let mut conn = state.store.pool.acquire().await?;
    let mut kept = Vec::new();
    for d in devices.drain(..) {
        let a = rights::access(
            &mut conn,
            &caller.account_id,
            &caller.user_id,
            caller.role,
            &d.0,
        )
        .await?;
        if a.can_see() || caller.role == drawbridge_proto::Role::Auditor {
            kept.push(d);
        }
    }
    *devices = kept;
    Ok(!devices.is_empty())
}

/// Devices with KPI tags the caller may see (at most [`MAX_STREAM_DEVICES`]).
async fn kpi_devices(state: &AppState, caller: &Caller) -> AppResult<Vec<(String, String)>> {
    let mut conn = state.store.pool.acquire().await?;
    let visible =
        rights::visible_devices(&mut conn, &caller.account_id, &caller.user_id, caller.role)
            .await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT d.id, d.name FROM tags t JOIN devices d ON d.id = t.device_id
         WHERE t.account_id = $1 AND t.kpi = 1 ORDER BY d.name LIMIT $2",
    )
    .bind(&caller.account_id)
    .bind(MAX_STREAM_DEVICES)
    .fetch_all(&mut *conn)
    .await?;
    let out: Vec<_> = rows
        .into_iter()
        .filter(|(id, _)| visible.as_ref().is_none_or(|v| v.contains(id)))
        .collect();
    if out.is_empty() {
        return Err(AppError::not_found("device with KPI tags"));
    }
    Ok(out)
}
