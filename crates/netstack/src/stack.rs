//! The shared smoltcp machinery: one `Interface` (IP medium) and its TCP sockets behind a
//! mutex, an in-memory device whose transmit side is bounded by the tunnel channel's free
//! capacity, and [`StackStream`], an `AsyncRead + AsyncWrite` over one smoltcp TCP socket.
//!
//! The lock is never held across an `.await`; wakers registered on the sockets are woken
//! by smoltcp while the driver polls the interface.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};

use crate::policy::FlowKey;

/// MTU of the inner packets (WireGuard's default tunnel MTU).
pub const MTU: usize = 1420;

/// Buffer of each direction when a stack connection with large socket buffers is
/// spliced to a kernel socket: one lock of the stack moves up to this much (tokio's
/// default of 8 KiB costs a lock and a driver wake-up per 8 KiB). Connections with
/// small socket buffers splice with [`COPY_BUF_SMALL`].
pub const COPY_BUF: usize = 64 * 1024;
/// Splice buffer of the connections beyond the large-buffer ones (tokio's default).
pub const COPY_BUF_SMALL: usize = 8 * 1024;

/// In-memory device: at most one pending received packet (fed right before
/// `poll_ingress_single`), and a transmit queue limited by `tx_budget`.
pub(crate) struct QueueDevice {
    rx: Option<Vec<u8>>,
    pub(crate) tx: VecDeque<Bytes>,
    pub(crate) tx_budget: usize,
    pub(crate) tx_blocked: bool,
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a>(&'a mut QueueDevice);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.tx.push_back(Bytes::from(buf));
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _ts: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A reply (e.g. a RST) to the received packet is allowed even over budget.
        let pkt = self.rx.take()?;
        Some((Rx(pkt), Tx(self)))
    }

    fn transmit(&mut self, _ts: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() >= self.tx_budget {
            self.tx_blocked = true;
            return None;
        }
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = None;
        caps
    }
}

/// Sizes of the sockets' buffers (each direction): the first `large_sockets` open at
/// once get `large` (a window for full speed), the rest `small`, so memory stays bounded
/// however many flows a peer opens.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub large: usize,
    pub small: usize,
    pub large_sockets: usize,
}

impl Buffers {
    /// 1 MiB each way for the first 32 sockets (the TCP window: a few Gbit/s at a
    /// LAN-like round trip, ~170 Mbit/s at 50 ms), 64 KiB for the rest: at most
    /// at most 64 MiB + 124 MiB for 1024 sockets (allocated zeroed when a socket opens).
    pub const DEFAULT: Buffers = Buffers {
        large: 1 << 20,
        small: 64 << 10,
        large_sockets: 32,
    };

    pub fn uniform(size: usize) -> Buffers {
        Buffers {
            large: size,
            small: size,
            large_sockets: 0,
        }
    }
}

/// Bookkeeping of one TCP socket.
pub(crate) struct SockMeta {
    /// Forwarder flows: the client-side key.
    pub key: Option<FlowKey>,
    /// Set when the application side let go; the socket is removed once closed.
    pub orphaned: Option<Instant>,
    pub last_active: Instant,
    /// The socket has `Buffers::large` buffers.
    pub large: bool,
}

pub(crate) struct Inner {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub dev: QueueDevice,
    pub meta: HashMap<SocketHandle, SockMeta>,
    pub by_key: HashMap<FlowKey, SocketHandle>,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the driver: the application read or wrote, so smoltcp has something to send.
    pub notify: Notify,
    epoch: Instant,
    pub buffers: Buffers,
    pub tx_dropped: AtomicU64,
    /// Outbound packets the egress check refused (never expected; defence in depth).
    pub egress_refused: AtomicU64,
}

/// Most `poll_egress` rounds per [`Shared::egress`]: each round walks every socket, so
/// with many idle flows an unbounded loop would cost rounds × sockets under the lock.
const EGRESS_ROUNDS: usize = 64;

/// How long an orphaned (application-closed) socket may linger before it is aborted.
const ORPHAN_LINGER: Duration = Duration::from_secs(30);

