//! STUN binding service (RFC 5389/8489) on UDP; the codec is `stun_codec` via
//! `drawbridge_wire::stun`. Malformed packets and non-binding messages are ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;

/// Counters of the STUN service.
#[derive(Debug, Default)]
pub struct StunStats {
    pub answered: AtomicU64,
    pub ignored: AtomicU64,
}

/// Answers binding requests on `socket` forever.
pub async fn serve(socket: UdpSocket) -> std::io::Result<()> {
    serve_with_stats(socket, Arc::new(StunStats::default())).await
}

/// As [`serve`], counting into `stats`.
pub async fn serve_with_stats(socket: UdpSocket, stats: Arc<StunStats>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors surface as recv errors on some platforms: keep serving.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => return Err(e),
        };
        match drawbridge_wire::stun::answer_binding_request(&buf[..n], from) {
            Some(resp) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stun_requests_answered_total").increment(1);
                let _ = socket.try_send_to(&resp, from);
            }
            None => {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stun_packets_ignored_total").increment(1);
            }
        }
    }
}
