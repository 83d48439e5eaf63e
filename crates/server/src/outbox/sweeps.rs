//! Periodic producers: devices offline longer than their account allows, and each
//! account's monthly activity report. Both are idempotent across replicas and
//! repeated sweeps (`outbox_once`): one message per offline period, one report per
//! account and month.

use super::{EventKind, Message};
use crate::db::Store;
use crate::state::AppState;
use sqlx::Row;
use time::{Date, Month, OffsetDateTime, Time};

/// Most rows in one report's CSV (the text says when it was cut).
pub const MAX_REPORT_ROWS: i64 = 50_000;
/// Most devices reported offline in one sweep (the next sweep takes the rest).
const OFFLINE_BATCH: i64 = 500;

/// Both sweeps.
pub async fn run(state: &AppState) -> anyhow::Result<()> {
    let now = state.now();
    devices_offline(&state.store, state.started_at, now).await?;
    monthly_reports(&state.store, now).await?;
    Ok(())
}

/// Tells about every device offline longer than its account's
/// `device_offline_minutes` (0: off), once per offline period (the period is named
/// by the device's last sign of life). Nothing is judged until this process has
/// been up for the edges' grace period itself (after the control plane's own
/// outage every device looks offline until it reconnects).
pub async fn devices_offline(store: &Store, up_since: i64, now: i64) -> anyhow::Result<usize> {
    if now - up_since < crate::sessions::EDGE_OFFLINE_GRACE_SECS {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT d.id, d.account_id, d.name, d.last_seen, n.device_offline_minutes FROM devices d
         JOIN notification_settings n ON n.account_id = d.account_id
         LEFT JOIN outbox_once o ON o.account_id = d.account_id
              AND o.once_key = 'device_offline:' || d.id || ':' || CAST(d.last_seen AS TEXT)
         WHERE n.device_offline_minutes > 0 AND d.disabled = 0 AND d.archived = 0
           AND d.last_seen IS NOT NULL AND d.last_seen + n.device_offline_minutes * 60 < $1
           AND d.last_seen + $2 < $1 AND o.once_key IS NULL
         ORDER BY d.last_seen LIMIT $3",
    )
    .bind(now)
    .bind(crate::sessions::ONLINE_WINDOW_SECS)
    .bind(OFFLINE_BATCH)
    .fetch_all(&store.pool)
    .await?;
    let mut told = 0;
    for r in rows {
        let id: String = r.try_get(0)?;
        let account: String = r.try_get(1)?;
        let name: String = r.try_get(2)?;
        let last_seen: i64 = r.try_get(3)?;
        let minutes: i64 = r.try_get(4)?;
        let since = rfc3339(last_seen);
        let msg = Message::new(
            EventKind::DeviceOffline,
            format!("Drawbridge: device {name} is offline"),
            format!(
                "Device {name} has been offline since {since} (more than {minutes} minutes).\n\
                 You are told once per offline period."
            ),
        )
        .data(serde_json::json!({
            "device_id": id, "device": name, "last_seen": since, "minutes": minutes,
        }));
        let mut tx = store.begin().await?;
        let key = format!("device_offline:{id}:{last_seen}");
        if super::enqueue_once(&mut tx, &account, &key, &msg, now).await? {
            told += 1;
        }
        tx.commit().await?;
    }
    Ok(told)
}

/// The first day (00:00 UTC) of the month `t` is in, and of the month before.
pub fn month_bounds(t: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let first = |y: i32, m: Month| {
        Date::from_calendar_date(y, m, 1)
            .unwrap_or(Date::MIN)
            .with_time(Time::MIDNIGHT)
            .assume_utc()
    };
    let this = first(t.year(), t.month());
    let (y, m) = match t.month() {
        Month::January => (t.year() - 1, Month::December),
        m => (t.year(), m.previous()),
    };
    (first(y, m), this)
}

/// Sends each account its report on last month (UTC) once, whichever replica gets
/// there first; accounts created after that month get none.
pub async fn monthly_reports(store: &Store, now: i64) -> anyhow::Result<usize> {
    let (start, end) = month_bounds(crate::clock::from_unix(now));
    let label = format!("{}-{:02}", start.year(), u8::from(start.month()));
    let key = format!("activity_report:{label}");
    let accounts: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.id, a.name FROM accounts a
         LEFT JOIN outbox_once o ON o.account_id = a.id AND o.once_key = $1
         WHERE a.created_at < $2 AND o.once_key IS NULL ORDER BY a.id LIMIT 1000",
    )
    .bind(&key)
    .bind(end.unix_timestamp())
    .fetch_all(&store.pool)
    .await?;
    let mut sent = 0;
    for (account, name) in accounts {
        let mut tx = store.begin().await?;
        // Claims the month first: a replica that loses the race builds nothing.
        let r = sqlx::query(
            "INSERT INTO outbox_once (account_id, once_key, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, once_key) DO NOTHING",
        )
        .bind(&account)
        .bind(&key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            continue;
        }
        let msg = report(
            &mut tx,
            &account,
            &name,
            &label,
            start.unix_timestamp(),
            end.unix_timestamp(),
        )
        .await?;
        super::enqueue(&mut tx, &account, &msg, now).await?;
        tx.commit().await?;
        sent += 1;
    }
    Ok(sent)
}

