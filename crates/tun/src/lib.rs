//! Kernel TUN interfaces for Drawbridge tunnels (Linux; needs root or CAP_NET_ADMIN).
//!
//! [`TunDevice::create`] makes a TUN interface (`tun-rs`), gives it the overlay address,
//! brings it up and adds one route per prefix through it (rtnetlink, no shell, no
//! `ip` binary). Split tunnel only: nothing but the given prefixes is routed into it,
//! never a default route. The kernel removes the interface and every route through it
//! when the device is dropped, so a process that exits (or crashes) leaves the host's
//! routing table as it was. [`TunDevice::routes`] changes the routes of a running
//! interface ([`TunRoutes::set`]: what [`route_changes`] says, nothing else).

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
    /// The routes made at creation.
    routes: Vec<IpNet>,
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
        check_routes(&cfg.routes)?;
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
                add_route(&handle, index, &name, r).await?;
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
            routes: dedup(&cfg.routes),
        })
    }

    /// A handle that changes the interface's routes while packets flow (the
    /// device itself may be moved into its packet loop).
    pub fn routes(&self) -> TunRoutes {
        TunRoutes {
            name: self.name.clone(),
            index: self.index,
            current: self.routes.clone(),
        }
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

/// The split-tunnel rules every set of routes obeys: at most [`MAX_ROUTES`],
/// never a default route.
fn check_routes(routes: &[IpNet]) -> Result<(), TunError> {
    if routes.len() > MAX_ROUTES {
        return Err(TunError::TooManyRoutes(routes.len()));
    }
    if let Some(r) = routes.iter().find(|r| r.prefix_len() == 0) {
        return Err(TunError::DefaultRoute(*r));
    }
    Ok(())
}

/// The netlink message of the route `r` through interface `index`.
fn route_message(index: u32, r: IpNet) -> rtnetlink::packet_route::route::RouteMessage {
    match r {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .build(),
    }
}

async fn add_route(
    handle: &rtnetlink::Handle,
    index: u32,
    name: &str,
    r: IpNet,
) -> Result<(), TunError> {
    handle
        .route()
        .add(route_message(index, r))
        .replace()
        .execute()
        .await
        .map_err(|e| TunError::Netlink(format!("route {r} via {name}: {e}")))
}

/// Removes the route `r` through interface `index`; one that is gone already is
/// no error.
async fn remove_route(
    handle: &rtnetlink::Handle,
    index: u32,
    name: &str,
    r: IpNet,
) -> Result<(), TunError> {
    match handle.route().del(route_message(index, r)).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ESRCH => Ok(()),
        Err(e) => Err(TunError::Netlink(format!(
            "removing route {r} via {name}: {e}"
        ))),
    }
}

/// The kernel's "no such route" (ESRCH).
const ESRCH: i32 = 3;

/// What turns one set of routes into another: the networks to add and those to
/// remove (each once, host bits cleared; a network in both sets is left alone,
/// so flows to it are never disturbed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

impl RouteChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The changes from the routes `old` to the routes `new`.
pub fn route_changes(old: &[IpNet], new: &[IpNet]) -> RouteChanges {
    let (old, new) = (dedup(old), dedup(new));
    RouteChanges {
        add: new.iter().filter(|n| !old.contains(n)).copied().collect(),
        remove: old.iter().filter(|o| !new.contains(o)).copied().collect(),
    }
}

/// The routes of a running TUN interface ([`TunDevice::routes`]): changed in
/// place, without touching the interface or the routes that stay. Dropping the
/// handle changes nothing; the routes go with the interface.
#[derive(Debug, Clone)]
pub struct TunRoutes {
    name: String,
    index: u32,
    current: Vec<IpNet>,
}

impl TunRoutes {
    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The routes through the interface now.
    pub fn current(&self) -> &[IpNet] {
        &self.current
    }

    /// Routes exactly `wanted` through the interface (same rules as at
    /// creation): adds what is missing, removes what is no longer wanted,
    /// leaves the rest. Returns what changed; on an error, what was done before
    /// it stays done and [`TunRoutes::current`] says so.
    pub async fn set(&mut self, wanted: &[IpNet]) -> Result<RouteChanges, TunError> {
        check_routes(wanted)?;
        let changes = route_changes(&self.current, wanted);
        if changes.is_empty() {
            return Ok(changes);
        }
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| TunError::Netlink(e.to_string()))?;
        let task = tokio::spawn(conn);
        let result = async {
            // Additions first: a wanted network is never without its route, not
            // even for a moment (when a /24 becomes a /32, its packets would
            // otherwise leave by the default route).
            for r in &changes.add {
                add_route(&handle, self.index, &self.name, *r).await?;
                self.current.push(*r);
            }
            for r in &changes.remove {
                remove_route(&handle, self.index, &self.name, *r).await?;
                self.current.retain(|c| c != r);
            }
            Ok::<(), TunError>(())
        }
        .await;
        task.abort();
        result?;
        tracing::info!(interface = %self.name, added = changes.add.len(), removed = changes.remove.len(), "TUN routes changed");
        Ok(changes)
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

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn route_changes_add_the_new_remove_the_gone_and_leave_the_kept() {
        let old = nets(&["192.168.1.10/32", "10.0.0.0/24"]);
        let new = nets(&["10.0.0.7/24", "192.168.2.10/32"]);
        assert_eq!(
            route_changes(&old, &new),
            RouteChanges {
                add: nets(&["192.168.2.10/32"]),
                remove: nets(&["192.168.1.10/32"]),
            },
            "10.0.0.0/24 is kept (same network), the rest swapped"
        );
        assert!(route_changes(&old, &old).is_empty());
        assert_eq!(route_changes(&[], &old).add, old);
        assert_eq!(route_changes(&old, &[]).remove, old);
        // A narrowed network is a different route: the /32 comes, the /24 goes.
        let narrowed = route_changes(&nets(&["10.0.0.0/24"]), &nets(&["10.0.0.5/32"]));
        assert_eq!(narrowed.add, nets(&["10.0.0.5/32"]));
        assert_eq!(narrowed.remove, nets(&["10.0.0.0/24"]));
    }

    #[tokio::test]
    async fn changed_routes_obey_the_split_tunnel_rules() {
        let mut r = TunRoutes {
            name: "dbtest0".into(),
            index: 0,
            current: vec![],
        };
        assert!(matches!(
            r.set(&nets(&["192.168.1.10/32", "0.0.0.0/0"])).await,
            Err(TunError::DefaultRoute(_))
        ));
        let many: Vec<IpNet> = (0..=MAX_ROUTES)
            .map(|i| IpNet::new(Ipv4Addr::from(0x0a00_0000 + i as u32).into(), 32).unwrap())
            .collect();
        assert!(matches!(
            r.set(&many).await,
            Err(TunError::TooManyRoutes(_))
        ));
        assert!(r.current().is_empty());
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
