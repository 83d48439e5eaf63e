//! Groups of users, pools of devices and the grants between them.

use super::sessions::Names;
use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::Action;
use drawbridge_proto::api::{Device, Grant, Group, Pool, User};
use serde_json::json;

pub struct Named {
    pub id: String,
    pub name: String,
    /// (id, name) of members or devices.
    pub items: Vec<(String, String)>,
}

pub struct GrantRow {
    pub id: String,
    pub group: String,
    pub pool: String,
    pub level: String,
    pub targets: Vec<String>,
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    l: Layout,
    groups: Vec<Named>,
    pools: Vec<Named>,
    grants: Vec<GrantRow>,
    users: Vec<(String, String)>,
    devices: Vec<(String, String)>,
    can_manage: bool,
}

pub async fn page(v: Viewer) -> Response {
    let groups: Vec<Group> = match v.api.get("/api/v1/groups").await {
        Ok(g) => g,
        Err(e) => return v.fail(&e),
    };
    let pools: Vec<Pool> = match v.api.get("/api/v1/pools").await {
        Ok(p) => p,
        Err(e) => return v.fail(&e),
    };
    let grants: Vec<Grant> = match v.api.get("/api/v1/grants").await {
        Ok(g) => g,
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = v.api.get("/api/v1/devices").await.unwrap_or_default();
    let users: Vec<User> = v.api.get("/api/v1/users").await.unwrap_or_default();
    let names = Names::load(&v, &devices).await;
    let gname = |id: &str| {
        groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.name.to_string())
            .unwrap_or_else(|| super::short(id))
    };
    let pname = |id: &str| {
        pools
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.to_string())
            .unwrap_or_else(|| super::short(id))
    };
    let page = AccessPage {
        l: v.layout("Access rights"),
        groups: groups
            .iter()
            .map(|g| Named {
                id: g.id.clone(),
                name: g.name.to_string(),
                items: g
                    .members
                    .iter()
                    .map(|m| (m.clone(), names.user(m)))
                    .collect(),
            })
            .collect(),
        pools: pools
            .iter()
            .map(|p| Named {
                id: p.id.clone(),
                name: p.name.to_string(),
                items: p
                    .devices
                    .iter()
                    .map(|d| (d.clone(), names.device(d)))
                    .collect(),
            })
            .collect(),
        grants: grants
            .iter()
            .map(|g| GrantRow {
                id: g.id.clone(),
                group: gname(&g.group_id),
                pool: pname(&g.pool_id),
                level: g.level.as_str().to_string(),
                targets: g.targets.iter().map(super::target_str).collect(),
            })
            .collect(),
        users: users
            .iter()
            .map(|u| (u.id.clone(), u.username.to_string()))
            .collect(),
        devices: devices
            .iter()
            .map(|d| (d.id.clone(), d.name.to_string()))
            .collect(),
        can_manage: v.can(Action::ManageUsers),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

fn back() -> String {
    format!("{PREFIX}/access")
}

pub async fn create_group(p: Posted) -> Response {
    let r = p
        .api
        .post::<Group>(
            "/api/v1/groups",
            &json!({ "name": p.form.get("name").trim() }),
        )
        .await;
    after(r, &p.headers, &back(), "The group was created.")
}

pub async fn create_pool(p: Posted) -> Response {
    let r = p
        .api
        .post::<Pool>(
            "/api/v1/pools",
            &json!({ "name": p.form.get("name").trim() }),
        )
        .await;
    after(r, &p.headers, &back(), "The pool was created.")
}

pub async fn add_member(Path(id): Path<String>, p: Posted) -> Response {
    let user = p.form.get("user_id");
    let r = p
        .api
        .send(
            Method::PUT,
            &format!("/api/v1/groups/{}/members/{}", enc(&id), enc(user)),
        )
        .await;
    after(r, &p.headers, &back(), "The user is in the group.")
}

pub async fn remove_member(Path((id, user)): Path<(String, String)>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/groups/{}/members/{}", enc(&id), enc(&user)),
        )
        .await;
    after(r, &p.headers, &back(), "The user left the group.")
}

pub async fn delete_group(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(Method::DELETE, &format!("/api/v1/groups/{}", enc(&id)))
        .await;
    after(r, &p.headers, &back(), "The group was deleted.")
}

pub async fn add_device(Path(id): Path<String>, p: Posted) -> Response {
    let device = p.form.get("device_id");
    let r = p
        .api
        .send(
            Method::PUT,
            &format!("/api/v1/pools/{}/devices/{}", enc(&id), enc(device)),
        )
        .await;
    after(r, &p.headers, &back(), "The device is in the pool.")
}

pub async fn remove_device(Path((id, device)): Path<(String, String)>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/pools/{}/devices/{}", enc(&id), enc(&device)),
        )
        .await;
    after(r, &p.headers, &back(), "The device left the pool.")
}

pub async fn delete_pool(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(Method::DELETE, &format!("/api/v1/pools/{}", enc(&id)))
        .await;
    after(r, &p.headers, &back(), "The pool was deleted.")
}

pub async fn create_grant(p: Posted) -> Response {
    let f = &p.form;
    let targets = match super::parse_targets(f.get("targets")) {
        Ok(t) => t,
        Err(e) => return Flash::error(e).redirect(&back()),
    };
    let r = p
        .api
        .post::<Grant>(
            "/api/v1/grants",
            &json!({ "group_id": f.get("group_id"), "pool_id": f.get("pool_id"), "level": f.get("level"), "targets": targets }),
        )
        .await;
    after(r, &p.headers, &back(), "The grant was created.")
}

pub async fn delete_grant(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(Method::DELETE, &format!("/api/v1/grants/{}", enc(&id)))
        .await;
    after(r, &p.headers, &back(), "The grant was removed.")
}
