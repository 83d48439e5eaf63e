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
pub mod rtt;
