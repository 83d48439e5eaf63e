//! HTTP/1.1 to a device through the session's tunnel: what goes to the device
//! (the `Host` it expects, none of Drawbridge's own credentials), what comes
//! back (redirects onto the device's origin, cookies kept on that origin), and
//! the forwarding itself, WebSocket upgrades included. Bodies stream both
//! ways; HTML is never rewritten.

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Headers that belong to one connection and never cross the proxy
/// (RFC 9110 §7.6.1), besides those the `Connection` header names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];
/// How long opening a connection to the device may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the device may take to answer a request's head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The base URL of the device as it knows itself (`http://192.168.1.10`, port
/// only when not the scheme's default).
pub fn device_base(scheme: &str, target: SocketAddrV4) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    if target.port() == default {
        format!("{scheme}://{}", target.ip())
    } else {
        format!("{scheme}://{target}")
    }
}

fn host_of(base: &str) -> &str {
    base.split_once("://").map_or(base, |(_, h)| h)
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Drops our own cookie (and the portal's, should a browser send them here)
/// from a `Cookie` header; the device's own cookies pass.
fn device_cookies(value: &str, ours: &[&str]) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split_once('=').map_or(*c, |(n, _)| n).trim();
            !ours.iter().any(|o| name.eq_ignore_ascii_case(o)) && !name.starts_with("db_")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The request headers as the device gets them: hop-by-hop headers and
/// `Authorization` gone, our cookies gone, `Host` the device's own, and
/// `Origin`/`Referer` that named the device origin naming the device instead
/// (HMIs check them on logins and WebSockets).
pub fn to_device(h: &HeaderMap, origin_base: &str, device_base: &str, ours: &[&str]) -> HeaderMap {
    let mut out = h.clone();
    let websocket = is_websocket(h);
    strip_hop_by_hop(&mut out);
    out.remove(header::AUTHORIZATION);
    out.remove(header::HOST);
    out.remove(header::COOKIE);
    out.remove("forwarded");
    out.remove("x-forwarded-for");
    out.remove("x-forwarded-host");
    out.remove("x-forwarded-proto");
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| device_cookies(v, ours))
        .collect();
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        out.insert(header::COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(host_of(device_base)) {
        out.insert(header::HOST, v);
    }
    for name in [header::ORIGIN, header::REFERER] {
        if let Some(v) = h.get(&name).and_then(|v| v.to_str().ok())
            && let Some(rest) = v.strip_prefix(origin_base)
            && let Ok(v) = HeaderValue::from_str(&format!("{device_base}{rest}"))
        {
            out.insert(name, v);
        }
    }
    if websocket {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    out
}

/// A `Set-Cookie` as the browser may get it from a device: without a
/// `Domain` (so it stays on the device's origin), and never one of our own
/// cookie names.
fn browser_cookie(v: &str, ours: &[&str]) -> Option<String> {
    let mut parts = v.split(';');
    let pair = parts.next()?.trim();
    let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
    if ours.iter().any(|o| name.eq_ignore_ascii_case(o)) || name.starts_with("db_") {
        return None;
    }
    let mut out = pair.to_string();
    for a in parts {
        let a = a.trim();
        let key = a.split_once('=').map_or(a, |(k, _)| k).trim();
        if key.eq_ignore_ascii_case("domain") || a.is_empty() {
            continue;
        }
        out.push_str("; ");
        out.push_str(a);
    }
    Some(out)
}

/// The response headers as the browser gets them: hop-by-hop gone, a redirect
/// to the device's own address moved onto its origin (one elsewhere is left
/// alone: the browser has no cookie for another origin), cookies held to the
/// origin.
pub fn to_browser(h: &HeaderMap, origin_base: &str, device_base: &str, ours: &[&str]) -> HeaderMap {
    let mut out = h.clone();
    let upgrade = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut out);
    out.remove(header::SET_COOKIE);
    out.remove(header::STRICT_TRANSPORT_SECURITY);
    if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        let moved = [
            device_base.to_string(),
            format!("{}:{}", device_base, default_port(device_base)),
        ]
        .iter()
        .find_map(|b| {
            loc.strip_prefix(b.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
                .map(|rest| format!("{origin_base}{rest}"))
        });
        if let Some(m) = moved.and_then(|m| HeaderValue::from_str(&m).ok()) {
            out.insert(header::LOCATION, m);
        }
    }
    for v in h.get_all(header::SET_COOKIE) {
        if let Some(c) = v.to_str().ok().and_then(|v| browser_cookie(v, ours))
            && let Ok(c) = HeaderValue::from_str(&c)
        {
            out.append(header::SET_COOKIE, c);
        }
    }
    if let Some(u) = upgrade {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, u);
    }
    out
}

fn default_port(base: &str) -> u16 {
    if base.starts_with("https://") {
        443
    } else {
        80
    }
}

/// Why a request did not reach the device.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the device did not accept a connection: {0}")]
    Connect(std::io::Error),
    #[error("the device did not answer in time")]
    Timeout,
    #[error("the device's answer was not HTTP: {0}")]
    Http(#[from] hyper::Error),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Sends `req` (head already rewritten by [`to_device`], URI a path) over
/// `stream` and answers the device's response; a WebSocket upgrade is spliced
/// through once the device agrees to it (its bytes added to `spliced`).
pub async fn forward<S>(
    stream: S,
    mut req: Request<Body>,
    spliced: Arc<AtomicI64>,
) -> Result<Response<hyper::body::Incoming>, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let browser_upgrade = is_websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "device connection ended");
        }
    });
    let mut resp = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| ProxyError::Timeout)??;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(browser) = browser_upgrade
    {
        let device = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(b), Ok(d)) = (browser.await, device.await) {
                let mut b = TokioIo::new(b);
                let mut d = TokioIo::new(d);
                if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut b, &mut d).await {
                    let n = i64::try_from(up.saturating_add(down)).unwrap_or(i64::MAX);
                    spliced.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
    }
    Ok(resp)
}

