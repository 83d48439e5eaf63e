//! Outbound connections through an HTTP proxy (`CONNECT`, optional basic
//! auth), for plants whose only way out is a proxy. The HTTP exchange is
//! hyper's; this module only picks the proxy and hands back the tunnelled
//! stream, on which TLS and WebSockets then run as usual.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HTTP proxy: `http://[user:password@]host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Basic …` header value, when the URL carries credentials.
    auth: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credentials.
        write!(
            f,
            "Proxy({}:{}{})",
            self.host,
            self.port,
            if self.auth.is_some() {
                ", with credentials"
            } else {
                ""
            }
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("proxy URL {0:?}: expected http://[user:password@]host:port")]
pub struct ProxyUrlError(String);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Proxy {
    pub fn parse(url: &str) -> Result<Proxy, ProxyUrlError> {
        let bad = || ProxyUrlError(redact(url));
        if url.len() > 512 {
            return Err(bad());
        }
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let auth = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let creds = format!("{}:{}", percent_decode(user), percent_decode(pass));
            format!("Basic {}", STANDARD.encode(creds))
        });
        Ok(Proxy {
            host: host.to_string(),
            port,
            auth,
        })
    }

    /// `DRAWBRIDGE_PROXY`, else `HTTPS_PROXY` / `https_proxy`, if set and not empty.
    pub fn from_env() -> Result<Option<Proxy>, ProxyUrlError> {
        for v in ["DRAWBRIDGE_PROXY", "HTTPS_PROXY", "https_proxy"] {
            if let Ok(u) = std::env::var(v)
                && !u.trim().is_empty()
            {
                return Proxy::parse(u.trim()).map(Some);
            }
        }
        Ok(None)
    }

    /// Opens a tunnel through the proxy to `host:port`; the connection to the
    /// proxy leaves from `local` when given.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        local: Option<IpAddr>,
    ) -> io::Result<ProxyStream> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(15),
            tcp_connect(&self.host, self.port, local),
        )
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "connecting to the proxy timed out")
        })??;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.as_str())
            .header(hyper::header::HOST, authority.as_str());
        if let Some(a) = &self.auth {
            req = req.header(hyper::header::PROXY_AUTHORIZATION, a.as_str());
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(io::Error::other)?;
        let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the proxy did not answer"))?
            .map_err(io::Error::other)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the proxy refused the credentials (407)",
                ));
            }
            s => {
                return Err(io::Error::other(format!(
                    "the proxy refused CONNECT to {authority}: {s}"
                )));
            }
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(io::Error::other)?;
        Ok(ProxyStream(TokioIo::new(upgraded)))
    }
}

/// A byte stream for TLS and WebSockets: plain TCP or a tunnel through a proxy.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TCP connection to `host:port`; from `local` (a port the kernel picks)
/// when given, to the first address of the same family that accepts.
async fn tcp_connect(
    host: &str,
    port: u16,
    local: Option<IpAddr>,
) -> io::Result<tokio::net::TcpStream> {
    let Some(local) = local else {
        return tokio::net::TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{host}:{port} has no address of the family of {local}"),
        )
    }))
}

/// Connects to `host:port` directly, or through `proxy` when given; from the
/// local address `local` when given (with a proxy: the connection to the proxy).
pub async fn dial(
    host: &str,
    port: u16,
    proxy: Option<&Proxy>,
    local: Option<IpAddr>,
) -> io::Result<Box<dyn Io>> {
    match proxy {
        Some(p) => Ok(Box::new(p.connect(host, port, local).await?)),
        None => {
            let t = tokio::time::timeout(Duration::from_secs(15), tcp_connect(host, port, local))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {host}:{port} timed out"),
                    )
                })??;
            let _ = t.set_nodelay(true);
            Ok(Box::new(t))
        }
    }
}

/// Opens a WebSocket (`wss://` or `ws://`) directly or through `proxy`, from
/// the local address `local` when given (see [`dial`]).
pub async fn websocket(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    connector: Option<tokio_tungstenite::Connector>,
    proxy: Option<&Proxy>,
    local: Option<IpAddr>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<Box<dyn Io>>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if request.uri().scheme_str() == Some("ws") {
            80
        } else {
            443
        });
    let io = dial(&host, port, proxy, local)
        .await
        .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    tokio_tungstenite::client_async_tls_with_config(request, io, config, connector)
        .await
        .map(|(ws, _)| ws)
}

/// Hides user:password in messages.
fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, h)) => format!("http://***@{h}"),
        None => url.chars().take(128).collect(),
    }
}

/// A byte stream tunnelled through the proxy.
pub struct ProxyStream(TokioIo<hyper::upgrade::Upgraded>);

impl AsyncRead for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_credentials_and_never_print_them() {
        let p = Proxy::parse("http://anna:s%40cret@proxy.plant:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.plant", 3128));
        assert_eq!(
            p.auth.as_deref(),
            Some(format!("Basic {}", STANDARD.encode("anna:s@cret")).as_str())
        );
        assert!(!format!("{p:?}").contains("cret"));
        assert_eq!(Proxy::parse("http://10.0.0.1:8080/").unwrap().auth, None);
        for bad in [
            "https://p:1",
            "p:1",
            "http://p",
            "http://p:x",
            "http://:1",
            "http://user:pw@",
        ] {
            let e = Proxy::parse(bad).unwrap_err();
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_connection_leaves_from_the_local_address_given() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let from: IpAddr = "127.0.0.3".parse().unwrap();
        let _io = dial("127.0.0.1", port, None, Some(from)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), from);
        let _io = dial("127.0.0.1", port, None, None).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 1]));
        // No address of the local address's family to go to.
        let e = tcp_connect("127.0.0.1", port, Some("::1".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable, "{e}");
    }
}
