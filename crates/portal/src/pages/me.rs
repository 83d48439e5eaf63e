//! The viewer's own profile: password (with the policy), second factor.

use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, login_cookies, login_redirect, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{ApiToken, CreatedApiToken};
use serde_json::json;

#[derive(Template)]
#[template(path = "me.html")]
struct MePage {
    l: Layout,
    username: String,
    role: String,
    totp: bool,
    policy: String,
    password_changed: String,
    tokens: Vec<(String, String, &'static str, String, String)>,
    new_token: Option<String>,
}

pub async fn page(v: Viewer) -> Response {
    render_me(&v, None).await
}

async fn render_me(v: &Viewer, new_token: Option<String>) -> Response {
    let tokens: Vec<ApiToken> = match v.api.get("/api/v1/tokens").await {
        Ok(t) => t,
        Err(e) => return v.fail(&e),
    };
    let u = &v.me.user;
    let page = MePage {
        l: v.layout("My account"),
        username: u.username.to_string(),
        role: u.role.as_str().to_string(),
        totp: u.totp_enabled,
        policy: super::describe_policy(&v.me.account.settings.password_policy),
        password_changed: super::when(&u.password_changed_at),
        tokens: tokens
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    t.name.to_string(),
                    if t.data_only {
                        "data, read-only"
                    } else if t.read_only {
                        "read-only"
                    } else {
                        "full"
                    },
                    super::when(&t.expires_at),
                    super::when_opt(&t.last_used_at),
                )
            })
            .collect(),
        new_token,
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

/// A new API token, shown once on the page that answers the form.
pub async fn create_token(State(portal): State<Portal>, p: Posted) -> Response {
    let f = &p.form;
    let days = f.get("days").trim().parse::<u32>().unwrap_or(0);
    let r = p
        .api
        .post::<CreatedApiToken>(
            "/api/v1/tokens",
            &json!({ "name": f.get("name").trim(), "expires_in_days": days, "read_only": f.checked("read_only"), "data_only": f.checked("data_only") }),
        )
        .await;
    match r {
        Ok(t) => match p.viewer(&portal).await {
            Ok(v) => render_me(&v, Some(t.token)).await,
            Err(r) => r,
        },
        Err(e) => after::<()>(Err(e), &p.headers, &format!("{PREFIX}/me"), ""),
    }
}

pub async fn revoke_token(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(Method::DELETE, &format!("/api/v1/tokens/{}", enc(&id)))
        .await;
    after(
        r,
        &p.headers,
        &format!("{PREFIX}/me"),
        "The API token was revoked.",
    )
}
