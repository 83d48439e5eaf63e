//! Live KPI values: they flow from an edge only while someone watches. A viewer
//! (the KPI stream, a KPI read) renews a watcher row per device every few
//! seconds; the replica holding the edge looks at those rows and tells its edge
//! to send (`watch`), writes what arrives to `tag_live`, and the viewers'
//! replicas read it from there. Viewer and edge need not share a replica.

use crate::error::AppResult;
use crate::state::AppState;
use drawbridge_proto::data::{LiveValue, MAX_KPIS_PER_DEVICE, Quality};
use sqlx::Row;

/// How long one renewal of a watcher lasts.
pub const WATCH_SECS: i64 = 6;
/// How long an edge sends after each `watch` it is told.
pub const EDGE_WATCH_MS: u32 = 5000;

/// Stores the live values an edge sent, for its KPI tags only (`kpi_tags`).
pub async fn store(
    state: &AppState,
    device_id: &str,
    kpi_tags: &[String],
    values: &[LiveValue],
) -> AppResult<()> {
    if values.len() > MAX_KPIS_PER_DEVICE {
        return Err(crate::error::AppError::bad_request(format!(
            "at most {MAX_KPIS_PER_DEVICE} live values per message"
        )));
    }
    let mut tx = state.store.begin().await?;
    for v in values {
        if !kpi_tags.iter().any(|t| t == v.tag.as_str())
            || !super::sane_time_ms(v.time_ms)
            || v.value.is_some_and(|x| !x.is_finite())
        {
            continue;
        }
        let sql = format!(
            "INSERT INTO tag_live (device_id, tag, time_ms, quality, value) VALUES ($1, $2, $3, $4, {})
             ON CONFLICT (device_id, tag) DO UPDATE SET time_ms = excluded.time_ms,
               value = excluded.value, quality = excluded.quality",
            super::opt_f64(5, v.value)
        );
        let mut q = sqlx::query(&sql)
            .bind(device_id)
            .bind(v.tag.as_str())
            .bind(v.time_ms)
            .bind(v.quality.code());
        if let Some(x) = v.value {
            q = q.bind(x);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `watcher` watches `devices` for the next [`WATCH_SECS`]. A device nobody
/// watched until now has its edge told at once, wherever it is connected.
pub async fn watch(state: &AppState, watcher: &str, devices: &[String]) -> AppResult<()> {
    let now = state.now();
    let mut started = Vec::new();
    for d in devices {
        let mut tx = state.store.begin().await?;
        let watched = watched_tx(&mut tx, d, now).await?;
        sqlx::query(
            "INSERT INTO kpi_watchers (watcher, device_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (watcher, device_id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(watcher)
        .bind(d)
        .bind(now + WATCH_SECS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !watched {
            started.push(d);
        }
    }
    for d in started {
        crate::live::device_changed(state, d);
    }
    Ok(())
}

/// The viewer left: its rows go (the edge stops within [`EDGE_WATCH_MS`] plus a check).
pub async fn unwatch(state: &AppState, watcher: &str) -> AppResult<()> {
    sqlx::query("DELETE FROM kpi_watchers WHERE watcher = $1")
        .bind(watcher)
        .execute(&state.store.pool)
        .await?;
    Ok(())
}

async fn watched_tx(tx: &mut crate::db::Tx<'_>, device_id: &str, now: i64) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM kpi_watchers WHERE device_id = $1 AND expires_at > $2",
    )
    .bind(device_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n > 0)
}

/// Does anybody watch the device's KPIs now?
pub async fn watched(state: &AppState, device_id: &str) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM kpi_watchers WHERE device_id = $1 AND expires_at > $2",
    )
    .bind(device_id)
    .bind(state.now())
    .fetch_one(&state.store.pool)
    .await?;
    Ok(n > 0)
}

/// Forgets watchers that expired a while ago.
pub async fn forget_expired(state: &AppState, now: i64) -> AppResult<()> {
    sqlx::query("DELETE FROM kpi_watchers WHERE expires_at < $1")
        .bind(now - 60)
        .execute(&state.store.pool)
        .await?;
    Ok(())
}

/// A live value as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub time_ms: i64,
    pub value: Option<f64>,
    pub quality: Option<Quality>,
}

/// The stored live values of `device_id`, by tag.
pub async fn read(state: &AppState, device_id: &str) -> AppResult<Vec<(String, Stored)>> {
    let rows =
        sqlx::query("SELECT tag, time_ms, value, quality FROM tag_live WHERE device_id = $1")
            .bind(device_id)
            .fetch_all(&state.store.pool)
            .await?;
    rows.iter()
        .map(|r| {
            let q: String = r.try_get(3)?;
            Ok((
                r.try_get(0)?,
                Stored {
                    time_ms: r.try_get(1)?,
                    value: r.try_get(2)?,
                    quality: Quality::from_code(&q),
                },
            ))
        })
        .collect()
}
