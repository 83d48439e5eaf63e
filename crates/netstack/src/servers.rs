//! Local servers on top of a [`Dialer`]: the `-L` port forward and a SOCKS5 proxy
//! (RFC 1928, CONNECT, no authentication, IPv4 and IP-literal domain names only).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::dialer::Dialer;

/// Local connections served at once by one server; further ones wait in the backlog.
pub const MAX_LOCAL_CONNECTIONS: usize = 256;
/// A SOCKS5 client must finish its handshake within this time.
pub const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `-L [addr:]port:target:port`: binds `listen` and forwards every connection to
/// `target` through the tunnel. Fails at once when `target` is not released.
pub async fn forward_local(
    listen: SocketAddr,
    target: SocketAddr,
    dialer: Dialer,
) -> io::Result<()> {
    if !dialer.allows(target) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{target} is not a released target"),
        ));
    }
    let listener = TcpListener::bind(listen).await?;
    forward_local_on(listener, target, dialer).await
}

/// [`forward_local`] on an already bound listener.
pub async fn forward_local_on(
    listener: TcpListener,
    target: SocketAddr,
    dialer: Dialer,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    loop {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (mut local, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = local.set_nodelay(true);
            match dialer.connect(target).await {
                Ok(mut remote) => {
                    let n = remote.copy_buffer();
                    let _ = tokio::io::copy_bidirectional_with_sizes(&mut local, &mut remote, n, n)
                        .await;
                }
                Err(e) => tracing::info!(%from, %target, error = %e, "forward failed"),
            }
        });
    }
}

/// A SOCKS5 proxy on `listen` whose CONNECTs go through `dialer`.
pub async fn socks5(listen: SocketAddr, dialer: Dialer) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    socks5_on(listener, dialer).await
}

/// [`socks5`] on an already bound listener.
pub async fn socks5_on(listener: TcpListener, dialer: Dialer) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    loop {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (mut local, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = local.set_nodelay(true);
            let _ = serve_socks5(&mut local, &dialer).await;
        });
    }
}

/// SOCKS5 reply codes (RFC 1928 §6).
pub mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const CONNECTION_REFUSED: u8 = 0x05;
    pub const TTL_EXPIRED: u8 = 0x06;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// What a SOCKS5 request asks for, or the reply code refusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Connect(SocketAddrV4),
    Refuse(u8),
}

/// Reads the greeting and the request from `s` and answers the greeting. Lengths are
/// bounded by the protocol (one byte each). `Err` means the client spoke something
/// else or went away (nothing more is sent).
pub async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> io::Result<Request> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not SOCKS5"));
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..head[1] as usize];
    s.read_exact(methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "client offers no acceptable authentication method",
        ));
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request version",
        ));
    }
    // Read the address whatever the command, so the reply is well framed.
    let addr = match req[3] {
        1 => {
            let mut a = [0u8; 6];
            s.read_exact(&mut a).await?;
            Some(SocketAddrV4::new(
                Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                u16::from_be_bytes([a[4], a[5]]),
            ))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = [0u8; 255 + 2];
            let name = &mut name[..len[0] as usize + 2];
            s.read_exact(name).await?;
            let n = name.len();
            let port = u16::from_be_bytes([name[n - 2], name[n - 1]]);
            match std::str::from_utf8(&name[..n - 2])
                .ok()
                .and_then(|h| h.parse::<Ipv4Addr>().ok())
            {
                Some(ip) => Some(SocketAddrV4::new(ip, port)),
                // Names are not resolved: only released targets (addresses) are reachable.
                None => return Ok(Request::Refuse(reply::HOST_UNREACHABLE)),
            }
        }
        4 => {
            let mut a = [0u8; 18];
            s.read_exact(&mut a).await?;
            return Ok(Request::Refuse(reply::ADDRESS_TYPE_NOT_SUPPORTED));
        }
        _ => return Ok(Request::Refuse(reply::ADDRESS_TYPE_NOT_SUPPORTED)),
    };
    if req[1] != 1 {
        return Ok(Request::Refuse(reply::COMMAND_NOT_SUPPORTED));
    }
    match addr {
        Some(a) => Ok(Request::Connect(a)),
        None => Ok(Request::Refuse(reply::GENERAL_FAILURE)),
    }
}

/// Encodes a reply with an IPv4 bound address.
pub fn encode_reply(code: u8, bound: SocketAddrV4) -> [u8; 10] {
    let ip = bound.ip().octets();
    let port = bound.port().to_be_bytes();
    [5, code, 0, 1, ip[0], ip[1], ip[2], ip[3], port[0], port[1]]
}

