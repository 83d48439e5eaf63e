//! The historian as its API reads it (DataMailbox style): a sync that hands out
//! every point once in transaction-id order behind an opaque cursor, range
//! queries per tag, per-device status, and deleting up to a cursor.

use crate::error::{AppError, AppResult};
use drawbridge_proto::TagName;
use drawbridge_proto::data::Quality;
use drawbridge_proto::mailbox::{DataPoint, DataStatus, TagDataStatus};
use sqlx::{AnyConnection, Row};

/// Cursors look like `t<txid>`: opaque to clients, checked strictly here.
pub fn cursor(txid: i64) -> String {
    format!("t{txid}")
}

/// The transaction id behind a cursor (absent: before the first point).
pub fn parse_cursor(c: Option<&str>) -> AppResult<i64> {
    let Some(c) = c else { return Ok(0) };
    c.strip_prefix('t')
        .filter(|d| !d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<i64>().ok())
        .ok_or_else(|| AppError::invalid("not a cursor this server handed out"))
}

const POINT_COLS: &str = "p.txid, p.device_id, d.name, p.tag, p.time_ms, p.value, p.quality";

fn point_from(r: &sqlx::any::AnyRow) -> AppResult<DataPoint> {
    let tag: String = r.try_get(3)?;
    let quality: String = r.try_get(6)?;
    Ok(DataPoint {
        txid: r.try_get(0)?,
        device_id: r.try_get(1)?,
        device: r.try_get(2)?,
        tag: TagName::try_from(tag).map_err(AppError::internal)?,
        time_ms: r.try_get(4)?,
        value: r.try_get(5)?,
        quality: Quality::from_code(&quality)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("stored quality {quality}")))?,
    })
}

/// A sync page: up to `limit` points of the account after `after`, of the
/// devices `visible` admits (None: all). The cursor moves past every point
/// looked at, visible or not, so a caller who sees some devices only still
/// gets to the end.
///
/// The page must be a walk of `data_points_account` (account, txid) from the
/// cursor that stops after `limit` rows, whatever PostgreSQL's statistics say:
/// on a table filled faster than autovacuum analyses it (a new installation,
/// a burst of edges), the planner takes the account's rows for a few thousand
/// and picks a bitmap scan of every row after the cursor and a sort instead —
/// one second a page at a million rows, growing with the table (measured with
/// `drawbridge-loadtest --data`, docs/loadtest.md). So on PostgreSQL the page
/// is read in a transaction with bitmap scans and sorts disabled.
pub async fn sync(
    conn: &mut AnyConnection,
    account_id: &str,
    visible: Option<&[String]>,
    after: i64,
    limit: u32,
) -> AppResult<(Vec<DataPoint>, i64, bool)> {
    let postgres = conn.backend_name() == "PostgreSQL";
    let mut tx = sqlx::Connection::begin(conn).await?;
    if postgres {
        for off in ["enable_bitmapscan", "enable_sort"] {
            sqlx::query(&format!("SET LOCAL {off} = off"))
                .execute(&mut *tx)
                .await?;
        }
    }
    let rows = sqlx::query(&format!(
        "SELECT {POINT_COLS} FROM data_points p JOIN devices d ON d.id = p.device_id
         WHERE p.account_id = $1 AND p.txid > $2 ORDER BY p.txid LIMIT $3"
    ))
    .bind(account_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let more = rows.len() == limit as usize;
    let mut last = after;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let p = point_from(r)?;
        last = p.txid;
        if visible.is_none_or(|v| v.contains(&p.device_id)) {
            out.push(p);
        }
    }
    Ok((out, last, more))
}

/// One tag's points in `[from, to)`, oldest first.
pub async fn range(
    conn: &mut AnyConnection,
    device_id: &str,
    tag: &str,
    from_ms: i64,
    to_ms: i64,
    limit: u32,
) -> AppResult<Vec<DataPoint>> {
    let rows = sqlx::query(&format!(
        "SELECT {POINT_COLS} FROM data_points p JOIN devices d ON d.id = p.device_id
         WHERE p.device_id = $1 AND p.tag = $2 AND p.time_ms >= $3 AND p.time_ms < $4
         ORDER BY p.time_ms, p.txid LIMIT $5"
    ))
    .bind(device_id)
    .bind(tag)
    .bind(from_ms)
    .bind(to_ms)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.iter().map(point_from).collect()
}

/// Point counts and times per tag, and the edge buffer as last reported.
pub async fn status(conn: &mut AnyConnection, device_id: &str) -> AppResult<DataStatus> {
    let rows = sqlx::query(
        "SELECT tag, COUNT(*), MIN(time_ms), MAX(time_ms) FROM data_points WHERE device_id = $1
         GROUP BY tag ORDER BY tag",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut tags = Vec::new();
    for r in &rows {
        tags.push(TagDataStatus {
            tag: r.try_get(0)?,
            points: r.try_get(1)?,
            first_ms: r.try_get(2)?,
            last_ms: r.try_get(3)?,
        });
    }
    let (pending, dropped): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(pending), 0) AS BIGINT), CAST(COALESCE(SUM(dropped), 0) AS BIGINT) FROM data_streams WHERE device_id = $1",
    )
    .bind(device_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(DataStatus {
        device_id: device_id.to_string(),
        points: tags.iter().map(|t| t.points).sum(),
        first_ms: tags.iter().filter_map(|t| t.first_ms).min(),
        last_ms: tags.iter().filter_map(|t| t.last_ms).max(),
        tags,
        edge_pending: pending,
        edge_dropped: dropped,
    })
}

/// Deletes the account's points up to and including `up_to`.
pub async fn delete_up_to(
    conn: &mut AnyConnection,
    account_id: &str,
    up_to: i64,
) -> AppResult<u64> {
    Ok(
        sqlx::query("DELETE FROM data_points WHERE account_id = $1 AND txid <= $2")
            .bind(account_id)
            .bind(up_to)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
