//! The driver's relay connections: one task per relay WebSocket (directly or
//! through the plant's HTTP proxy) or per connection to a relay in this process
//! ([`LocalLink`]), reconnecting with exponential backoff and jitter; frames go
//! out in batches with one flush, a new token replaces the connection's grants
//! in place.

use std::time::Duration;

use bytes::Bytes;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{LocalLink, RelayEndpoint};
use crate::engine::RelayId;
use crate::frame::{Frame, MAX_FRAME, READ_BUFFER};

/// One relay connection's queue, token and task.
pub(super) struct RelayHandle {
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) token: watch::Sender<String>,
    task: JoinHandle<()>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the connection task of `ep`; its frames reach the driver on `to_engine`.
pub(super) fn spawn_relay(
    ep: RelayEndpoint,
    to_engine: mpsc::Sender<(RelayId, RelayMsg)>,
    queue: usize,
) -> RelayHandle {
    let (out, out_rx) = mpsc::channel::<Vec<u8>>(queue);
    let (token, tok_rx) = watch::channel(ep.token.clone());
    let task = tokio::spawn(relay_task(ep, tok_rx, to_engine, out_rx));
    RelayHandle { out, token, task }
}

pub(super) enum RelayMsg {
    Frame(Bytes),
    Up,
    Down,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Frames written to a relay connection before one flush.
const BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to [`BATCH`]) with one
/// flush: under load that is one TLS record and one syscall for many frames
/// instead of one each.
async fn send_batch<S>(
    sink: &mut S,
    first: Vec<u8>,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    sink.feed(Message::Binary(first.into())).await?;
    for _ in 1..BATCH {
        match queue.try_recv() {
            Ok(f) => sink.feed(Message::Binary(f.into())).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Sends the newest token on the open connection; false when the connection
/// is done (a send failed, or the token cannot be framed and the connection
/// was closed so that the next one presents it instead).
async fn send_token<S>(sink: &mut S, token: &mut watch::Receiver<String>) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let fresh = token.borrow_and_update().clone();
    match (Frame::Token(fresh.as_bytes())).encode() {
        Ok(f) => sink.send(Message::Binary(f.into())).await.is_ok(),
        Err(_) => {
            let _ = sink.send(Message::Close(None)).await;
            false
        }
    }
}

/// How a connection ended.
enum Ended {
    /// It was up (the backoff starts again from its minimum).
    WasUp,
    /// It never came up.
    Failed,
    /// The driver is gone: stop reconnecting.
    Stop,
}

async fn relay_task(
    ep: RelayEndpoint,
    mut token: watch::Receiver<String>,
    to_engine: mpsc::Sender<(RelayId, RelayMsg)>,
    mut from_engine: mpsc::Receiver<Vec<u8>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        // The driver is gone (tunnel dropped): stop reconnecting.
        if to_engine.is_closed() {
            return;
        }
        let token_now = token.borrow_and_update().clone();
        // A relay in this process at exactly this URL: frames in memory;
        // any other over the network.
        let opened = match ep.local.as_ref().filter(|l| l.url == ep.url) {
            Some(local) => (local.connect)(&token_now).map(Link::Local),
            None => connect(&ep, &token_now)
                .await
                .map(|ws| Link::WebSocket(Box::new(ws)))
                .map_err(|e| e.to_string()),
        };
        let ended = match opened {
            Ok(link) => match Io::up(&ep, &to_engine, &mut from_engine, &mut token).await {
                Some(io) => match link {
                    Link::WebSocket(ws) => io.websocket(*ws).await,
                    Link::Local(link) => io.local(link).await,
                },
                None => Ended::Stop,
            },
            Err(e) => {
                tracing::debug!(relay = ep.id, error = %e, "relay connect failed");
                Ended::Failed
            }
        };
        match ended {
            Ended::Stop => return,
            Ended::WasUp => backoff = BACKOFF_MIN,
            Ended::Failed => {}
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// An open connection to a relay.
enum Link {
    WebSocket(Box<Ws>),
    Local(Box<dyn LocalLink>),
}

type Ws = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<Box<dyn crate::proxy::Io>>,
>;

/// Opens the relay WebSocket, directly or through the plant's HTTP proxy, with
/// TLS and WebSocket on top either way.
async fn connect(
    ep: &RelayEndpoint,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = ep.url.as_str().into_client_request()?;
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        request.headers_mut().insert("authorization", v);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    crate::proxy::websocket(
        request,
        Some(config),
        ep.connector.clone(),
        ep.proxy.as_ref(),
        None,
    )
    .await
}

/// An open connection's ends on the driver's side.
struct Io<'a> {
    id: RelayId,
    to_engine: &'a mpsc::Sender<(RelayId, RelayMsg)>,
    from_engine: &'a mut mpsc::Receiver<Vec<u8>>,
    token: &'a mut watch::Receiver<String>,
}

impl<'a> Io<'a> {
    /// Tells the driver the connection is up; `None` when the driver is gone.
    async fn up(
        ep: &RelayEndpoint,
        to_engine: &'a mpsc::Sender<(RelayId, RelayMsg)>,
        from_engine: &'a mut mpsc::Receiver<Vec<u8>>,
        token: &'a mut watch::Receiver<String>,
    ) -> Option<Io<'a>> {
        tracing::debug!(relay = ep.id, "relay connected");
        // Control messages must not be lost to a full queue: wait for room.
        to_engine.send((ep.id, RelayMsg::Up)).await.ok()?;
        Some(Io {
            id: ep.id,
            to_engine,
            from_engine,
            token,
        })
    }

    /// Tells the driver the connection is down.
    async fn down(self) -> Ended {
        match self.to_engine.send((self.id, RelayMsg::Down)).await {
            Ok(()) => Ended::WasUp,
            Err(_) => Ended::Stop,
        }
    }

    /// A frame from the relay to the engine (dropped when its queue is full).
    fn deliver(&self, frame: Bytes) {
        let _ = self.to_engine.try_send((self.id, RelayMsg::Frame(frame)));
    }

    async fn websocket(self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(Message::Binary(b))) => self.deliver(b),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                f = self.from_engine.recv() => match f {
                    Some(f) => {
                        // The driver replaces the token before it queues frames
                        // for a peer the new token names (a peer added right
                        // after): the token goes first, or the relay drops them.
                        if self.token.has_changed().unwrap_or(false)
                            && !send_token(&mut sink, self.token).await
                        {
                            break;
                        }
                        if send_batch(&mut sink, f, self.from_engine).await.is_err() {
                            break;
                        }
                    }
                    None => return Ended::Stop,
                },
                _ = keepalive.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
                // A new token (e.g. naming a peer that joined later) replaces
                // the connection's grants in place: no reconnect, no gap in which
                // a handshake could be lost. (A relay that cannot do that closes
                // the connection, and the next one uses the new token.)
                changed = self.token.changed() => {
                    if changed.is_err() {
                        return Ended::Stop; // the driver is gone
                    }
                    if !send_token(&mut sink, self.token).await {
                        break;
                    }
                }
            }
        }
        self.down().await
    }

    /// The same over a connection to a relay in this process: no keepalive
    /// (nothing between can time out), frames in memory both ways.
    async fn local(self, mut link: Box<dyn LocalLink>) -> Ended {
        let mut from_relay = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = link.recv(&mut from_relay) => {
                    if n == 0 {
                        break;
                    }
                    for f in from_relay.drain(..) {
                        self.deliver(f);
                    }
                }
                f = self.from_engine.recv() => match f {
                    Some(f) => {
                        // The token first, as on a WebSocket.
                        if self.token.has_changed().unwrap_or(false)
                            && !send_token_local(&mut *link, self.token)
                        {
                            break;
                        }
                        let mut open = link.send(f);
                        for _ in 1..BATCH {
                            match self.from_engine.try_recv() {
                                Ok(f) if open => open = link.send(f),
                                _ => break,
                            }
                        }
                        if !open {
                            break;
                        }
                    }
                    None => return Ended::Stop,
                },
                changed = self.token.changed() => {
                    if changed.is_err() {
                        return Ended::Stop;
                    }
                    if !send_token_local(&mut *link, self.token) {
                        break;
                    }
                }
            }
        }
        self.down().await
    }
}

/// [`send_token`] on a connection to a relay in this process.
fn send_token_local(link: &mut dyn LocalLink, token: &mut watch::Receiver<String>) -> bool {
    let fresh = token.borrow_and_update().clone();
    match Frame::Token(fresh.as_bytes()).encode() {
        Ok(f) => link.send(f),
        Err(_) => false,
    }
}
