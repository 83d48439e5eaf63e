//! A typed client for the control API (`/api/v1`) over HTTPS, shared by the
//! `drawbridge` command, the edge agent and the load tool.
//!
//! TLS is rustls with the ring provider. The client trusts the system's root
//! certificates plus, optionally, one PEM file (the self-signed server's CA).
//!
//! - [`tls`]: the rustls configuration (system roots plus `--ca-file`).
//! - [`error`]: what can go wrong, and transport errors turned into clear messages.
//! - [`client`]: the [`Client`] (server address, token, request plumbing).
//! - `resources`, `audit`: one method per API call, in the server's resource order.
//! - [`data`]: the data services (tags, historian and mailbox, KPIs and their
//!   event stream, alarms); [`notify`]: notification settings, users' e-mail,
//!   webhooks; [`sse`]: the bounded server-sent-events parser the KPI stream reads with;
//!   [`sso`]: single sign-on (the CLI's device grant, the account's provider and rules).

mod audit;
pub mod client;
pub mod data;
pub mod error;
pub mod notify;
mod resources;
pub mod rtt;
pub mod sse;
pub mod sso;
pub mod tls;

pub use client::{Client, normalize_server};
pub use error::{Error, Result};
pub use tls::tls_config;
