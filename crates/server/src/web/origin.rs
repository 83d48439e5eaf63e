//! Device origins: a random label per (session, device, target, user) under
//! the configured web domain, the one-time handoff that lets a browser in,
//! and the cookie that keeps it in (stored as a hash, tied to the login it
//! was opened with).

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::secret;
use crate::state::AppState;
use drawbridge_proto::{Action, Protocol, SessionState, Target};
use rand::Rng;
use sqlx::Row;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

/// How long a handoff token may wait for the browser.
pub const HANDOFF_SECS: i64 = 60;
/// Characters of a label: enough randomness that labels cannot be guessed
/// (20 of 36 symbols ≈ 103 bits), short enough for a DNS label.
pub const LABEL_LEN: usize = 20;
/// The cookie a device origin sets for itself (`__Host-`: this origin only, Secure, Path=/).
pub const COOKIE: &str = "__Host-drawbridge-web";
/// The path on a device origin that takes the handoff token.
pub const ENTER_PATH: &str = "/.drawbridge/enter";

pub use drawbridge_proto::api::WebScheme as Scheme;

fn parse_scheme(s: &str) -> Option<Scheme> {
    s.parse().ok()
}

/// How an origin shows a desktop recording (its `scheme` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The desktop as it happens, read-only.
    Watch,
    /// The stored recording, with a time slider.
    Replay,
}

impl View {
    pub fn as_str(self) -> &'static str {
        match self {
            View::Watch => "watch",
            View::Replay => "replay",
        }
    }
}

/// One device origin as stored.
#[derive(Debug, Clone)]
pub struct Origin {
    pub label: String,
    pub account_id: String,
    pub session_id: String,
    pub device_id: String,
    pub target: SocketAddrV4,
    pub scheme: Scheme,
    pub user_id: String,
    /// For an origin that watches or replays a desktop: the recording and how.
    pub recording: Option<(String, View)>,
}

