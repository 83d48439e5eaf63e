//! Browser desktops (VNC through a session's tunnel): their recordings, the
//! list of them, and stored VNC passwords.

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
/// the VNC password of one of the device's desktops. It is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDesktopPassword {
    #[schema(value_type = String, example = "192.168.1.20:5900")]
    pub target: SocketAddrV4,
    /// 1-64 characters (VNC uses the first 8); `null` forgets it.
    #[schema(max_length = 64)]
    pub password: Option<String>,
}

impl SetDesktopPassword {
    pub const MAX: usize = 64;
    /// The password is 1-64 characters without control characters.
    pub fn check(&self) -> Result<(), String> {
        match &self.password {
            Some(p) if p.is_empty() || p.chars().count() > Self::MAX => {
                Err(format!("a VNC password has 1 to {} characters", Self::MAX))
            }
            Some(p) if p.chars().any(char::is_control) => {
                Err("a VNC password has no control characters".into())
            }
            _ => Ok(()),
        }
    }
}
