//! One admitted connection, whatever carries its frames: a WebSocket from a
//! peer elsewhere ([`websocket`]), or a [`LocalConn`] handed to a peer inside
//! this process (the server's own peers reach its embedded relay that way:
//! frames in memory, no HTTP, no WebSocket framing, no byte stream). Both are
//! admitted by the same [`RelayState::admit`], registered by the same
//! [`RelayState::register`] and handle each frame in the same
//! [`Admitted::frame`], so the rules cannot differ between them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use drawbridge_wire::frame::Frame;
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::switchboard::{Grant, Key};
use crate::token::{self, Claims, TokenError};
use crate::{Conn, RelayState, drop_reason, short, unix_now};

/// Longest a single WebSocket write may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written to one connection before a flush.
const SEND_BATCH: usize = 64;

/// Why a connection was not admitted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refused {
    #[error("invalid relay token: {0}")]
    Token(#[from] TokenError),
    #[error("relay token revoked")]
    Revoked,
    #[error("relay full")]
    Full,
}

/// What the connection does after a frame.
enum Step {
    Go,
    /// A fresh token was accepted: the connection now ends in this long.
    Renewed(Duration),
    /// Refused token or malformed frame: the connection closes.
    Close,
}

/// An admitted, registered connection: who it is, what its token grants and its
/// own queue (for PONGs). Leaves the switchboard when dropped.
pub(crate) struct Admitted {
    state: RelayState,
    id: u64,
    me: Key,
    claims: Claims,
    grant: Grant,
    tx: mpsc::Sender<Bytes>,
}

impl RelayState {
    /// Checks a token for a new connection: valid now, its session not revoked,
    /// room for one more connection. Refusals are counted and logged.
    pub(crate) fn admit(&self, token: Result<&str, TokenError>) -> Result<Claims, Refused> {
        let refused = |reason: &'static str, r: Refused| {
            self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            drop_reason(reason);
            r
        };
        let claims = token
            .and_then(|t| token::verify(&self.inner.config.verifying_key, t, unix_now()))
            .map_err(|e| {
                tracing::info!(error = %e, "relay: connection refused");
                refused("refused_token", Refused::Token(e))
            })?;
        if self.is_revoked(&claims.session_id) {
            tracing::info!(session = %claims.session_id, "relay: connection of a revoked session refused");
            return Err(refused("revoked", Refused::Revoked));
        }
        if self.lock().len() >= self.inner.config.max_connections {
            return Err(refused("too_many_connections", Refused::Full));
        }
        Ok(claims)
    }

    /// Registers an admitted connection: its queue (frames for it) and its kill
    /// switch. A connection with the same key is replaced. `None` when the session
    /// was revoked between [`RelayState::admit`] and now.
    pub(crate) fn register(
        &self,
        claims: Claims,
    ) -> Option<(Admitted, mpsc::Receiver<Bytes>, watch::Receiver<bool>)> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Bytes>(self.inner.config.send_queue.max(1));
        let (kill, kill_rx) = watch::channel(false);
        let grant = Grant::from_claims(&claims);
        let me = claims.peer;
        {
            let mut conns = self.lock();
            let handle = Conn {
                tx: tx.clone(),
                kill,
            };
            if let Some(old) = conns.admit(me, id, grant.clone(), handle) {
                // The same key connected again: the newer connection wins.
                let _ = old.kill.send(true);
            }
            metrics::gauge!("relay_connections").set(conns.len() as f64);
        }
        let admitted = Admitted {
            state: self.clone(),
            id,
            me,
            claims,
            grant,
            tx,
        };
        // After the registration: a revocation since the admission check either
        // removed it already or is seen here.
        if self.is_revoked(&admitted.claims.session_id) {
            return None;
        }
        self.inner
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %short(&me), session = %admitted.claims.session_id, "relay: connected");
        Some((admitted, rx, kill_rx))
    }

    /// A connection for a peer in this process: admitted and registered as a
    /// WebSocket connection is, its frames handed over in memory.
    pub fn connect_local(&self, token: &str) -> Result<LocalConn, Refused> {
        let claims = self.admit(Ok(token))?;
        let (conn, rx, kill) = self.register(claims).ok_or(Refused::Revoked)?;
        let deadline = tokio::time::Instant::now() + conn.expires_in();
        Ok(LocalConn {
            conn,
            rx,
            kill,
            deadline,
            closed: false,
        })
    }
}

impl Admitted {
    fn expires_in(&self) -> Duration {
        Duration::from_secs(self.claims.expires_at.saturating_sub(unix_now()))
    }

    fn malformed(&self) -> Step {
        let c = &self.state.inner.counters;
        c.closed_malformed.fetch_add(1, Ordering::Relaxed);
        drop_reason("malformed");
        Step::Close
    }

