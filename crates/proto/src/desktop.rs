//! Browser desktops (VNC and RDP through a session's tunnel): their
//! recordings, the list of them, and stored credentials.

use crate::RecordingMode;
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// A desktop opened in a browser, and its recording.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DesktopRecording {
    pub id: String,
    pub session_id: String,
    pub device_id: String,
    #[schema(value_type = String, example = "192.168.1.20:5900")]
    pub target: SocketAddrV4,
    /// Who had the desktop.
    pub user_id: String,
    /// Input was dropped (the user's grant is `monitor`).
    pub view_only: bool,
    /// Still open.
    pub live: bool,
    /// The account's recording setting when it opened.
    pub mode: RecordingMode,
    /// Stored to its end (false: off, or stopped at a failure or the size limit).
    pub recorded: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Bytes of recording stored.
    pub bytes: u64,
    /// SHA-256 (hex) of the whole recording, set when it ends; also on the audit chain.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// `GET /api/v1/desktops`: newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DesktopQuery {
    /// Only open desktops (true) or only ended ones (false).
    #[serde(default)]
    pub live: Option<bool>,
    /// Only this session's.
    #[serde(default)]
    #[param(max_length = 64)]
    pub session_id: Option<String>,
    /// 1-500, default 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// `PUT /api/v1/devices/{id}/desktop-passwords`: store (or with `null`, forget)
/// the credentials of one of the device's desktops: a VNC password, or for an
/// RDP desktop a user name, password and optional domain (injected by the
/// server; RDP servers with TLS security only, not NLA). They are never shown
/// again.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDesktopPassword {
    #[schema(value_type = String, example = "192.168.1.20:5900")]
    pub target: SocketAddrV4,
    /// VNC: 1-64 characters (VNC uses the first 8). RDP: 1-255 UTF-16 code
    /// units. `null` forgets what is stored.
    #[schema(max_length = 255)]
    pub password: Option<String>,
    /// RDP only, required with a password: 1-255 UTF-16 code units.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub username: Option<String>,
    /// RDP only, optional: up to 255 UTF-16 code units.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub domain: Option<String>,
}

impl std::fmt::Debug for SetDesktopPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetDesktopPassword")
            .field("target", &self.target)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username.as_ref().map(|_| "<redacted>"))
            .field("domain", &self.domain.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SetDesktopPassword {
    /// Longest VNC password, in characters.
    pub const MAX: usize = 64;
    /// Longest RDP domain, user name or password, in UTF-16 code units (a
    /// TS_INFO_PACKET field holds 512 bytes with its terminator).
    pub const MAX_RDP: usize = 255;

    /// Checks the request for a VNC (`rdp` false) or an RDP desktop: bounded
    /// lengths, no control characters, a user name with an RDP password and
    /// none for VNC, nothing but the target to forget.
    pub fn check(&self, rdp: bool) -> Result<(), String> {
        let blank = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        let Some(p) = &self.password else {
            if !blank(&self.username) || !blank(&self.domain) {
                return Err("forgetting stored credentials takes no user name or domain".into());
            }
            return Ok(());
        };
        if !rdp {
            if !blank(&self.username) || !blank(&self.domain) {
                return Err("a VNC desktop takes a password only (no user name or domain)".into());
            }
            if p.is_empty() || p.chars().count() > Self::MAX {
                return Err(format!("a VNC password has 1 to {} characters", Self::MAX));
            }
            if p.chars().any(char::is_control) {
                return Err("a VNC password has no control characters".into());
            }
            return Ok(());
        }
        let user = self.username.as_deref().unwrap_or("");
        let domain = self.domain.as_deref().unwrap_or("");
        for (what, v, min) in [
            ("password", p.as_str(), 1),
            ("user name", user, 1),
            ("domain", domain, 0),
        ] {
            let n = v.encode_utf16().count();
            if n < min || n > Self::MAX_RDP {
                return Err(format!(
                    "an RDP {what} has {min} to {} characters",
                    Self::MAX_RDP
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("an RDP {what} has no control characters"));
            }
        }
        Ok(())
    }
}
