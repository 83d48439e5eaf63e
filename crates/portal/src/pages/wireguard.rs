//! The official WireGuard apps (phone, Windows) from the session page: the
//! standard wg-quick config that `drawbridge session export-wireguard` writes
//! (`drawbridge_proto::wgconf`), as text, as a file and as a QR code.
//!
//! Two ways. "Make a key for me": the server makes a key pair in memory for this
//! one answer; the private key goes into this page only (the text, a `data:`
//! download link and the QR code): it is never stored, logged or put in a URL,
//! and the page is `no-store`. "Use my app's key" (better): the user pastes the
//! public key their app made and gets the config without a private key.
//! Either way the portal joins the session as the viewer, as a standard client
//! (`standard_client`), through the API: the API decides who may.

use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, after, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use drawbridge_proto::api::Session;
use drawbridge_proto::channel::{JoinRequest, JoinResponse};
use drawbridge_proto::{ApiError, ErrorCode, SessionState, WgKey, wgconf};
use drawbridge_wire::keys;
use std::time::{Duration, Instant};

/// How long a join waits for the session's edges to announce their keys (a
/// session just started: its edges answer within a few seconds).
const EDGE_KEY_WAIT: Duration = Duration::from_secs(15);

#[derive(Template)]
#[template(path = "wireguard.html")]
struct ConfigPage {
    l: Layout,
    id: String,
    session: String,
    /// The config holds a private key made for this page.
    with_private_key: bool,
    config: String,
    /// `data:` URL of the config, for the download link.
    download: String,
    filename: String,
    /// The QR code as an inline `<svg>` (ours, from the `qrcode` crate), or empty.
    qr: String,
    qr_error: String,
}

/// `POST /portal/sessions/{id}/wireguard`: `mode=generate`, or `public_key=…`.
pub async fn make(State(portal): State<Portal>, Path(id): Path<String>, p: Posted) -> Response {
    let back = format!("{PREFIX}/sessions/{}", enc(&id));
    // A pasted key is parsed before anything happens: a bad one changes nothing.
    let pasted = match p.form.opt("public_key") {
        Some(text) => match text.parse::<WgKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                return Flash::error(format!(
                    "That is not a WireGuard public key ({e}). Paste the public key your WireGuard app shows for the new tunnel: 44 characters ending in “=”."
                ))
                .redirect(&back);
            }
        },
        None if p.form.get("mode") == "generate" => None,
        None => {
            return Flash::error(
                "Paste your WireGuard app's public key, or choose “Make a key for me”.",
            )
            .redirect(&back);
        }
    };
    let v = match p.viewer(&portal).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = format!("/api/v1/sessions/{}", enc(&id));
    let s: Session = match v.api.get(&path).await {
        Ok(s) => s,
        Err(e) => return v.fail(&e),
    };
    // As the CLI export: a prepared session is started first.
    let s = match s.state {
        SessionState::Prepared => {
            match v
                .api
                .call::<Session>(Method::POST, &format!("{path}/start"), None)
                .await
            {
                Ok(s) => s,
                Err(e) => return after::<()>(Err(e), &p.headers, &back, ""),
            }
        }
        _ => s,
    };
    match s.state {
        SessionState::Active => {}
        SessionState::PendingApproval => {
            return Flash::error(
                "The session waits for approval (dual control). Come back for the WireGuard configuration once it is active.",
            )
            .redirect(&back);
        }
        _ => {
            return Flash::error("The session has ended: there is nothing to connect to.")
                .redirect(&back);
        }
    }
    // Made only now, for this one answer; dropped when it is sent.
    let (private, public) = match pasted {
        Some(k) => (None, k),
        None => {
            let k = keys::generate_private_key();
            let public = WgKey::from_bytes(keys::public_key(&k));
            (Some(k), public)
        }
    };
    let join = match join(&v.api, &path, public).await {
        Ok(j) => j,
        Err(e) if e.code == ErrorCode::Conflict && e.message.contains("bridge_listen") => {
            return Flash::error(
                "This server runs no UDP bridge for the WireGuard apps: an operator has to set bridge_listen in the server's configuration first.",
            )
            .redirect(&back);
        }
        Err(e) => return after::<()>(Err(e), &p.headers, &back, ""),
    };
    let config = match wgconf::render(private.as_ref(), s.name.as_str(), &join) {
        Ok(c) => c,
        Err(e) => return Flash::error(e.to_string()).redirect(&back),
    };
    let (qr, qr_error) = match crate::qr::svg(&config, 320) {
        Ok(svg) => (svg, String::new()),
        Err(e) => (String::new(), e.to_string()),
    };
    let page = ConfigPage {
        l: v.layout(format!("WireGuard app: {}", s.name)),
        id: s.id.clone(),
        session: s.name.to_string(),
        with_private_key: private.is_some(),
        download: format!(
            "data:application/octet-stream;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&config)
        ),
        filename: file_name(s.name.as_str(), &s.id),
        config,
        qr,
        qr_error,
    };
    let mut res = render(StatusCode::OK, &page, false);
    // The page may hold a private key: no cache keeps it.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Joins as a standard client; retries while an edge of a session that just
/// started has not announced its key yet.
async fn join(
    api: &crate::apiclient::Api,
    path: &str,
    public: WgKey,
) -> Result<JoinResponse, ApiError> {
    let body = JoinRequest {
        public_key: public,
        standard_client: true,
    };
    let deadline = Instant::now() + EDGE_KEY_WAIT;
    loop {
        match api.post(&format!("{path}/join"), &body).await {
            Err(e)
                if e.code == ErrorCode::Conflict
                    && e.message.contains("not announced")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

/// `drawbridge-<session>.conf`: the WireGuard apps name the tunnel after the
/// file, and Windows takes at most 32 of `[A-Za-z0-9_=+.-]`.
fn file_name(session: &str, id: &str) -> String {
    let mut name: String = session
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(21)
        .collect();
    if name.trim_matches(['-', '.']).is_empty() {
        name = id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
    }
    format!("drawbridge-{name}.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_named_for_the_session_within_the_apps_tunnel_name_rules() {
        assert_eq!(file_name("Fix press 1", "x"), "drawbridge-Fix-press-1.conf");
        assert_eq!(
            file_name("Ünïcode «and» a very long name indeed", "x"),
            "drawbridge-ncode-and-a-very-long.conf"
        );
        assert_eq!(file_name("«»", "3f2a9c1e-77"), "drawbridge-3f2a9c1e.conf");
        for n in [
            file_name("a/b\\c:d*e?f\"g<h>i|j", "x"),
            file_name(&"x".repeat(100), "x"),
        ] {
            let stem = n.trim_end_matches(".conf");
            assert!(stem.len() <= 32, "{n}");
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=+.-".contains(c)),
                "{n}"
            );
        }
    }
}
