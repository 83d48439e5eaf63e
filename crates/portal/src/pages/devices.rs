//! Devices: list with status, create (activation key once, config file for
//! USB/SD), detail with firewall, 1:1 NAT, LAN subnets, logbook.

use super::dashboard::DeviceRow;
use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, download, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{ActivationKey, CreatedDevice, Device, LogEntry, Pool};
use drawbridge_proto::{Action, Role};
use serde_json::{Value, json};

#[derive(Template)]
#[template(path = "devices.html")]
struct ListPage {
    l: Layout,
    devices: Vec<DeviceRow>,
    can_manage: bool,
    /// The list of archived devices (`?archived=true`) instead of those in service.
    archived: bool,
}

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    archived: Option<bool>,
}

pub async fn list(v: Viewer, Query(q): Query<ListQuery>) -> Response {
    let archived = q.archived.unwrap_or(false);
    let path = if archived {
        "/api/v1/devices?archived=true"
    } else {
        "/api/v1/devices"
    };
    let devices: Vec<Device> = match v.api.get(path).await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let page = ListPage {
        l: v.layout(if archived {
            "Archived devices"
        } else {
            "Devices"
        }),
        devices: devices.iter().map(DeviceRow::of).collect(),
        can_manage: v.can(Action::ManageDevices) && !archived,
        archived,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

fn subnets(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `192.168.1.0/24 -> 10.77.1.0/24`, one per line.
fn nat(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (real, virt) = l
                .split_once("->")
                .ok_or_else(|| format!("NAT {l:?}: write REAL -> VIRTUAL"))?;
            Ok(json!({ "real": real.trim(), "virtual_subnet": virt.trim() }))
        })
        .collect()
}

/// `http 192.168.1.10:80 /hmi`, one per line (the path is optional).
fn web_services(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let (Some(scheme), Some(target)) = (w.next(), w.next()) else {
                return Err(format!("web service {l:?}: write SCHEME ADDR:PORT [PATH]"));
            };
            let mut v = json!({ "scheme": scheme, "target": target });
            if let Some(path) = w.next() {
                v["path"] = path.into();
            }
            Ok(v)
        })
        .collect()
}

/// The device fields of a create or edit form, as API JSON.
fn device_body(p: &Posted) -> Result<Value, String> {
    let f = &p.form;
    let mut body = json!({
        "name": f.get("name").trim(),
        "lan_subnets": subnets(f.get("lan_subnets")),
        "nat": nat(f.get("nat"))?,
        "firewall": super::parse_targets(f.get("firewall"))?,
    });
    if let Some(s) = f.opt("serial") {
        body["serial"] = s.into();
    }
    Ok(body)
}

#[derive(Template)]
#[template(path = "device_key.html")]
struct KeyPage {
    l: Layout,
    id: String,
    name: String,
    key: String,
    expires: String,
}

fn key_page(v: &Viewer, id: &str, name: &str, key: &ActivationKey, title: &str) -> Response {
    let page = KeyPage {
        l: v.layout(title),
        id: id.to_string(),
        name: name.to_string(),
        key: key.key.clone(),
        expires: super::when(&key.expires_at),
    };
    render(StatusCode::OK, &page, false)
}

