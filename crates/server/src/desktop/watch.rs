//! Watching a desktop live (admins and auditors), read-only: the watcher's
//! noVNC gets the desktop's stream from its first byte, then what follows.
//! On the replica that runs the desktop the stream comes from memory as it is
//! sent ([`super::live`]); on any other replica it comes from the stored
//! recording, chunk by chunk as they are stored (every second), so a load
//! balancer may send the watcher anywhere. Whatever the watcher's browser
//! sends is dropped.

use super::bridge::{TICK, browser_socket, close};
use super::recording;
use crate::error::AppError;
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use sqlx::Row;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::broadcast::error::RecvError;

/// Stored chunks a remote watcher reads at once (each opens to at most a
/// few MiB: with the most watchers, a replica holds at most about
/// `MAX_REMOTE_WATCHERS` × 4 chunks of them).
const REMOTE_BATCH: i64 = 4;
/// Watchers one replica serves from the database at once.
const MAX_REMOTE_WATCHERS: usize = 16;
static REMOTE_WATCHERS: AtomicUsize = AtomicUsize::new(0);

struct RemotePlace;

impl Drop for RemotePlace {
    fn drop(&mut self) {
        REMOTE_WATCHERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /.drawbridge/watch` on a watch origin. An RDP watcher's web client
/// speaks first (its RDCleanPath request); the recording answers it.
pub async fn watch(
    state: AppState,
    recording_id: String,
    ws: WebSocketUpgrade,
    rdp: bool,
) -> Response {
    let ws = browser_socket(ws);
    let Some(desktop) = state.desktops.get(&recording_id) else {
        if REMOTE_WATCHERS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_REMOTE_WATCHERS).then_some(n + 1)
            })
            .is_err()
        {
            return ws.on_upgrade(|mut socket| async move {
                close(
                    &mut socket,
                    "this server has its most watchers; try again later",
                )
                .await;
            });
        }
        let place = RemotePlace;
        return ws.on_upgrade(move |mut socket| async move {
            let _place = place;
            if rdp && let Err(reason) = super::rdp::answer_as_gateway(&mut socket).await {
                close(&mut socket, &reason).await;
                return;
            }
            let reason = from_store(&state, &recording_id, &mut socket).await;
            close(&mut socket, &reason).await;
        });
    };
    let (mut backlog, mut rx, place) = match desktop.watch(&state).await {
        Ok(j) => j,
        Err(e) => {
            return ws.on_upgrade(move |mut socket| async move {
                close(&mut socket, &e.message).await;
            });
        }
    };
    ws.on_upgrade(move |mut socket| async move {
        let _place = place;
        if rdp && let Err(reason) = super::rdp::answer_as_gateway(&mut socket).await {
            close(&mut socket, &reason).await;
            return;
        }
        // The stream so far, a stored chunk at a time; the live rest waits in
        // `rx` meanwhile (a watcher that cannot keep up is told so below).
        loop {
            match backlog.next_frames().await {
                Ok(Some(frames)) => {
                    for (_, b) in frames {
                        if socket.send(Message::Binary(b)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    close(&mut socket, &e.message).await;
                    return;
                }
            }
        }
        let reason = loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(b) => {
                        if socket.send(Message::Binary(b)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        break "this watcher fell behind the desktop; open it again";
                    }
                    Err(RecvError::Closed) => break "the desktop ended",
                },
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep(TICK) => {
                    if state.desktops.get(&desktop.id).is_none() {
                        break "the desktop ended";
                    }
                }
            }
        };
        close(&mut socket, reason).await;
    })
}

/// The RFB bytes of stored chunk `data` (the first one starts with the
/// header; every chunk holds whole frames).
fn payloads(first: bool, data: &[u8]) -> Result<Vec<Bytes>, AppError> {
    use drawbridge_desktop::recording::{iter_frames, iter_frames_after};
    let frames = if first {
        iter_frames(data)
    } else {
        iter_frames_after(data, 0)
    };
    frames
        .map(|f| f.map(|f| Bytes::copy_from_slice(f.data)))
        .collect::<Result<_, _>>()
        .map_err(|e| AppError::internal(anyhow::anyhow!("a stored recording does not parse: {e}")))
}

/// Streams a desktop running on another replica from its stored chunks until
/// it ends; answers why it stopped.
async fn from_store(state: &AppState, id: &str, socket: &mut WebSocket) -> String {
    let mut next: i64 = 0;
    loop {
        let row = sqlx::query("SELECT state, recorded FROM desktop_recordings WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.store.pool)
            .await;
        let (live, recorded) = match row {
            Ok(Some(r)) => (
                r.try_get::<String, _>(0).unwrap_or_default() == "live",
                r.try_get::<i64, _>(1).unwrap_or(0) != 0,
            ),
            Ok(None) => return "no such desktop".into(),
            Err(_) => return "the database is unreachable".into(),
        };
        if !recorded {
            return "this desktop is not being recorded, so it cannot be watched".into();
        }
        let chunks = match recording::chunks_from(state, id, next, REMOTE_BATCH).await {
            Ok(c) => c,
            Err(why) => return why.into(),
        };
        for (seq, plain) in &chunks {
            let Ok(parts) = payloads(*seq == 0, plain) else {
                return "a stored recording does not parse".into();
            };
            for b in parts {
                if socket.send(Message::Binary(b)).await.is_err() {
                    return "the watcher went away".into();
                }
            }
            next += 1;
        }
        if chunks.is_empty() {
            if !live {
                return "the desktop ended".into();
            }
            tokio::select! {
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "the watcher went away".into(),
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
