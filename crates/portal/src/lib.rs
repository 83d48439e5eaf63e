//! The Drawbridge web portal: server-rendered pages for admins, session
//! admins, users and auditors.
//!
//! The portal holds no data and decides no rule. Every page handler calls the
//! JSON control API in-process (a `oneshot` on a clone of the API router) with
//! the viewer's own bearer token, taken from the `db_session` cookie, and
//! renders the JSON it gets back, or the API's `{code, message}` error. What a
//! viewer may see or change is therefore exactly what the API lets them; the
//! portal only hides links and forms the viewer's role could not use (from the
//! shared role matrix in `drawbridge_proto`), so that the audit log is not
//! filled with refusals from page views.
//!
//! Safety: the login cookie is `HttpOnly; Secure; SameSite=Strict`; every form
//! carries a CSRF token (an HMAC of the login token, or of a pre-login nonce,
//! under a key made at start) that every POST must present, and POSTs whose
//! `Origin` or `Sec-Fetch-Site` say cross-site are refused before that. Pages
//! are askama templates (checked at compile time, escaped by default) under a
//! CSP that allows no script at all, except on the pages with live KPI tiles,
//! whose CSP allows the portal's own script file (`assets/kpi.js`, which
//! polls a portal JSON route) and nothing inline.

mod apiclient;
mod assets;
mod pages;
mod qr;
mod web;

use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

pub use web::{CSRF_FIELD, SESSION_COOKIE};

/// Everything the portal's handlers share.
#[derive(Clone)]
pub(crate) struct Portal(Arc<Inner>);

pub(crate) struct Inner {
    /// The server's JSON API, fully stated.
    pub api: Router,
    /// Key of the CSRF tokens' HMAC (the server keeps it, the same on every replica).
    pub csrf_key: ring::hmac::Key,
}

