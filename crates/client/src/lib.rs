//! The `drawbridge` command as a library: a typed client for the control API
//! ([`api`]), the stored login ([`config`]), text tables ([`table`]) and the
//! command line itself ([`cli`]).

pub mod api;
pub mod cli;
pub mod config;
pub mod connect;
mod prompt;
mod show;
pub mod table;
pub mod wgexport;

pub use api::Client;

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
