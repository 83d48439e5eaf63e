//! Alarms as Ewon's model has them. The edge evaluates the rules and reports
//! `raised` and `returned` with their original times; people acknowledge. An
//! alarm goes alarm → acknowledged → ended, or alarm → returned → ended: it
//! ends once it is both back to normal and acknowledged.

use crate::db::Tx;
use crate::error::{AppError, AppResult};
use drawbridge_proto::data::AlarmTransition;
use drawbridge_proto::mailbox::{Alarm, AlarmEvent, AlarmState};
use sqlx::{AnyConnection, Row};

/// What an edge report did, for notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub alarm_id: String,
    pub tag: String,
    pub transition: AlarmTransition,
    pub time_ms: i64,
    pub value: Option<f64>,
}

/// Whose alarm: the account, device and tag.
#[derive(Debug, Clone, Copy)]
pub struct Of<'a> {
    pub account_id: &'a str,
    pub device_id: &'a str,
    pub tag: &'a str,
}

/// One history entry; `user` is (user id, comment).
async fn history(
    tx: &mut Tx<'_>,
    alarm_id: &str,
    of: Of<'_>,
    time_ms: i64,
    event: &str,
    value: Option<f64>,
    user: Option<(&str, &str)>,
) -> AppResult<()> {
    let sql = format!(
        "INSERT INTO alarm_history (id, alarm_id, account_id, device_id, tag, time_ms, event, user_id, comment, value)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {})",
        super::opt_f64(10, value)
    );
    let mut q = sqlx::query(&sql)
        .bind(crate::secret::new_id())
        .bind(alarm_id)
        .bind(of.account_id)
        .bind(of.device_id)
        .bind(of.tag)
        .bind(time_ms)
        .bind(event)
        .bind(user.map(|u| u.0.to_string()))
        .bind(user.map(|u| u.1.to_string()));
    if let Some(v) = value {
        q = q.bind(v);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// The alarm of `tag` that has not returned yet, if any.
async fn standing(
    tx: &mut Tx<'_>,
    device_id: &str,
    tag: &str,
) -> AppResult<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, state FROM alarms WHERE device_id = $1 AND tag = $2 AND state IN ('alarm', 'acknowledged')
         ORDER BY raised_ms DESC LIMIT 1",
    )
    .bind(device_id)
    .bind(tag)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Applies one transition an edge reported. A raise while the tag's alarm
/// still stands, or a return with none standing, changes nothing (an edge that
/// restarted may report a standing condition again).
pub async fn apply(
    tx: &mut Tx<'_>,
    of: Of<'_>,
    transition: AlarmTransition,
    time_ms: i64,
    value: Option<f64>,
    now: i64,
) -> AppResult<Option<Changed>> {
    let Of {
        account_id,
        device_id,
        tag,
    } = of;
    let current = standing(tx, device_id, tag).await?;
    let alarm_id = match (transition, current) {
        (AlarmTransition::Raised, Some(_)) | (AlarmTransition::Returned, None) => return Ok(None),
        (AlarmTransition::Raised, None) => {
            let id = crate::secret::new_id();
            let sql = format!(
                "INSERT INTO alarms (id, account_id, device_id, tag, state, raised_ms, updated_at, raised_value)
                 VALUES ($1, $2, $3, $4, 'alarm', $5, $6, {})",
                super::opt_f64(7, value)
            );
            let mut q = sqlx::query(&sql)
                .bind(&id)
                .bind(account_id)
                .bind(device_id)
                .bind(tag)
                .bind(time_ms)
                .bind(now);
            if let Some(v) = value {
                q = q.bind(v);
            }
            q.execute(&mut **tx).await?;
            history(tx, &id, of, time_ms, "raised", value, None).await?;
            id
        }
        (AlarmTransition::Returned, Some((id, state))) => {
            let next = if state == "acknowledged" {
                AlarmState::Ended
            } else {
                AlarmState::Returned
            };
            let sql = format!(
                "UPDATE alarms SET state = $1, returned_ms = $2, updated_at = $3, returned_value = {}
                 WHERE id = $4",
                super::opt_f64(5, value)
            );
            let mut q = sqlx::query(&sql)
                .bind(next.as_str())
                .bind(time_ms)
                .bind(now)
                .bind(&id);
            if let Some(v) = value {
                q = q.bind(v);
            }
            q.execute(&mut **tx).await?;
            history(tx, &id, of, time_ms, "returned", value, None).await?;
            id
        }
    };
    Ok(Some(Changed {
        alarm_id,
        tag: tag.to_string(),
        transition,
        time_ms,
        value,
    }))
}

/// A user acknowledges an alarm (with a comment). Acknowledging one already
/// acknowledged or ended is a conflict; of two at once exactly one succeeds.
pub async fn acknowledge(
    tx: &mut Tx<'_>,
    alarm_id: &str,
    user_id: &str,
    comment: &str,
    now: i64,
) -> AppResult<AlarmState> {
    let (account_id, device_id, tag, state): (String, String, String, String) =
        sqlx::query_as("SELECT account_id, device_id, tag, state FROM alarms WHERE id = $1")
            .bind(alarm_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| AppError::not_found("alarm"))?;
    let next = match AlarmState::parse(&state) {
        Some(AlarmState::Alarm) => AlarmState::Acknowledged,
        Some(AlarmState::Returned) => AlarmState::Ended,
        _ => return Err(AppError::conflict("the alarm is already acknowledged")),
    };
    let n = sqlx::query(
        "UPDATE alarms SET state = $1, acked_at = $2, acked_by = $3, ack_comment = $4, updated_at = $2
         WHERE id = $5 AND state = $6",
    )
    .bind(next.as_str())
    .bind(now)
    .bind(user_id)
    .bind(comment)
    .bind(alarm_id)
    .bind(&state)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(AppError::conflict("the alarm is already acknowledged"));
    }
    let of = Of {
        account_id: &account_id,
        device_id: &device_id,
        tag: &tag,
    };
    history(
        tx,
        alarm_id,
        of,
        now * 1000,
        "acknowledged",
        None,
        Some((user_id, comment)),
    )
    .await?;
    Ok(next)
}

