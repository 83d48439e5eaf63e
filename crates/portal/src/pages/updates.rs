//! Updates (admins): the signed edge releases the server's operator stored,
//! the account's rollouts, a form to start one, and a rollout's page with
//! each device's state and pause, resume and cancel (docs/updates.md).

use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, error_page, render};
use askama::Template;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::api::{Device, Pool};
use drawbridge_proto::update::{CreateRollout, Release, Rollout, RolloutWindow};
use drawbridge_proto::{Action, ApiError, ErrorCode};
use std::collections::BTreeMap;

/// Most unfinished rollouts a device page looks through for the device.
const DEVICE_PAGE_ROLLOUTS: usize = 20;

fn back() -> String {
    format!("{PREFIX}/updates")
}

fn refused(v: &Viewer) -> Option<Response> {
    (!v.can(Action::ManageDevices)).then(|| {
        v.fail(&ApiError::new(
            ErrorCode::Forbidden,
            "edge updates are for the account's admins",
        ))
    })
}

fn unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|t| super::when(&t))
        .unwrap_or_else(|_| "—".into())
}

/// `12.3 MiB`.
fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

fn counts_text(counts: &BTreeMap<String, u32>) -> String {
    drawbridge_proto::update::counts_text(counts, "—")
}

/// A state as a CSS class: known states only (the text itself is escaped).
fn state_class(s: &str) -> &'static str {
    match s {
        "running" | "succeeded" | "done" => "on",
        "paused" | "waiting" | "offered" | "downloading" | "installing" => "warn",
        "failed" | "rolled_back" | "refused" => "off",
        _ => "",
    }
}

pub struct ReleaseRow {
    pub id: String,
    pub version: String,
    pub target: String,
    pub size: String,
    pub sha256: String,
    pub sha256_prefix: String,
    pub downgrade: bool,
    pub created: String,
}

impl ReleaseRow {
    fn of(r: &Release) -> Self {
        ReleaseRow {
            id: r.id.clone(),
            version: r.version.clone(),
            target: r.target.clone(),
            size: size(r.size),
            sha256: r.sha256.clone(),
            sha256_prefix: r.sha256.chars().take(16).collect(),
            downgrade: r.downgrade,
            created: unix(r.created_at),
        }
    }
}

pub struct RolloutRow {
    pub id: String,
    pub version: String,
    pub target: String,
    pub state: String,
    pub state_class: &'static str,
    pub stage: String,
    pub counts: String,
    pub created: String,
    pub created_by: String,
}

