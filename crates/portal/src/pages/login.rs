//! First-run setup, login (password, TOTP step, forced TOTP enrolment, forced
//! password change) and logout.

use super::sso::{self, Peer};
use crate::PREFIX;
use crate::Portal;
use crate::apiclient::Api;
use crate::web::{self, Anon, Flash, Layout, Posted, render};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use drawbridge_proto::api::{LoginResponse, SetupResponse, TotpEnrollResponse};
use drawbridge_proto::{ApiError, ErrorCode, PasswordPolicy};
use serde::Deserialize;
use serde_json::json;

// ---------------------------------------------------------------- setup

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    l: Layout,
    token: String,
    account: String,
    username: String,
    policy: String,
    error: Option<String>,
    done: Option<(String, String)>,
}

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

pub async fn setup_form(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let anon = Anon::of(&portal, &headers);
    let page = SetupPage {
        l: Layout::anon("Set up Drawbridge", anon.csrf.clone(), None),
        token: q.token,
        account: String::new(),
        username: String::new(),
        policy: super::describe_policy(&PasswordPolicy::default()),
        error: None,
        done: None,
    };
    anon.apply(render(StatusCode::OK, &page, false))
}

pub async fn setup_submit(State(portal): State<Portal>, p: Posted) -> Response {
    let f = &p.form;
    let r: Result<SetupResponse, ApiError> = p
        .api
        .post(
            "/api/v1/setup",
            &json!({
                "token": f.get("token"),
                "account": f.get("account").trim(),
                "admin_username": f.get("admin_username").trim(),
                "admin_password": f.get("admin_password"),
            }),
        )
        .await;
    let anon = Anon::of(&portal, &p.headers);
    let mut page = SetupPage {
        l: Layout::anon("Set up Drawbridge", anon.csrf.clone(), None),
        token: f.get("token").to_string(),
        account: f.get("account").to_string(),
        username: f.get("admin_username").to_string(),
        policy: super::describe_policy(&PasswordPolicy::default()),
        error: None,
        done: None,
    };
    let status = match r {
        Ok(r) => {
            page.l.title = "Drawbridge is set up".into();
            page.done = Some((r.account.name.to_string(), r.admin.username.to_string()));
            StatusCode::OK
        }
        Err(e) => {
            page.error = Some(e.message);
            StatusCode::BAD_REQUEST
        }
    };
    anon.apply(render(status, &page, false))
}

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage {
    pub l: Layout,
    pub account: String,
    pub username: String,
    pub error: Option<String>,
    /// The account's "Sign in with …" (when the account is known and has SSO).
    pub sso: Option<super::sso::SsoButton>,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    account: String,
}

pub async fn login_form(
    State(portal): State<Portal>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let anon = Anon::of(&portal, &headers);
    let flash = Flash::read_from(&headers);
    let had = flash.is_some();
    let api = Api::new(portal.api.clone(), None, peer);
    let page = LoginPage {
        l: Layout::anon("Log in", anon.csrf.clone(), flash),
        sso: sso::button(&api, &q.account).await,
        account: q.account,
        username: String::new(),
        error: None,
    };
    anon.apply(render(StatusCode::OK, &page, had))
}

/// Where a fresh login token goes next: cookies set, on to the stage's page.
fn continue_login(login: &LoginResponse, flash: Option<Flash>) -> Response {
    let to = web::stage_page(login.stage);
    let mut res = match flash {
        Some(f) => f.redirect(&to),
        None => Redirect::to(&to).into_response(),
    };
    web::login_cookies(res.headers_mut(), login);
    res
}

pub async fn login_submit(State(portal): State<Portal>, p: Posted) -> Response {
    let f = &p.form;
    // A login never carries the old token.
    let api = p.api.without_token();
    let r: Result<LoginResponse, ApiError> = api
        .post(
            "/api/v1/auth/login",
            &json!({
                "account": f.get("account").trim(),
                "username": f.get("username").trim(),
                "password": f.get("password"),
            }),
        )
        .await;
    match r {
        Ok(login) => continue_login(&login, None),
        Err(e) => {
            let message = match e.code {
                ErrorCode::LoginFailed if e.message.contains("single sign-on") => format!(
                    "Login failed: {}.",
                    e.message.replace("`drawbridge login --sso`", "drawbridge login --sso")
                ),
                ErrorCode::LoginFailed => "Login failed: the account, user name or password is wrong, or the user is locked or disabled.".to_string(),
                ErrorCode::RateLimited => format!("Too many attempts: {}", e.message),
                _ => e.message,
            };
            let anon = Anon::of(&portal, &p.headers);
            let page = LoginPage {
                l: Layout::anon("Log in", anon.csrf.clone(), None),
                sso: sso::button(&api, f.get("account")).await,
                account: f.get("account").to_string(),
                username: f.get("username").to_string(),
                error: Some(message),
            };
            anon.apply(render(StatusCode::UNAUTHORIZED, &page, false))
        }
    }
}

// ---------------------------------------------------------------- TOTP step

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpPage {
    l: Layout,
}

pub async fn totp_form(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    let Some(token) = web::cookie(&headers, web::SESSION_COOKIE) else {
        return Redirect::to(&format!("{PREFIX}/login")).into_response();
    };
    let flash = Flash::read_from(&headers);
    let had = flash.is_some();
    let page = TotpPage {
        l: Layout::anon("Second factor", web::csrf_for_login(&portal, token), flash),
    };
    render(StatusCode::OK, &page, had)
}