/// Ends every alarm of a deleted tag.
pub async fn end_for_tag(tx: &mut Tx<'_>, device_id: &str, tag: &str, now: i64) -> AppResult<()> {
    let open: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, account_id FROM alarms WHERE device_id = $1 AND tag = $2 AND state <> 'ended'",
    )
    .bind(device_id)
    .bind(tag)
    .fetch_all(&mut **tx)
    .await?;
    for (id, account_id) in open {
        sqlx::query("UPDATE alarms SET state = 'ended', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&id)
            .execute(&mut **tx)
            .await?;
        let of = Of {
            account_id: &account_id,
            device_id,
            tag,
        };
        history(tx, &id, of, now * 1000, "ended", None, None).await?;
    }
    Ok(())
}

const ALARM_COLS: &str =
    "a.id, a.device_id, d.name AS device, a.tag, a.state, a.raised_ms, a.raised_value,
    a.returned_ms, a.returned_value, a.acked_at, u.username AS acked_by, a.ack_comment";

fn alarm_from(r: &sqlx::any::AnyRow) -> AppResult<Alarm> {
    let state: String = r.try_get("state")?;
    Ok(Alarm {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        device: r.try_get("device")?,
        tag: r.try_get("tag")?,
        state: AlarmState::parse(&state)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("alarm state {state}")))?,
        raised_ms: r.try_get("raised_ms")?,
        raised_value: r.try_get("raised_value")?,
        returned_ms: r.try_get("returned_ms")?,
        returned_value: r.try_get("returned_value")?,
        acked_at: r.try_get("acked_at")?,
        acked_by: r.try_get("acked_by")?,
        ack_comment: r.try_get("ack_comment")?,
    })
}

/// Alarms of the account (of `device` only, if given), newest first; ended
/// ones only with `all`. The caller filters by visibility.
pub async fn list(
    conn: &mut AnyConnection,
    account_id: &str,
    device: Option<&str>,
    all: bool,
    limit: i64,
) -> AppResult<Vec<Alarm>> {
    list_page(conn, account_id, device, all, limit, 0).await
}

