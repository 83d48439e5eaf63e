//! Whether this replica can reach its database, for `/healthz`.
//!
//! A load balancer asks every half second or so and gives up on a slow answer.
//! Running `SELECT 1` on the request pool made a busy replica (every pooled
//! connection in use) look dead: the balancer marked it down and closed its
//! edges' channels, which then loaded the others — a cascade. So on PostgreSQL
//! a probe of its own asks the database once a second on a dedicated
//! connection, and `/healthz` answers at once from its last result: healthy
//! while the last successful probe is at most [`STALE`] old.

use crate::db::Backend;
use crate::state::AppState;
use sqlx::{AnyConnection, Connection};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A probe result older than this no longer counts.
pub const STALE: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe's last success; None while no probe runs (tests, SQLite).
#[derive(Default)]
pub struct Health {
    last_ok: Mutex<Option<Option<Instant>>>,
}

impl Health {
    /// Some(healthy) when a probe runs; None when the caller must ask the database itself.
    pub fn cached(&self) -> Option<bool> {
        let g = self.last_ok.lock().ok()?;
        g.map(|ok| ok.is_some_and(|t| t.elapsed() <= STALE))
    }

    fn record(&self, ok: bool) {
        if let Ok(mut g) = self.last_ok.lock() {
            let previous = g.flatten();
            *g = Some(if ok { Some(Instant::now()) } else { previous });
        }
    }
}

/// Starts the probe (PostgreSQL only: a single SQLite node has no balancer to tell).
pub fn spawn(state: AppState) {
    if state.store.backend != Backend::Postgres {
        return;
    }
    state.health.record(false);
    tokio::spawn(async move {
        let mut conn: Option<AnyConnection> = None;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = tokio::time::timeout(PROBE_TIMEOUT, probe(&state, &mut conn))
                .await
                .unwrap_or(false);
            if !ok {
                conn = None;
            }
            state.health.record(ok);
        }
    });
}

async fn probe(state: &AppState, conn: &mut Option<AnyConnection>) -> bool {
    if conn.is_none() {
        match AnyConnection::connect(&state.store.url).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "health probe: cannot connect to the database");
                return false;
            }
        }
    }
    let Some(c) = conn.as_mut() else { return false };
    sqlx::query("SELECT 1").execute(c).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_probe_the_caller_asks_and_a_probe_answers_from_its_last_success() {
        let h = Health::default();
        assert_eq!(h.cached(), None);
        h.record(false);
        assert_eq!(h.cached(), Some(false), "no success yet");
        h.record(true);
        assert_eq!(h.cached(), Some(true));
        h.record(false);
        assert_eq!(
            h.cached(),
            Some(true),
            "one failure within the grace keeps it up"
        );
        if let Ok(mut g) = h.last_ok.lock() {
            *g = Some(Some(Instant::now() - STALE - Duration::from_millis(1)));
        }
        assert_eq!(h.cached(), Some(false), "a stale success does not count");
    }
}
