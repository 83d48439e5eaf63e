//! Data services (DESIGN §7): the tags an admin defines for a device's edge to
//! poll, the historian points the edges push (each stored once), live KPI
//! values while someone watches, alarms the edges evaluate, and the retention
//! purge. The API routes are in `api/data`; the edge channel hands its
//! `records` and `live` messages to [`ingest`] and [`live`].

pub mod alarms;
pub mod ingest;
pub mod live;
pub mod mailbox;
pub mod tags;

use crate::error::AppResult;
use crate::state::AppState;
use std::time::Duration;

/// Points deleted per statement by the retention purge: small enough that
/// ingestion never waits long for it.
const PURGE_BATCH: i64 = 5000;

/// Purges points older than each account's retention, once a minute.
pub fn spawn_retention(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match purge(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(points = n, "historian retention purged old points"),
                Err(e) => tracing::warn!(error = %e.message, "historian retention purge failed"),
            }
        }
    });
}

/// One pass over every account: deletes its points older than its
/// `data_retention_days`, in batches, and forgets expired KPI watchers.
/// Returns how many points it deleted.
pub async fn purge(state: &AppState) -> AppResult<u64> {
    let now = state.now();
    let accounts: Vec<(String, String)> = sqlx::query_as("SELECT id, settings FROM accounts")
        .fetch_all(&state.store.pool)
        .await?;
    let mut deleted = 0;
    for (id, settings) in accounts {
        let days = serde_json::from_str::<drawbridge_proto::AccountSettings>(&settings)
            .map(|s| s.data_retention_days)
            .unwrap_or(10);
        let cutoff_ms = (now - i64::from(days) * 86_400) * 1000;
        loop {
            let n = sqlx::query(
                "DELETE FROM data_points WHERE txid IN
                 (SELECT txid FROM data_points WHERE account_id = $1 AND time_ms < $2 LIMIT $3)",
            )
            .bind(&id)
            .bind(cutoff_ms)
            .bind(PURGE_BATCH)
            .execute(&state.store.pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < PURGE_BATCH as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    live::forget_expired(state, now).await?;
    Ok(deleted)
}

/// The SQL for an optional number bound as parameter `$n` (then the statement's
/// last): `$n`, or `NULL` — and the caller binds nothing — when there is none.
/// sqlx 0.8's Any driver binds an absent f64 as a NULL float4; PostgreSQL then
/// refuses the next execution of that cached statement with a value
/// ("incorrect binary data format in bind parameter"), which ended an edge's
/// channel at random. Two statement texts avoid binding an absent number.
pub(crate) fn opt_f64(n: usize, v: Option<f64>) -> String {
    match v {
        Some(_) => format!("${n}"),
        None => "NULL".into(),
    }
}

/// Unix milliseconds a record's time may hold (1970 to 3000).
pub fn sane_time_ms(t: i64) -> bool {
    (0..=32_503_680_000_000).contains(&t)
}
