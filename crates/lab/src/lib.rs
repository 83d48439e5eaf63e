//! Drawbridge's network lab: root-only tests that build small networks out of
//! network namespaces, veth pairs and nftables, run the real binaries inside them,
//! and tear everything down again.
//!
//! Without root (or without `ip`), a lab test prints a visible SKIPPED line and
//! passes; with `DRAWBRIDGE_REQUIRE_LAB=1` (set by `scripts/test` when it runs
//! as root) it fails instead, so CI cannot silently skip it.

pub mod netns;
pub mod plc;
pub mod procs;
pub mod stream;
pub mod topology;

pub use netns::{Netns, NsRuntime, veth};
pub use procs::{Api, Client, Edge, Proc, Server, wait};
pub use stream::Stream;
pub use topology::{Lab, Nat};

/// Whether the lab can run here; prints why not (or panics when it is required).
pub fn available(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root".to_string())
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        Some("needs /dev/net/tun".to_string())
    } else {
        match std::process::Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => None,
            _ => Some("needs iproute2 (`ip`)".to_string()),
        }
    };
    match why {
        None => true,
        Some(why) => {
            if std::env::var("DRAWBRIDGE_REQUIRE_LAB").is_ok_and(|v| v == "1") {
                panic!("{test}: the network lab is required here but {why}");
            }
            eprintln!("SKIPPED {test}: the network lab {why} (network namespaces, TUN)");
            false
        }
    }
}
