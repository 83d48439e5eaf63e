//! Cookies, CSRF, the viewer extractor, flashes, security headers.

use crate::apiclient::Api;
use crate::{PREFIX, Portal};
use askama::Template;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use drawbridge_proto::api::{LoginResponse, LoginStage, WhoAmI};
use drawbridge_proto::{Action, ApiError, ErrorCode, Role};
use std::net::SocketAddr;

/// The login cookie: the API's opaque login token.
pub const SESSION_COOKIE: &str = "db_session";
/// How far the login got (only steers the browser to the right page; the API decides).
const STAGE_COOKIE: &str = "db_stage";
/// A random nonce that pre-login forms' CSRF tokens are bound to.
const ANON_COOKIE: &str = "db_anon";
/// A one-shot message for the next page.
const FLASH_COOKIE: &str = "db_flash";
/// The hidden field every form carries.
pub const CSRF_FIELD: &str = "csrf";
/// Largest form body the portal reads.
const MAX_FORM: usize = 64 * 1024;

pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The CSP of the pages with live KPI tiles: the portal's own script files
/// and requests to the portal only; still no inline script.
pub const CSP_OWN_SCRIPT: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

// ---------------------------------------------------------------- headers

pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    // A page that runs the portal's own script sets its CSP itself
    // (`allow_own_script`); every other answer gets the script-free one.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        set(h, header::CONTENT_SECURITY_POLICY, CSP);
    }
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // Same-origin requests keep their referrer and a real `Origin` (which the
    // CSRF check reads); other sites learn nothing of our URLs.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    res
}

/// Lets a rendered page run the portal's own script files ([`CSP_OWN_SCRIPT`]).
pub fn allow_own_script(res: &mut Response) {
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP_OWN_SCRIPT),
    );
}

// ---------------------------------------------------------------- cookies

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<i64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; Secure; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// The cookie values a token may hold are the API's own `[A-Za-z0-9_-]` tokens.
fn cookie_safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Response headers that store a (new) login token and its stage.
pub fn login_cookies(h: &mut HeaderMap, login: &LoginResponse) {
    if cookie_safe(&login.token) {
        h.append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, &login.token, "/", None),
        );
    }
    h.append(
        header::SET_COOKIE,
        set_cookie(STAGE_COOKIE, stage_str(login.stage), "/", None),
    );
}

pub fn clear_login_cookies(h: &mut HeaderMap) {
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", Some(0)),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(STAGE_COOKIE, "", "/", Some(0)),
    );
}

fn stage_str(s: LoginStage) -> &'static str {
    match s {
        LoginStage::Complete => "complete",
        LoginStage::TotpRequired => "totp",
        LoginStage::TotpEnrollmentRequired => "enroll",
        LoginStage::PasswordChangeRequired => "password",
    }
}

/// Where a login at this stage continues.
pub fn stage_page(stage: LoginStage) -> String {
    match stage {
        LoginStage::Complete => format!("{PREFIX}/"),
        LoginStage::TotpRequired => format!("{PREFIX}/login/totp"),
        LoginStage::TotpEnrollmentRequired => format!("{PREFIX}/login/enroll"),
        LoginStage::PasswordChangeRequired => format!("{PREFIX}/login/password"),
    }
}

fn stage_from_cookie(headers: &HeaderMap) -> Option<LoginStage> {
    Some(match cookie(headers, STAGE_COOKIE)? {
        "complete" => LoginStage::Complete,
        "totp" => LoginStage::TotpRequired,
        "enroll" => LoginStage::TotpEnrollmentRequired,
        "password" => LoginStage::PasswordChangeRequired,
        _ => return None,
    })
}

// ---------------------------------------------------------------- CSRF

fn mac(portal: &Portal, kind: &str, secret: &str) -> String {
    let msg = format!("drawbridge-portal-csrf\0{kind}\0{secret}");
    B64.encode(ring::hmac::sign(&portal.csrf_key, msg.as_bytes()).as_ref())
}

fn mac_ok(portal: &Portal, kind: &str, secret: &str, given: &str) -> bool {
    let Ok(tag) = B64.decode(given) else {
        return false;
    };
    let msg = format!("drawbridge-portal-csrf\0{kind}\0{secret}");
    ring::hmac::verify(&portal.csrf_key, msg.as_bytes(), &tag).is_ok()
}

/// The CSRF token of a login token.
pub fn csrf_for_login(portal: &Portal, token: &str) -> String {
    mac(portal, "login", token)
}

/// A pre-login CSRF token: bound to the `db_anon` cookie, made when missing.
pub struct Anon {
    pub csrf: String,
    set: Option<HeaderValue>,
}

impl Anon {
    pub fn of(portal: &Portal, headers: &HeaderMap) -> Anon {
        match cookie(headers, ANON_COOKIE).filter(|v| cookie_safe(v)) {
            Some(n) => Anon {
                csrf: mac(portal, "anon", n),
                set: None,
            },
            None => {
                let mut b = [0u8; 16];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .expect("the system random source works");
                let n = B64.encode(b);
                Anon {
                    csrf: mac(portal, "anon", &n),
                    set: Some(set_cookie(ANON_COOKIE, &n, PREFIX, None)),
                }
            }
        }
    }

