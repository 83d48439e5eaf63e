//! The HTTPS listener: TLS (rustls) in front of the axum application, with
//! HTTP/1.1 upgrades (WebSocket) and HTTP/2, and each connection's remote
//! address made available to handlers for the audit log.
//!
//! Every connection is bounded: a slot among `max_connections` and among
//! `max_connections_per_address` for its remote address (IPv6: its /64), held
//! for as long as the socket lives (also after a WebSocket upgrade); the TLS
//! handshake and the first request's head must arrive within
//! `header_read_timeout` (hyper applies the same limit to every later request
//! head); a connection that moves no byte for `idle_timeout` is closed (an
//! upgraded WebSocket leaves this watch; its own pings keep it in check). Every response carries `Strict-Transport-Security`.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Limits and headers of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Time for the TLS handshake, for the first request's head after it, and
    /// (hyper) for every later HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed (also while a
    /// handler is still working on its request).
    pub idle_timeout: Duration,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one remote address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// `Strict-Transport-Security: max-age=…` on every response (0 tells
    /// browsers to forget an earlier one).
    pub hsts_max_age: Duration,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// One year.
pub const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            hsts_max_age: DEFAULT_HSTS_MAX_AGE,
        }
    }
}

/// Serves `app` over TLS with the default limits until `shutdown` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_tls_with(listener, tls, app, ListenerOptions::default(), shutdown).await
}

/// Serves `app` over TLS with `opts` until `shutdown` resolves.
pub async fn serve_tls_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    opts: ListenerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Slots::new(opts.max_connections, opts.max_connections_per_address);
    let hsts =
        axum::http::HeaderValue::from_str(&format!("max-age={}", opts.hsts_max_age.as_secs()))
            .expect("digits are a valid header value");
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(peer.ip()) else {
            // Closed at once, before any TLS work: the caps bound what one
            // address, or everyone together, can hold open.
            tracing::debug!(%peer, "connection refused: too many open connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let hsts = hsts.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let stream =
                match tokio::time::timeout(opts.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let activity = Arc::new(Activity::new(started));
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
                _slot: slot,
            };
            let in_req = activity.clone();
            let svc = app
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                })
                .map_future(move |fut| {
                    in_req.request();
                    fut
                })
                .map_response(move |mut res: axum::response::Response| {
                    res.headers_mut()
                        .insert(axum::http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
                    res
                });
            let svc = TowerToHyperService::new(svc);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                why = activity.expired(&opts) => {
                    tracing::debug!(%peer, why, "connection closed");
                }
            }
        });
    }
}

/// What a connection has done, for its deadlines.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last byte read or written.
    last_ms: AtomicU64,
    /// Requests begun so far.
    requests: AtomicU64,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Activity {
            started,
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Resolves when the connection should be closed: no first request within
    /// the header timeout, or no byte moved for the idle timeout.
    async fn expired(&self, opts: &ListenerOptions) -> &'static str {
        loop {
            let (deadline, why) = if self.requests.load(Ordering::Relaxed) == 0 {
                (
                    self.started + opts.header_read_timeout,
                    "no request within the header timeout",
                )
            } else {
                let last =
                    self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                (last + opts.idle_timeout, "idle timeout")
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The connection's stream: notes every byte moved, and holds the
/// connection's slot for as long as the socket lives (an upgraded WebSocket
/// takes the stream, and the slot with it).
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections, in all and per remote address.
struct Slots {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

impl Slots {
    fn new(max_total: usize, max_per_address: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_address,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        let mine = per.get(&key).copied().unwrap_or(0);
        if *total >= self.max_total || mine >= self.max_per_address {
            return None;
        }
        *total += 1;
        per.insert(key, mine + 1);
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.key);
            }
        }
    }
}

/// The address a per-address cap counts: IPv4 as is (IPv4-mapped IPv6 too),
/// IPv6 by its /64 (one host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_address_and_the_total_and_come_back_when_dropped() {
        let s = Slots::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = s.take(a).expect("first");
        let _a2 = s.take(a).expect("second");
        assert!(s.take(a).is_none(), "third from one address");
        let b1 = s.take(b).expect("another address");
        assert!(s.take(b).is_none(), "total reached");
        drop(b1);
        drop(a1);
        assert!(s.take(a).is_some(), "a slot came back");
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_cap() {
        let s = Slots::new(10, 1);
        let _x = s.take("2001:db8::1".parse().unwrap()).expect("first");
        assert!(s.take("2001:db8::ffff:1".parse().unwrap()).is_none());
        assert!(s.take("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _m = s.take("::ffff:192.0.2.9".parse().unwrap()).expect("mapped");
        assert!(s.take("192.0.2.9".parse().unwrap()).is_none());
    }
}