impl RolloutRow {
    fn of(r: &Rollout) -> Self {
        RolloutRow {
            id: r.id.clone(),
            version: r.release.version.clone(),
            target: r.release.target.clone(),
            state: r.state.clone(),
            state_class: state_class(&r.state),
            stage: r.stage.clone(),
            counts: counts_text(&r.counts),
            created: unix(r.created_at),
            created_by: r.created_by.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "updates.html")]
struct ListPage {
    l: Layout,
    releases: Vec<ReleaseRow>,
    rollouts: Vec<RolloutRow>,
    /// (id, name) of the account's devices, pools.
    devices: Vec<(String, String)>,
    pools: Vec<(String, String)>,
}

pub async fn page(v: Viewer) -> Response {
    if let Some(r) = refused(&v) {
        return r;
    }
    let releases: Vec<Release> = match v.api.get("/api/v1/releases").await {
        Ok(r) => r,
        Err(e) => return v.fail(&e),
    };
    let rollouts: Vec<Rollout> = match v.api.get("/api/v1/rollouts").await {
        Ok(r) => r,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let pools: Vec<Pool> = match v.api.get("/api/v1/pools").await {
        Ok(p) => p,
        Err(e) => return v.fail(&e),
    };
    let page = ListPage {
        l: v.layout("Updates"),
        releases: releases.iter().map(ReleaseRow::of).collect(),
        rollouts: rollouts.iter().map(RolloutRow::of).collect(),
        devices: devices
            .iter()
            .map(|d| (d.id.clone(), d.name.to_string()))
            .collect(),
        pools: pools
            .iter()
            .map(|p| (p.id.clone(), p.name.to_string()))
            .collect(),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

/// A whole number from a form field (empty: `default`).
fn number<T: std::str::FromStr>(
    p: &Posted,
    field: &str,
    default: T,
    what: &str,
) -> Result<T, String> {
    match p.form.opt(field) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("{what}: enter a whole number ({s:?} is not one in range).")),
    }
}

/// The form as the API's request; the API checks every rule.
fn request(p: &Posted) -> Result<CreateRollout, String> {
    let f = &p.form;
    let release_id = f.opt("release").ok_or("Choose a release.")?.to_string();
    let window = match (f.opt("window_start"), f.opt("window_end")) {
        (None, None) => None,
        (Some(start), Some(end)) => Some(RolloutWindow {
            start: start.to_string(),
            end: end.to_string(),
        }),
        _ => return Err("Give both ends of the window (UTC), or neither for any time.".into()),
    };
    let ids = |name: &str| -> Vec<String> {
        f.all(name)
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(CreateRollout {
        release_id,
        devices: ids("device"),
        pools: ids("pool"),
        canaries: ids("canary"),
        canary_percent: number(p, "canary_percent", 0, "Canary share (0 to 100 %)")?,
        soak_minutes: number(p, "soak_minutes", 0, "Soak minutes")?,
        window,
        failure_threshold: number(p, "failure_threshold", 1, "Failure threshold")?,
        downgrade: f.checked("downgrade"),
    })
}

pub async fn create(p: Posted) -> Response {
    let req = match request(&p) {
        Ok(r) => r,
        Err(e) => return Flash::error(e).redirect(&back()),
    };
    match p.api.post::<Rollout>("/api/v1/rollouts", &req).await {
        Ok(r) => {
            let n: u32 = r.counts.values().sum();
            Flash::ok(format!(
                "Rollout of {} started on {n} device(s).",
                r.release.version
            ))
            .redirect(&format!("{PREFIX}/updates/rollouts/{}", enc(&r.id)))
        }
        Err(e) => after::<()>(Err(e), &p.headers, &back(), ""),
    }
}

pub struct RolloutDeviceRow {
    pub id: String,
    pub name: String,
    pub canary: bool,
    pub state: String,
    pub state_class: &'static str,
    pub from_version: String,
    pub message: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct DetailPage {
    l: Layout,
    r: RolloutRow,
    release_id: String,
    downgrade: bool,
    soak_minutes: u32,
    failure_threshold: u32,
    window: String,
    paused_reason: Option<String>,
    devices: Vec<RolloutDeviceRow>,
}

pub async fn detail(v: Viewer, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&v) {
        return r;
    }
    let r: Rollout = match v.api.get(&format!("/api/v1/rollouts/{}", enc(&id))).await {
        Ok(r) => r,
        Err(e) => return v.fail(&e),
    };
    let page = DetailPage {
        l: v.layout(format!("Rollout of {}", r.release.version)),
        release_id: r.release.id.clone(),
        downgrade: r.downgrade,
        soak_minutes: r.soak_minutes,
        failure_threshold: r.failure_threshold,
        window: match &r.window {
            Some(w) => format!("{}–{} UTC", w.start, w.end),
            None => "any time".into(),
        },
        paused_reason: r.paused_reason.clone(),
        devices: r
            .devices
            .iter()
            .map(|d| RolloutDeviceRow {
                id: d.device_id.clone(),
                name: d.name.clone(),
                canary: d.canary,
                state: d.state.clone(),
                state_class: state_class(&d.state),
                from_version: d.from_version.clone().unwrap_or_else(|| "—".into()),
                message: d.message.clone().unwrap_or_default(),
                updated: unix(d.updated_at),
            })
            .collect(),
        r: RolloutRow::of(&r),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

/// Pause, resume or cancel a rollout.
pub async fn change(Path((id, action)): Path<(String, String)>, p: Posted) -> Response {
    let msg = match action.as_str() {
        "pause" => "The rollout was paused; offers not being installed yet were withdrawn.",
        "resume" => "The rollout was resumed.",
        "cancel" => "The rollout was cancelled; devices not updating yet never will.",
        _ => return error_page(StatusCode::NOT_FOUND, "Unknown action."),
    };
    let r = p
        .api
        .post::<Rollout>(
            &format!("/api/v1/rollouts/{}/{action}", enc(&id)),
            &serde_json::json!({}),
        )
        .await;
    let to = format!("{PREFIX}/updates/rollouts/{}", enc(&id));
    after(r, &p.headers, &to, msg)
}

/// A device's place in an unfinished rollout, for its page.
pub struct DeviceUpdate {
    pub rollout_id: String,
    pub version: String,
    pub rollout_state: String,
    pub state: String,
    pub state_class: &'static str,
    pub message: String,
}

/// The device's row in an unfinished (running or paused) rollout, if any
/// (admins only; best effort: an API failure shows nothing).
pub async fn for_device(v: &Viewer, device_id: &str) -> Option<DeviceUpdate> {
    if !v.can(Action::ManageDevices) {
        return None;
    }
    let all: Vec<Rollout> = v.api.get("/api/v1/rollouts").await.ok()?;
    for r in all
        .iter()
        .filter(|r| r.state == "running" || r.state == "paused")
        .take(DEVICE_PAGE_ROLLOUTS)
    {
        let Ok(full) = v
            .api
            .get::<Rollout>(&format!("/api/v1/rollouts/{}", enc(&r.id)))
            .await
        else {
            continue;
        };
        if let Some(d) = full.devices.iter().find(|d| d.device_id == device_id) {
            return Some(DeviceUpdate {
                rollout_id: full.id.clone(),
                version: full.release.version.clone(),
                rollout_state: full.state.clone(),
                state: d.state.clone(),
                state_class: state_class(&d.state),
                message: d.message.clone().unwrap_or_default(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_update_order_and_sizes_read_as_people_write_them() {
        let counts: BTreeMap<String, u32> = [("succeeded", 2), ("pending", 1), ("odd", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(counts_text(&counts), "1 pending, 2 succeeded, 1 odd");
        assert_eq!(counts_text(&BTreeMap::new()), "—");
        assert_eq!(size(100), "100 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
    }
}