    pub fn apply(self, mut res: Response) -> Response {
        if let Some(c) = self.set {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        res
    }
}

/// The host (and port) the request was sent to: HTTP/1 `Host` or HTTP/2 `:authority`.
pub fn request_host(parts: &Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default()
}

/// The request's headers, with `Host` filled in from the HTTP/2 authority.
fn headers_with_host(parts: &Parts) -> HeaderMap {
    let mut h = parts.headers.clone();
    if !h.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&request_host(parts))
    {
        h.insert(header::HOST, v);
    }
    h
}

/// True when the request says it comes from another site.
fn cross_site(parts: &Parts) -> bool {
    let headers = &parts.headers;
    let fetch_site = headers.get("sec-fetch-site");
    if fetch_site.is_some_and(|s| s.as_bytes() != b"same-origin") {
        return true;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // A browser that says same-origin may still send an opaque `null`
        // origin (privacy settings); without Sec-Fetch-Site, `null` is refused.
        if origin.as_bytes() == b"null" {
            return fetch_site.is_none();
        }
        let host = request_host(parts);
        let host = host.as_str();
        let Ok(origin) = origin.to_str() else {
            return true;
        };
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if origin_host != Some(host) || host.is_empty() {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------- forms

/// A parsed `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    pub fn opt(&self, name: &str) -> Option<&str> {
        Some(self.get(name).trim()).filter(|v| !v.is_empty())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), "on" | "true" | "1")
    }
}

/// A POSTed form whose CSRF token and origin checked out.
pub struct Posted {
    pub form: Form,
    /// The viewer's API handle (with their login token when they have one).
    pub api: Api,
    pub token: Option<String>,
    pub headers: HeaderMap,
}

impl FromRequest<Portal> for Posted {
    type Rejection = Response;
    async fn from_request(req: Request, portal: &Portal) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        if cross_site(&parts) {
            tracing::info!("portal: refused a cross-site POST to {}", parts.uri.path());
            return Err(refused());
        }
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => {
                return Err(error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large.",
                ));
            }
        };
        let form = Form(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        let given = form.get(CSRF_FIELD);
        let token = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string);
        let anon = cookie(&parts.headers, ANON_COOKIE);
        let ok = !given.is_empty()
            && (token
                .as_deref()
                .is_some_and(|t| mac_ok(portal, "login", t, given))
                | anon.is_some_and(|n| mac_ok(portal, "anon", n, given)));
        if !ok {
            tracing::info!(
                "portal: refused a POST without a valid CSRF token to {}",
                parts.uri.path()
            );
            return Err(refused());
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied();
        Ok(Posted {
            api: Api::new(portal.api.clone(), token.clone(), peer),
            form,
            token,
            headers: headers_with_host(&parts),
        })
    }
}

impl Posted {
    /// The viewer behind a checked form (for handlers that render a page).
    pub async fn viewer(&self, portal: &Portal) -> Result<Viewer, Response> {
        let Some(token) = &self.token else {
            return Err(Redirect::to(&format!("{PREFIX}/login")).into_response());
        };
        match self.api.get::<WhoAmI>("/api/v1/me").await {
            Ok(me) => Ok(Viewer {
                csrf: csrf_for_login(portal, token),
                api: self.api.clone(),
                me,
                flash: None,
                headers: self.headers.clone(),
            }),
            Err(e) => Err(api_failure(&e, &self.headers)),
        }
    }
}

fn refused() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form was refused: it came from another site, or it has expired. Go back, reload the page and try again.",
    )
}

// ---------------------------------------------------------------- the viewer

/// A logged-in viewer: their API handle, who they are, their CSRF token.
pub struct Viewer {
    pub api: Api,
    pub me: WhoAmI,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub headers: HeaderMap,
}

impl FromRequestParts<Portal> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Response> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string) else {
            return Err(Redirect::to(&format!("{PREFIX}/login")).into_response());
        };
        let api = Api::new(portal.api.clone(), Some(token.clone()), peer);
        match api.get::<WhoAmI>("/api/v1/me").await {
            Ok(me) => Ok(Viewer {
                csrf: csrf_for_login(portal, &token),
                api,
                me,
                flash: Flash::read(&parts.headers),
                headers: headers_with_host(parts),
            }),
            Err(e) => Err(api_failure(&e, &parts.headers)),
        }
    }
}

/// The answer to an API error that means "you are not (fully) logged in", or None.
pub fn login_redirect(e: &ApiError, headers: &HeaderMap) -> Option<Response> {
    match e.code {
        ErrorCode::LoginIncomplete => {
            let stage = stage_from_cookie(headers).unwrap_or(LoginStage::Complete);
            let to = if stage == LoginStage::Complete {
                format!("{PREFIX}/login")
            } else {
                stage_page(stage)
            };
            Some(Redirect::to(&to).into_response())
        }
        ErrorCode::Unauthenticated => {
            let mut res = Flash::error(format!("Please log in. ({})", e.message))
                .redirect(&format!("{PREFIX}/login"));
            clear_login_cookies(res.headers_mut());
            Some(res)
        }
        _ => None,
    }
}