/// Maps a dial error to a SOCKS5 reply code.
pub fn error_code(e: &io::Error) -> u8 {
    match e.kind() {
        io::ErrorKind::PermissionDenied => reply::NOT_ALLOWED,
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            reply::CONNECTION_REFUSED
        }
        io::ErrorKind::TimedOut => reply::TTL_EXPIRED,
        io::ErrorKind::AddrInUse => reply::GENERAL_FAILURE,
        io::ErrorKind::NetworkUnreachable => reply::NETWORK_UNREACHABLE,
        _ => reply::HOST_UNREACHABLE,
    }
}

async fn serve_socks5(local: &mut TcpStream, dialer: &Dialer) -> io::Result<()> {
    let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let req = tokio::time::timeout(SOCKS_HANDSHAKE_TIMEOUT, read_request(local))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    let dst = match req {
        Request::Refuse(code) => {
            local.write_all(&encode_reply(code, unspecified)).await?;
            return Ok(());
        }
        Request::Connect(a) => a,
    };
    match dialer.connect(SocketAddr::V4(dst)).await {
        Ok(mut remote) => {
            let bound = match remote.local_addr() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unspecified,
            };
            local
                .write_all(&encode_reply(reply::SUCCEEDED, bound))
                .await?;
            let n = remote.copy_buffer();
            tokio::io::copy_bidirectional_with_sizes(local, &mut remote, n, n).await?;
            Ok(())
        }
        Err(e) => {
            local
                .write_all(&encode_reply(error_code(&e), unspecified))
                .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8]) -> (io::Result<Request>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        b.write_all(input).await.unwrap();
        b.shutdown().await.unwrap();
        let r = read_request(&mut a).await;
        drop(a);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        (r, out)
    }

    #[tokio::test]
    async fn connect_ipv4() {
        let (r, out) = run(&[5, 1, 0, 5, 1, 0, 1, 192, 168, 1, 10, 1, 246]).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect("192.168.1.10:502".parse().unwrap())
        );
        assert_eq!(out, [5, 0]);
    }

    #[tokio::test]
    async fn connect_domain_literal_and_name() {
        let mut m = vec![5, 1, 0, 5, 1, 0, 3, 12];
        m.extend_from_slice(b"192.168.1.10");
        m.extend_from_slice(&[0, 80]);
        let (r, _) = run(&m).await;
        assert_eq!(
            r.unwrap(),
            Request::Connect("192.168.1.10:80".parse().unwrap())
        );
        let mut m = vec![5, 1, 0, 5, 1, 0, 3, 11];
        m.extend_from_slice(b"example.com");
        m.extend_from_slice(&[0, 80]);
        let (r, _) = run(&m).await;
        assert_eq!(r.unwrap(), Request::Refuse(reply::HOST_UNREACHABLE));
    }

    #[tokio::test]
    async fn refusals() {
        // No "no auth" method offered.
        let (r, out) = run(&[5, 1, 2]).await;
        assert!(r.is_err());
        assert_eq!(out, [5, 0xff]);
        // BIND and UDP ASSOCIATE are not supported.
        let (r, _) = run(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 80]).await;
        assert_eq!(r.unwrap(), Request::Refuse(reply::COMMAND_NOT_SUPPORTED));
        let (r, _) = run(&[5, 1, 0, 5, 3, 0, 1, 10, 0, 0, 1, 0, 80]).await;
        assert_eq!(r.unwrap(), Request::Refuse(reply::COMMAND_NOT_SUPPORTED));
        // IPv6.
        let mut m = vec![5, 1, 0, 5, 1, 0, 4];
        m.extend_from_slice(&[0; 18]);
        let (r, _) = run(&m).await;
        assert_eq!(
            r.unwrap(),
            Request::Refuse(reply::ADDRESS_TYPE_NOT_SUPPORTED)
        );
        // Unknown address type.
        let (r, _) = run(&[5, 1, 0, 5, 1, 0, 9]).await;
        assert_eq!(
            r.unwrap(),
            Request::Refuse(reply::ADDRESS_TYPE_NOT_SUPPORTED)
        );
        // SOCKS4 and truncated input.
        assert!(run(&[4, 1, 0, 80]).await.0.is_err());
        assert!(run(&[5, 3, 0]).await.0.is_err());
        assert!(run(&[5, 1, 0, 5, 1, 0, 1, 10]).await.0.is_err());
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(
            encode_reply(0, "100.64.0.2:50000".parse().unwrap()),
            [5, 0, 0, 1, 100, 64, 0, 2, 0xc3, 0x50]
        );
        let e = io::Error::new(io::ErrorKind::PermissionDenied, "x");
        assert_eq!(error_code(&e), reply::NOT_ALLOWED);
    }
}