impl Shared {
    pub fn new(addr: Ipv4Addr, any_ip: bool, buffers: Buffers) -> Arc<Shared> {
        let mut dev = QueueDevice {
            rx: None,
            tx: VecDeque::new(),
            tx_budget: 0,
            tx_blocked: false,
        };
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = rand::random();
        let epoch = Instant::now();
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        // Prefix 0: every destination is on-link (the tunnel is a point-to-point link).
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(addr.into(), 0));
        });
        iface.set_any_ip(any_ip);
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                iface,
                sockets: SocketSet::new(vec![]),
                dev,
                meta: HashMap::new(),
                by_key: HashMap::new(),
            }),
            notify: Notify::new(),
            epoch,
            buffers,
            tx_dropped: AtomicU64::new(0),
            egress_refused: AtomicU64::new(0),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// A new TCP socket and whether it got the large buffers (record it in its
    /// [`SockMeta`]); `inner` is the stack it will join.
    pub fn new_socket(&self, inner: &Inner) -> (tcp::Socket<'static>, bool) {
        let b = self.buffers;
        let large = inner.meta.values().filter(|m| m.large).count() < b.large_sockets;
        let size = if large { b.large } else { b.small };
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        // Without congestion control smoltcp sends its whole window at once: on a real
        // WAN a bottleneck's queue overflows and the flow stalls on timeouts.
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        // Connection attempts and unacknowledged data give up after this long.
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        (s, large)
    }

    /// Feeds one inbound packet to smoltcp.
    pub fn ingress(&self, inner: &mut Inner, packet: Vec<u8>) {
        let now = self.now();
        inner.dev.rx = Some(packet);
        let Inner {
            iface,
            sockets,
            dev,
            ..
        } = inner;
        let _ = iface.poll_ingress_single(now, dev, sockets);
        dev.rx = None;
    }

    /// Lets smoltcp transmit (at most `budget` packets are queued) and sends what it
    /// produced and `allow` accepts with `try_send`. Returns (smoltcp had more to send,
    /// packets sent).
    pub fn egress(&self, to: &mpsc::Sender<Bytes>, allow: impl Fn(&[u8]) -> bool) -> (bool, u64) {
        let (out, blocked) = {
            let mut g = self.lock();
            let now = self.now();
            let Inner {
                iface,
                sockets,
                dev,
                ..
            } = &mut *g;
            dev.tx_budget = to.capacity();
            dev.tx_blocked = false;
            iface.poll_maintenance(now);
            // smoltcp emits at most one packet per socket per call (and each call walks
            // every socket): keep calling while it makes progress, at most EGRESS_ROUNDS
            // times; the driver comes back at once when smoltcp has more.
            for _ in 0..EGRESS_ROUNDS {
                if iface.poll_egress(now, dev, sockets) == PollResult::None || dev.tx_blocked {
                    break;
                }
            }
            (std::mem::take(&mut dev.tx), dev.tx_blocked)
        };
        let mut sent = 0;
        for p in out {
            if !allow(&p) {
                self.egress_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if to.try_send(p).is_err() {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                sent += 1;
            }
        }
        (blocked, sent)
    }

    /// When smoltcp next needs polling.
    pub fn poll_delay(&self) -> Duration {
        let mut g = self.lock();
        let now = self.now();
        let Inner { iface, sockets, .. } = &mut *g;
        match iface.poll_delay(now, sockets) {
            Some(d) => Duration::from_micros(d.total_micros()).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        }
    }

    /// Removes closed orphaned sockets and aborts lingering ones. Returns the removed keys.
    pub fn sweep(&self, idle: Option<Duration>) -> Vec<FlowKey> {
        let mut g = self.lock();
        let now = Instant::now();
        let inner = &mut *g;
        let mut removed = Vec::new();
        let handles: Vec<SocketHandle> = inner.meta.keys().copied().collect();
        for h in handles {
            let Some(meta) = inner.meta.get(&h) else {
                continue;
            };
            let sock = inner.sockets.get_mut::<tcp::Socket>(h);
            let state = sock.state();
            if let Some(t) = meta.orphaned {
                // An aborted socket keeps its tuple until its RST went out.
                let done = match state {
                    tcp::State::Closed => sock.remote_endpoint().is_none(),
                    tcp::State::TimeWait => true,
                    _ => false,
                };
                if done {
                    inner.sockets.remove(h);
                    if let Some(m) = inner.meta.remove(&h)
                        && let Some(k) = m.key
                    {
                        inner.by_key.remove(&k);
                        removed.push(k);
                    }
                } else if now.duration_since(t) > ORPHAN_LINGER {
                    sock.abort();
                }
            } else if let Some(idle) = idle
                && now.duration_since(meta.last_active) > idle
            {
                sock.abort();
            }
        }
        removed
    }

    /// Aborts the sockets whose key `keep` rejects (policy update).
    pub fn abort_where(&self, mut reject: impl FnMut(&FlowKey) -> bool) -> usize {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut n = 0;
        for (k, h) in &inner.by_key {
            if reject(k) {
                inner.sockets.get_mut::<tcp::Socket>(*h).abort();
                n += 1;
            }
        }
        n
    }
}

