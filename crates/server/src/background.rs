//! Periodic work: ending sessions whose validity window has passed.

use crate::state::AppState;
use std::time::Duration;

pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match crate::sessions::expire_due(&state.store, state.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "ended expired sessions"),
                Err(e) => tracing::warn!(error = %e.message, "session expiry sweep failed"),
            }
        }
    });
}
