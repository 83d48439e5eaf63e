//! The client side of one Drawbridge session's tunnel, as `drawbridge connect`
//! and the server's browser access both run it: the session's join data (from
//! the session channel, or in-process on the server) goes in; out come a
//! tunnel whose peers are the edges of the devices active now, and the
//! candidates to carry to those edges. How the join data and candidates
//! travel, and what the application side of the tunnel is (a userspace
//! dialer, a TUN interface), is the caller's.
//!
//! **Architecture Invariant:** the device list is the server's; a device that
//! is not listed with targets has no peer here (`devices::active_devices`).

pub mod devices;
mod session;

pub use devices::{
    EdgePeer, PeerChanges, active_devices, active_prefixes, active_targets, peer_changes,
};
pub use session::SessionPeer;
