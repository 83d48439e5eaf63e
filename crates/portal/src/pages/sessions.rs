//! Sessions: history with filters, prepare, detail (start, end, add device,
//! the `drawbridge connect` command), ad-hoc connect.

use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use drawbridge_proto::api::{Device, Session, User};
use drawbridge_proto::{Action, ApprovalState, SessionState};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

/// Display names for ids the viewer can see.
pub struct Names {
    pub devices: HashMap<String, String>,
    pub users: HashMap<String, String>,
}

impl Names {
    pub async fn load(v: &Viewer, devices: &[Device]) -> Names {
        let users: Vec<User> = v.api.get("/api/v1/users").await.unwrap_or_default();
        Names {
            devices: devices
                .iter()
                .map(|d| (d.id.clone(), d.name.to_string()))
                .collect(),
            users: users
                .iter()
                .map(|u| (u.id.clone(), u.username.to_string()))
                .collect(),
        }
    }
    pub fn device(&self, id: &str) -> String {
        self.devices
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("device {}", super::short(id)))
    }
    pub fn user(&self, id: &str) -> String {
        self.users
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("user {}", super::short(id)))
    }
    /// `user:<id>` → a name.
    pub fn actor(&self, actor: &str) -> String {
        match actor.strip_prefix("user:") {
            Some(id) => self.user(id),
            None => actor.to_string(),
        }
    }
}

pub struct SessionRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub adhoc: bool,
    pub devices: String,
    pub users: String,
    pub valid_from: String,
    pub valid_until: String,
    pub end_reason: Option<String>,
}

impl SessionRow {
    pub fn of(s: &Session, n: &Names) -> SessionRow {
        SessionRow {
            id: s.id.clone(),
            name: s.name.to_string(),
            state: s.state.as_str().to_string(),
            adhoc: s.adhoc,
            devices: s
                .devices
                .iter()
                .map(|d| n.device(&d.device_id))
                .collect::<Vec<_>>()
                .join(", "),
            users: s
                .users
                .iter()
                .map(|u| n.user(u))
                .collect::<Vec<_>>()
                .join(", "),
            valid_from: super::when(&s.valid_from),
            valid_until: super::when(&s.valid_until),
            end_reason: s.end_reason.map(|r| r.as_str().to_string()),
        }
    }
}

// ---------------------------------------------------------------- history

#[derive(Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    q: String,
    /// Sessions whose validity window overlaps [from, to] (UTC, datetime-local).
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct ListPage {
    l: Layout,
    rows: Vec<SessionRow>,
    f: Filter,
    devices: Vec<(String, String)>,
    users: Vec<(String, String)>,
    can_prepare: bool,
}