pub async fn create(State(portal): State<Portal>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices");
    let v = match p.viewer(&portal).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = match device_body(&p) {
        Ok(b) => b,
        Err(e) => return Flash::error(e).redirect(&back),
    };
    match p.api.post::<CreatedDevice>("/api/v1/devices", &body).await {
        Ok(c) => key_page(
            &v,
            &c.device.id,
            c.device.name.as_str(),
            &c.activation,
            "Device created",
        ),
        Err(e) => after::<()>(Err(e), &p.headers, &back, ""),
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DetailPage {
    l: Layout,
    d: DeviceRow,
    serial: String,
    agent: String,
    endpoint: String,
    created: String,
    subnets: String,
    nat: String,
    firewall: String,
    firewall_list: Vec<String>,
    /// `scheme target path` per line, for the edit form; and for the page.
    web: String,
    /// (`scheme://target/path` as shown, `target` for the ad-hoc "Open" form,
    /// a desktop (VNC or RDP), its credentials are stored, a VNC desktop, an
    /// RDP desktop).
    web_list: Vec<(String, String, bool, bool, bool, bool)>,
    /// HTTPS web services' pinned certificates: (target, pinned, pending).
    pins: Vec<(String, String, Option<String>)>,
    nat_list: Vec<String>,
    log: Vec<(String, String, String)>,
    pools: Vec<String>,
    can_manage: bool,
    can_write_log: bool,
    can_connect: bool,
    disabled: bool,
    archived: bool,
    /// This machine always needs on-site approval.
    onsite: bool,
    /// Where the machine is (relay choice), or empty.
    region: String,
    /// KPIs, tags, alarms, historian, export.
    data: super::data::device::DataSection,
    /// Its place in an unfinished rollout (admins).
    update: Option<super::updates::DeviceUpdate>,
}

#[derive(serde::Deserialize, Default)]
pub struct DetailQuery {
    /// The tag whose edit form the page opens (admins).
    #[serde(default)]
    edit: Option<String>,
}

pub async fn detail(v: Viewer, Path(id): Path<String>, Query(q): Query<DetailQuery>) -> Response {
    let d: Device = match v.api.get(&format!("/api/v1/devices/{}", enc(&id))).await {
        Ok(d) => d,
        Err(e) => return v.fail(&e),
    };
    let log: Vec<LogEntry> = match v
        .api
        .get(&format!("/api/v1/devices/{}/logbook", enc(&id)))
        .await
    {
        Ok(l) => l,
        Err(e) => return v.fail(&e),
    };
    let pins: Vec<Value> = if v.can(Action::ManageDevices) {
        v.api
            .get(&format!("/api/v1/devices/{}/web-pins", enc(&id)))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let has_desktops = d.web_services.iter().any(|w| w.scheme.is_desktop());
    let stored: Vec<String> = if has_desktops {
        v.api
            .get(&format!("/api/v1/devices/{}/desktop-passwords", enc(&id)))
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let pools: Vec<Pool> = if v.role() != Role::User {
        v.api.get("/api/v1/pools").await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let data = super::data::device::DataSection::load(&v, &id, q.edit.as_deref()).await;
    let update = super::updates::for_device(&v, &d.id).await;
    let page = DetailPage {
        data,
        update,
        l: v.layout(format!("Device: {}", d.name)),
        serial: d.serial.clone().unwrap_or_default(),
        agent: d.status.agent_version.clone().unwrap_or_else(|| "—".into()),
        endpoint: d
            .status
            .public_endpoint
            .clone()
            .unwrap_or_else(|| "—".into()),
        created: super::when(&d.created_at),
        subnets: d
            .lan_subnets
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        nat: d
            .nat
            .iter()
            .map(|n| format!("{} -> {}", n.real, n.virtual_subnet))
            .collect::<Vec<_>>()
            .join("\n"),
        firewall: super::targets_text(&d.firewall),
        firewall_list: d.firewall.iter().map(super::target_str).collect(),
        web: d
            .web_services
            .iter()
            .map(|w| format!("{} {} {}", w.scheme.as_str(), w.target, w.path))
            .collect::<Vec<_>>()
            .join("\n"),
        web_list: d
            .web_services
            .iter()
            .map(|w| {
                let desktop = w.scheme.is_desktop();
                (
                    if desktop {
                        format!("{}://{}", w.scheme.as_str(), w.target)
                    } else {
                        format!("{}://{}{}", w.scheme.as_str(), w.target, w.path)
                    },
                    w.target.to_string(),
                    desktop,
                    stored.contains(&w.target.to_string()),
                    w.scheme == drawbridge_proto::api::WebScheme::Vnc,
                    w.scheme == drawbridge_proto::api::WebScheme::Rdp,
                )
            })
            .collect(),
        pins: pins
            .into_iter()
            .map(|p| {
                (
                    p["target"].as_str().unwrap_or_default().to_string(),
                    p["sha256"].as_str().unwrap_or_default().to_string(),
                    p["pending_sha256"].as_str().map(str::to_string),
                )
            })
            .collect(),
        nat_list: d
            .nat
            .iter()
            .map(|n| format!("{} ↔ {}", n.real, n.virtual_subnet))
            .collect(),
        log: log
            .iter()
            .map(|e| {
                (
                    super::when(&e.created_at),
                    e.author.clone(),
                    e.text.to_string(),
                )
            })
            .collect(),
        pools: pools
            .iter()
            .filter(|p| p.devices.contains(&d.id))
            .map(|p| p.name.to_string())
            .collect(),
        can_manage: v.can(Action::ManageDevices),
        can_write_log: v.role() != Role::Auditor,
        can_connect: v.can(Action::UseSessions)
            && v.me.account.settings.adhoc_allowed
            && !d.status.disabled
            && !d.status.archived,
        disabled: d.status.disabled,
        archived: d.status.archived,
        onsite: d.onsite_approval,
        region: d.region.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        d: DeviceRow::of(&d),
    };
    let mut res = render(StatusCode::OK, &page, v.flash.is_some());
    crate::web::allow_own_script(&mut res);
    res
}

pub async fn update(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let mut body = match device_body(&p) {
        Ok(b) => b,
        Err(e) => return Flash::error(e).redirect(&back),
    };
    body["onsite_approval"] = (p.form.get("onsite_approval") == "on").into();
    // Empty forgets the region; the API checks what is given.
    body["region"] = match p.form.get("region").trim() {
        "" => Value::Null,
        r => r.into(),
    };
    body["web_services"] = match web_services(p.form.get("web_services")) {
        Ok(w) => w.into(),
        Err(e) => return Flash::error(e).redirect(&back),
    };
    let r = p
        .api
        .patch::<Device>(&format!("/api/v1/devices/{}", enc(&id)), &body)
        .await;
    after(r, &p.headers, &back, "The device was saved.")
}

/// An admin stores (or, with an empty field and "forget", removes) the VNC
/// password of one of the device's desktops, or an RDP desktop's user name,
/// password and domain.
pub async fn desktop_password(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let f = &p.form;
    let forget = f.checked("forget");
    let rdp = f.get("kind") == "rdp";
    let password = f.get("password");
    if !forget && rdp && (password.is_empty() || f.get("username").is_empty()) {
        return Flash::error(
            "Enter the RDP user name and password, or choose to forget the stored ones.",
        )
        .redirect(&back);
    }
    if !forget && password.is_empty() {
        return Flash::error("Enter the VNC password, or choose to forget the stored one.")
            .redirect(&back);
    }
    let mut body = json!({
        "target": f.get("target"),
        "password": if forget { Value::Null } else { Value::from(password) },
    });
    if rdp && !forget {
        body["username"] = Value::from(f.get("username"));
        body["domain"] = Value::from(f.get("domain"));
    }
    let r = p
        .api
        .call::<serde::de::IgnoredAny>(
            axum::http::Method::PUT,
            &format!("/api/v1/devices/{}/desktop-passwords", enc(&id)),
            Some(body),
        )
        .await;
    let done = match (forget, rdp) {
        (true, false) => "The stored VNC password was forgotten.",
        (false, false) => "The VNC password is stored; users of this desktop will not see it.",
        (true, true) => "The stored RDP credentials were forgotten.",
        (false, true) => {
            "The RDP credentials are stored; the server signs in with them and users of this desktop will not see them."
        }
    };
    after(r, &p.headers, &back, done)
}

/// An admin trusts the certificate an HTTPS web service presents now.
pub async fn accept_pin(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let body = json!({ "target": p.form.get("target"), "sha256": p.form.get("sha256") });
    let r = p
        .api
        .post::<Value>(
            &format!("/api/v1/devices/{}/web-pins/accept", enc(&id)),
            &body,
        )
        .await;
    after(r, &p.headers, &back, "The new certificate is trusted.")
}

pub async fn add_log(Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let r = p
        .api
        .post::<LogEntry>(
            &format!("/api/v1/devices/{}/logbook", enc(&id)),
            &json!({ "text": p.form.get("text") }),
        )
        .await;
    after(r, &p.headers, &back, "The note is in the logbook.")
}

/// Disable, enable or archive (the API's verbs), back to the device page.
async fn service(id: &str, p: Posted, verb: &str, done: &str) -> Response {
    let r = p
        .api
        .call::<Device>(
            Method::POST,
            &format!("/api/v1/devices/{}/{verb}", enc(id)),
            None,
        )
        .await;
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/devices/{}", enc(id)),
        done,
    )
}

pub async fn disable(Path(id): Path<String>, p: Posted) -> Response {
    service(&id, p, "disable", "The device is disabled: its gateway is refused and disconnected, its running sessions ended.").await
}

pub async fn enable(Path(id): Path<String>, p: Posted) -> Response {
    service(&id, p, "enable", "The device is enabled again.").await
}

pub async fn archive(Path(id): Path<String>, p: Posted) -> Response {
    service(
        &id,
        p,
        "archive",
        "The device is archived: out of service for good, its history kept.",
    )
    .await
}

pub async fn new_key(State(portal): State<Portal>, Path(id): Path<String>, p: Posted) -> Response {
    activation_key(portal, id, p, "activation-key", "New activation key").await
}

/// An activation key for a replacement gateway of the same device.
pub async fn replace(State(portal): State<Portal>, Path(id): Path<String>, p: Posted) -> Response {
    activation_key(
        portal,
        id,
        p,
        "replace",
        "Activation key for a replacement gateway",
    )
    .await
}

async fn activation_key(
    portal: Portal,
    id: String,
    p: Posted,
    verb: &str,
    title: &str,
) -> Response {
    let back = format!("{PREFIX}/devices/{}", enc(&id));
    let v = match p.viewer(&portal).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = p
        .api
        .call::<ActivationKey>(
            Method::POST,
            &format!("/api/v1/devices/{}/{verb}", enc(&id)),
            None,
        )
        .await;
    match r {
        Ok(k) => {
            let name: String = v
                .api
                .get::<Device>(&format!("/api/v1/devices/{}", enc(&id)))
                .await
                .map(|d| d.name.to_string())
                .unwrap_or_default();
            key_page(&v, &id, &name, &k, title)
        }
        Err(e) => after::<()>(Err(e), &p.headers, &back, ""),
    }
}

/// The device's config file for USB/SD deployment. The key was just shown on
/// the page the form came from; this turns it into a file.
pub async fn config_file(Path(id): Path<String>, p: Posted) -> Response {
    let key = p.form.get("activation_key").trim();
    if key.is_empty() || key.len() > 256 {
        return Flash::error("No activation key.")
            .redirect(&format!("{PREFIX}/devices/{}", enc(&id)));
    }
    // What the edge must trust to reach this server (the CA of a self-signed
    // certificate), so that the file is all a gateway needs.
    let mut trust: drawbridge_proto::api::ServerTrust =
        match p.api.get("/api/v1/server/trust").await {
            Ok(t) => t,
            Err(e) => {
                return after::<()>(
                    Err(e),
                    &p.headers,
                    &format!("{PREFIX}/devices/{}", enc(&id)),
                    "",
                );
            }
        };
    trust.server = crate::web::base_url(&p.headers);
    let text = drawbridge_proto::enrollfile::render(&id, &trust, key);
    download(
        "drawbridge-edge.toml",
        "application/toml; charset=utf-8",
        text,
    )
}

pub async fn approve(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .call::<Device>(
            Method::POST,
            &format!("/api/v1/devices/{}/approve", enc(&id)),
            None,
        )
        .await;
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/devices/{}", enc(&id)),
        "The device is approved.",
    )
}

pub async fn delete(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(Method::DELETE, &format!("/api/v1/devices/{}", enc(&id)))
        .await;
    match r {
        Ok(()) => Flash::ok("The device was removed.").redirect(&format!("{PREFIX}/devices")),
        Err(e) => after::<()>(
            Err(e),
            &p.headers,
            &format!("{PREFIX}/devices/{}", enc(&id)),
            "",
        ),
    }
}
