//! Kernel TUN interfaces for Drawbridge tunnels (Linux; needs root or CAP_NET_ADMIN).
//!
//! [`TunDevice::create`] makes a TUN interface (`tun-rs`), gives it the overlay address,
//! brings it up and adds one route per prefix through it (rtnetlink, no shell, no
//! `ip` binary). Split tunnel only: nothing but the given prefixes is routed into it,
//! never a default route. The kernel removes the interface and every route through it
//! when the device is dropped, so a process that exits (or crashes) leaves the host's
//! routing table as it was.

mod batch;

pub use batch::{BATCH, RecvBatch, SendBatch};
use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::RouteScope;
use std::net::{Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// Reads the kernel fails one after another before [`TunDevice::recv_batch`] gives up.
pub const MAX_FAILED_READS: u32 = 100;

/// Most routes one device accepts (a session's released targets, bounded by the server).
pub const MAX_ROUTES: usize = 256;

/// Why a TUN device could not be set up.
#[derive(Debug, Error)]
pub enum TunError {
    #[error("TUN mode needs root (or CAP_NET_ADMIN): {0}")]
    Permission(std::io::Error),
    #[error("creating the TUN interface: {0}")]
    Create(std::io::Error),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("too many routes ({0}; at most {MAX_ROUTES})")]
    TooManyRoutes(usize),
    #[error("invalid interface name {0:?}")]
    BadName(String),
    #[error("refusing the route {0}: split tunnel only, never a default route")]
    DefaultRoute(IpNet),
}

/// What the interface looks like.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes of `[A-Za-z0-9_-]`); `None` lets the kernel pick.
    pub name: Option<String>,
    /// The local (overlay) address; a /32 on the interface.
    pub address: Ipv4Addr,
    pub mtu: u16,
    /// Prefixes routed into the interface.
    pub routes: Vec<IpNet>,
}

/// A TUN interface; removed with its routes when dropped.
pub struct TunDevice {
    dev: tun_rs::AsyncDevice,
    name: String,
    index: u32,
    offload: bool,
}

