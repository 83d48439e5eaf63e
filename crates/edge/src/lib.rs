//! The Drawbridge edge agent.
//!
//! It only ever connects outbound: HTTPS for enrolment, one WebSocket (the edge
//! channel) to the control plane, and the tunnels' UDP and relay connections.
//! Local control (the remote-access switch, on-site approvals, status) goes
//! through files in the agent's state directory, so nothing listens on the
//! plant side.

pub mod agent;
pub mod approval;
pub mod cli;
pub mod data;
pub mod enroll;
pub mod enroll_file;
pub mod kernel;
pub mod local;
pub mod update;

use std::sync::OnceLock;

static VERSION: OnceLock<String> = OnceLock::new();

/// Sets the version this edge reports (in its status, `--version` and update
/// checks); the binary does it first thing. Only the first call counts.
pub fn set_version(v: &str) {
    let _ = VERSION.set(v.to_string());
}

/// The version of this edge: what `set_version` set, else the library's own.
pub fn version() -> &'static str {
    VERSION
        .get()
        .map(String::as_str)
        .unwrap_or(env!("CARGO_PKG_VERSION"))
}