/// Waits until the socket is established; errors when it closes first.
pub(crate) async fn wait_established(shared: &Shared, handle: SocketHandle) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        let mut g = shared.lock();
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        match s.state() {
            tcp::State::Established => Poll::Ready(Ok(())),
            tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived => {
                s.register_recv_waker(cx.waker());
                s.register_send_waker(cx.waker());
                Poll::Pending
            }
            // CloseWait and later: the peer connected and already closed; still usable
            // for reading what was sent and writing until we close.
            tcp::State::CloseWait => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused or reset",
            ))),
        }
    })
    .await
}

/// A TCP connection terminated in smoltcp, as an `AsyncRead + AsyncWrite`.
/// Dropping it closes the connection gracefully (FIN) and lets the driver reclaim the
/// socket once it is closed.
///
/// Invariant: each socket has exactly one `StackStream`, and the driver removes a socket
/// only after its stream was dropped, so the handle is always valid here.
pub struct StackStream {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: SocketHandle,
    pub(crate) local: std::net::SocketAddr,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) abort: bool,
    /// The socket has the large buffers ([`Buffers::large`]).
    pub(crate) large: bool,
}

impl StackStream {
    /// The buffer size to splice this connection with (each direction): 64 KiB for a
    /// connection with large socket buffers, 8 KiB for the others, so that memory
    /// stays bounded however many connections there are.
    pub fn copy_buffer(&self) -> usize {
        if self.large { COPY_BUF } else { COPY_BUF_SMALL }
    }

    /// Reset (RST) instead of closing (FIN) when dropped.
    pub fn abort_on_drop(&mut self) {
        self.abort = true;
    }

    /// The local (overlay) address of this connection.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local
    }
    /// The remote address of this connection.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.peer
    }
}

impl std::fmt::Debug for StackStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

impl AsyncRead for StackStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut g = this.shared.lock();
        let s = g.sockets.get_mut::<tcp::Socket>(this.handle);
        if s.can_recv() {
            // Straight into the reader's unfilled space, which is not zeroed
            // first (`initialize_unfilled` zero-filled all of it on every read:
            // a 256 KiB buffer for a few KiB received). The receive buffer is a
            // ring, so its bytes come in at most two pieces.
            let mut read = 0;
            for _ in 0..2 {
                let room = buf.remaining();
                if room == 0 {
                    break;
                }
                match s.recv(|data| {
                    let n = data.len().min(room);
                    buf.put_slice(&data[..n]);
                    (n, n)
                }) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            if read > 0 {
                if let Some(m) = g.meta.get_mut(&this.handle) {
                    m.last_active = Instant::now();
                }
                drop(g);
                // The window opened: let the driver send a window update.
                this.shared.notify.notify_one();
            }
            // Nothing read from a socket that could receive: it failed, or the
            // reader has no room; either way the read is over.
            return Poll::Ready(Ok(()));
        }
        if !s.may_recv() {
            // FIN received, or reset/aborted: end of stream.
            return Poll::Ready(Ok(()));
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for StackStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut g = this.shared.lock();
        let s = g.sockets.get_mut::<tcp::Socket>(this.handle);
        if !s.may_send() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            )));
        }
        if s.can_send() {
            match s.send_slice(data) {
                Ok(n) => {
                    if let Some(m) = g.meta.get_mut(&this.handle) {
                        m.last_active = Instant::now();
                    }
                    drop(g);
                    this.shared.notify.notify_one();
                    return Poll::Ready(Ok(n));
                }
                Err(_) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "connection closed",
                    )));
                }
            }
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(this.handle)
            .close();
        this.shared.notify.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for StackStream {
    fn drop(&mut self) {
        orphan(&self.shared, self.handle, self.abort);
    }
}

