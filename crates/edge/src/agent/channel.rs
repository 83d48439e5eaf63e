//! The edge channel: one WebSocket over TLS to the control plane (directly or
//! through the plant's proxy), its authentication, and the reconnect backoff.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::channel::{EDGE_AUTH_CONTEXT, EdgeToServer, MAX_CHANNEL_FRAME, ServerToEdge};
use drawbridge_tunnel::driver::Connector;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use ring::signature::Ed25519KeyPair;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The edge channel: one WebSocket over TLS, directly or through the plant's proxy.
pub type Channel = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<Box<dyn drawbridge_tunnel::proxy::Io>>,
>;

/// Why the edge channel could not be opened, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connecting timed out")]
    Timeout,
    #[error("the server did not send a challenge")]
    NoChallenge,
    #[error("refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected answer to auth: {0}")]
    Unexpected(String),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("the server sent nothing for {} s, not even an answer to a ping", QUIET_LIMIT.as_secs())]
    Silent,
}

/// A channel silent this long gets a ping from the edge (the server answers
/// every ping; it pings an edge only when the edge is silent itself).
pub const QUIET_PING: Duration = Duration::from_secs(30);
/// A channel silent this long, pings unanswered, is given up and a new one
/// made: a half-open connection (a replica gone without a word, a middlebox's
/// lost state) would otherwise hold the edge until TCP gave up, many minutes.
pub const QUIET_LIMIT: Duration = Duration::from_secs(75);

/// What the edge does about a quiet channel, checked every tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    Fine,
    Ping,
    GiveUp,
}

/// When the server was last heard from on this connection (any frame, pongs
/// included) and when the edge last pinged it. Shared by reference between
/// the reading and the ticking parts of the agent's loop.
#[derive(Debug)]
pub struct Liveness {
    /// (last heard, last pinged)
    at: std::sync::Mutex<(Instant, Option<Instant>)>,
}

impl Liveness {
    pub fn new(now: Instant) -> Self {
        Liveness {
            at: std::sync::Mutex::new((now, None)),
        }
    }

    fn at(&self) -> std::sync::MutexGuard<'_, (Instant, Option<Instant>)> {
        // Nothing panics while holding it.
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn heard(&self, now: Instant) {
        *self.at() = (now, None);
    }

    /// What to do now: nothing, ping (at most once per [`QUIET_PING`]), or give up.
    pub fn check(&self, now: Instant) -> Quiet {
        let mut at = self.at();
        let quiet = now.saturating_duration_since(at.0);
        if quiet >= QUIET_LIMIT {
            return Quiet::GiveUp;
        }
        let ping_due =
            at.1.is_none_or(|p| now.saturating_duration_since(p) >= QUIET_PING);
        if quiet >= QUIET_PING && ping_due {
            at.1 = Some(now);
            return Quiet::Ping;
        }
        Quiet::Fine
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ChannelError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ChannelError::WebSocket(Box::new(e))
    }
}

/// The edge channel's WebSocket read buffer. The library's default (128 KiB,
/// zero-filled on the first read, so all of it resident) is far more than the
/// server's small messages need; a larger one (up to `MAX_CHANNEL_FRAME`) still
/// arrives whole, the buffer grown for it. The server reads with the same size.
pub const CHANNEL_READ_BUFFER: usize = 8 * 1024;

/// Opens the edge channel (`GET /api/v1/edge/channel`) to `server` (`https://…`),
/// not yet authenticated; see [`authenticate`]. The TCP connection leaves from
/// `local` when given (the load tool's many loopback addresses), else from
/// wherever the system routes it.
pub async fn connect(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<&drawbridge_tunnel::proxy::Proxy>,
    local: Option<std::net::IpAddr>,
) -> Result<Channel, ChannelError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/edge/channel",
        server.replacen("https://", "wss://", 1)
    );
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_CHANNEL_FRAME);
    cfg.max_frame_size = Some(MAX_CHANNEL_FRAME);
    cfg.read_buffer_size = CHANNEL_READ_BUFFER;
    let ws = tokio::time::timeout(
        Duration::from_secs(15),
        drawbridge_tunnel::proxy::websocket(
            url.into_client_request()?,
            Some(cfg),
            Some(Connector::Rustls(tls)),
            proxy,
            local,
        ),
    )
    .await
    .map_err(|_| ChannelError::Timeout)??;
    Ok(ws)
}