    /// One frame from the peer: DATA forwarded by the switchboard's rules, PING
    /// answered, BRIDGE handed to the bridge, TOKEN replacing the grants (or
    /// closing the connection when refused); anything else closes it.
    fn frame(&mut self, frame: Vec<u8>) -> Step {
        match Frame::decode(&frame) {
            Ok(Frame::Data { .. }) => {
                self.state.forward(&self.me, &self.grant, frame);
                Step::Go
            }
            Ok(Frame::Ping(x)) => {
                if let Ok(p) = Frame::Pong(x).encode() {
                    let _ = self.tx.try_send(Bytes::from(p));
                }
                Step::Go
            }
            Ok(Frame::Bridge { tag, payload }) => {
                self.state
                    .bridge_from_edge(&self.me, self.claims.bridge, tag, payload);
                Step::Go
            }
            // A fresh token for this key and session replaces the grants.
            Ok(Frame::Token(t)) => match self.state.refresh(self.id, &self.claims, t) {
                Some(fresh) => {
                    self.grant = Grant::from_claims(&fresh);
                    self.claims = fresh;
                    Step::Renewed(self.expires_in())
                }
                None => {
                    let c = &self.state.inner.counters;
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    drop_reason("refused_token");
                    Step::Close
                }
            },
            Ok(Frame::Pong(_)) | Err(_) => self.malformed(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut conns = self.state.lock();
        conns.leave(&self.me, self.id);
        metrics::gauge!("relay_connections").set(conns.len() as f64);
        tracing::debug!(peer = %short(&self.me), "relay: disconnected");
    }
}

/// A peer's connection to the relay from inside the relay's process. It holds
/// its place in the switchboard until dropped, and closes for good when the
/// relay closes it (session revoked or ended, the key connected again, a slow
/// receiver), its token expires or a frame is refused, as a WebSocket would.
pub struct LocalConn {
    conn: Admitted,
    rx: mpsc::Receiver<Bytes>,
    kill: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
    closed: bool,
}

impl std::fmt::Debug for LocalConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConn")
            .field("peer", &short(&self.conn.me))
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl LocalConn {
    /// Whether the relay has closed this connection (revoked, replaced, slow).
    /// Expiry is seen by [`LocalConn::recv_many`], which the holder keeps
    /// waiting on, so a frame sent needs no clock reading.
    fn check_closed(&mut self) -> bool {
        if !self.closed {
            self.closed = self
                .kill
                .has_changed()
                .map_or(true, |_| *self.kill.borrow());
        }
        self.closed
    }

    /// Hands one frame to the relay, as the WebSocket's binary message would
    /// carry it. `false` once the connection is closed (the frame is dropped).
    pub fn send(&mut self, frame: Vec<u8>) -> bool {
        if self.check_closed() {
            return false;
        }
        match self.conn.frame(frame) {
            Step::Go => {}
            Step::Renewed(left) => self.deadline = tokio::time::Instant::now() + left,
            Step::Close => self.closed = true,
        }
        !self.closed
    }

    /// Waits for frames from the relay and appends up to `limit` of them to
    /// `buf`; 0 once the connection is closed.
    pub async fn recv_many(&mut self, buf: &mut Vec<Bytes>, limit: usize) -> usize {
        if self.check_closed() || tokio::time::Instant::now() >= self.deadline {
            self.closed = true;
            return 0;
        }
        let n = tokio::select! {
            n = self.rx.recv_many(buf, limit.max(1)) => n,
            _ = self.kill.changed() => 0,
            _ = tokio::time::sleep_until(self.deadline) => 0,
        };
        if n == 0 {
            self.closed = true;
        }
        n
    }
}

/// Serves one admitted WebSocket connection until it closes.
pub(crate) async fn websocket(state: RelayState, claims: Claims, socket: WebSocket) {
    let Some((mut conn, mut rx, mut kill_rx)) = state.register(claims) else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let expiry = tokio::time::sleep(conn.expires_in());
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else { break };
                match msg {
                    Message::Binary(b) => match conn.frame(b.to_vec()) {
                        Step::Go => {}
                        Step::Renewed(left) => expiry.as_mut().reset(tokio::time::Instant::now() + left),
                        Step::Close => break,
                    },
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => break,
                    Message::Text(_) => {
                        conn.malformed();
                        break;
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                // A client that stops reading must not pin this task forever. What
                // is queued already goes out with the same flush (fewer TLS records).
                let batch = async {
                    sink.feed(Message::Binary(out)).await?;
                    for _ in 1..SEND_BATCH {
                        match rx.try_recv() {
                            Ok(more) => sink.feed(Message::Binary(more)).await?,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await
                };
                let write = tokio::time::timeout(WRITE_TIMEOUT, batch);
                tokio::select! {
                    r = write => if !matches!(r, Ok(Ok(()))) { break },
                    _ = kill_rx.changed() => break,
                }
            }
            _ = kill_rx.changed() => break,
            _ = &mut expiry => {
                tracing::debug!(peer = %short(&conn.me), "relay: token expired");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
