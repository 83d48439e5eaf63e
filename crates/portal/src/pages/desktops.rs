//! Desktops opened in browsers (VNC): the open ones, which admins and
//! auditors can watch live and admins and session admins can end (by ending
//! their session), and the recordings of ended ones, which admins and
//! auditors replay. The API decides every right; the page only leaves out
//! buttons the viewer could not use.

use super::sessions::Names;
use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::Action;
use drawbridge_proto::api::{Device, OpenedWeb};
use drawbridge_proto::desktop::DesktopRecording;

pub struct Row {
    pub id: String,
    pub session_id: String,
    pub device: String,
    pub target: String,
    pub user: String,
    pub started: String,
    pub ended: String,
    pub view_only: bool,
    /// `recorded`, `not recorded`, `recording stopped`.
    pub recording: String,
    pub size: String,
    pub sha256: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "desktops.html")]
struct DesktopsPage {
    l: Layout,
    live: Vec<Row>,
    ended: Vec<Row>,
    can_watch: bool,
    can_end: bool,
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn row(d: &DesktopRecording, names: &Names) -> Row {
    Row {
        id: d.id.clone(),
        session_id: d.session_id.clone(),
        device: names.device(&d.device_id),
        target: d.target.to_string(),
        user: names.user(&d.user_id),
        started: super::when(&d.started_at),
        ended: super::when_opt(&d.ended_at),
        view_only: d.view_only,
        recording: match (d.mode, d.recorded) {
            (drawbridge_proto::RecordingMode::Off, _) => "not recorded".into(),
            (_, true) => "recorded".into(),
            (_, false) => "recording stopped".into(),
        },
        size: size(d.bytes),
        sha256: d.sha256.clone().unwrap_or_default(),
        reason: d.end_reason.clone().unwrap_or_default(),
    }
}

pub async fn page(v: Viewer) -> Response {
    let all: Vec<DesktopRecording> = match v.api.get("/api/v1/desktops?limit=200").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = v.api.get("/api/v1/devices").await.unwrap_or_default();
    let names = Names::load(&v, &devices).await;
    let (live, ended): (Vec<_>, Vec<_>) = all.iter().partition(|d| d.live);
    let page = DesktopsPage {
        l: v.layout("Desktops"),
        live: live.iter().map(|d| row(d, &names)).collect(),
        ended: ended.iter().map(|d| row(d, &names)).collect(),
        can_watch: v.can(Action::ReadAudit),
        can_end: v.can(Action::EndAnySession),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

async fn open(id: &str, p: &Posted, view: &str) -> Response {
    match p
        .api
        .post::<OpenedWeb>(
            &format!("/api/v1/desktops/{}/{view}", enc(id)),
            &serde_json::json!({}),
        )
        .await
    {
        Ok(o) => super::sessions::entering(&o.url),
        Err(e) => after::<()>(Err(e), &p.headers, &format!("{PREFIX}/desktops"), ""),
    }
}

/// Watch an open desktop (a new tab on its watch origin).
pub async fn watch(Path(id): Path<String>, p: Posted) -> Response {
    open(&id, &p, "watch").await
}

/// Replay a recording (a new tab on its replay origin).
pub async fn replay(Path(id): Path<String>, p: Posted) -> Response {
    open(&id, &p, "replay").await
}
