//! Browser access types: how a device serves a web UI on one of its released
//! targets, and opening it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddrV4;
use utoipa::ToSchema;

/// How a device serves a web UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebScheme {
    Http,
    Https,
    /// A VNC server (RFB): opened as a desktop in the browser (noVNC).
    Vnc,
    /// An RDP server: opened as a desktop in the browser (IronRDP's web client).
    Rdp,
}

impl WebScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            WebScheme::Http => "http",
            WebScheme::Https => "https",
            WebScheme::Vnc => "vnc",
            WebScheme::Rdp => "rdp",
        }
    }

    /// A remote desktop (VNC or RDP), opened in the server's viewer rather
    /// than proxied as a web page.
    pub fn is_desktop(self) -> bool {
        matches!(self, WebScheme::Vnc | WebScheme::Rdp)
    }
}

impl std::str::FromStr for WebScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(WebScheme::Http),
            "https" => Ok(WebScheme::Https),
            "vnc" => Ok(WebScheme::Vnc),
            "rdp" => Ok(WebScheme::Rdp),
            _ => Err(format!("{s:?} is not http, https, vnc or rdp")),
        }
    }
}

/// Where a browser starts on a device's web UI: `/` and up to 200 visible
/// ASCII characters (no spaces, no controls), so it is safe in a `Location`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebPath(String);

crate::string_schema!(
    WebPath,
    "A path on the device's web server, starting with /.",
    Some(1),
    Some(WebPath::MAX),
    Some("^/[\\x21-\\x7e]*$")
);

impl WebPath {
    pub const MAX: usize = 200;
    pub fn root() -> WebPath {
        WebPath("/".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for WebPath {
    fn default() -> Self {
        WebPath::root()
    }
}

impl TryFrom<String> for WebPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err("a web path starts with /".into());
        }
        if s.len() > Self::MAX {
            return Err(format!("a web path has at most {} characters", Self::MAX));
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("a web path holds visible ASCII characters only".into());
        }
        Ok(WebPath(s))
    }
}

impl From<WebPath> for String {
    fn from(p: WebPath) -> String {
        p.0
    }
}

impl fmt::Display for WebPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WebPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A device's web UI on one of its released TCP targets: the portal shows
/// "Open in browser" next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebService {
    /// The LAN address `ip:port`; the device's firewall must release TCP to it.
    #[schema(value_type = String, example = "192.168.1.10:80")]
    pub target: SocketAddrV4,
    pub scheme: WebScheme,
    /// Where the browser starts (default `/`).
    #[serde(default)]
    pub path: WebPath,
}

/// Open a device's released web service in the browser (browser access).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenWeb {
    #[schema(max_length = 64)]
    pub device_id: String,
    /// The released TCP target: the device's LAN address `ip:port`, as the session lists it.
    #[schema(value_type = String, example = "192.168.1.10:80")]
    pub target: SocketAddrV4,
}

/// Where the browser goes: the device origin's one-time entry link (valid 60 s).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenedWeb {
    pub url: String,
    pub origin: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_web_path_is_a_bounded_visible_path() {
        for ok in ["/", "/hmi/index.html?lang=de", "/a%20b"] {
            assert!(WebPath::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "hmi",
            "/a b",
            "/a\r\nSet-Cookie: x=1",
            "/ä",
            &format!("/{}", "a".repeat(200)),
        ] {
            assert!(WebPath::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        let s: WebService =
            serde_json::from_str(r#"{"target":"192.168.1.10:80","scheme":"https"}"#).unwrap();
        assert_eq!(s.path.as_str(), "/");
        assert!(
            serde_json::from_str::<WebService>(r#"{"target":"192.168.1.10:80","scheme":"ftp"}"#)
                .is_err()
        );
    }
}
