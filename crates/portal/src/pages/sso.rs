//! Single sign-on in the browser: the login page's "Sign in with …" link
//! starts the server's code flow (`GET /portal/sso/start`), the provider
//! sends the browser back to `GET /portal/sso/callback`, which finishes it.
//!
//! Cookies: the flow's browser binding is `db_sso` (`SameSite=Lax`, path
//! `/portal/sso`, 10 minutes), because the provider's redirect back is a
//! cross-site navigation and a `Strict` cookie would not come with it. The
//! login cookie stays `Strict`: the callback sets it and answers with a small
//! page that moves on by `<meta http-equiv="refresh">` (no script under the
//! portal's CSP), a new navigation from our own page, so the cookie comes
//! with it. A 303 would stay part of the cross-site redirect chain, and the
//! browser would hold back the new login cookie.

use crate::Portal;
use crate::apiclient::{Api, enc};
use crate::web::{self, Anon, Layout, render};
use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use drawbridge_proto::api::LoginResponse;
use drawbridge_proto::sso::{SsoPublicInfo, SsoStartResponse};
use drawbridge_proto::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

/// The browser binding of an SSO login in flight.
const BINDING_COOKIE: &str = "db_sso";

/// The client's address, when the server knows it (for the API's rate limits and audit).
pub struct Peer(pub Option<ConnectInfo<SocketAddr>>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
        ))
    }
}

/// What the login page shows for an account that has single sign-on.
#[derive(Clone, Debug)]
pub struct SsoButton {
    pub label: String,
    /// Passwords are only for the break-glass admin.
    pub required: bool,
    pub href: String,
}

/// The account's SSO button, when it has one (an unknown account has none).
pub async fn button(api: &Api, account: &str) -> Option<SsoButton> {
    let account = account.trim();
    if account.is_empty() || account.len() > 64 {
        return None;
    }
    let info: SsoPublicInfo = api
        .get(&format!("/api/v1/sso/provider?account={}", enc(account)))
        .await
        .ok()?;
    info.enabled.then(|| SsoButton {
        label: info.label,
        required: info.required,
        href: format!(
            "{}?account={}",
            drawbridge_proto::sso::START_PATH,
            enc(account)
        ),
    })
}

#[derive(Deserialize)]
pub struct StartQuery {
    #[serde(default)]
    account: String,
}