/// A page-level API failure: a login redirect or an error page.
pub fn api_failure(e: &ApiError, headers: &HeaderMap) -> Response {
    login_redirect(e, headers).unwrap_or_else(|| error_page(status_of(e), &e.message))
}

fn status_of(e: &ApiError) -> StatusCode {
    match e.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// After a form: back to `to` with the API's error, or on with a message.
pub fn after<T>(r: Result<T, ApiError>, headers: &HeaderMap, to: &str, ok: &str) -> Response {
    match r {
        Ok(_) => Flash::ok(ok).redirect(to),
        Err(e) => {
            login_redirect(&e, headers).unwrap_or_else(|| Flash::error(e.message).redirect(to))
        }
    }
}

impl Viewer {
    pub fn role(&self) -> Role {
        self.me.user.role
    }
    pub fn can(&self, a: Action) -> bool {
        self.role().permits(a)
    }
    pub fn layout(&self, title: impl Into<String>) -> Layout {
        let role = self.role();
        Layout {
            title: title.into(),
            csrf: self.csrf.clone(),
            flash: self.flash.clone(),
            nav: Some(Nav {
                username: self.me.user.username.to_string(),
                account: self.me.account.name.to_string(),
                role: role.as_str().to_string(),
                // Groups, pools and grants are readable by every role but `user`.
                access: role != Role::User,
                users: role != Role::User,
                audit: role.permits(Action::ReadAudit),
                notifications: role.permits(Action::ManageUsers),
                updates: role.permits(Action::ManageDevices),
            }),
        }
    }
    /// A page-level API failure, inside the portal's frame.
    pub fn fail(&self, e: &ApiError) -> Response {
        if let Some(r) = login_redirect(e, &self.headers) {
            return r;
        }
        render(
            status_of(e),
            &ErrorPage {
                l: self.layout("Something went wrong"),
                status: status_of(e).as_u16(),
                message: e.message.clone(),
            },
            false,
        )
    }

    /// `https://host` as the browser reached us.
    pub fn base_url(&self) -> String {
        base_url(&self.headers)
    }
}

pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("https://{host}")
}

// ---------------------------------------------------------------- flashes

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Self {
        Flash {
            error: false,
            text: text.into(),
        }
    }
    pub fn error(text: impl Into<String>) -> Self {
        Flash {
            error: true,
            text: text.into(),
        }
    }
    fn read(headers: &HeaderMap) -> Option<Flash> {
        let v = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == FLASH_COOKIE)?
            .1;
        serde_json::from_slice(&B64.decode(v).ok()?).ok()
    }
    pub fn read_from(headers: &HeaderMap) -> Option<Flash> {
        Self::read(headers)
    }
    /// 303 to `to`, showing this message there.
    pub fn redirect(self, to: &str) -> Response {
        let mut text: String = self.text.chars().take(600).collect();
        if text.is_empty() {
            text.push('.');
        }
        let v = B64.encode(serde_json::to_vec(&Flash { text, ..self }).unwrap_or_default());
        let mut res = Redirect::to(to).into_response();
        res.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(FLASH_COOKIE, &v, PREFIX, Some(120)),
        );
        res
    }
}

/// A rendered page clears the flash it showed.
pub fn clear_flash(res: &mut Response) {
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FLASH_COOKIE, "", PREFIX, Some(0)),
    );
}

// ---------------------------------------------------------------- layout & rendering

/// What the base template needs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub title: String,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub nav: Option<Nav>,
}

impl Layout {
    /// A page for someone not logged in.
    pub fn anon(title: impl Into<String>, csrf: String, flash: Option<Flash>) -> Layout {
        Layout {
            title: title.into(),
            csrf,
            flash,
            nav: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Nav {
    pub username: String,
    pub account: String,
    pub role: String,
    pub access: bool,
    pub users: bool,
    pub audit: bool,
    /// E-mail recipients and webhooks (admins).
    pub notifications: bool,
    /// Edge releases and rollouts (admins).
    pub updates: bool,
}

/// Renders a template as an HTML response (clearing a shown flash).
pub fn render(status: StatusCode, t: &impl Template, had_flash: bool) -> Response {
    match t.render() {
        Ok(html) => {
            let mut res = (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response();
            if had_flash {
                clear_flash(&mut res);
            }
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "portal: template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    l: Layout,
    status: u16,
    message: String,
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &ErrorPage {
            l: Layout::anon("Something went wrong", String::new(), None),
            status: status.as_u16(),
            message: message.to_string(),
        },
        false,
    )
}

/// A file download.
pub fn download(name: &str, content_type: &str, body: impl Into<Body>) -> Response {
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let mut res = Response::new(body.into());
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}
