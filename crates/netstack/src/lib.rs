//! Userspace TCP/IP stacks (smoltcp) for both ends of a Drawbridge tunnel.
//!
//! - Edge: [`Forwarder`] terminates the client's TCP, UDP and ICMP echo flows arriving as
//!   inner IPv4 packets, enforces the session's whitelist per packet and flow, applies
//!   1:1 NAT and opens ordinary sockets to the released LAN targets (DESIGN §2, §6).
//! - Client: [`Dialer`] originates TCP connections from the client's overlay address into
//!   the tunnel, for [`forward_local`] (`-L`) and [`socks5`] without root.
//!
//! Both exchange raw IPv4 packets with the tunnel through bounded `mpsc` channels of
//! [`bytes::Bytes`]; a full channel drops (counted), never stalls.
//!
//! ```ignore
//! let (fwd, handle) = Forwarder::new(ForwarderConfig { local_ip, targets, nat, allowed_sources, limits: Limits::default() });
//! tokio::spawn(fwd.run(from_tunnel_rx, to_tunnel_tx));
//!
//! let dialer = Dialer::new(overlay_ip, routes);
//! tokio::spawn(dialer.clone().run(from_tunnel_rx, to_tunnel_tx));
//! tokio::spawn(socks5("127.0.0.1:1080".parse()?, dialer.clone()));
//! let stream = dialer.connect("10.77.1.10:502".parse()?).await?;
//! ```

pub mod dialer;
pub mod forwarder;
#[doc(hidden)]
pub mod fuzz;
pub mod policy;
mod pump;
pub mod rewrite;
pub mod servers;
pub mod stack;
pub mod wire;

pub use dialer::{DialedStream, Dialer};
pub use forwarder::{
    Forwarder, ForwarderConfig, ForwarderHandle, ForwarderStats, Limits, PacketCounters,
};
pub use policy::{DropReason, FlowKey, Policy, Verdict, classify};
pub use servers::{forward_local, forward_local_on, socks5, socks5_on};
pub use stack::{MTU, StackStream};