pub async fn totp_submit(p: Posted) -> Response {
    let r: Result<LoginResponse, ApiError> = p
        .api
        .post(
            "/api/v1/auth/totp",
            &json!({ "code": p.form.get("code").trim() }),
        )
        .await;
    match r {
        Ok(login) => continue_login(&login, None),
        Err(e) => {
            let text = match e.code {
                ErrorCode::LoginFailed => {
                    "The code was wrong or already used. Log in again.".to_string()
                }
                _ => format!("{} Log in again.", e.message),
            };
            let mut res = Flash::error(text).redirect(&format!("{PREFIX}/login"));
            web::clear_login_cookies(res.headers_mut());
            res
        }
    }
}

// ---------------------------------------------------------------- TOTP enrolment

#[derive(Template)]
#[template(path = "enroll_start.html")]
struct EnrollStart {
    l: Layout,
}

/// The forced-enrolment stage's landing page.
pub async fn enroll_start(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    let Some(token) = web::cookie(&headers, web::SESSION_COOKIE) else {
        return Redirect::to(&format!("{PREFIX}/login")).into_response();
    };
    let page = EnrollStart {
        l: Layout::anon(
            "Set up two-factor login",
            web::csrf_for_login(&portal, token),
            None,
        ),
    };
    render(StatusCode::OK, &page, false)
}

#[derive(Template)]
#[template(path = "enroll.html")]
struct EnrollPage {
    l: Layout,
    qr: String,
    secret: String,
    uri: String,
    error: Option<String>,
}

fn enroll_page(
    portal: &Portal,
    token: &str,
    secret: &str,
    uri: &str,
    error: Option<String>,
) -> Response {
    let page = EnrollPage {
        l: Layout::anon(
            "Set up two-factor login",
            web::csrf_for_login(portal, token),
            None,
        ),
        qr: crate::qr::data_url(uri, 220).unwrap_or_default(),
        secret: secret.to_string(),
        uri: uri.to_string(),
        error,
    };
    render(StatusCode::OK, &page, false)
}

/// Starts an enrolment (forced stage or from "My account") and shows the QR code.
pub async fn enroll_show(State(portal): State<Portal>, p: Posted) -> Response {
    let r: Result<TotpEnrollResponse, ApiError> = p
        .api
        .call(Method::POST, "/api/v1/me/totp/enroll", None)
        .await;
    match r {
        Ok(e) => enroll_page(
            &portal,
            p.token.as_deref().unwrap_or(""),
            &e.secret,
            &e.otpauth_uri,
            None,
        ),
        Err(e) => web::after::<()>(Err(e), &p.headers, &format!("{PREFIX}/me"), ""),
    }
}

pub async fn enroll_confirm(State(portal): State<Portal>, p: Posted) -> Response {
    let r: Result<LoginResponse, ApiError> = p
        .api
        .post(
            "/api/v1/me/totp/confirm",
            &json!({ "code": p.form.get("code").trim() }),
        )
        .await;
    match r {
        Ok(login) => continue_login(&login, Some(Flash::ok("Two-factor login is on."))),
        Err(e) if e.code == ErrorCode::InvalidCode => enroll_page(
            &portal,
            p.token.as_deref().unwrap_or(""),
            p.form.get("secret"),
            p.form.get("uri"),
            Some("That code was wrong or expired; try the next one.".into()),
        ),
        Err(e) => web::after::<()>(Err(e), &p.headers, &format!("{PREFIX}/me"), ""),
    }
}

// ---------------------------------------------------------------- password change

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    l: Layout,
    error: Option<String>,
}

pub async fn password_form(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    let Some(token) = web::cookie(&headers, web::SESSION_COOKIE) else {
        return Redirect::to(&format!("{PREFIX}/login")).into_response();
    };
    let page = PasswordPage {
        l: Layout::anon(
            "Change your password",
            web::csrf_for_login(&portal, token),
            None,
        ),
        error: None,
    };
    render(StatusCode::OK, &page, false)
}

/// Changes the password through the API; the answer is a fresh login.
pub async fn change_password(p: &Posted) -> Result<LoginResponse, ApiError> {
    let f = &p.form;
    if f.get("new_password") != f.get("new_password2") {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "The two new passwords differ.",
        ));
    }
    p.api
        .post(
            "/api/v1/me/password",
            &json!({ "current_password": f.get("current_password"), "new_password": f.get("new_password") }),
        )
        .await
}

pub async fn password_submit(State(portal): State<Portal>, p: Posted) -> Response {
    match change_password(&p).await {
        Ok(login) => continue_login(&login, Some(Flash::ok("Your password was changed."))),
        Err(e) => {
            if let Some(r) = web::login_redirect(&e, &p.headers) {
                return r;
            }
            let page = PasswordPage {
                l: Layout::anon(
                    "Change your password",
                    web::csrf_for_login(&portal, p.token.as_deref().unwrap_or("")),
                    None,
                ),
                error: Some(e.message),
            };
            render(StatusCode::BAD_REQUEST, &page, false)
        }
    }
}

// ---------------------------------------------------------------- logout

pub async fn logout(p: Posted) -> Response {
    if p.token.is_some() {
        let _ = p.api.send(Method::POST, "/api/v1/auth/logout").await;
    }
    let mut res = Flash::ok("You are logged out.").redirect(&format!("{PREFIX}/login"));
    web::clear_login_cookies(res.headers_mut());
    res
}
