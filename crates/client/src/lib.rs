//! The `drawbridge` command as a library: the stored login ([`config`]), text
//! tables ([`table`]) and the command line itself ([`cli`]), over the typed API
//! client of `drawbridge-api-client` ([`Client`]).

pub mod cli;
pub mod config;
pub mod connect;
mod prompt;
mod show;
pub mod table;
pub mod wgexport;

use drawbridge_api_client as api;
pub use drawbridge_api_client::Client;

/// What a `drawbridge` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] api::Error),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Bad input or a state the user must fix; the message says how.
    #[error("{0}")]
    User(String),
    /// The session ended while we waited for it or ran its tunnel, without this
    /// process being asked to stop (`reason` is the server's end reason).
    #[error("the session ended: {}", end_text(reason))]
    SessionEnded { reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn user(msg: impl Into<String>) -> Self {
        Error::User(msg.into())
    }

    /// The process exit code for this error: 1 in general, and for a session
    /// that ended on its own one code per kind of end (see [`exit_code_for_end`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::SessionEnded { reason } => exit_code_for_end(reason),
            _ => 1,
        }
    }

    /// A hint printed after the error, when one helps.
    pub fn hint(&self) -> Option<&'static str> {
        use drawbridge_proto::ErrorCode;
        match self {
            Error::Api(api::Error::Api {
                code: ErrorCode::Unauthenticated,
                ..
            }) => Some("run `drawbridge login`"),
            Error::Api(api::Error::Api {
                code: ErrorCode::LoginIncomplete,
                ..
            }) => {
                Some("finish logging in with `drawbridge login` (second factor or password change)")
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! fail {
    ($($t:tt)*) => {
        return Err($crate::Error::User(format!($($t)*)))
    };
}
pub(crate) use fail;

/// Exit codes of `drawbridge connect` (and `session start`) for session ends the
/// user did not ask for; 0 is a stop this process was asked for (Ctrl-C, SIGTERM,
/// `--for-seconds`), 1 an error, 2 a usage error. Documented in `connect --help`
/// and docs/client.md; keep the three in step.
pub fn exit_code_for_end(reason: &str) -> u8 {
    match reason {
        "user" => 3,
        "admin" | "user_disabled" => 4,
        "site_switch" => 5,
        "expiry" => 6,
        "idle_timeout" => 7,
        "edge_offline" => 8,
        "refused" | "approval_timeout" => 9,
        _ => 10,
    }
}

/// A session end reason in words.
fn end_text(reason: &str) -> String {
    match reason {
        "user" => "a user of the session ended it".into(),
        "admin" => "an administrator ended it".into(),
        "user_disabled" => "your user was disabled".into(),
        "site_switch" => "the site switched remote access off".into(),
        "expiry" => "its time is over".into(),
        "idle_timeout" => "it was idle too long".into(),
        "edge_offline" => "the edge went offline".into(),
        "refused" => "the start was refused".into(),
        "approval_timeout" => "nobody approved the start in time".into(),
        other => format!("{other:?}"),
    }
}
