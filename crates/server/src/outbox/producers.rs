//! Events other modules report, worded once here: a user locked out (from
//! `auth::register_failure`), a session waiting for approval (from
//! `sessions::start`), a device reported offline that is back (from the edge
//! channel), and the audit records that webhooks may subscribe to
//! (sessions, tunnels, the site's switch, desktops; from `audit::append`).
//! Each runs in the caller's transaction.

use super::{EventKind, Message, enqueue};
use crate::db::Tx;

/// A user was locked after too many failed logins: the admins are told.
pub async fn user_lockout(
    tx: &mut Tx<'_>,
    user: &crate::records::UserRow,
    failures: i64,
    minutes: u32,
    source: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let (account_id, user_id, username) = (&user.account_id, &user.id, &user.username);
    let msg = Message::new(
        EventKind::UserLockout,
        format!("Drawbridge: user {username} was locked"),
        format!(
            "User {username} was locked for {minutes} minutes after {failures} failed logins \
             (the last from {source}).\n\nIf this was not the user, someone may be guessing \
             their password; an admin can lift the lockout or disable the user."
        ),
    )
    .data(serde_json::json!({
        "user_id": user_id, "username": username, "failures": failures,
        "minutes": minutes, "source": source,
    }));
    enqueue(tx, account_id, &msg, now).await?;
    Ok(())
}

/// A started session waits for approval of `devices` (names): the approvers
/// (admins and session admins) are told, except whoever started it.
pub async fn approval_waiting(
    tx: &mut Tx<'_>,
    account_id: &str,
    session_id: &str,
    started_by: &str,
    devices: &[String],
    now: i64,
) -> Result<(), sqlx::Error> {
    let session: String = sqlx::query_scalar("SELECT name FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_one(&mut **tx)
        .await?;
    let user_id = started_by.strip_prefix("user:");
    let username: Option<String> = match user_id {
        Some(id) => {
            sqlx::query_scalar("SELECT username FROM users WHERE id = $1 AND account_id = $2")
                .bind(id)
                .bind(account_id)
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    let who = username.clone().unwrap_or_else(|| started_by.to_string());
    let list = devices.join(", ");
    let mut msg = Message::new(
        EventKind::ApprovalWaiting,
        format!("Drawbridge: session {session} waits for approval"),
        format!(
            "{who} started session {session}. It waits for approval of: {list}.\n\n\
             Approve or refuse it in the portal (Sessions) or with \
             POST /api/v1/sessions/{session_id}/approve, or on site. Without a decision \
             within {} minutes the devices are dropped.",
            crate::sessions::APPROVAL_WINDOW_SECS / 60
        ),
    )
    .data(serde_json::json!({
        "session_id": session_id, "session": session, "started_by": who, "devices": devices,
    }));
    if let Some(id) = user_id {
        msg = msg.except_user(id);
    }
    enqueue(tx, account_id, &msg, now).await?;
    Ok(())
}

/// An audit record as an event, when its action is one subscribers may want
/// ([`EventKind::of_audit`]); nothing is queued when nobody subscribed.
pub async fn from_audit(
    tx: &mut Tx<'_>,
    ev: &crate::audit::Event,
    seq: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    if ev.result != "ok" {
        return Ok(());
    }
    let Some(kind) = EventKind::of_audit(&ev.action) else {
        return Ok(());
    };
    let who = ev
        .details
        .get("username")
        .and_then(|u| u.as_str())
        .unwrap_or(&ev.actor);
    let msg = Message::new(
        kind,
        format!(
            "Drawbridge: {} ({})",
            kind.as_str().replace('_', " "),
            ev.object
        ),
        format!(
            "{} of {}{} by {who}.\n\nAudit record {seq} of the account; details: {}",
            ev.action,
            ev.object,
            ev.device_id
                .as_deref()
                .map(|d| format!(" on device {d}"))
                .unwrap_or_default(),
            ev.details
        ),
    )
    .data(serde_json::json!({
        "audit_seq": seq, "action": ev.action, "actor": ev.actor, "object": ev.object,
        "device_id": ev.device_id, "source": ev.source, "details": ev.details,
    }));
    enqueue(tx, &ev.account_id, &msg, now).await?;
    Ok(())
}

/// A device's edge connected again. If the device was reported offline for
/// the period that ended now (its last sign of life `last_seen`), it is told
/// as back online, once for that period.
pub async fn device_back_online(
    tx: &mut Tx<'_>,
    account_id: &str,
    device_id: &str,
    last_seen: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let told: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM outbox_once WHERE account_id = $1 AND once_key = $2")
            .bind(account_id)
            .bind(format!("device_offline:{device_id}:{last_seen}"))
            .fetch_optional(&mut **tx)
            .await?;
    if told.is_none() {
        return Ok(false);
    }
    let name: String = sqlx::query_scalar("SELECT name FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_one(&mut **tx)
        .await?;
    let since = super::sweeps::rfc3339(last_seen);
    let back = super::sweeps::rfc3339(now);
    let msg = Message::new(
        EventKind::DeviceOnline,
        format!("Drawbridge: device {name} is back online"),
        format!("Device {name}, offline since {since}, is back online since {back}."),
    )
    .data(serde_json::json!({
        "device_id": device_id, "device": name, "offline_since": since, "online_since": back,
    }));
    super::enqueue_once(
        tx,
        account_id,
        &format!("device_online:{device_id}:{last_seen}"),
        &msg,
        now,
    )
    .await
}
