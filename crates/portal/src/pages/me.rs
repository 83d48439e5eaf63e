//! The viewer's own profile: password (with the policy), second factor.

use crate::PREFIX;
use crate::web::{Flash, Layout, Posted, Viewer, login_cookies, login_redirect, render};
use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

#[derive(Template)]
#[template(path = "me.html")]
struct MePage {
    l: Layout,
    username: String,
    role: String,
    totp: bool,
    policy: String,
    password_changed: String,
}

pub async fn page(v: Viewer) -> Response {
    let u = &v.me.user;
    let page = MePage {
        l: v.layout("My account"),
        username: u.username.to_string(),
        role: u.role.as_str().to_string(),
        totp: u.totp_enabled,
        policy: super::describe_policy(&v.me.account.settings.password_policy),
        password_changed: super::when(&u.password_changed_at),
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

pub async fn password(p: Posted) -> Response {
    let back = format!("{PREFIX}/me");
    match super::login::change_password(&p).await {
        Ok(login) => {
            let mut res = Flash::ok("Your password was changed; your other logins have ended.")
                .redirect(&crate::web::stage_page(login.stage));
            login_cookies(res.headers_mut(), &login);
            res
        }
        Err(e) => login_redirect(&e, &p.headers)
            .unwrap_or_else(|| Flash::error(e.message).redirect(&back)),
    }
}