/// Whether `n` is a safe interface name: 1–15 bytes of `[A-Za-z0-9_-]`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TunDevice {
    /// Creates the interface, addresses it, brings it up and adds the routes.
    pub async fn create(cfg: &TunConfig) -> Result<Self, TunError> {
        if cfg.routes.len() > MAX_ROUTES {
            return Err(TunError::TooManyRoutes(cfg.routes.len()));
        }
        if let Some(r) = cfg.routes.iter().find(|r| r.prefix_len() == 0) {
            return Err(TunError::DefaultRoute(*r));
        }
        if let Some(n) = &cfg.name
            && !valid_name(n)
        {
            return Err(TunError::BadName(n.clone()));
        }
        let build = |offload: bool| {
            let mut b = tun_rs::DeviceBuilder::new()
                .ipv4(cfg.address, 32u8, None)
                .mtu(cfg.mtu)
                .offload(offload);
            if let Some(n) = &cfg.name {
                b = b.name(n.clone());
            }
            b.build_async()
        };
        // Offloads (TSO on reads, GRO on writes) when the kernel has them; else plain.
        let (dev, offload) = match build(true) {
            Ok(d) => (d, true),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TunError::Permission(e));
            }
            Err(e) => {
                tracing::debug!(error = %e, "TUN offloads unavailable; one packet per system call");
                let d = build(false).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        TunError::Permission(e)
                    } else {
                        TunError::Create(e)
                    }
                })?;
                (d, false)
            }
        };
        let name = dev.name().map_err(TunError::Create)?;
        let index = dev.if_index().map_err(TunError::Create)?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| TunError::Netlink(e.to_string()))?;
        let task = tokio::spawn(conn);
        let result = async {
            handle
                .link()
                .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| TunError::Netlink(format!("bringing {name} up: {e}")))?;
            for r in dedup(&cfg.routes) {
                let msg = match r {
                    IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(n.network(), n.prefix_len())
                        .output_interface(index)
                        .scope(RouteScope::Link)
                        .build(),
                    IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                        .destination_prefix(n.network(), n.prefix_len())
                        .output_interface(index)
                        .build(),
                };
                handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| TunError::Netlink(format!("route {r} via {name}: {e}")))?;
            }
            if offload {
                // Super-packets of at most BATCH segments, so that tun-rs can always
                // split what one read returns (the kernel segments bigger ones).
                let msg = rtnetlink::LinkUnspec::new_with_index(index)
                    .append_extra_attribute(
                        rtnetlink::packet_route::link::LinkAttribute::GsoMaxSegs(BATCH as u32),
                    )
                    .build();
                if let Err(e) = handle.link().set(msg).execute().await {
                    tracing::debug!(interface = %name, error = %e, "gso_max_segs not set; larger super-packets are dropped");
                }
            }
            Ok::<(), TunError>(())
        }
        .await;
        task.abort();
        result?;
        tracing::info!(interface = %name, address = %cfg.address, routes = cfg.routes.len(), offload, "TUN interface up");
        Ok(TunDevice {
            dev,
            name,
            index,
            offload,
        })
    }

    /// The interface name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether the kernel's offloads are on (batched reads and writes).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Waits for the next read and splits it into IP packets (many with offloads on:
    /// see [`RecvBatch`]). Returns how many `batch.packets()` yields. A packet that
    /// cannot be split (e.g. a malformed offload header) is dropped and reading goes on;
    /// an error means the kernel failed [`MAX_FAILED_READS`] reads in a row: the
    /// interface is gone.
    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<usize> {
        batch.set_count(0);
        let mut failures = 0;
        loop {
            let (raw, bufs, sizes) = batch.parts();
            match self.dev.recv_multiple(raw, bufs, sizes, 0).await {
                Ok(n) => {
                    batch.set_count(n);
                    return Ok(n);
                }
                // The read failed in the kernel: the interface may be gone.
                Err(e) if e.raw_os_error().is_some() => {
                    failures += 1;
                    if failures >= MAX_FAILED_READS {
                        return Err(e);
                    }
                    tracing::debug!(interface = %self.name, error = %e, "TUN read failed");
                }
                // A packet tun-rs could not split (a bad offload header, too many
                // segments): that packet is lost, like on a wire; reading goes on.
                Err(e) => {
                    tracing::debug!(interface = %self.name, error = %e, "TUN packet dropped");
                }
            }
        }
    }

    /// Writes the queued packets, coalescing consecutive segments of a TCP flow into
    /// one write when offloads are on; empties the batch. Errors of single writes are
    /// reported after all were tried.
    pub async fn send_batch(&self, batch: &mut SendBatch) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (bufs, gro) = batch.take();
        self.dev
            .send_multiple(gro, bufs, batch::SEND_OFFSET)
            .await
            .map(|_| ())
    }
}

/// The networks of `routes`, each once, host bits cleared.
fn dedup(routes: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for r in routes {
        let n = r.trunc();
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Whether this process may create TUN interfaces (root, or CAP_NET_ADMIN in a
/// namespace that owns the network), as a cheap check before trying.
pub fn have_privileges() -> bool {
    // Effective capabilities from /proc: CAP_NET_ADMIN is bit 12.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
        && std::path::Path::new("/dev/net/tun").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_deduplicated_by_network() {
        let r: Vec<IpNet> = [
            "10.1.2.3/32",
            "10.1.2.3/32",
            "192.168.1.7/24",
            "192.168.1.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let d = dedup(&r);
        assert_eq!(
            d,
            vec![
                "10.1.2.3/32".parse::<IpNet>().unwrap(),
                "192.168.1.0/24".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_default_route_is_refused_before_anything_is_created() {
        let cfg = TunConfig {
            name: Some("dbtest0".into()),
            address: Ipv4Addr::new(100, 64, 0, 2),
            mtu: 1420,
            routes: vec![
                "192.168.1.10/32".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
        };
        assert!(matches!(
            TunDevice::create(&cfg).await,
            Err(TunError::DefaultRoute(_))
        ));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_name("db0"));
        assert!(valid_name("drawbridge-0123"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-name-that-is-too-long"));
        assert!(!valid_name("db 0"));
        assert!(!valid_name("db/0"));
    }
}
