//! What a desktop origin serves: the viewer page and its script (ours), the
//! noVNC files (from the noVNC installed on the server, found or configured;
//! never part of this repository), the WebSocket of the desktop or of a
//! watcher, and a replay origin's recording. Nothing else.

use super::bridge;
use crate::auth::Caller;
use crate::state::AppState;
use crate::web::origin::{Origin, View};
use axum::extract::{FromRequestParts, Request, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};

const PAGE: &str = include_str!("../../assets/desktop/viewer.html");
const MISSING: &str = include_str!("../../assets/desktop/missing.html");
const SCRIPT: &str = include_str!("../../assets/desktop/viewer.js");
const STYLE: &str = include_str!("../../assets/desktop/viewer.css");
/// Where noVNC's files are served on a desktop origin.
const NOVNC_PREFIX: &str = "/.drawbridge/novnc/";
/// Largest noVNC file served.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Where noVNC is looked for when the configuration names no directory:
/// Debian's package, a local install, an npm install next to the server.
pub const NOVNC_SEARCH: [&str; 3] = [
    "/usr/share/novnc",
    "/usr/local/share/novnc",
    "node_modules/@novnc/novnc",
];

/// A directory holding noVNC (its ES module `core/rfb.js`).
pub fn is_novnc(dir: &Path) -> bool {
    dir.join("core/rfb.js").is_file()
}

/// The first noVNC found in [`NOVNC_SEARCH`].
pub fn find_novnc() -> Option<PathBuf> {
    NOVNC_SEARCH.iter().map(PathBuf::from).find(|d| is_novnc(d))
}

fn with_headers(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Scripts only from this origin (ours and noVNC's); the WebSocket and the
    // recording from this origin; noVNC draws on a canvas and uses blob: and
    // data: images for cursors and JPEG rectangles.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
        ),
    );
    r
}

fn text(status: StatusCode, t: &str) -> Response {
    with_headers(
        (status, t.to_string()).into_response(),
        "text/plain; charset=utf-8",
    )
}

fn page(o: &Origin, view_only: bool) -> String {
    let (mode, title) = match &o.recording {
        None => ("desktop", "Desktop"),
        Some((_, View::Watch)) => ("watch", "Watching a desktop"),
        Some((_, View::Replay)) => ("replay", "Desktop recording"),
    };
    PAGE.replace("{{MODE}}", mode)
        .replace("{{VIEW_ONLY}}", if view_only { "true" } else { "false" })
        .replace("{{TITLE}}", &format!("{title} · {}", o.target))
}

/// A file below noVNC's `core/` or `vendor/` (the module tree `rfb.js`
/// imports), by a path of plain segments only.
async fn novnc_file(dir: &Path, rel: &str) -> Response {
    let ok_segment = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let segments: Vec<&str> = rel.split('/').collect();
    if segments.len() > 8
        || !matches!(segments.first(), Some(&"core") | Some(&"vendor"))
        || !segments.iter().all(|s| ok_segment(s))
        || !rel.ends_with(".js")
    {
        return text(StatusCode::NOT_FOUND, "no such file");
    }
    let path = dir.join(rel);
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => {}
        _ => return text(StatusCode::NOT_FOUND, "no such file"),
    }
    match tokio::fs::read(&path).await {
        Ok(b) => with_headers(
            (StatusCode::OK, b).into_response(),
            "text/javascript; charset=utf-8",
        ),
        Err(_) => text(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// A request on a desktop origin (its cookie already checked).
pub async fn serve(state: AppState, caller: Caller, o: Origin, req: Request) -> Response {
    if o.scheme == crate::web::origin::Scheme::Rdp {
        return super::rdp::serve(state, caller, o, req).await;
    }
    let path = req.uri().path().to_string();
    if req.method() != axum::http::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "a desktop origin only answers GET",
        );
    }
    let novnc = state.web.novnc();
    match path.as_str() {
        "/" => match novnc {
            Some(_) => {
                let view_only = super::view_only(&state, &caller, &o.device_id)
                    .await
                    .unwrap_or(true);
                with_headers(
                    (StatusCode::OK, page(&o, view_only)).into_response(),
                    "text/html; charset=utf-8",
                )
            }
            None => with_headers(
                (StatusCode::OK, MISSING).into_response(),
                "text/html; charset=utf-8",
            ),
        },
        "/.drawbridge/viewer.js" => with_headers(
            (StatusCode::OK, SCRIPT).into_response(),
            "text/javascript; charset=utf-8",
        ),
        "/.drawbridge/viewer.css" => with_headers(
            (StatusCode::OK, STYLE).into_response(),
            "text/css; charset=utf-8",
        ),
        "/.drawbridge/websockify" | "/.drawbridge/watch" => {
            let (mut parts, _) = req.into_parts();
            let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
                return text(StatusCode::BAD_REQUEST, "this path takes a WebSocket");
            };
            match (&o.recording, path.as_str()) {
                (None, "/.drawbridge/websockify") => bridge::open(state, caller, o, ws).await,
                (Some((id, View::Watch)), "/.drawbridge/watch") => {
                    let id = id.clone();
                    super::watch::watch(state, id, ws, false).await
                }
                _ => text(StatusCode::NOT_FOUND, "no such path"),
            }
        }
        "/.drawbridge/recording" => match &o.recording {
            Some((id, View::Replay)) => {
                let download = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "download=1"));
                if download {
                    super::download_response(&state, &caller, id).await
                } else {
                    super::replay_stream(&state, &caller, id).await
                }
            }
            _ => text(StatusCode::NOT_FOUND, "no such path"),
        },
        p => match (p.strip_prefix(NOVNC_PREFIX), novnc) {
            (Some(rel), Some(dir)) => novnc_file(&dir, rel).await,
            _ => text(StatusCode::NOT_FOUND, "no such path"),
        },
    }
}
