//! Why a bridged VNC connection ended. The messages are shown to users.

use std::fmt;

/// Why the bridge gave up. After any of these the connection is over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RfbError {
    #[error(
        "bad RFB version from the VNC server: {0:?} (this is not a VNC server, or a very old one)"
    )]
    BadServerVersion(String),
    #[error("bad RFB version from the browser: {0:?} (the bridge speaks RFB 3.8)")]
    BadBrowserVersion(String),
    #[error("the VNC server refused the connection: {0}")]
    ServerRefused(String),
    #[error("the VNC server wants a password and none is stored")]
    NoStoredPassword,
    #[error("the VNC server refused the password: {0}")]
    PasswordRefused(String),
    #[error(
        "the VNC server offers no security type the bridge supports (offered: {}); \
         the bridge supports None (1) and VNC Authentication (2)",
        SecurityTypes(.0)
    )]
    UnsupportedSecurity(Vec<u32>),
    #[error("the browser chose security type {chosen}, but the bridge offered only {offered}")]
    BrowserSecurityType { chosen: u8, offered: u8 },
    #[error("the VNC server sent a reason string of {len} bytes (limit {limit})")]
    ReasonTooLong { len: u32, limit: u32 },
    #[error("the VNC server sent a desktop name of {len} bytes (limit {limit})")]
    NameTooLong { len: u32, limit: u32 },
    #[error("the VNC server sent more than {limit} bytes ahead of the handshake")]
    ServerHandshakeTooLong { limit: usize },
    #[error("the browser sent more than {limit} bytes ahead of the handshake")]
    BrowserHandshakeTooLong { limit: usize },
    #[error("client message too long: {message} with {count} {unit} (limit {limit})")]
    ClientMessageTooLong {
        message: &'static str,
        count: u64,
        unit: &'static str,
        limit: u64,
    },
    #[error("unknown client message type {0}")]
    UnknownClientMessage(u8),
    #[error("unknown client message type 255 (QEMU) with submessage type {0}")]
    UnknownQemuMessage(u8),
    #[error("unknown client message type 255 (QEMU audio) with operation {0}")]
    UnknownQemuAudioOperation(u16),
    #[error("the bridge already stopped after an error")]
    Finished,
}

/// Security type numbers with the names of the ones users may recognise.
struct SecurityTypes<'a>(&'a [u32]);

impl fmt::Display for SecurityTypes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match security_type_name(*t) {
                Some(name) => write!(f, "{t} {name}")?,
                None => write!(f, "{t}")?,
            }
        }
        Ok(())
    }
}

fn security_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        1 => "None",
        2 => "VNC Authentication",
        5 | 6 | 13 => "RSA-AES",
        16 => "Tight",
        18 => "TLS",
        19 => "VeNCrypt",
        20 => "SASL",
        22 => "xvp",
        30 => "Apple Diffie-Hellman",
        35 => "Apple",
        113 => "MSLogonII",
        129 | 130 | 133 => "RSA-AES-256",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_security_names_the_offered_types() {
        let message = RfbError::UnsupportedSecurity(vec![19, 18, 200]).to_string();
        assert!(message.starts_with("the VNC server offers no security type the bridge supports"));
        assert!(
            message.contains("(offered: 19 VeNCrypt, 18 TLS, 200)"),
            "{message}"
        );
    }

    #[test]
    fn password_messages_read_as_the_brief_says() {
        assert_eq!(
            RfbError::NoStoredPassword.to_string(),
            "the VNC server wants a password and none is stored"
        );
        assert_eq!(
            RfbError::PasswordRefused("Authentication failure".into()).to_string(),
            "the VNC server refused the password: Authentication failure"
        );
        assert_eq!(
            RfbError::UnknownClientMessage(7).to_string(),
            "unknown client message type 7"
        );
    }
}
