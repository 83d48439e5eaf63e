//! The server's own peers (browser access, desktops) reach the session's relay
//! in-process when it is this replica's embedded relay: the relay's WebSocket
//! runs over an in-memory byte stream served by the relay's own router, with
//! the same token check, limits and revocation as a connection from outside,
//! but without a TLS connection from the server to itself. A session whose
//! relay is another replica or a standalone relay is reached over the network
//! as before.

use crate::state::AppState;
use drawbridge_tunnel::driver::LocalRelay;
use std::sync::Arc;

/// This replica's embedded relay, as an in-process [`LocalRelay`].
pub fn local_relay(state: &AppState) -> LocalRelay {
    let router = drawbridge_relay::router(state.relay.clone());
    LocalRelay {
        url: crate::relays::local_url(state),
        dial: Arc::new(move || Box::new(drawbridge_relay::dial_in_process(&router))),
    }
}