impl std::ops::Deref for Portal {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Where the portal lives.
pub const PREFIX: &str = "/portal";

/// The portal's routes (under `/portal`, plus `/` redirecting there), to be
/// merged next to the API. `api` is the server's JSON API router with its
/// state applied; the portal calls it in-process for every page. `csrf_key` keys
/// the forms' CSRF tokens (at least 32 random bytes; the same on every replica, so a
/// form from one is accepted by another).
pub fn router(api: Router, csrf_key: &[u8]) -> Router {
    let csrf_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, csrf_key);
    let portal = Portal(Arc::new(Inner { api, csrf_key }));
    let p = |s: &str| format!("{PREFIX}{s}");
    use pages::*;
    Router::new()
        .route("/", get(root_redirect))
        .route(&p(""), get(root_redirect))
        .route(&p("/"), get(dashboard::page))
        .route(&p("/assets/{name}"), get(assets::serve))
        .route(
            &p("/setup"),
            get(login::setup_form).post(login::setup_submit),
        )
        .route(
            &p("/login"),
            get(login::login_form).post(login::login_submit),
        )
        .route(
            &p("/login/totp"),
            get(login::totp_form).post(login::totp_submit),
        )
        .route(&p("/login/enroll"), get(login::enroll_start))
        .route(
            &p("/login/password"),
            get(login::password_form).post(login::password_submit),
        )
        .route(&p("/logout"), post(login::logout))
        .route(&p("/totp/enroll"), post(login::enroll_show))
        .route(&p("/totp/confirm"), post(login::enroll_confirm))
        .route(&p("/me"), get(me::page))
        .route(&p("/me/password"), post(me::password))
        .route(&p("/me/tokens"), post(me::create_token))
        .route(&p("/me/tokens/{id}/revoke"), post(me::revoke_token))
        .route(&p("/devices"), get(devices::list).post(devices::create))
        .route(
            &p("/devices/{id}"),
            get(devices::detail).post(devices::update),
        )
        .route(&p("/devices/{id}/logbook"), post(devices::add_log))
        .route(
            &p("/devices/{id}/web-pins/accept"),
            post(devices::accept_pin),
        )
        .route(
            &p("/devices/{id}/desktop-password"),
            post(devices::desktop_password),
        )
        .route(&p("/devices/{id}/activation-key"), post(devices::new_key))
        .route(&p("/devices/{id}/config"), post(devices::config_file))
        .route(&p("/devices/{id}/approve"), post(devices::approve))
        .route(&p("/devices/{id}/delete"), post(devices::delete))
        .route(&p("/devices/{id}/disable"), post(devices::disable))
        .route(&p("/devices/{id}/enable"), post(devices::enable))
        .route(&p("/devices/{id}/replace"), post(devices::replace))
        .route(&p("/devices/{id}/archive"), post(devices::archive))
        .route(&p("/devices/{id}/tags"), post(data::tags::put))
        .route(
            &p("/devices/{id}/tags/{name}/delete"),
            post(data::tags::delete),
        )
        .route(&p("/devices/{id}/export"), get(data::export::export))
        .route(&p("/kpis"), get(data::kpis::page))
        .route(&p("/kpis/live"), get(data::kpis::live))
        .route(&p("/alarms"), get(data::alarms::page))
        .route(&p("/desktops"), get(desktops::page))
        .route(&p("/desktops/{id}/watch"), post(desktops::watch))
        .route(&p("/desktops/{id}/replay"), post(desktops::replay))
        .route(&p("/alarms/{id}/ack"), post(data::alarms::ack))
        .route(&p("/devices/{id}/connect"), post(sessions::adhoc))
        .route(&p("/devices/{id}/web"), post(sessions::adhoc_web))
        .route(&p("/updates"), get(updates::page))
        .route(&p("/updates/rollouts"), post(updates::create))
        .route(&p("/updates/rollouts/{id}"), get(updates::detail))
        .route(&p("/updates/rollouts/{id}/{action}"), post(updates::change))
        .route(&p("/users"), get(users::list).post(users::create))
        .route(&p("/users/{id}"), post(users::update))
        .route(&p("/access"), get(access::page))
        .route(&p("/access/groups"), post(access::create_group))
        .route(&p("/access/groups/{id}/members"), post(access::add_member))
        .route(
            &p("/access/groups/{id}/members/{user}/remove"),
            post(access::remove_member),
        )
        .route(&p("/access/groups/{id}/delete"), post(access::delete_group))
        .route(&p("/access/pools"), post(access::create_pool))
        .route(&p("/access/pools/{id}/devices"), post(access::add_device))
        .route(
            &p("/access/pools/{id}/devices/{device}/remove"),
            post(access::remove_device),
        )
        .route(&p("/access/pools/{id}/delete"), post(access::delete_pool))
        .route(&p("/access/grants"), post(access::create_grant))
        .route(&p("/access/grants/{id}/delete"), post(access::delete_grant))
        .route(&p("/account"), get(account::page).post(account::update))
        .route(
            &p("/account/sso"),
            get(sso_settings::page).post(sso_settings::save),
        )
        .route(&p("/account/sso/delete"), post(sso_settings::delete))
        .route(&p("/account/sso/test"), post(sso_settings::test))
        .route(&p("/account/sso/rules"), post(sso_settings::add_rule))
        .route(
            &p("/account/sso/rules/{id}/delete"),
            post(sso_settings::delete_rule),
        )
        .route(&p("/account/sso/identities"), post(sso_settings::link))
        .route(
            &p("/account/sso/identities/{id}/delete"),
            post(sso_settings::unlink),
        )
        .route(&p("/sso/start"), get(sso::start))
        .route(&p("/sso/callback"), get(sso::callback))
        .route(
            &p("/notifications"),
            get(notifications::page).post(notifications::update),
        )
        .route(
            &p("/notifications/users/{id}/email"),
            post(notifications::set_email),
        )
        .route(
            &p("/notifications/webhooks"),
            post(notifications::create_webhook),
        )
        .route(
            &p("/notifications/webhooks/{id}"),
            post(notifications::update_webhook),
        )
        .route(
            &p("/notifications/webhooks/{id}/delete"),
            post(notifications::delete_webhook),
        )
        .route(&p("/sessions"), get(sessions::list).post(sessions::prepare))
        .route(&p("/sessions/new"), get(sessions::new_form))
        .route(&p("/sessions/{id}"), get(sessions::detail))
        .route(&p("/sessions/{id}/start"), post(sessions::start))
        .route(&p("/sessions/{id}/end"), post(sessions::end))
        .route(&p("/sessions/{id}/wireguard"), post(wireguard::make))
        .route(&p("/sessions/{id}/approve"), post(sessions::approve))
        .route(&p("/sessions/{id}/devices"), post(sessions::add_device))
        .route(&p("/sessions/{id}/narrow"), post(sessions::narrow))
        .route(&p("/sessions/{id}/web"), post(sessions::open_web))
        .route(&p("/audit"), get(audit::page))
        .route(&p("/audit/export"), get(audit::export))
        .layer(axum::middleware::map_response(web::security_headers))
        .with_state(portal)
}

async fn root_redirect() -> axum::response::Redirect {
    axum::response::Redirect::to(&format!("{PREFIX}/"))
}
