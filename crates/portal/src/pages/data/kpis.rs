//! Live KPIs: the overview page (every device the viewer may see that has
//! KPI tags, with its tiles) and the JSON route the pages' script polls about
//! once a second. Each poll reads `GET /api/v1/devices/{id}/kpis` as the
//! viewer, which also renews the viewer's watch, so values flow from the
//! edges while a page is open and stop within seconds after it closes.

use super::Tile;
use crate::apiclient::{Api, enc};
use crate::web::{Layout, SESSION_COOKIE, Viewer, cookie, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use drawbridge_proto::api::Device;
use drawbridge_proto::data::TagSpec;
use drawbridge_proto::mailbox::Kpi;
use drawbridge_proto::{ApiError, ErrorCode};
use std::net::SocketAddr;

/// Most devices one page shows live (as the API's KPI stream).
pub const MAX_LIVE_DEVICES: usize = 100;

/// The live route for `devices`.
pub fn live_url(devices: &[&str]) -> String {
    let q: Vec<String> = devices
        .iter()
        .map(|d| format!("device={}", enc(d)))
        .collect();
    format!("{PREFIX}/kpis/live?{}", q.join("&"))
}

/// A device with its tiles.
pub struct DeviceTiles {
    pub id: String,
    pub name: String,
    pub online: bool,
    pub tiles: Vec<Tile>,
}

#[derive(Template)]
#[template(path = "kpis.html")]
struct KpisPage {
    l: Layout,
    devices: Vec<DeviceTiles>,
    live_url: String,
    /// More devices have KPI tags than one page shows.
    capped: bool,
}

/// The device's KPI tiles (and a renewed watch); empty when it has none.
pub async fn tiles_of(api: &Api, device: &str) -> Result<Vec<Tile>, ApiError> {
    let kpis: Vec<Kpi> = api
        .get(&format!("/api/v1/devices/{}/kpis", enc(device)))
        .await?;
    let now = super::now_ms();
    Ok(kpis.iter().map(|k| Tile::of(k, now)).collect())
}

/// The KPI overview.
pub async fn page(v: Viewer) -> Response {
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let mut with_kpis = Vec::new();
    let mut capped = false;
    for d in &devices {
        let tags: Vec<TagSpec> = match v
            .api
            .get(&format!("/api/v1/devices/{}/tags", enc(&d.id)))
            .await
        {
            Ok(t) => t,
            Err(_) => continue,
        };
        if !tags.iter().any(|t| t.kpi) {
            continue;
        }
        if with_kpis.len() == MAX_LIVE_DEVICES {
            capped = true;
            break;
        }
        with_kpis.push(d);
    }
    let mut shown = Vec::new();
    for d in with_kpis {
        match tiles_of(&v.api, &d.id).await {
            Ok(tiles) if !tiles.is_empty() => shown.push(DeviceTiles {
                id: d.id.clone(),
                name: d.name.to_string(),
                online: d.status.online,
                tiles,
            }),
            Ok(_) => {}
            Err(e) => return v.fail(&e),
        }
    }
    let ids: Vec<&str> = shown.iter().map(|d| d.id.as_str()).collect();
    let page = KpisPage {
        l: v.layout("KPIs"),
        live_url: live_url(&ids),
        devices: shown,
        capped,
    };
    let mut res = render(StatusCode::OK, &page, v.flash.is_some());
    crate::web::allow_own_script(&mut res);
    res
}

#[derive(serde::Serialize)]
struct Live {
    now_ms: i64,
    tiles: Vec<Tile>,
}

fn json_error(status: StatusCode, e: &ApiError) -> Response {
    (status, axum::Json(e)).into_response()
}

/// `GET /portal/kpis/live?device=ID&…`: the tiles of those devices as JSON,
/// for the pages' script. A device the viewer may no longer see drops out.
pub async fn live(State(portal): State<Portal>, RawQuery(q): RawQuery, req: Request) -> Response {
    let Some(token) = cookie(req.headers(), SESSION_COOKIE).map(str::to_string) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            &ApiError::new(ErrorCode::Unauthenticated, "not logged in"),
        );
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
    let api = Api::new(portal.api.clone(), Some(token), peer);
    let q = q.unwrap_or_default();
    let mut devices: Vec<String> = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == "device")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .collect();
    devices.dedup();
    if devices.len() > MAX_LIVE_DEVICES {
        return json_error(
            StatusCode::BAD_REQUEST,
            &ApiError::new(
                ErrorCode::Invalid,
                format!("at most {MAX_LIVE_DEVICES} devices"),
            ),
        );
    }
    let mut tiles = Vec::new();
    for d in &devices {
        match tiles_of(&api, d).await {
            Ok(t) => tiles.extend(t),
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::Unauthenticated | ErrorCode::LoginIncomplete
                ) =>
            {
                return json_error(StatusCode::UNAUTHORIZED, &e);
            }
            Err(_) => {}
        }
    }
    let mut res = axum::Json(Live {
        now_ms: super::now_ms(),
        tiles,
    })
    .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}
