//! Browser access to device web UIs (DESIGN: browser access and data
//! services). The server joins a session as a peer of its own
//! ([`peer`]) and proxies HTTP to a released target ([`proxy`]). Each
//! (session, device, target, user) is served on its own origin, a random
//! label under `web_domain` ([`origin`]); a browser enters it through a
//! one-time handoff from the portal or the API and holds a `__Host-` cookie of
//! that origin only.
//!
//! **Architecture Invariant:** a request whose host is under `web_domain`
//! reaches the proxy and nothing else (never the API, the portal or the
//! relay); a request to the API or the portal whose `Origin` is under
//! `web_domain` is refused. A device page is hostile code to the portal.
//!
//! **API Boundary:** `POST /api/v1/sessions/{id}/web` (open an origin, answer
//! its entry link) and `/api/v1/sessions/{id}/devices/{device}/http/{target}/{path}`
//! (HTTP to a device's web service for software holding an API token).

pub mod local_relay;
pub mod origin;
pub mod peer;
pub mod pins;
pub mod proxy;

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drawbridge_proto::api::{OpenWeb, OpenedWeb};
use drawbridge_proto::{ApiError, ErrorCode};
use origin::{COOKIE, ENTER_PATH, Scheme};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The web domain of a server started on its defaults: browsers resolve
/// every name under `localhost` to loopback.
pub const DEFAULT_WEB_DOMAIN: &str = "web.localhost";
/// The route of HTTP to a device for API clients.
pub const HTTP_ROUTE: &str = "/api/v1/sessions/{id}/devices/{device}/http/{target}/{*path}";

/// Browser access on this replica: its web domain, the TLS trust its peers
/// use for the relay, and its running peers.
pub struct Web {
    domain: RwLock<String>,
    tls: RwLock<Option<Arc<rustls::ClientConfig>>>,
    pub peers: peer::Peers,
    /// Serialises first joins (see `peer::peer_for`).
    pub(crate) joining: tokio::sync::Mutex<()>,
    /// Where noVNC is installed, for desktops (none: the viewer says how to install it).
    novnc: RwLock<Option<std::path::PathBuf>>,
    /// Where IronRDP's web client is installed, for RDP desktops (likewise).
    ironrdp: RwLock<Option<crate::desktop::rdp::IronRdp>>,
}

impl Default for Web {
    fn default() -> Self {
        Web {
            domain: RwLock::new(DEFAULT_WEB_DOMAIN.into()),
            tls: RwLock::new(None),
            peers: peer::Peers::default(),
            joining: tokio::sync::Mutex::new(()),
            novnc: RwLock::new(crate::desktop::viewer::find_novnc()),
            ironrdp: RwLock::new(crate::desktop::rdp::find_ironrdp()),
        }
    }
}

impl Web {
    pub fn domain(&self) -> String {
        self.domain.read().map(|d| d.clone()).unwrap_or_default()
    }
    pub fn set_domain(&self, domain: &str) {
        if let Ok(mut d) = self.domain.write() {
            *d = domain.trim_matches('.').to_ascii_lowercase();
        }
    }
    pub fn novnc(&self) -> Option<std::path::PathBuf> {
        self.novnc.read().ok().and_then(|d| d.clone())
    }
    pub fn set_novnc(&self, dir: Option<std::path::PathBuf>) {
        if let Ok(mut d) = self.novnc.write() {
            *d = dir;
        }
    }
    pub fn ironrdp(&self) -> Option<crate::desktop::rdp::IronRdp> {
        self.ironrdp.read().ok().and_then(|d| d.clone())
    }
    pub fn set_ironrdp(&self, found: Option<crate::desktop::rdp::IronRdp>) {
        if let Ok(mut d) = self.ironrdp.write() {
            *d = found;
        }
    }
    pub fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.read().ok().and_then(|t| t.clone())
    }
    /// The trust this replica's peers use to reach the relay (its own public URL).
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        if let Ok(mut t) = self.tls.write() {
            *t = Some(tls);
        }
    }

    /// The label when `host` (without port) is a device origin; `Err` when it
    /// is under the web domain without being a valid origin.
    fn label_of<'a>(&self, host: &'a str) -> Option<Result<&'a str, ()>> {
        let domain = self.domain();
        let name = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let name = name.trim_end_matches('.');
        if name.len() <= domain.len() + 1 || !name.is_char_boundary(name.len() - domain.len() - 1) {
            return (name.eq_ignore_ascii_case(&domain)).then_some(Err(()));
        }
        let (label, rest) = name.split_at(name.len() - domain.len() - 1);
        if !rest[1..].eq_ignore_ascii_case(&domain) || !rest.starts_with('.') {
            return None;
        }
        Some(if origin::is_label(label) {
            Ok(label)
        } else {
            Err(())
        })
    }

    /// True when a request's `Origin` header names a device origin (or the web domain itself).
    fn is_device_page(&self, origin: &str) -> bool {
        let host = origin.split_once("://").map_or(origin, |(_, h)| h);
        self.label_of(host).is_some()
    }
}