/// [`list`] from the `offset`-th alarm on (same order).
pub async fn list_page(
    conn: &mut AnyConnection,
    account_id: &str,
    device: Option<&str>,
    all: bool,
    limit: i64,
    offset: i64,
) -> AppResult<Vec<Alarm>> {
    let rows = sqlx::query(&format!(
        "SELECT {ALARM_COLS} FROM alarms a JOIN devices d ON d.id = a.device_id
         LEFT JOIN users u ON u.id = a.acked_by
         WHERE a.account_id = $1 AND ($2 = '' OR a.device_id = $2) AND ($3 = 1 OR a.state <> 'ended')
         ORDER BY a.raised_ms DESC, a.id LIMIT $4 OFFSET $5"
    ))
    .bind(account_id)
    .bind(device.unwrap_or(""))
    .bind(i64::from(all))
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await?;
    rows.iter().map(alarm_from).collect()
}

/// One alarm of the account.
pub async fn get(conn: &mut AnyConnection, account_id: &str, id: &str) -> AppResult<Alarm> {
    let row = sqlx::query(&format!(
        "SELECT {ALARM_COLS} FROM alarms a JOIN devices d ON d.id = a.device_id
         LEFT JOIN users u ON u.id = a.acked_by WHERE a.account_id = $1 AND a.id = $2"
    ))
    .bind(account_id)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| AppError::not_found("alarm"))?;
    alarm_from(&row)
}

/// A device's alarm history, newest first.
pub async fn device_history(
    conn: &mut AnyConnection,
    device_id: &str,
    limit: i64,
) -> AppResult<Vec<AlarmEvent>> {
    let rows = sqlx::query(
        "SELECT h.alarm_id, h.tag, h.time_ms, h.event, h.value, u.username, h.comment
         FROM alarm_history h LEFT JOIN users u ON u.id = h.user_id
         WHERE h.device_id = $1 ORDER BY h.time_ms DESC, h.id LIMIT $2",
    )
    .bind(device_id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AlarmEvent {
                alarm_id: r.try_get(0)?,
                tag: r.try_get(1)?,
                time_ms: r.try_get(2)?,
                event: r.try_get(3)?,
                value: r.try_get(4)?,
                user: r.try_get(5)?,
                comment: r.try_get(6)?,
            })
        })
        .collect()
}

/// Tells the account of an alarm raised or returned, in the transaction that
/// recorded it: the portal's notifications.
pub async fn notify(
    tx: &mut Tx<'_>,
    account_id: &str,
    device_id: &str,
    c: &Changed,
    now: i64,
) -> AppResult<()> {
    let device: String = sqlx::query_scalar("SELECT name FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_one(&mut **tx)
        .await?;
    let value = c
        .value
        .map_or_else(|| "no value".to_string(), |v| v.to_string());
    let (kind, text) = match c.transition {
        AlarmTransition::Raised => (
            "alarm.raised",
            format!("Alarm on {device}: {} is in alarm ({value})", c.tag),
        ),
        AlarmTransition::Returned => (
            "alarm.returned",
            format!("Alarm on {device}: {} is back to normal ({value})", c.tag),
        ),
    };
    crate::notifications::add(tx, account_id, kind, &text, now).await?;
    // E-mail and webhooks, delivered from the outbox once this commits.
    let event = match c.transition {
        AlarmTransition::Raised => crate::outbox::EventKind::AlarmRaised,
        AlarmTransition::Returned => crate::outbox::EventKind::AlarmReturned,
    };
    let message = crate::outbox::Message::new(event, text.clone(), text).data(serde_json::json!({
        "alarm_id": c.alarm_id,
        "device_id": device_id,
        "device": device,
        "tag": c.tag,
        "transition": c.transition,
        "time_ms": c.time_ms,
        "value": c.value,
    }));
    crate::outbox::enqueue(tx, account_id, &message, now).await?;
    Ok(())
}
