//! The server's own peers (browser access, desktops) reach the session's relay
//! in-process when it is this replica's embedded relay: the relay admits the
//! connection with the same token check, limits and revocation as one from
//! outside ([`drawbridge_relay::RelayState::connect_local`]), and frames pass in
//! memory both ways, without TLS, HTTP or WebSocket framing from the server to
//! itself. A session whose relay is another replica or a standalone relay is
//! reached over the network as before.

use crate::state::AppState;
use bytes::Bytes;
use drawbridge_relay::LocalConn;
use drawbridge_tunnel::driver::{LocalLink, LocalRelay};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Frames taken from the relay per wake-up.
const RECV_BATCH: usize = 64;

/// This replica's embedded relay, as an in-process [`LocalRelay`].
pub fn local_relay(state: &AppState) -> LocalRelay {
    let relay = state.relay.clone();
    LocalRelay {
        url: crate::relays::local_url(state),
        connect: Arc::new(move |token| match relay.connect_local(token) {
            Ok(conn) => Ok(Box::new(Link(conn)) as Box<dyn LocalLink>),
            Err(e) => Err(e.to_string()),
        }),
    }
}

struct Link(LocalConn);

impl LocalLink for Link {
    fn send(&mut self, frame: Vec<u8>) -> bool {
        self.0.send(frame)
    }

    fn recv<'a>(
        &'a mut self,
        buf: &'a mut Vec<Bytes>,
    ) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>> {
        Box::pin(self.0.recv_many(buf, RECV_BATCH))
    }
}
