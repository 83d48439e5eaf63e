//! Client side without root: a smoltcp interface with the client's overlay address that
//! originates TCP connections into the tunnel, for `-L` port forwards and SOCKS5.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drawbridge_proto::model::{PortRange, Protocol, Target};
use ipnet::{IpNet, Ipv4Net};
use smoltcp::wire::{IpProtocol, Ipv4Packet};
use tokio::sync::mpsc;

use crate::pump::{self, Side};
use crate::stack::{Buffers, Shared, SockMeta, StackStream, wait_established};

/// A TCP connection through the tunnel.
pub type DialedStream = StackStream;

/// Most TCP connections a dialer keeps at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection attempt through the tunnel gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Originates TCP connections from the client's overlay address (cheap to clone).
#[derive(Clone)]
pub struct Dialer {
    shared: Arc<Shared>,
    overlay_ip: Ipv4Addr,
    routes: Arc<RwLock<Vec<Target>>>,
    next_port: Arc<AtomicU16>,
    /// Set by [`Dialer::close`]: no new connections.
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("overlay_ip", &self.overlay_ip)
            .finish_non_exhaustive()
    }
}

const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Dialer {
    /// `routes` are the released targets the session gave the client (in the addresses
    /// the client dials, i.e. virtual ones under 1:1 NAT).
    pub fn new(overlay_ip: Ipv4Addr, routes: Vec<Target>) -> Dialer {
        let start = EPHEMERAL.start() + rand::random::<u16>() % 16000;
        Dialer {
            shared: Shared::new(overlay_ip, false, Buffers::DEFAULT),
            overlay_ip,
            routes: Arc::new(RwLock::new(routes)),
            next_port: Arc::new(AtomicU16::new(start)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ends every connection at once (their reads and writes fail, a pending
    /// connect gives up) and refuses new ones: the tunnel under it is gone.
    /// Dropping the tunnel's channels does the same once [`Dialer::run`]
    /// notices; this does not wait for that (or for a task that was aborted).
    pub fn close(&self) {
        // Set before taking the lock: a connect that takes the lock later sees
        // it; one that took it earlier added its socket, which is aborted below.
        self.closed.store(true, Ordering::SeqCst);
        let mut g = self.shared.lock();
        for (_, s) in g.sockets.iter_mut() {
            let smoltcp::socket::Socket::Tcp(t) = s;
            t.abort();
        }
    }

    /// TCP sockets the dialer holds (open, closing or not yet reclaimed).
    pub fn connections(&self) -> usize {
        self.shared.lock().meta.len()
    }

    pub fn overlay_ip(&self) -> Ipv4Addr {
        self.overlay_ip
    }

    /// True when the released routes cover TCP to `dst`.
    pub fn allows(&self, dst: SocketAddr) -> bool {
        let SocketAddr::V4(v4) = dst else {
            return false;
        };
        if v4.port() == 0 {
            return false;
        }
        let want = Target {
            address: IpNet::V4(Ipv4Net::from(*v4.ip())),
            protocol: Protocol::Tcp,
            ports: Some(PortRange::single(v4.port())),
        };
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|t| t.covers(&want))
    }

    /// Replaces the released routes (the session changed). Open connections stay; the
    /// edge cuts those it no longer allows.
    pub fn set_routes(&self, routes: Vec<Target>) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }

    /// Opens a TCP connection to `dst` through the tunnel. Destinations outside the
    /// released routes fail with `PermissionDenied` and send nothing.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<DialedStream> {
        if !self.allows(dst) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{dst} is not a released target"),
            ));
        }
        let SocketAddr::V4(dst4) = dst else {
            unreachable!("allows() accepts IPv4 only")
        };
        let (handle, local, large) = {
            let mut g = self.shared.lock();
            if self.closed.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the tunnel is closed",
                ));
            }
            if g.meta.len() >= MAX_CONNECTIONS {
                return Err(io::Error::other("too many connections through the tunnel"));
            }
            let (mut sock, large) = self.shared.new_socket(&g);
            let mut port = 0;
            for _ in 0..EPHEMERAL.len() {
                let p = self.next_port.fetch_add(1, Ordering::Relaxed);
                let p = if p < *EPHEMERAL.start() {
                    self.next_port
                        .store(EPHEMERAL.start() + 1, Ordering::Relaxed);
                    *EPHEMERAL.start()
                } else {
                    p
                };
                let used = g.sockets.iter().any(|(_, s)| {
                    let smoltcp::socket::Socket::Tcp(t) = s;
                    t.listen_endpoint().port == p || t.local_endpoint().is_some_and(|e| e.port == p)
                });
                if !used {
                    port = p;
                    break;
                }
            }
            if port == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "no free local port",
                ));
            }
            let inner = &mut *g;
            sock.connect(inner.iface.context(), (*dst4.ip(), dst4.port()), port)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
            let h = inner.sockets.add(sock);
            inner.meta.insert(
                h,
                SockMeta {
                    key: None,
                    orphaned: None,
                    last_active: Instant::now(),
                    large,
                },
            );
            (
                h,
                SocketAddr::V4(SocketAddrV4::new(self.overlay_ip, port)),
                large,
            )
        };
        let mut stream = StackStream {
            shared: self.shared.clone(),
            handle,
            local,
            peer: dst,
            abort: false,
            large,
        };
        self.shared.notify.notify_one();
        let r = tokio::time::timeout(CONNECT_TIMEOUT, wait_established(&self.shared, handle)).await;
        match r {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => {
                stream.abort_on_drop();
                Err(e)
            }
            Err(_) => {
                stream.abort_on_drop();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {dst} timed out"),
                ))
            }
        }
    }

    /// Moves packets between the stack and the tunnel until `from_tunnel` closes.
    /// Inbound packets not addressed to the overlay address, or not TCP, are dropped.
    pub async fn run(mut self, from_tunnel: mpsc::Receiver<Bytes>, to_tunnel: mpsc::Sender<Bytes>) {
        let shared = self.shared.clone();
        pump::run(&shared, &mut self, from_tunnel, &to_tunnel).await;
        self.close();
    }

    fn inbound(&self, p: Bytes) {
        let ok = Ipv4Packet::new_checked(&p[..]).is_ok_and(|ip| {
            ip.verify_checksum()
                && ip.dst_addr() == self.overlay_ip
                && ip.next_header() == IpProtocol::Tcp
                && !ip.more_frags()
                && ip.frag_offset() == 0
        });
        if !ok {
            return;
        }
        let mut g = self.shared.lock();
        self.shared.ingress(&mut g, p.into());
    }
}

/// The client's side of the pump: no wake-ups of its own; only packets from the
/// overlay address leave.
impl Side for Dialer {
    type Wake = std::convert::Infallible;

    fn inbound(&mut self, packet: Bytes) {
        Dialer::inbound(self, packet);
    }

    fn wake(&mut self) -> impl std::future::Future<Output = Self::Wake> + Send {
        std::future::pending()
    }

    fn on_wake(&mut self, wake: Self::Wake) {
        match wake {}
    }

    fn sweep(&mut self) {
        self.shared.sweep(None);
    }

    fn egress(&mut self, to_tunnel: &mpsc::Sender<Bytes>) -> bool {
        let me = self.overlay_ip;
        let (blocked, _) = self.shared.egress(to_tunnel, |p| {
            crate::wire::addrs(p).is_some_and(|(src, _)| src == me)
        });
        blocked
    }
}
