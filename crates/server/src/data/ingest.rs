//! Historian records from an edge: each (stream, seq) stored exactly once.
//!
//! In one transaction per message: the stream's row is locked and read (records
//! at or below its `last_seq` were stored before and are only acknowledged
//! again), alarm transitions are applied, `last_seq` moves on, and last the
//! points get transaction ids from the one counter row (held until commit, so
//! ids become visible in order — the mailbox cursor relies on it) and are
//! inserted. The counter row is the one lock every edge's message waits for, so
//! everything else is done before it is taken. The acknowledgement goes out
//! only after the commit.

use super::alarms::{self, Changed};
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use drawbridge_proto::channel::ServerToEdge;
use drawbridge_proto::data::{BufferStatus, MAX_RECORDS_PER_MESSAGE, Record, RecordBody};

/// Rows per INSERT statement: a whole message (5 parameters a row and 2 for
/// all, well below both databases' limits).
const INSERT_ROWS: usize = MAX_RECORDS_PER_MESSAGE;
/// Longest historian stream id.
const MAX_STREAM: usize = 64;

/// What one `records` message did.
#[derive(Debug)]
pub struct Ingested {
    /// The acknowledgement for the edge.
    pub ack: ServerToEdge,
    /// Points newly stored.
    pub stored: usize,
    /// Alarm transitions newly applied.
    pub alarms: Vec<Changed>,
}

fn check(buffer: &BufferStatus, records: &[Record]) -> AppResult<()> {
    let s = &buffer.stream;
    if s.is_empty() || s.len() > MAX_STREAM || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::bad_request(format!(
            "stream must be 1-{MAX_STREAM} printable ASCII characters"
        )));
    }
    if records.len() > MAX_RECORDS_PER_MESSAGE {
        return Err(AppError::bad_request(format!(
            "at most {MAX_RECORDS_PER_MESSAGE} records per message"
        )));
    }
    let mut last = 0u64;
    for r in records {
        if r.seq <= last || r.seq > i64::MAX as u64 {
            return Err(AppError::bad_request(
                "records must come in strictly increasing seq order, from 1",
            ));
        }
        last = r.seq;
        if !super::sane_time_ms(r.time_ms) {
            return Err(AppError::bad_request("record time out of range"));
        }
        let v = match &r.body {
            RecordBody::Point { value, .. } | RecordBody::Alarm { value, .. } => value,
        };
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(AppError::bad_request("values must be finite numbers"));
        }
    }
    Ok(())
}

/// Stores what is new in one message of `device_id`'s edge.
pub async fn records(
    state: &AppState,
    account_id: &str,
    device_id: &str,
    buffer: BufferStatus,
    records: Vec<Record>,
) -> AppResult<Ingested> {
    check(&buffer, &records)?;
    let now = state.now();
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut tx = state.store.begin().await?;
    let last_seq = lock_stream(&mut tx, device_id, &buffer.stream, now).await?;
    let fresh: Vec<&Record> = records.iter().filter(|r| clamp(r.seq) > last_seq).collect();
    let mut changed = Vec::new();
    let mut points = Vec::new();
    for r in &fresh {
        match &r.body {
            RecordBody::Point { value, quality } => points.push((*r, *value, quality.code())),
            RecordBody::Alarm { transition, value } => {
                let of = alarms::Of {
                    account_id,
                    device_id,
                    tag: r.tag.as_str(),
                };
                let c = alarms::apply(&mut tx, of, *transition, r.time_ms, *value, now).await?;
                changed.extend(c);
            }
        }
    }
    let new_last = fresh.last().map_or(last_seq, |r| clamp(r.seq));
    sqlx::query(
        "UPDATE data_streams SET last_seq = $1, pending = $2, dropped = $3, updated_at = $4
         WHERE device_id = $5 AND stream = $6",
    )
    .bind(new_last)
    .bind(clamp(buffer.pending))
    .bind(clamp(buffer.dropped))
    .bind(now)
    .bind(device_id)
    .bind(&buffer.stream)
    .execute(&mut *tx)
    .await?;
    for c in &changed {
        super::alarms::notify(&mut tx, account_id, device_id, c, now).await?;
    }
    if !points.is_empty() {
        let postgres = tx.backend_name() == "PostgreSQL";
        let first = take_txids(&mut tx, points.len()).await?;
        for (i, chunk) in points.chunks(INSERT_ROWS).enumerate() {
            let first = first + (i * INSERT_ROWS) as i64;
            insert(&mut tx, postgres, account_id, device_id, first, chunk).await?;
        }
    }
    tx.commit().await?;
    metrics::counter!("historian_points_stored_total").increment(points.len() as u64);
    Ok(Ingested {
        ack: ServerToEdge::RecordsAck {
            stream: buffer.stream,
            seq: u64::try_from(new_last).unwrap_or(0),
        },
        stored: points.len(),
        alarms: changed,
    })
}

