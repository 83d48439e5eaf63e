//! Drawbridge's wire formats, pure: what travels between a peer and a relay (relay
//! frames), what the relay may read of WireGuard (`mac1`, to tell which edge a handshake is
//! for), STUN binding requests and answers, and WireGuard key helpers.
//!
//! No tokio, no sockets, no clock, no WireGuard implementation: both the tunnel engine and
//! the relay link this crate, and the relay links nothing else of the data plane.

pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod stun;
pub mod wgmac;
