//! A device's tags: the one place they are read and written. A tag's Modbus
//! host must lie in the device's LAN subnets (the edge reads nothing else), a
//! device has at most [`MAX_TAGS_PER_DEVICE`] tags of which at most
//! [`MAX_KPIS_PER_DEVICE`] are KPIs — also when many writes arrive at once.

use crate::db::Tx;
use crate::error::{AppError, AppResult};
use drawbridge_proto::api::Device;
use drawbridge_proto::data::{MAX_KPIS_PER_DEVICE, MAX_TAGS_PER_DEVICE, TagSpec};
use sqlx::AnyConnection;
use std::net::IpAddr;

/// The device's tags, by name.
pub async fn list(conn: &mut AnyConnection, device_id: &str) -> AppResult<Vec<TagSpec>> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT spec FROM tags WHERE device_id = $1 ORDER BY name")
            .bind(device_id)
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|s| serde_json::from_str(s).map_err(AppError::internal))
        .collect()
}

/// Creates or replaces `spec` on `device`; true when it is new.
pub async fn put(
    tx: &mut Tx<'_>,
    account_id: &str,
    device: &Device,
    spec: &TagSpec,
    now: i64,
) -> AppResult<bool> {
    let host = IpAddr::V4(spec.source.host);
    if !device.lan_subnets.iter().any(|n| n.contains(&host)) {
        return Err(AppError::invalid(format!(
            "source.host {host} is not in the device's LAN subnets"
        )));
    }
    // Marks the device as one with data services (its edge is sent a tag list
    // at every connect from now on, see `live::edge_data`), and serialises tag
    // writes per device (a row lock on PostgreSQL; SQLite has one writer), so
    // the bounds below hold under concurrent writes.
    sqlx::query("UPDATE devices SET data_configured = 1 WHERE id = $1")
        .bind(&device.id)
        .execute(&mut **tx)
        .await?;
    let (others, kpis): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(kpi), 0) AS BIGINT) FROM tags WHERE device_id = $1 AND name <> $2",
    )
    .bind(&device.id)
    .bind(spec.name.as_str())
    .fetch_one(&mut **tx)
    .await?;
    if others >= MAX_TAGS_PER_DEVICE as i64 {
        return Err(AppError::invalid(format!(
            "a device has at most {MAX_TAGS_PER_DEVICE} tags"
        )));
    }
    if spec.kpi && kpis >= MAX_KPIS_PER_DEVICE as i64 {
        return Err(AppError::invalid(format!(
            "a device has at most {MAX_KPIS_PER_DEVICE} KPI tags"
        )));
    }
    let text = serde_json::to_string(spec).map_err(AppError::internal)?;
    let updated = sqlx::query(
        "UPDATE tags SET spec = $1, kpi = $2, updated_at = $3 WHERE device_id = $4 AND name = $5",
    )
    .bind(&text)
    .bind(i64::from(spec.kpi))
    .bind(now)
    .bind(&device.id)
    .bind(spec.name.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated > 0 {
        if !spec.kpi {
            forget_live(tx, &device.id, spec.name.as_str()).await?;
        }
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO tags (device_id, name, account_id, spec, kpi, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&device.id)
    .bind(spec.name.as_str())
    .bind(account_id)
    .bind(&text)
    .bind(i64::from(spec.kpi))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

async fn forget_live(tx: &mut Tx<'_>, device_id: &str, tag: &str) -> AppResult<()> {
    sqlx::query("DELETE FROM tag_live WHERE device_id = $1 AND tag = $2")
        .bind(device_id)
        .bind(tag)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes a tag (its open alarms end, its live value goes); false when there was none.
/// Its historian points stay until retention or a mailbox delete.
pub async fn delete(tx: &mut Tx<'_>, device_id: &str, name: &str, now: i64) -> AppResult<bool> {
    let n = sqlx::query("DELETE FROM tags WHERE device_id = $1 AND name = $2")
        .bind(device_id)
        .bind(name)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    forget_live(tx, device_id, name).await?;
    super::alarms::end_for_tag(tx, device_id, name, now).await?;
    Ok(true)
}
