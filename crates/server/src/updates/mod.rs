//! Signed edge updates (issue 17): the releases the server's operator adds
//! ([`store`]), the rollouts an account's admins start ([`rollouts`]), and
//! the edge's side: its offer, its reports and its download ([`offer`]).
//! Signatures are `drawbridge-release`'s; the server checks them when a
//! release is added, every edge checks them again against its pinned root.

pub mod api;
pub mod offer;
pub mod rollouts;
pub mod store;

use crate::state::AppState;
use std::time::Duration;

/// Advances every running rollout every few seconds (on every replica; each
/// step is conditional, so replicas do not repeat one another).
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = rollouts::advance(&state).await {
                tracing::warn!(error = %e.message, "advancing rollouts failed");
            }
        }
    });
}