pub async fn list(v: Viewer, Query(f): Query<Filter>) -> Response {
    let state: Option<SessionState> = f.state.parse().ok();
    let path = match state {
        Some(s) => format!("/api/v1/sessions?state={}", s.as_str()),
        None => "/api/v1/sessions".to_string(),
    };
    let sessions: Vec<Session> = match v.api.get(&path).await {
        Ok(s) => s,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let names = Names::load(&v, &devices).await;
    let q = f.q.trim().to_lowercase();
    let bound = |v: &str| -> Option<time::OffsetDateTime> {
        let t = local_to_rfc3339(v).ok()??;
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
    };
    let (from, to) = (bound(&f.from), bound(&f.to));
    let rows = sessions
        .iter()
        .filter(|s| f.device.is_empty() || s.devices.iter().any(|d| d.device_id == f.device))
        .filter(|s| f.user.is_empty() || s.users.contains(&f.user))
        .filter(|s| q.is_empty() || s.name.as_str().to_lowercase().contains(&q))
        .filter(|s| from.is_none_or(|t| s.valid_until >= t))
        .filter(|s| to.is_none_or(|t| s.valid_from <= t))
        .map(|s| SessionRow::of(s, &names))
        .collect();
    let mut dl: Vec<(String, String)> = names.devices.clone().into_iter().collect();
    dl.sort_by(|a, b| a.1.cmp(&b.1));
    let mut ul: Vec<(String, String)> = names.users.clone().into_iter().collect();
    ul.sort_by(|a, b| a.1.cmp(&b.1));
    let page = ListPage {
        l: v.layout("Sessions"),
        rows,
        f,
        devices: dl,
        users: ul,
        can_prepare: v.can(Action::PrepareSessions),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

// ---------------------------------------------------------------- prepare

#[derive(Template)]
#[template(path = "session_new.html")]
struct NewPage {
    l: Layout,
    devices: Vec<(String, String, String)>,
    users: Vec<(String, String, String)>,
    max_minutes: u32,
}

pub async fn new_form(v: Viewer) -> Response {
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let users: Vec<User> = match v.api.get("/api/v1/users").await {
        Ok(u) => u,
        Err(e) => return v.fail(&e),
    };
    let page = NewPage {
        l: v.layout("Prepare a session"),
        devices: devices
            .iter()
            .map(|d| {
                (
                    d.id.clone(),
                    d.name.to_string(),
                    super::targets_text(&d.firewall),
                )
            })
            .collect(),
        users: users
            .iter()
            .filter(|u| !u.disabled && u.role.permits(Action::UseSessions))
            .map(|u| {
                (
                    u.id.clone(),
                    u.username.to_string(),
                    u.role.as_str().to_string(),
                )
            })
            .collect(),
        max_minutes: v.me.account.settings.max_session_minutes,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

/// `2026-11-22T03:10` (a datetime-local field, read as UTC) → RFC 3339.
pub fn local_to_rfc3339_pub(s: &str) -> Result<Option<String>, String> {
    local_to_rfc3339(s)
}

fn local_to_rfc3339(s: &str) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let fmt_s = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(s, fmt)
        .or_else(|_| time::PrimitiveDateTime::parse(s, fmt_s))
        .map_err(|_| format!("{s:?} is not a date and time"))?;
    t.assume_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map(Some)
        .map_err(|e| e.to_string())
}

pub async fn prepare(p: Posted) -> Response {
    let back = format!("{PREFIX}/sessions/new");
    let f = &p.form;
    let mut devices = Vec::new();
    for id in f.all("device") {
        let targets = match super::parse_targets(f.get(&format!("targets_{id}"))) {
            Ok(t) => t,
            Err(e) => return crate::web::Flash::error(e).redirect(&back),
        };
        devices.push(json!({ "device_id": id, "targets": targets }));
    }
    let mut body = json!({
        "name": f.get("name").trim(),
        "devices": devices,
        "users": f.all("user"),
    });
    for field in ["valid_from", "valid_until"] {
        match local_to_rfc3339(f.get(field)) {
            Ok(Some(t)) => body[field] = t.into(),
            Ok(None) => {}
            Err(e) => return crate::web::Flash::error(format!("{field}: {e}")).redirect(&back),
        }
    }
    match p.api.post::<Session>("/api/v1/sessions", &body).await {
        Ok(s) => crate::web::Flash::ok(format!("Session “{}” is prepared.", s.name))
            .redirect(&format!("{PREFIX}/sessions/{}", enc(&s.id))),
        Err(e) => after::<()>(Err(e), &p.headers, &back, ""),
    }
}

// ---------------------------------------------------------------- detail

pub struct DeviceTargets {
    pub id: String,
    pub name: String,
    /// Each released target, with its `ip:port` when a browser can open it
    /// (one TCP port on one IPv4 host: browser access) and whether it is a
    /// desktop (VNC).
    pub targets: Vec<(String, Option<(String, bool)>)>,
    /// Its approval when not (yet) approved: `pending`, `refused`, `timed out`.
    pub approval: String,
    pub waiting: bool,
}

#[derive(Template)]
#[template(path = "session.html")]
struct DetailPage {
    l: Layout,
    s: SessionRow,
    devices: Vec<DeviceTargets>,
    created_by: String,
    created_at: String,
    started: String,
    started_by: String,
    ended: String,
    ended_by: String,
    can_start: bool,
    can_end: bool,
    can_add: bool,
    pending: bool,
    active: bool,
    assigned: bool,
    /// The viewer may fetch a config for the official WireGuard apps.
    wg_app: bool,
    connect: String,
    addable: Vec<(String, String, String)>,
    /// An approver (admin or session admin) who did not start it may decide.
    can_approve: bool,
    /// The requester or an account admin may remove targets while it is open.
    can_narrow: bool,
    tunnels: Vec<TunnelRow>,
}

/// One client tunnel as the session page lists it.
struct TunnelRow {
    user: String,
    device: String,
    overlay_ip: String,
    since: String,
    ended: String,
    path: String,
    bytes_to: i64,
    bytes_from: i64,
}

pub async fn detail(v: Viewer, Path(id): Path<String>) -> Response {
    let s: Session = match v.api.get(&format!("/api/v1/sessions/{}", enc(&id))).await {
        Ok(s) => s,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = match v.api.get("/api/v1/devices").await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let names = Names::load(&v, &devices).await;
    let tunnels: Vec<drawbridge_proto::api::TunnelInfo> = v
        .api
        .get(&format!("/api/v1/sessions/{}/tunnels", enc(&id)))
        .await
        .unwrap_or_default();
    let me_actor = format!("user:{}", v.me.user.id);
    let approval = |id: &str| {
        s.approvals
            .iter()
            .find(|a| a.device_id == id)
            .map(|a| a.state)
            .unwrap_or(ApprovalState::Approved)
    };
    // Dual control per device: the session waits while any device does.
    let waiting = s.state != SessionState::Ended
        && s.approvals
            .iter()
            .any(|a| a.state == ApprovalState::Pending);
    let can_approve = waiting
        && v.can(Action::EndAnySession)
        && s.started_by.as_deref() != Some(me_actor.as_str());
    let assigned = s.users.contains(&v.me.user.id);
    let open = s.state != SessionState::Ended;
    let can_add = s.state == SessionState::Prepared && v.can(Action::AddSessionDevices);
    let page = DetailPage {
        l: v.layout(format!("Session: {}", s.name)),
        devices: s
            .devices
            .iter()
            .map(|d| {
                let web = devices
                    .iter()
                    .find(|x| x.id == d.device_id)
                    .map(|x| x.web_services.as_slice())
                    .unwrap_or_default();
                DeviceTargets {
                    id: d.device_id.clone(),
                    name: names.device(&d.device_id),
                    targets: d
                        .targets
                        .iter()
                        .map(|t| (super::target_str(t), web_target(t, web)))
                        .collect(),
                    approval: match approval(&d.device_id) {
                        ApprovalState::Approved => String::new(),
                        a => a.as_str().replace('_', " "),
                    },
                    waiting: approval(&d.device_id) == ApprovalState::Pending,
                }
            })
            .collect(),
        created_by: names.actor(&s.created_by),
        created_at: super::when(&s.created_at),
        started: super::when_opt(&s.started_at),
        started_by: s
            .started_by
            .as_deref()
            .map(|a| names.actor(a))
            .unwrap_or_default(),
        ended: super::when_opt(&s.ended_at),
        ended_by: s
            .ended_by
            .as_deref()
            .map(|a| names.actor(a))
            .unwrap_or_default(),
        can_start: s.state == SessionState::Prepared && assigned && v.can(Action::UseSessions),
        can_end: open
            && ((assigned && v.can(Action::EndOwnSession)) || v.can(Action::EndAnySession)),
        can_add,
        pending: waiting,
        active: s.state == SessionState::Active,
        assigned,
        wg_app: assigned
            && v.can(Action::UseSessions)
            && matches!(s.state, SessionState::Prepared | SessionState::Active),
        connect: format!("drawbridge connect {} --server {}", s.id, v.base_url()),
        addable: if can_add {
            devices
                .iter()
                .filter(|d| !s.devices.iter().any(|x| x.device_id == d.id))
                .map(|d| {
                    (
                        d.id.clone(),
                        d.name.to_string(),
                        super::targets_text(&d.firewall),
                    )
                })
                .collect()
        } else {
            Vec::new()
        },
        can_approve,
        can_narrow: open
            && (v.role() == drawbridge_proto::Role::Admin
                || (v.can(Action::EndOwnSession)
                    && (s.started_by.as_deref() == Some(me_actor.as_str())
                        || s.created_by == me_actor))),
        tunnels: tunnels
            .iter()
            .map(|t| TunnelRow {
                user: t.user.clone(),
                device: names.device(&t.device_id),
                overlay_ip: t.overlay_ip.clone(),
                since: super::when(&t.started_at),
                ended: super::when_opt(&t.ended_at),
                path: match (&t.path, &t.path_reason) {
                    (Some(p), Some(r)) if !r.is_empty() => format!("{p} ({r})"),
                    (Some(p), _) => p.clone(),
                    _ => "connecting".into(),
                },
                bytes_to: t.bytes_to_device,
                bytes_from: t.bytes_from_device,
            })
            .collect(),
        s: SessionRow::of(&s, &names),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

pub async fn start(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .call::<Session>(
            Method::POST,
            &format!("/api/v1/sessions/{}/start", enc(&id)),
            None,
        )
        .await;
    let msg = match &r {
        Ok(s) if s.state == SessionState::PendingApproval => {
            "The session is waiting for approval (dual control)."
        }
        _ => "The session is active. Run the command below to connect.",
    };
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/sessions/{}", enc(&id)),
        msg,
    )
}

pub async fn end(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .call::<Session>(
            Method::POST,
            &format!("/api/v1/sessions/{}/end", enc(&id)),
            None,
        )
        .await;
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/sessions/{}", enc(&id)),
        "The session has ended.",
    )
}

pub async fn add_device(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/sessions/{}", enc(&id));
    let f = &p.form;
    let targets = match super::parse_targets(f.get("targets")) {
        Ok(t) => t,
        Err(e) => return crate::web::Flash::error(e).redirect(&back),
    };
    let r = p
        .api
        .post::<Session>(
            &format!("/api/v1/sessions/{}/devices", enc(&id)),
            &json!({ "device_id": f.get("device_id"), "targets": targets }),
        )
        .await;
    after(r, &p.headers, &back, "The device was added.")
}

/// Removes one target from a device of the session (`/narrow` with the rest):
/// running tunnels lose it within seconds.
pub async fn narrow(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/sessions/{}", enc(&id));
    let f = &p.form;
    let Ok(gone) = f.get("target").parse::<drawbridge_proto::Target>() else {
        return crate::web::Flash::error("not a target").redirect(&back);
    };
    let s: Session = match p.api.get(&format!("/api/v1/sessions/{}", enc(&id))).await {
        Ok(s) => s,
        Err(e) => return after::<()>(Err(e), &p.headers, &back, ""),
    };
    let Some(d) = s.devices.iter().find(|d| d.device_id == f.get("device_id")) else {
        return crate::web::Flash::error("that device is not in the session").redirect(&back);
    };
    let kept: Vec<_> = d.targets.iter().filter(|t| **t != gone).collect();
    let r = p
        .api
        .post::<Session>(
            &format!("/api/v1/sessions/{}/narrow", enc(&id)),
            &json!({ "devices": [{ "device_id": d.device_id, "targets": kept }] }),
        )
        .await;
    after(
        r,
        &p.headers,
        &back,
        "The target was removed: running tunnels lose it within seconds.",
    )
}

/// A released target a browser can open: one TCP port on one IPv4 host that
/// the device marks as a web service; true when it is a desktop (VNC or RDP).
fn web_target(
    t: &drawbridge_proto::Target,
    web: &[drawbridge_proto::api::WebService],
) -> Option<(String, bool)> {
    let std::net::IpAddr::V4(ip) = t.address.addr() else {
        return None;
    };
    let p = t.ports?;
    let addr = std::net::SocketAddrV4::new(ip, p.start);
    if t.protocol != drawbridge_proto::Protocol::Tcp
        || t.address.prefix_len() != 32
        || p.start != p.end
    {
        return None;
    }
    web.iter()
        .find(|w| w.target == addr)
        .map(|w| (addr.to_string(), w.scheme.is_desktop()))
}

/// "Open" next to a web target: the API opens the device's own origin and the
/// browser goes to its one-time entry link.
pub async fn open_web(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/sessions/{}", enc(&id));
    let f = &p.form;
    let Ok(target) = f.get("target").parse::<std::net::SocketAddrV4>() else {
        return crate::web::Flash::error("not a web target").redirect(&back);
    };
    let body = drawbridge_proto::api::OpenWeb {
        device_id: f.get("device_id").to_string(),
        target,
    };
    match p
        .api
        .post::<drawbridge_proto::api::OpenedWeb>(
            &format!("/api/v1/sessions/{}/web", enc(&id)),
            &body,
        )
        .await
    {
        Ok(o) => entering(&o.url),
        Err(e) => after::<()>(Err(e), &p.headers, &back, ""),
    }
}

/// The page that sends the browser on to a device origin's entry link. A
/// redirect would not do: the portal's `form-action 'self'` covers where a
/// form's answer redirects to; a refresh and a link are plain navigations.
pub(crate) fn entering(url: &str) -> Response {
    let url = askama::filters::escape(url, askama::filters::Html)
        .map(|u| u.to_string())
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>Opening the device page</title></head>\
         <body><p>Opening the device page… <a id=\"enter\" href=\"{url}\">continue</a></p></body></html>"
    );
    let mut r = (StatusCode::OK, axum::response::Html(body)).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

/// Ad-hoc connect from a device's page.
pub async fn adhoc(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    match p
        .api
        .post::<Session>("/api/v1/sessions/adhoc", &json!({ "device_id": id }))
        .await
    {
        Ok(s) => crate::web::Flash::ok("Ad-hoc session started. Run the command below to connect.")
            .redirect(&format!("{PREFIX}/sessions/{}", enc(&s.id))),
        Err(e) => after::<()>(Err(e), &p.headers, &back, ""),
    }
}

/// "Open in browser" from a device's page (where the account allows ad-hoc
/// connect): an ad-hoc session releasing only that web service, started as
/// `drawbridge connect --adhoc` would (dual control and the site switch as
/// usual), then its device page; a session waiting for approval shows itself.
pub async fn adhoc_web(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let Ok(target) = p.form.get("target").parse::<std::net::SocketAddrV4>() else {
        return crate::web::Flash::error("not a web target").redirect(&back);
    };
    let body = json!({
        "device_id": id,
        "targets": [{"address": target.ip().to_string(), "protocol": "tcp", "ports": target.port().to_string()}],
    });
    let s = match p.api.post::<Session>("/api/v1/sessions/adhoc", &body).await {
        Ok(s) => s,
        Err(e) => return after::<()>(Err(e), &p.headers, &back, ""),
    };
    let session = format!("{PREFIX}/sessions/{}", enc(&s.id));
    if s.state != SessionState::Active {
        return crate::web::Flash::ok("Ad-hoc session started; it waits for approval. Open the device page here once it is active.")
            .redirect(&session);
    }
    let open = drawbridge_proto::api::OpenWeb {
        device_id: id.clone(),
        target,
    };
    match p
        .api
        .post::<drawbridge_proto::api::OpenedWeb>(
            &format!("/api/v1/sessions/{}/web", enc(&s.id)),
            &open,
        )
        .await
    {
        Ok(o) => entering(&o.url),
        Err(e) => after::<()>(Err(e), &p.headers, &session, ""),
    }
}

/// An approver's decision on a session waiting for approval (dual control).
pub async fn approve(Path(id): Path<String>, p: Posted) -> Response {
    let approve = p.form.get("decision") == "approve";
    let mut body = serde_json::json!({ "approve": approve });
    let device = p.form.get("device_id");
    if !device.is_empty() {
        body["device_id"] = device.into();
    }
    let r = p
        .api
        .call::<Session>(
            Method::POST,
            &format!("/api/v1/sessions/{}/approve", enc(&id)),
            Some(body),
        )
        .await;
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/sessions/{}", enc(&id)),
        if approve {
            "Approved: the device joins the session."
        } else {
            "Refused: the device is dropped from the session."
        },
    )
}