/// `body` as it streams, its data bytes added to `counter`; `hold` (a place
/// among the requests one peer carries at once) is given back when the body
/// is done or dropped.
pub fn counted<B>(
    body: B,
    counter: Arc<AtomicI64>,
    hold: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Body
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
        let _held = &hold;
        if let Some(d) = f.data_ref() {
            counter.fetch_add(
                i64::try_from(d.len()).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
        }
        f
    }))
}

/// The request line's target for the device: path and query only.
pub fn path_only(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[&str] = &[crate::web::origin::COOKIE];

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_device_never_gets_our_credentials_and_sees_its_own_host() {
        let h = headers(&[
            ("host", "abc.web.localhost:8443"),
            ("authorization", "Bearer dbs_secret"),
            (
                "cookie",
                "__Host-drawbridge-web=dbc_x; hmi_session=42; db_session=dbs_y",
            ),
            ("cookie", "lang=de"),
            ("origin", "https://abc.web.localhost:8443"),
            ("referer", "https://abc.web.localhost:8443/login?x=1"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("accept", "text/html"),
        ]);
        let out = to_device(
            &h,
            "https://abc.web.localhost:8443",
            "http://192.168.1.10",
            OURS,
        );
        assert_eq!(out["host"], "192.168.1.10");
        assert!(out.get("authorization").is_none());
        assert_eq!(out["cookie"], "hmi_session=42; lang=de");
        assert_eq!(out["origin"], "http://192.168.1.10");
        assert_eq!(out["referer"], "http://192.168.1.10/login?x=1");
        assert!(out.get("x-private").is_none() && out.get("connection").is_none());
        assert!(out.get("x-forwarded-for").is_none());
        assert_eq!(out["accept"], "text/html");
        let only_ours = headers(&[("cookie", "__Host-drawbridge-web=dbc_x")]);
        assert!(
            to_device(&only_ours, "o", "http://d", OURS)
                .get("cookie")
                .is_none()
        );
    }

    #[test]
    fn a_websocket_upgrade_passes_with_its_own_connection_headers() {
        let h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        let out = to_device(&h, "o", "http://192.168.1.10:8080", OURS);
        assert_eq!(out["host"], "192.168.1.10:8080");
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["sec-websocket-key"], "k");
    }

    #[test]
    fn redirects_to_the_device_move_onto_its_origin_and_others_stay() {
        let o = "https://abc.web.localhost:8443";
        let d = "http://192.168.1.10";
        for (loc, want) in [
            (
                "http://192.168.1.10/start",
                "https://abc.web.localhost:8443/start",
            ),
            (
                "http://192.168.1.10:80/a?b",
                "https://abc.web.localhost:8443/a?b",
            ),
            ("http://192.168.1.10", "https://abc.web.localhost:8443"),
            ("/relative", "/relative"),
            ("http://192.168.1.100/x", "http://192.168.1.100/x"),
            (
                "https://other.web.localhost:8443/",
                "https://other.web.localhost:8443/",
            ),
        ] {
            let out = to_browser(&headers(&[("location", loc)]), o, d, OURS);
            assert_eq!(out["location"], want, "{loc}");
        }
    }

    #[test]
    fn device_cookies_stay_on_the_device_origin_and_cannot_replace_ours() {
        let h = headers(&[
            (
                "set-cookie",
                "hmi=1; Domain=web.localhost; Path=/; HttpOnly",
            ),
            ("set-cookie", "__Host-drawbridge-web=evil; Path=/; Secure"),
            ("set-cookie", "db_session=evil; Path=/"),
            ("set-cookie", "lang=de;domain=.localhost"),
            (
                "strict-transport-security",
                "max-age=63072000; includeSubDomains",
            ),
        ]);
        let out = to_browser(&h, "o", "http://d", OURS);
        let cookies: Vec<&str> = out
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, vec!["hmi=1; Path=/; HttpOnly", "lang=de"]);
        assert!(
            out.get("strict-transport-security").is_none(),
            "a device may not pin HSTS on the web domain"
        );
    }
}
