//! What can go wrong talking to the server, and transport failures (TLS,
//! connect, timeout) turned into errors a person can act on.

use drawbridge_proto::ErrorCode;
use std::path::PathBuf;

/// Everything that can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with its JSON error body: its message is for people
    /// (the stable code is for programs: `code()`, and `--json` callers).
    #[error("{}", human(*code, message))]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error(
        "the server's certificate is not trusted: pass --ca-file with the server's CA (printed by drawbridge-server at start) ({detail})"
    )]
    UntrustedCertificate { detail: String },
    #[error("the server's certificate is not valid for {host} ({detail}); check the server URL")]
    CertificateNameMismatch { host: String, detail: String },
    #[error("cannot reach {server}: {detail}")]
    Connect { server: String, detail: String },
    #[error("{server} did not answer in time")]
    Timeout { server: String },
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("unexpected answer from the server (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
    #[error("request failed: {0}")]
    Http(String),
}

/// An API error as a line for people: the server's message, led in by what
/// happened where the message alone would not say it.
fn human(code: ErrorCode, message: &str) -> String {
    let lead = match code {
        ErrorCode::BadRequest => "the server could not read the request",
        ErrorCode::PayloadTooLarge => "the request is too large",
        ErrorCode::Internal => "the server failed",
        _ if message.trim().is_empty() => match code {
            ErrorCode::Invalid => "a value was not accepted",
            ErrorCode::Unauthenticated => "not logged in",
            ErrorCode::LoginFailed => "login failed",
            ErrorCode::LoginIncomplete => "the login is not finished",
            ErrorCode::Forbidden => "your role or grants do not allow this",
            ErrorCode::NotFound => "not found",
            ErrorCode::Conflict => "not possible in the current state",
            ErrorCode::PasswordPolicy => "the password does not meet the policy",
            ErrorCode::RateLimited => "too many attempts; try again later",
            _ => "the code or key was not accepted",
        },
        _ => return message.to_string(),
    };
    if message.trim().is_empty() || message == lead {
        lead.to_string()
    } else {
        format!("{lead}: {message}")
    }
}

impl Error {
    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A transport failure talking to the server at `base` as an [`Error`]:
/// certificate trouble, connect failures and timeouts each get their own kind.
pub(crate) fn from_transport(base: &str, e: reqwest::Error) -> Error {
    if let Some(tls) = find_rustls_error(&e) {
        return match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            ) => Error::CertificateNameMismatch {
                host: url::Url::parse(base)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default(),
                detail: tls.to_string(),
            },
            rustls::Error::InvalidCertificate(_) => Error::UntrustedCertificate {
                detail: tls.to_string(),
            },
            other => Error::Connect {
                server: base.to_string(),
                detail: format!("TLS: {other}"),
            },
        };
    }
    if e.is_timeout() {
        return Error::Timeout {
            server: base.to_string(),
        };
    }
    if e.is_connect() {
        return Error::Connect {
            server: base.to_string(),
            detail: root_cause(&e),
        };
    }
    Error::Http(chain_text(&e))
}

/// The first rustls error in an error's chain (looking inside `io::Error`s too).
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error::source() skips the wrapped error itself; look at it directly.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_rustls_error(inner))
        {
            return Some(inner);
        }
        cur = err.source();
    }
    None
}

pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The innermost error's message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_messages_without_raw_codes() {
        let e = |code, message: &str| {
            Error::Api {
                status: 400,
                code,
                message: message.into(),
            }
            .to_string()
        };
        let shown = e(
            ErrorCode::InvalidCode,
            "the code or key is wrong, expired or already used",
        );
        assert_eq!(shown, "the code or key is wrong, expired or already used");
        assert_eq!(
            e(ErrorCode::Forbidden, ""),
            "your role or grants do not allow this"
        );
        assert_eq!(
            e(ErrorCode::BadRequest, "missing field `name`"),
            "the server could not read the request: missing field `name`"
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Invalid,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthenticated,
            ErrorCode::LoginFailed,
            ErrorCode::LoginIncomplete,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::PasswordPolicy,
            ErrorCode::InvalidCode,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            for m in ["", "some message"] {
                let shown = e(code, m);
                assert!(!shown.contains(code.as_str()), "{shown}");
                assert!(!shown.is_empty());
            }
        }
    }
}