fn host_of(req: &Request) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(h: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = (status, text.to_string()).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The middleware in front of everything (see the invariant above).
pub async fn by_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = host_of(&req).unwrap_or_default();
    match state.web.label_of(&host) {
        Some(Ok(label)) => {
            let label = label.to_string();
            return serve_origin(state, label, host, req).await;
        }
        Some(Err(())) => return plain(StatusCode::NOT_FOUND, "no such device page"),
        None => {}
    }
    if let Some(o) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        && state.web.is_device_page(o)
    {
        return AppError::new(
            ErrorCode::Forbidden,
            "a device page may not call the portal or the API",
        )
        .into_response();
    }
    next.run(req).await
}

fn source(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A request on a device origin.
async fn serve_origin(state: AppState, label: String, host: String, req: Request) -> Response {
    let origin_base = format!("https://{host}");
    if req.uri().path() == ENTER_PATH {
        let token = req
            .uri()
            .query()
            .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "t"))
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        return match origin::enter(&state, &label, &token).await {
            Ok((cookie, path)) => {
                let mut r = (StatusCode::SEE_OTHER, ()).into_response();
                let h = r.headers_mut();
                // A `WebPath`: visible ASCII only, so always a valid header value.
                h.insert(
                    header::LOCATION,
                    HeaderValue::from_str(&path).unwrap_or(HeaderValue::from_static("/")),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{COOKIE}={cookie}; Path=/; Secure; HttpOnly; SameSite=Lax"
                )) {
                    h.insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(e) => plain(StatusCode::FORBIDDEN, &e.message),
        };
    }
    let cookie = cookie(req.headers(), COOKIE)
        .unwrap_or_default()
        .to_string();
    let src = source(&req);
    let (o, caller) = match origin::lookup(&state, &label, &cookie, src).await {
        Ok(v) => v,
        Err(e) if e.code == ErrorCode::Internal => return e.into_response(),
        Err(_) => {
            return plain(
                StatusCode::UNAUTHORIZED,
                "open this device page from the Drawbridge portal",
            );
        }
    };
    if o.scheme.is_desktop() {
        return crate::desktop::viewer::serve(state, caller, o, req).await;
    }
    match to_device(
        &state,
        &caller,
        &o.session_id,
        &o.device_id,
        o.target,
        o.scheme,
        &origin_base,
        req,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => plain(e.status(), &e.message),
    }
}

/// Sends one request to a device through the caller's peer in the session and
/// answers the device's response with its headers made safe for `origin_base`.
#[allow(clippy::too_many_arguments)]
async fn to_device(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    device_id: &str,
    target: SocketAddrV4,
    scheme: Scheme,
    origin_base: &str,
    req: Request,
) -> AppResult<Response> {
    if scheme.is_desktop() {
        return Err(AppError::invalid(
            "this target is a remote desktop: open it in the portal (Open desktop)",
        ));
    }
    let dial = origin::check_target(state, caller, session_id, device_id, target).await?;
    crate::desktop::require_tunnel_rights(state, caller, device_id).await?;
    let p = peer::peer_for(state, caller, session_id).await?;
    // A bounded number of requests at once per peer; the others wait a while.
    let Ok(Ok(place)) =
        tokio::time::timeout(proxy::RESPONSE_TIMEOUT, p.places.clone().acquire_owned()).await
    else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests to this device at once; try again",
        ));
    };
    let device_base = proxy::device_base(scheme.as_str(), target);
    let stream = match tokio::time::timeout(
        proxy::CONNECT_TIMEOUT,
        p.dialer.connect(SocketAddr::V4(dial)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Ok(plain(
                StatusCode::BAD_GATEWAY,
                &format!("the device did not accept a connection: {e}"),
            ));
        }
        Err(_) => {
            return Ok(plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the device did not answer in time",
            ));
        }
    };
    // The same request (its extensions carry the browser side of a WebSocket
    // upgrade) with the head the device gets.
    p.counted();
    let (mut parts, body) = req.into_parts();
    let body = proxy::counted(body, p.bytes(), None);
    parts.uri = proxy::path_only(&parts.uri);
    parts.version = axum::http::Version::HTTP_11;
    parts.headers = proxy::to_device(&parts.headers, origin_base, &device_base, &[COOKIE]);
    let req = Request::from_parts(parts, body);
    let sent = match scheme {
        Scheme::Http | Scheme::Vnc | Scheme::Rdp => proxy::forward(stream, req, p.bytes()).await,
        Scheme::Https => {
            let (tls, seen) = match pins::handshake(stream, *dial.ip()).await {
                Ok(v) => v,
                Err(e) => {
                    return Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        &format!("TLS with the device failed: {e}"),
                    ));
                }
            };
            if let Err(e) = pins::check(state, caller, device_id, target, &seen).await {
                return Ok(plain(StatusCode::BAD_GATEWAY, &e.message));
            }
            proxy::forward(tls, req, p.bytes()).await
        }
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return Ok(plain(e.status(), &e.to_string())),
    };
    p.touch(state.now());
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(proxy::counted(body, p.bytes(), Some(place)));
    *out.status_mut() = parts.status;
    *out.headers_mut() = proxy::to_browser(&parts.headers, origin_base, &device_base, &[COOKIE]);
    Ok(out)
}

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    pins::routes(r.routes(routes!(open)).routes(routes!(http)))
}