/// Locks the stream's row (creating it) and returns its `last_seq`.
async fn lock_stream(tx: &mut Tx<'_>, device_id: &str, stream: &str, now: i64) -> AppResult<i64> {
    for _ in 0..2 {
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE data_streams SET updated_at = $1 WHERE device_id = $2 AND stream = $3 RETURNING last_seq",
        )
        .bind(now)
        .bind(device_id)
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(l) = last {
            return Ok(l);
        }
        sqlx::query(
            "INSERT INTO data_streams (device_id, stream, last_seq, updated_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT (device_id, stream) DO NOTHING",
        )
        .bind(device_id)
        .bind(stream)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Err(AppError::internal(anyhow::anyhow!(
        "historian stream row vanished"
    )))
}

/// Takes `n` consecutive transaction ids; the counter row stays locked until commit.
async fn take_txids(tx: &mut Tx<'_>, n: usize) -> AppResult<i64> {
    let n = i64::try_from(n).map_err(AppError::internal)?;
    let next: i64 = sqlx::query_scalar(
        "UPDATE data_counter SET next_txid = next_txid + $1 WHERE id = 1 RETURNING next_txid",
    )
    .bind(n)
    .fetch_one(&mut **tx)
    .await?;
    Ok(next - n)
}

/// Inserts `rows` with transaction ids from `first_txid` on.
///
/// A point without a value is bound as NaN (never a stored value: `check`
/// refuses non-finite numbers), which the statement turns into NULL — on
/// SQLite by binding itself (SQLite stores a bound NaN as NULL), on
/// PostgreSQL with `NULLIF`. A NULL is never bound: sqlx 0.8's Any driver
/// sends an absent f64 as a NULL float4, and PostgreSQL then refuses the
/// cached statement's next execution with a value ("incorrect binary data
/// format in bind parameter"), which ended the edge's channel at every
/// bad-quality point.
async fn insert(
    tx: &mut Tx<'_>,
    postgres: bool,
    account_id: &str,
    device_id: &str,
    first_txid: i64,
    rows: &[(&Record, Option<f64>, String)],
) -> AppResult<()> {
    use std::fmt::Write;
    let mut sql = String::with_capacity(96 + rows.len() * 64);
    sql.push_str(
        "INSERT INTO data_points (txid, account_id, device_id, tag, time_ms, value, quality) VALUES ",
    );
    for i in 0..rows.len() {
        let b = 3 + i * 5;
        if i > 0 {
            sql.push(',');
        }
        let v = b + 3;
        let _ = if postgres {
            write!(
                sql,
                "(${b}, $1, $2, ${}, ${}, NULLIF(${v}, CAST('NaN' AS DOUBLE PRECISION)), ${})",
                b + 1,
                b + 2,
                b + 4
            )
        } else {
            write!(
                sql,
                "(${b}, $1, $2, ${}, ${}, ${v}, ${})",
                b + 1,
                b + 2,
                b + 4
            )
        };
    }
    let mut q = sqlx::query(&sql).bind(account_id).bind(device_id);
    for (i, (r, value, quality)) in rows.iter().enumerate() {
        q = q
            .bind(first_txid + i as i64)
            .bind(r.tag.as_str())
            .bind(r.time_ms)
            .bind(value.unwrap_or(f64::NAN))
            .bind(quality.as_str());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