/// A fresh label: lowercase letters and digits only.
pub fn new_label() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..LABEL_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// True for a string that can be a label (checked before any lookup).
pub fn is_label(s: &str) -> bool {
    s.len() == LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The single TCP address a released target names, if it names exactly one
/// host and one port.
fn single_tcp(t: &Target) -> Option<SocketAddrV4> {
    let IpAddr::V4(ip) = t.address.addr() else {
        return None;
    };
    let ports = t.ports?;
    (t.protocol == Protocol::Tcp && t.address.prefix_len() == 32 && ports.start == ports.end)
        .then(|| SocketAddrV4::new(ip, ports.start))
}

/// Whether TCP to `target` is released by these targets.
pub fn released(targets: &[Target], target: SocketAddrV4) -> bool {
    let want = Target {
        address: ipnet::IpNet::V4(ipnet::Ipv4Net::from(*target.ip())),
        protocol: Protocol::Tcp,
        ports: Some(drawbridge_proto::PortRange::single(target.port())),
    };
    target.port() != 0 && targets.iter().any(|t| t.covers(&want))
}

/// The web targets a session releases on a device: its single-host TCP
/// targets, for the portal's "Open" buttons.
pub fn web_targets(targets: &[Target]) -> Vec<SocketAddrV4> {
    targets.iter().filter_map(single_tcp).collect()
}

/// Refuses unless the caller may use sessions, is assigned to the active
/// session `session_id`, and the session releases TCP to `target` (the
/// device's real LAN address) on `device_id`. Answers the address the
/// server's peer dials for it: the same, or its virtual one under 1:1 NAT.
pub async fn check_target(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    device_id: &str,
    target: SocketAddrV4,
) -> AppResult<SocketAddrV4> {
    caller
        .require(state, Action::UseSessions, "session.web")
        .await?;
    let mut conn = state.store.pool.acquire().await?;
    let s = crate::sessions::load(&mut conn, &caller.account_id, session_id).await?;
    if !s.users.contains(&caller.user_id) {
        return Err(AppError::not_found("session"));
    }
    if s.state != SessionState::Active {
        return Err(AppError::conflict(
            "only an active session reaches its devices; start it first",
        ));
    }
    let Some(d) = s.devices.iter().find(|d| d.device_id == device_id) else {
        return Err(AppError::not_found("device"));
    };
    let row = sqlx::query("SELECT nat FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_one(&mut *conn)
        .await?;
    let nat: Vec<drawbridge_proto::NatMapping> = crate::records::json_col(&row, "nat")?;
    if !released(&d.targets, target) {
        return Err(AppError::invalid(format!(
            "{target} is not a released TCP target of this device in this session"
        )));
    }
    let one = Target {
        address: ipnet::IpNet::V4(ipnet::Ipv4Net::from(*target.ip())),
        protocol: Protocol::Tcp,
        ports: Some(drawbridge_proto::PortRange::single(target.port())),
    };
    let view = crate::live::state::client_view(&[one], &nat);
    match view.first().map(|t| t.address.addr()) {
        Some(IpAddr::V4(ip)) => Ok(SocketAddrV4::new(ip, target.port())),
        _ => Err(AppError::internal(anyhow::anyhow!(
            "1:1 NAT view of {target}"
        ))),
    }
}

/// Opens (or re-opens) the caller's origin for `target` on `device_id` in
/// session `session_id`, and makes a one-time handoff token for it. The caller
/// must be assigned to the session, the session active, and the target
/// released for the device.
pub async fn open(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    device_id: &str,
    target: SocketAddrV4,
    scheme: Scheme,
    path: &drawbridge_proto::web::WebPath,
) -> AppResult<(String, String)> {
    check_target(state, caller, session_id, device_id, target).await?;
    let key = OriginKey {
        session_id,
        device_id,
        target,
        recording_id: "",
    };
    let ev = caller
        .event("web.open", &format!("session:{session_id}"))
        .details(serde_json::json!({
            "username": caller.username, "device_id": device_id,
            "target": target.to_string(), "scheme": scheme.as_str(),
        }));
    open_origin(state, caller, &key, scheme.as_str(), path.as_str(), ev).await
}

/// What one origin is for: with a recording, a view of it.
pub struct OriginKey<'a> {
    pub session_id: &'a str,
    pub device_id: &'a str,
    pub target: SocketAddrV4,
    pub recording_id: &'a str,
}

/// Opens (or re-opens) the caller's origin of `key` showing a recording (of
/// an RDP desktop when `rdp`); the caller's rights are checked by the route.
pub async fn open_view(
    state: &AppState,
    caller: &Caller,
    key: &OriginKey<'_>,
    view: View,
    rdp: bool,
    ev: crate::audit::Event,
) -> AppResult<(String, String)> {
    let scheme = match (rdp, view) {
        (false, v) => v.as_str(),
        (true, View::Watch) => "rdp-watch",
        (true, View::Replay) => "rdp-replay",
    };
    open_origin(state, caller, key, scheme, "/", ev).await
}

async fn open_origin(
    state: &AppState,
    caller: &Caller,
    key: &OriginKey<'_>,
    scheme: &str,
    path: &str,
    ev: crate::audit::Event,
) -> AppResult<(String, String)> {
    let now = state.now();
    let handoff = secret::new_token("dbw_");
    let target = key.target.to_string();
    let mut tx = state.store.begin().await?;
    // One origin per (session, device, target, user, recording), made by the
    // first open; opens at the same moment meet in the unique index and share it.
    sqlx::query(
        "INSERT INTO web_origins (label, account_id, session_id, device_id, target, scheme, user_id, created_at, path, recording_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (session_id, device_id, target, user_id, recording_id) DO UPDATE SET scheme = excluded.scheme, path = excluded.path",
    )
    .bind(new_label())
    .bind(&caller.account_id)
    .bind(key.session_id)
    .bind(key.device_id)
    .bind(&target)
    .bind(scheme)
    .bind(&caller.user_id)
    .bind(now)
    .bind(path)
    .bind(key.recording_id)
    .execute(&mut *tx)
    .await?;
    let label: String = sqlx::query_scalar(
        "SELECT label FROM web_origins WHERE session_id = $1 AND device_id = $2 AND target = $3 AND user_id = $4 AND recording_id = $5",
    )
    .bind(key.session_id)
    .bind(key.device_id)
    .bind(&target)
    .bind(&caller.user_id)
    .bind(key.recording_id)
    .fetch_one(&mut *tx)
    .await?;
    // Expired links go as new ones come: the table holds no more than a minute's opens.
    sqlx::query("DELETE FROM web_handoffs WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO web_handoffs (handoff_hash, label, token_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(secret::token_hash(&handoff))
    .bind(&label)
    .bind(&caller.token_id)
    .bind(now + HANDOFF_SECS)
    .execute(&mut *tx)
    .await?;
    crate::audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok((label, handoff))
}

/// Takes a handoff token for `label` (once, before it expires) and answers the
/// cookie value for the browser and the path it starts at. Anything else is
/// refused without a hint.
pub async fn enter(state: &AppState, label: &str, handoff: &str) -> AppResult<(String, String)> {
    let now = state.now();
    let refused = || {
        AppError::new(
            drawbridge_proto::ErrorCode::Unauthenticated,
            "this link was used or has expired; open the device again from the portal",
        )
    };
    if handoff.len() > 128 {
        return Err(refused());
    }
    let mut tx = state.store.begin().await?;
    let hash = secret::token_hash(handoff);
    let row = sqlx::query(
        "SELECT h.token_id, o.path FROM web_handoffs h JOIN web_origins o ON o.label = h.label
         WHERE h.handoff_hash = $1 AND h.label = $2 AND h.expires_at >= $3",
    )
    .bind(&hash)
    .bind(label)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(refused());
    };
    let token_id: String = row.try_get(0)?;
    let path: String = row.try_get(1)?;
    // Taken once: of two browsers racing with one link, one deletes the row.
    let taken = sqlx::query("DELETE FROM web_handoffs WHERE handoff_hash = $1")
        .bind(&hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if taken != 1 {
        return Err(refused());
    }
    let cookie = secret::new_token("dbc_");
    sqlx::query("INSERT INTO web_cookies (cookie_hash, label, token_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(secret::token_hash(&cookie))
        .bind(label)
        .bind(&token_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((cookie, path))
}

/// The origin and the caller behind a browser's cookie for `label`: the login
/// the origin was opened with must still be valid (not revoked, expired or
/// idle; the user not disabled).
pub async fn lookup(
    state: &AppState,
    label: &str,
    cookie: &str,
    source: SocketAddr,
) -> AppResult<(Origin, Caller)> {
    let row = sqlx::query(
        "SELECT o.label, o.account_id, o.session_id, o.device_id, o.target, o.scheme, o.user_id, o.recording_id, c.token_id
         FROM web_cookies c JOIN web_origins o ON o.label = c.label WHERE c.cookie_hash = $1 AND c.label = $2",
    )
    .bind(secret::token_hash(cookie))
    .bind(label)
    .fetch_optional(&state.store.pool)
    .await?
    .ok_or_else(AppError::unauthenticated)?;
    let scheme: String = row.try_get("scheme")?;
    let origin = Origin {
        label: row.try_get("label")?,
        account_id: row.try_get("account_id")?,
        session_id: row.try_get("session_id")?,
        device_id: row.try_get("device_id")?,
        target: row
            .try_get::<String, _>("target")?
            .parse()
            .map_err(|_| AppError::internal(anyhow::anyhow!("stored web target")))?,
        scheme: match scheme.as_str() {
            "watch" | "replay" => Scheme::Vnc,
            "rdp-watch" | "rdp-replay" => Scheme::Rdp,
            s => parse_scheme(s)
                .ok_or_else(|| AppError::internal(anyhow::anyhow!("stored web scheme")))?,
        },
        user_id: row.try_get("user_id")?,
        recording: match scheme.as_str() {
            "watch" | "rdp-watch" => Some((row.try_get("recording_id")?, View::Watch)),
            "replay" | "rdp-replay" => Some((row.try_get("recording_id")?, View::Replay)),
            _ => None,
        },
    };
    let token_id: String = row.try_get("token_id")?;
    let caller = crate::auth::resolve_id(state, &token_id, source.ip().to_string()).await?;
    if caller.user_id != origin.user_id || caller.account_id != origin.account_id {
        return Err(AppError::unauthenticated());
    }
    Ok((origin, caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_random_dns_safe_and_recognised() {
        let a = new_label();
        let b = new_label();
        assert_ne!(a, b);
        assert!(is_label(&a) && is_label(&b));
        for bad in [
            "",
            "ABCDEFGHIJKLMNOPQRST",
            "abc",
            "abcdefghij-lmnopqrst",
            "abcdefghijklmnopqrstu",
        ] {
            assert!(!is_label(bad), "{bad}");
        }
    }

    #[test]
    fn only_a_released_single_tcp_port_is_a_web_target() {
        let t: Vec<Target> = [
            "tcp:192.168.1.10:80",
            "tcp:192.168.1.0/24:502",
            "udp:192.168.1.20:80",
            "tcp:192.168.1.30:8000-8010",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(web_targets(&t), vec!["192.168.1.10:80".parse().unwrap()]);
        assert!(released(&t, "192.168.1.10:80".parse().unwrap()));
        assert!(
            released(&t, "192.168.1.77:502".parse().unwrap()),
            "inside a released network"
        );
        assert!(released(&t, "192.168.1.30:8005".parse().unwrap()));
        assert!(!released(&t, "192.168.1.10:81".parse().unwrap()));
        assert!(
            !released(&t, "192.168.1.20:80".parse().unwrap()),
            "UDP only"
        );
        assert!(!released(&t, "192.168.1.10:0".parse().unwrap()));
    }
}