/// The public port of this server, for device origins (`:8443`, or nothing for 443).
fn public_port(state: &AppState) -> String {
    let rest = state
        .public_url
        .split_once("://")
        .map_or(state.public_url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((_, p)) if p != "443" && p.bytes().all(|b| b.is_ascii_digit()) => format!(":{p}"),
        _ => String::new(),
    }
}

/// The URL of the device origin `label`.
pub(crate) fn origin_url(state: &AppState, label: &str) -> String {
    format!(
        "https://{label}.{}{}",
        state.web.domain(),
        public_port(state)
    )
}

/// The device's web service at `target`, or plain HTTP at `/` when the device
/// marks none there.
async fn web_service(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
    target: SocketAddrV4,
) -> AppResult<drawbridge_proto::api::WebService> {
    let mut conn = state.store.pool.acquire().await?;
    let d = crate::records::device(&mut conn, &caller.account_id, device_id).await?;
    Ok(d.web_services
        .into_iter()
        .find(|w| w.target == target)
        .unwrap_or(drawbridge_proto::api::WebService {
            target,
            scheme: Scheme::Http,
            path: Default::default(),
        }))
}

/// Opens a released web service of a device on its own origin and answers the
/// one-time link that lets a browser in.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/web", tag = "live", params(("id" = String, Path)),
    request_body = OpenWeb,
    responses((status = 200, body = OpenedWeb), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    crate::extract::ApiJson(req): crate::extract::ApiJson<OpenWeb>,
) -> AppResult<Json<OpenedWeb>> {
    let service = web_service(&state, &caller, &req.device_id, req.target).await?;
    if !service.scheme.is_desktop() {
        // Membership and release first (a stranger learns nothing), then the
        // grant: a monitor grant opens desktops only.
        origin::check_target(&state, &caller, &id, &req.device_id, req.target).await?;
        crate::desktop::require_tunnel_rights(&state, &caller, &req.device_id).await?;
    }
    let (label, handoff) = origin::open(
        &state,
        &caller,
        &id,
        &req.device_id,
        req.target,
        service.scheme,
        &service.path,
    )
    .await?;
    let origin = origin_url(&state, &label);
    Ok(Json(OpenedWeb {
        url: format!("{origin}{ENTER_PATH}?t={handoff}"),
        origin,
    }))
}

/// HTTP to a device's released web service (any method; the body and the
/// answer stream through). For software holding an API token; a read-only
/// token may only GET. The device never sees the token.
#[utoipa::path(method(get, post, put, patch, delete), path = "/api/v1/sessions/{id}/devices/{device}/http/{target}/{path}", tag = "live",
    params(("id" = String, Path), ("device" = String, Path), ("target" = String, Path, description = "the released target's LAN address, ip:port"), ("path" = String, Path)),
    responses((status = 200, description = "the device's answer, as it gave it"), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 502, description = "the device did not answer")))]
async fn http(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, device, target, _path)): Path<(String, String, String, String)>,
    req: Request,
) -> AppResult<Response> {
    let target: SocketAddrV4 = target
        .parse()
        .map_err(|_| AppError::invalid("target is ip:port"))?;
    // The device sees the raw path below `/api/v1/sessions/ID/devices/DEV/http/TARGET`
    // (the ninth `/` on), as the client encoded it, and the query.
    let (mut parts, body) = req.into_parts();
    let raw = parts.uri.path();
    let cut = raw.match_indices('/').nth(8).map_or(raw.len(), |(i, _)| i);
    let (prefix, below) = raw.split_at(cut);
    let below = match (below, parts.uri.query()) {
        ("", None) => "/".to_string(),
        ("", Some(q)) => format!("/?{q}"),
        (b, None) => b.to_string(),
        (b, Some(q)) => format!("{b}?{q}"),
    };
    let prefix = prefix.to_string();
    parts.uri = below.parse().map_err(|_| AppError::invalid("bad path"))?;
    let base = format!("{}{prefix}", state.public_url.trim_end_matches('/'));
    let scheme = web_service(&state, &caller, &device, target).await?.scheme;
    to_device(
        &state,
        &caller,
        &id,
        &device,
        target,
        scheme,
        &base,
        Request::from_parts(parts, body),
    )
    .await
}
