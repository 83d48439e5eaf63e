//! The dashboard: my sessions, devices online/offline with their switch, notifications.

use super::sessions::{Names, SessionRow};
use crate::web::{Viewer, render};
use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::api::{Device, Notification, Session};
use drawbridge_proto::{Action, SessionState};

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    l: crate::web::Layout,
    prepared: Vec<SessionRow>,
    active: Vec<SessionRow>,
    recent: Vec<SessionRow>,
    others_active: Vec<SessionRow>,
    sees_all: bool,
    devices: Vec<DeviceRow>,
    online: usize,
    notifications: Option<Vec<NoteRow>>,
    can_prepare: bool,
}

pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub online: bool,
    pub switch_on: bool,
    pub enrolled: bool,
    pub pending: bool,
    pub last_seen: String,
    /// The edge's version as it last reported it, or `—`.
    pub agent: String,
}

impl DeviceRow {
    pub fn of(d: &Device) -> Self {
        DeviceRow {
            id: d.id.clone(),
            name: d.name.to_string(),
            online: d.status.online,
            switch_on: d.status.switch_on,
            enrolled: d.status.enrolled,
            pending: d.status.pending_approval,
            last_seen: super::when_opt(&d.status.last_seen),
            agent: d.status.agent_version.clone().unwrap_or_else(|| "—".into()),
        }
    }
}

pub struct NoteRow {
    pub kind: String,
    pub message: String,
    pub at: String,
}

pub async fn page(v: Viewer) -> Response {
    let sessions: Vec<Session> = match v.api.get("/api/v1/sessions").await {
        Ok(s) => s,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let names = Names::load(&v, &devices).await;
    let me = v.me.user.id.clone();
    let mine = |s: &&Session| s.users.contains(&me);
    let rows = |f: &dyn Fn(&Session) -> bool, limit: usize| -> Vec<SessionRow> {
        sessions
            .iter()
            .filter(|s| f(s))
            .take(limit)
            .map(|s| SessionRow::of(s, &names))
            .collect()
    };
    let is_active = |s: &Session| {
        matches!(
            s.state,
            SessionState::Active | SessionState::PendingApproval
        )
    };
    let notifications = if v.can(Action::ManageUsers) {
        match v
            .api
            .get::<Vec<Notification>>("/api/v1/notifications")
            .await
        {
            Ok(n) => Some(
                n.iter()
                    .take(20)
                    .map(|n| NoteRow {
                        kind: n.kind.clone(),
                        message: n.message.clone(),
                        at: super::when(&n.created_at),
                    })
                    .collect(),
            ),
            Err(e) => return v.fail(&e),
        }
    } else {
        None
    };
    let page = Dashboard {
        l: v.layout("Dashboard"),
        prepared: rows(&|s| mine(&s) && s.state == SessionState::Prepared, 50),
        active: rows(&|s| mine(&s) && is_active(s), 50),
        recent: rows(&|s| mine(&s) && s.state == SessionState::Ended, 5),
        others_active: rows(&|s| !mine(&s) && s.state != SessionState::Ended, 50),
        sees_all: v.can(Action::ViewAllSessions),
        online: devices.iter().filter(|d| d.status.online).count(),
        devices: devices.iter().map(DeviceRow::of).collect(),
        notifications,
        can_prepare: v.can(Action::PrepareSessions),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}