/// The report on `[start, end)`: every tunnel (a user's connection to a device in
/// a session) that was open during it, as CSV, and the totals in the text.
async fn report(
    tx: &mut crate::db::Tx<'_>,
    account: &str,
    account_name: &str,
    label: &str,
    start: i64,
    end: i64,
) -> anyhow::Result<Message> {
    let rows = sqlx::query(
        "SELECT u.username, d.name AS device, s.name AS session, t.started_at, t.ended_at, t.path,
                t.bytes_to_device, t.bytes_from_device, t.end_reason
         FROM tunnels t
         JOIN users u ON u.id = t.user_id
         JOIN devices d ON d.id = t.device_id
         JOIN sessions s ON s.id = t.session_id
         WHERE t.account_id = $1 AND t.started_at < $2 AND (t.ended_at IS NULL OR t.ended_at >= $3)
         ORDER BY t.started_at, t.id LIMIT $4",
    )
    .bind(account)
    .bind(end)
    .bind(start)
    .bind(MAX_REPORT_ROWS + 1)
    .fetch_all(&mut **tx)
    .await?;
    let cut = rows.len() as i64 > MAX_REPORT_ROWS;
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record([
        "user",
        "device",
        "session",
        "started_at",
        "ended_at",
        "duration_seconds",
        "path",
        "bytes_to_device",
        "bytes_from_device",
        "end_reason",
    ])?;
    let (mut users, mut devices) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut total = 0i64;
    for r in rows.iter().take(MAX_REPORT_ROWS as usize) {
        let user: String = r.try_get("username")?;
        let device: String = r.try_get("device")?;
        let started: i64 = r.try_get("started_at")?;
        let ended: Option<i64> = r.try_get("ended_at")?;
        // Time within the month.
        let secs = (ended.unwrap_or(end).min(end) - started.max(start)).max(0);
        total += secs;
        csv.write_record([
            csv_safe(&user),
            csv_safe(&device),
            csv_safe(&r.try_get::<String, _>("session")?),
            rfc3339(started),
            ended.map(rfc3339).unwrap_or_default(),
            secs.to_string(),
            r.try_get::<Option<String>, _>("path")?.unwrap_or_default(),
            r.try_get::<i64, _>("bytes_to_device")?.to_string(),
            r.try_get::<i64, _>("bytes_from_device")?.to_string(),
            r.try_get::<Option<String>, _>("end_reason")?
                .unwrap_or_default(),
        ])?;
        users.insert(user);
        devices.insert(device);
    }
    let bytes = csv.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    let n = rows.len().min(MAX_REPORT_ROWS as usize);
    let mut text = format!(
        "Activity report of account {account_name} for {label} (UTC).\n\n\
         {n} connections by {} users to {} devices, {} in all.\n\
         The attached CSV lists each connection: who, to which device, in which session, \
         when, for how long (within the month), over which path and how many bytes.\n",
        users.len(),
        devices.len(),
        duration(total),
    );
    if cut {
        text.push_str(&format!(
            "\nThe list was cut at {MAX_REPORT_ROWS} connections; export the audit log for all.\n"
        ));
    }
    Ok(Message::new(
        EventKind::ActivityReport,
        format!("Drawbridge: activity report {label}"),
        text,
    )
    .data(serde_json::json!({
        "month": label, "connections": n, "users": users.len(), "devices": devices.len(),
        "total_seconds": total, "truncated": cut,
    }))
    .attach_csv(format!("drawbridge-activity-{label}.csv"), bytes))
}

/// A cell a spreadsheet will not run as a formula.
fn csv_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

pub(crate) fn rfc3339(t: i64) -> String {
    crate::clock::from_unix(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn duration(secs: i64) -> String {
    format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn last_month_is_found_across_the_year() {
        let (a, b) = month_bounds(datetime!(2025-03-15 10:00 UTC));
        assert_eq!(
            (a, b),
            (
                datetime!(2025-02-01 0:00 UTC),
                datetime!(2025-03-01 0:00 UTC)
            )
        );
        let (a, b) = month_bounds(datetime!(2025-01-01 0:00 UTC));
        assert_eq!(
            (a, b),
            (
                datetime!(2024-12-01 0:00 UTC),
                datetime!(2025-01-01 0:00 UTC)
            )
        );
    }

    #[test]
    fn cells_never_start_a_formula() {
        assert_eq!(csv_safe("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_safe("press-1"), "press-1");
        assert_eq!(duration(3 * 3600 + 5 * 60 + 7), "3 h 05 min");
    }
}
