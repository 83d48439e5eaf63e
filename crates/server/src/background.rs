//! Periodic work: ending sessions whose validity window passed, whose approval
//! did not come in time, that were idle too long, or whose edge stayed offline — and telling their edges
//! and clients at once.

use crate::state::AppState;
use std::time::Duration;

pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = %e.message, "session sweep failed");
            }
        }
    });
}

/// One pass; returns the ids of the sessions it ended.
pub async fn sweep(state: &AppState) -> crate::error::AppResult<Vec<String>> {
    // Forget addresses whose allowance is full again (bounds the limiter's memory).
    state.attempts.retain_recent();
    let now = state.now();
    let mut ended = crate::sessions::expire_due(&state.store, now).await?;
    ended.extend(
        crate::sessions::end_stale(&state.store, now)
            .await?
            .into_iter()
            .map(|(_, id)| id),
    );
    ended
        .extend(crate::sessions::end_for_offline_edges(&state.store, state.started_at, now).await?);
    if !ended.is_empty() {
        tracing::info!(
            sessions = ended.len(),
            "ended sessions (expiry, approval timeout, idle or edge offline)"
        );
        crate::live::notify_sessions(state, &ended).await?;
    }
    Ok(ended)
}
