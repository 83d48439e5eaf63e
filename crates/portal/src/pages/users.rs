//! Users: list, create, change role, disable, unlock, reset password or second factor.

use crate::PREFIX;
use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, render};
use askama::Template;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use drawbridge_proto::api::User;
use drawbridge_proto::{Action, Role};
use serde_json::json;

pub struct UserRow {
    pub id: String,
    pub username: String,
    pub role: String,
    pub disabled: bool,
    pub locked: Option<String>,
    pub totp: bool,
    pub created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct ListPage {
    l: Layout,
    users: Vec<UserRow>,
    can_manage: bool,
    roles: Vec<&'static str>,
    policy: String,
}

pub async fn list(v: Viewer) -> Response {
    let users: Vec<User> = match v.api.get("/api/v1/users").await {
        Ok(u) => u,
        Err(e) => return v.fail(&e),
    };
    let page = ListPage {
        l: v.layout("Users"),
        users: users
            .iter()
            .map(|u| UserRow {
                id: u.id.clone(),
                username: u.username.to_string(),
                role: u.role.as_str().to_string(),
                disabled: u.disabled,
                locked: u.locked_until.as_ref().map(super::when),
                totp: u.totp_enabled,
                created: super::when(&u.created_at),
            })
            .collect(),
        can_manage: v.can(Action::ManageUsers),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        policy: super::describe_policy(&v.me.account.settings.password_policy),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

pub async fn create(p: Posted) -> Response {
    let f = &p.form;
    let r = p
        .api
        .post::<User>(
            "/api/v1/users",
            &json!({ "username": f.get("username").trim(), "role": f.get("role"), "password": f.get("password") }),
        )
        .await;
    let msg = format!("User {} was created.", f.get("username").trim());
    after(r, &p.headers, &format!("{PREFIX}/users"), &msg)
}

pub async fn update(Path(id): Path<String>, p: Posted) -> Response {
    let f = &p.form;
    let body = match f.get("action") {
        "role" => json!({ "role": f.get("role") }),
        "disable" => json!({ "disabled": true }),
        "enable" => json!({ "disabled": false }),
        "unlock" => json!({ "unlock": true }),
        "reset_totp" => json!({ "reset_totp": true }),
        "password" => json!({ "password": f.get("password") }),
        _ => return Flash::error("Unknown action.").redirect(&format!("{PREFIX}/users")),
    };
    let r = p
        .api
        .patch::<User>(&format!("/api/v1/users/{}", enc(&id)), &body)
        .await;
    let msg = match &r {
        Ok(u) => format!("User {} was updated.", u.username),
        Err(_) => String::new(),
    };
    after(r, &p.headers, &format!("{PREFIX}/users"), &msg)
}