/// Hands a socket back to the driver: closes it (or aborts it) and marks it for removal.
/// Only `StackStream::drop` calls this.
fn orphan(shared: &Shared, handle: SocketHandle, abort: bool) {
    {
        let mut g = shared.lock();
        let s = g.sockets.get_mut::<tcp::Socket>(handle);
        if abort {
            s.abort();
        } else {
            s.close();
        }
        if let Some(m) = g.meta.get_mut(&handle) {
            m.orphaned.get_or_insert_with(Instant::now);
        }
    }
    shared.notify.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves every queued packet from `from` to `to` (one `egress`, then `ingress` each).
    fn deliver(from: &Shared, to: &Shared) -> u64 {
        let (tx, mut rx) = mpsc::channel(1024);
        let (_, sent) = from.egress(&tx, |_| true);
        while let Ok(p) = rx.try_recv() {
            let mut g = to.lock();
            to.ingress(&mut g, p.to_vec());
        }
        sent
    }

    #[test]
    fn one_egress_sends_all_the_window_allows_not_one_packet() {
        let a = Shared::new(
            Ipv4Addr::new(10, 0, 0, 1),
            false,
            Buffers::uniform(64 * 1024),
        );
        let b = Shared::new(
            Ipv4Addr::new(10, 0, 0, 2),
            false,
            Buffers::uniform(64 * 1024),
        );
        {
            let mut g = b.lock();
            let (mut listener, _) = b.new_socket(&g);
            listener.listen(80).unwrap();
            g.sockets.add(listener);
        }
        let h = {
            let mut g = a.lock();
            let (mut s, _) = a.new_socket(&g);
            // No congestion window: what is sent per call is then up to the driver.
            s.set_congestion_control(tcp::CongestionControl::None);
            let inner = &mut *g;
            s.connect(
                inner.iface.context(),
                (Ipv4Addr::new(10, 0, 0, 2), 80),
                50000,
            )
            .unwrap();
            inner.sockets.add(s)
        };
        for _ in 0..4 {
            deliver(&a, &b);
            deliver(&b, &a);
        }
        let data = vec![7u8; 32 * 1024];
        {
            let mut g = a.lock();
            let s = g.sockets.get_mut::<tcp::Socket>(h);
            assert_eq!(s.state(), tcp::State::Established);
            assert_eq!(s.send_slice(&data).unwrap(), data.len());
        }
        // 32 KiB in segments of at most MTU - 40 bytes: all of it in one call.
        let sent = deliver(&a, &b);
        assert!(
            sent as usize >= data.len().div_ceil(MTU - 40),
            "one egress sent only {sent} packets"
        );
    }

    #[test]
    fn only_the_first_flows_get_large_buffers_and_a_freed_one_is_reused() {
        let shared = Shared::new(
            Ipv4Addr::new(10, 0, 0, 1),
            false,
            Buffers {
                large: 1 << 20,
                small: 64 << 10,
                large_sockets: 2,
            },
        );
        let mut g = shared.lock();
        let mut handles = Vec::new();
        for _ in 0..4 {
            let (s, large) = shared.new_socket(&g);
            let cap = s.recv_capacity();
            let h = g.sockets.add(s);
            g.meta.insert(
                h,
                SockMeta {
                    key: None,
                    orphaned: None,
                    last_active: Instant::now(),
                    large,
                },
            );
            handles.push((h, cap));
        }
        let caps: Vec<usize> = handles.iter().map(|&(_, c)| c).collect();
        assert_eq!(caps, vec![1 << 20, 1 << 20, 64 << 10, 64 << 10]);
        // A large flow goes away: the next one gets its share.
        g.sockets.remove(handles[0].0);
        g.meta.remove(&handles[0].0);
        let (s, large) = shared.new_socket(&g);
        assert!(large);
        assert_eq!(s.recv_capacity(), 1 << 20);
    }
}
