//! The driver's relay connections: one task per relay WebSocket (directly or
//! through the plant's HTTP proxy), reconnecting with exponential backoff and
//! jitter; frames go out in batches with one flush, a new token replaces the
//! connection's grants in place.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::RelayEndpoint;
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
    Frame(Vec<u8>),
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
        let request = ep.url.as_str().into_client_request().map(|mut r| {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token_now}")) {
                r.headers_mut().insert("authorization", v);
            }
            r
        });
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        // Directly, or through the plant's HTTP proxy; TLS and WebSocket on top either
        // way. A relay in this process: the WebSocket over its in-process stream.
        let result = match (request, &ep.local) {
            (Ok(r), Some(local)) if local.url == ep.url => {
                tokio_tungstenite::client_async_with_config(
                    r,
                    tokio_tungstenite::MaybeTlsStream::Plain((local.dial)()),
                    Some(config),
                )
                .await
                .map(|(ws, _)| (ws, ()))
            }
            (Ok(r), _) => crate::proxy::websocket(
                r,
                Some(config),
                ep.connector.clone(),
                ep.proxy.as_ref(),
                None,
            )
            .await
            .map(|ws| (ws, ())),
            (Err(e), _) => Err(e),
        };
        match result {
            Ok((ws, _)) => {
                backoff = BACKOFF_MIN;
                tracing::debug!(relay = ep.id, "relay connected");
                // Control messages must not be lost to a full queue: wait for room.
                if to_engine.send((ep.id, RelayMsg::Up)).await.is_err() {
                    return;
                }
                let (mut sink, mut stream) = ws.split();
                let mut keepalive = tokio::time::interval(Duration::from_secs(15));
                keepalive.tick().await;
                loop {
                    tokio::select! {
                        m = stream.next() => match m {
                            Some(Ok(Message::Binary(b))) => {
                                let _ = to_engine.try_send((ep.id, RelayMsg::Frame(b.to_vec())));
                            }
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                            Some(Ok(_)) => {}
                        },
                        f = from_engine.recv() => match f {
                            Some(f) => {
                                // The driver replaces the token before it queues frames
                                // for a peer the new token names (a peer added right
                                // after): the token goes first, or the relay drops them.
                                if token.has_changed().unwrap_or(false)
                                    && !send_token(&mut sink, &mut token).await
                                {
                                    break;
                                }
                                if send_batch(&mut sink, f, &mut from_engine).await.is_err() {
                                    break;
                                }
                            }
                            None => return,
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
                        changed = token.changed() => {
                            if changed.is_err() {
                                return; // the driver is gone
                            }
                            if !send_token(&mut sink, &mut token).await {
                                break;
                            }
                        }
                    }
                }
                if to_engine.send((ep.id, RelayMsg::Down)).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(relay = ep.id, error = %e, "relay connect failed"),
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