/// Answers the server's challenge: signs `EDGE_AUTH_CONTEXT || nonce || device_id`
/// with the identity key and waits for the welcome.
pub async fn authenticate(
    ws: &mut Channel,
    device_id: &str,
    key: &Ed25519KeyPair,
) -> Result<(), ChannelError> {
    let Some(ServerToEdge::Challenge { nonce }) = recv(ws).await? else {
        return Err(ChannelError::NoChallenge);
    };
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(device_id.as_bytes());
    send(
        ws,
        &EdgeToServer::Auth {
            device_id: device_id.to_string(),
            signature: STANDARD.encode(key.sign(&msg).as_ref()),
        },
    )
    .await?;
    match recv(ws).await? {
        Some(ServerToEdge::Welcome { .. }) => Ok(()),
        Some(ServerToEdge::Error { code, message }) => Err(ChannelError::Refused { code, message }),
        other => Err(ChannelError::Unexpected(format!("{other:?}"))),
    }
}

/// The next message from the server; None when the channel closed.
pub async fn recv(ws: &mut Channel) -> Result<Option<ServerToEdge>, ChannelError> {
    recv_noting(ws, &Liveness::new(Instant::now())).await
}

/// [`recv`], noting every frame that arrives (pings and pongs too) in `live`.
pub async fn recv_noting(
    ws: &mut Channel,
    live: &Liveness,
) -> Result<Option<ServerToEdge>, ChannelError> {
    loop {
        let frame = ws.next().await;
        live.heard(Instant::now());
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends one message to the server.
pub async fn send(ws: &mut Channel, m: &EdgeToServer) -> Result<(), ChannelError> {
    ws.send(Message::Text(serde_json::to_string(m)?.into()))
        .await?;
    Ok(())
}

/// The wait before the agent's next connection attempt: 1 s, doubling up to
/// 60 s, plus a random jitter of up to half of it so that a fleet cut off at
/// once does not come back at once; 1 s again after a connection that lasted
/// over a minute. The load tool's simulated edges use it too.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Backoff::MIN }
    }
}

impl Backoff {
    pub const MIN: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(60);

    /// The wait after a connection (or attempt) that lasted `lasted`.
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > Backoff::MAX {
            self.next = Backoff::MIN;
        }
        let base = self.next;
        self.next = (base * 2).min(Backoff::MAX);
        let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 2);
        base + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter_and_restarts_after_a_long_connection() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.after(Duration::ZERO)).collect();
        for (w, base) in waits.iter().zip([1, 2, 4, 8, 16, 32, 60, 60]) {
            let base = Duration::from_secs(base);
            assert!(*w >= base && *w <= base + base / 2, "{w:?} for {base:?}");
        }
        assert!(b.after(Duration::from_secs(61)) <= Duration::from_millis(1500));
    }
}

#[cfg(test)]
mod quiet_tests {
    use super::*;

    #[test]
    fn a_quiet_channel_is_pinged_once_per_interval_then_given_up() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(live.check(at(29)), Quiet::Fine);
        assert_eq!(live.check(at(30)), Quiet::Ping);
        assert_eq!(live.check(at(31)), Quiet::Fine, "one ping per interval");
        assert_eq!(live.check(at(59)), Quiet::Fine);
        assert_eq!(
            live.check(at(60)),
            Quiet::Ping,
            "pinged again after another interval"
        );
        assert_eq!(live.check(at(74)), Quiet::Fine);
        assert_eq!(live.check(at(75)), Quiet::GiveUp);
    }

    #[test]
    fn anything_heard_from_the_server_keeps_the_channel() {
        let t0 = Instant::now();
        let live = Liveness::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(live.check(at(40)), Quiet::Ping);
        live.heard(at(41)); // the pong
        assert_eq!(live.check(at(70)), Quiet::Fine);
        assert_eq!(live.check(at(71)), Quiet::Ping, "quiet for 30 s again");
        assert_eq!(live.check(at(100)), Quiet::Fine);
        assert_eq!(live.check(at(101)), Quiet::Ping);
        assert_eq!(live.check(at(115)), Quiet::Fine);
        assert_eq!(live.check(at(116)), Quiet::GiveUp, "75 s after the pong");
        // A clock that went backwards counts as nothing quiet.
        let live = Liveness::new(at(10));
        assert_eq!(live.check(t0), Quiet::Fine);
    }
}