/// `GET /portal/sso/start?account=NAME`: a new flow at the server, its binding
/// in this browser's cookie, and on to the provider.
pub async fn start(
    State(portal): State<Portal>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> Response {
    let api = Api::new(portal.api.clone(), None, peer);
    let account = q.account.trim().to_string();
    let r: Result<SsoStartResponse, ApiError> = api
        .post("/api/v1/sso/start", &json!({ "account": account }))
        .await;
    let started = r.and_then(|s| {
        let ok_url =
            s.authorize_url.starts_with("https://") || s.authorize_url.starts_with("http://");
        let ok_binding = s
            .binding
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_url && ok_binding && !s.binding.is_empty() {
            Ok(s)
        } else {
            Err(ApiError::new(
                ErrorCode::Internal,
                "the server's answer could not be used",
            ))
        }
    });
    match started {
        Ok(s) => {
            let mut res = Redirect::to(&s.authorize_url).into_response();
            res.headers_mut()
                .append(header::SET_COOKIE, binding_cookie(&s.binding, 600));
            res
        }
        Err(e) => {
            let msg = match e.code {
                ErrorCode::LoginFailed => format!(
                    "Single sign-on is not available for the account {account:?}: {}",
                    reason_text(&e.message)
                ),
                ErrorCode::RateLimited => format!("Too many attempts: {}", e.message),
                _ => e.message,
            };
            login_page(&portal, &headers, &api, &account, msg).await
        }
    }
}

fn binding_cookie(value: &str, max_age: i64) -> HeaderValue {
    let c = format!(
        "{BINDING_COOKIE}={value}; Path=/portal/sso; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age}"
    );
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// The provider's answer at the redirect URI (other parameters are ignored).
#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Template)]
#[template(path = "sso_done.html")]
struct DonePage {
    l: Layout,
    to: String,
}

/// `GET /portal/sso/callback`: the server checks the answer and the binding;
/// a login gets its cookies and moves on by a same-site navigation.
pub async fn callback(
    State(portal): State<Portal>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let api = Api::new(portal.api.clone(), None, peer);
    let Some(state) = q.state.filter(|s| !s.is_empty()) else {
        let msg = match &q.error {
            Some(e) => format!(
                "Single sign-on failed: the identity provider answered {:?}.",
                e.chars().take(64).collect::<String>()
            ),
            None => "Single sign-on failed: the identity provider's answer was incomplete. Start again from the login page.".into(),
        };
        return clear_binding(login_page(&portal, &headers, &api, "", msg).await);
    };
    let binding = web::cookie(&headers, BINDING_COOKIE).unwrap_or("");
    let r: Result<LoginResponse, ApiError> = api
        .post(
            "/api/v1/sso/complete",
            &json!({
                "binding": binding,
                "state": state,
                "code": q.code,
                "iss": q.iss,
                "error": q.error,
                "error_description": q.error_description,
            }),
        )
        .await;
    match r {
        Ok(login) => {
            let to = web::stage_page(login.stage);
            let page = DonePage {
                l: Layout::anon("Signed in", String::new(), None),
                to,
            };
            let mut res = render(StatusCode::OK, &page, false);
            web::login_cookies(res.headers_mut(), &login);
            clear_binding(res)
        }
        Err(e) => {
            let msg = match e.code {
                ErrorCode::LoginFailed => {
                    format!("Single sign-on refused: {}", reason_text(&e.message))
                }
                ErrorCode::RateLimited => format!("Too many attempts: {}", e.message),
                _ => format!("Single sign-on failed: {}", e.message),
            };
            let mut res = login_page(&portal, &headers, &api, "", msg).await;
            web::clear_login_cookies(res.headers_mut());
            clear_binding(res)
        }
    }
}

fn clear_binding(mut res: Response) -> Response {
    res.headers_mut()
        .append(header::SET_COOKIE, binding_cookie("", 0));
    res
}

/// The server's refusal reason (`single sign-on refused: REASON`) in words.
pub fn reason_text(message: &str) -> String {
    let reason = message
        .strip_prefix("single sign-on refused: ")
        .unwrap_or(message);
    let words = match reason {
        "not_provisioned" => {
            "your identity is not linked to a user of this account, and the account does not create users at their first login. Ask an admin to link you."
        }
        "user_disabled" => "your user is disabled in Drawbridge.",
        "user_locked" => {
            "your user is locked after failed logins; try again later or ask an admin."
        }
        "sso_off" => "the account has no single sign-on (or the account name is wrong).",
        "idp_error" => "the identity provider refused the sign-in, or it was cancelled.",
        "state_replayed" | "state_unknown" | "flow_expired" => {
            "this sign-in was already used or took too long. Start again from the login page."
        }
        "browser_mismatch" => {
            "the sign-in was started in another browser (or its cookie expired). Start again from the login page."
        }
        "provider_changed" => {
            "the account's provider settings changed during the sign-in. Start again."
        }
        "discovery_failed" => {
            "the identity provider cannot be reached or is misconfigured. Tell an admin."
        }
        "mfa_required" => {
            "the account requires a second factor, and the identity provider did not report one."
        }
        _ => return format!("{reason} (the audit log has the details)."),
    };
    words.to_string()
}

/// The login page for `account` (with its SSO button) showing `error`.
pub async fn login_page(
    portal: &Portal,
    headers: &HeaderMap,
    api: &Api,
    account: &str,
    error: String,
) -> Response {
    let anon = Anon::of(portal, headers);
    let page = super::login::LoginPage {
        l: Layout::anon("Log in", anon.csrf.clone(), None),
        account: account.to_string(),
        username: String::new(),
        sso: button(api, account).await,
        error: Some(error),
    };
    anon.apply(render(StatusCode::UNAUTHORIZED, &page, false))
}
