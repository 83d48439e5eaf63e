//! Dual control: each device of a session waits for its own approval (on site
//! or by an approver in the cloud), and is dropped when refused or not approved
//! in time; the admins are told.

use super::*;
/// How long a device may wait for its approval (dual control).
pub const APPROVAL_WINDOW_SECS: i64 = 10 * 60;

/// Who decides on devices' approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider<'a> {
    /// The device's own edge, on site: decides for that device only.
    OnSite(&'a str),
    /// An approver in the cloud (API, portal, CLI): one device, or (`None`)
    /// every waiting device an approver may decide. Devices that always need
    /// on-site approval cannot be approved this way.
    Cloud(Option<&'a str>),
}

/// What a decision changed.
#[derive(Debug, Default)]
pub struct Decided {
    /// The devices whose approval was decided.
    pub devices: Vec<String>,
    /// The session ended: no device approved and none left waiting.
    pub ended: bool,
}

/// Approves or refuses devices of a started session that wait for their
/// approval. An approval lets those devices run (and makes a waiting session
/// active); a refusal drops them from the session. When no device is approved
/// and none waits any more, the session ends (reason refused).
pub async fn decide(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    decider: Decider<'_>,
    approve: bool,
    by: &str,
    now: i64,
) -> AppResult<Decided> {
    // Approving and refusing are answers to a request for approval: on a
    // session with no device waiting for one, both are the same conflict and
    // change nothing (refusing must not become a way to end a session). The
    // no-op update checks the state and holds the session's row until commit.
    let not_waiting = || AppError::conflict("the session is not waiting for approval");
    let running = sqlx::query(
        "UPDATE sessions SET state = state WHERE id = $1 AND account_id = $2 AND state IN ('pending_approval', 'active')",
    )
    .bind(id)
    .bind(account_id)
    .execute(&mut **tx)
    .await?;
    if running.rows_affected() != 1 {
        return Err(not_waiting());
    }
    let (one, cloud) = match decider {
        Decider::OnSite(d) => (Some(d), false),
        Decider::Cloud(d) => (d, true),
    };
    let rows = sqlx::query(
        "SELECT sd.device_id, d.name, d.onsite_approval FROM session_devices sd JOIN devices d ON d.id = sd.device_id
         WHERE sd.session_id = $1 AND sd.approval = 'pending' ORDER BY d.name",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let mut chosen = Vec::new();
    let mut onsite_only = None;
    for r in rows {
        let device: String = r.try_get(0)?;
        if one.is_some_and(|o| o != device) {
            continue;
        }
        if cloud && approve && r.try_get::<i64, _>(2)? != 0 {
            onsite_only = Some(r.try_get::<String, _>(1)?);
            continue;
        }
        chosen.push(device);
    }
    if chosen.is_empty() {
        return Err(match (onsite_only, one) {
            (Some(name), _) => AppError::new(
                drawbridge_proto::ErrorCode::Forbidden,
                format!(
                    "device {name} always needs on-site approval: only its site can approve it"
                ),
            ),
            (None, Some(_)) => {
                AppError::conflict("the device is not waiting for approval in this session")
            }
            (None, None) => not_waiting(),
        });
    }
    let reason = EndReason::Refused;
    let approval = if approve {
        ApprovalState::Approved
    } else {
        ApprovalState::Refused
    };
    for device in &chosen {
        set_approval(tx, id, device, approval, reason, by, now).await?;
        if !approve {
            notify_dropped(tx, account_id, id, device, "was refused", now).await?;
        }
    }
    let ended = settle(tx, account_id, id, reason, by, now).await?;
    Ok(Decided {
        devices: chosen,
        ended,
    })
}

/// Decides one waiting device; a device that no longer runs loses its tunnels.
async fn set_approval(
    tx: &mut Tx<'_>,
    session_id: &str,
    device_id: &str,
    approval: ApprovalState,
    reason: EndReason,
    by: &str,
    now: i64,
) -> AppResult<()> {
    let r = sqlx::query(
        "UPDATE session_devices SET approval = $1, decided_by = $2, decided_at = $3
         WHERE session_id = $4 AND device_id = $5 AND approval = 'pending'",
    )
    .bind(approval.as_str())
    .bind(by)
    .bind(now)
    .bind(session_id)
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict(
            "the device is not waiting for approval in this session",
        ));
    }
    if approval != ApprovalState::Approved {
        sqlx::query("UPDATE tunnels SET ended_at = $1, end_reason = $2 WHERE session_id = $3 AND device_id = $4 AND ended_at IS NULL")
            .bind(now)
            .bind(reason.as_str())
            .bind(session_id)
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM tunnel_signals WHERE session_id = $1 AND device_id = $2")
            .bind(session_id)
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// After devices' approval changed: a waiting session with an approved device
/// becomes active; one with no device approved and none waiting ends. Returns
/// whether it ended.
async fn settle(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    reason: EndReason,
    by: &str,
    now: i64,
) -> AppResult<bool> {
    let count = |approval: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM session_devices WHERE session_id = $1 AND approval = $2",
        )
        .bind(id)
        .bind(approval)
    };
    let approved = count("approved").fetch_one(&mut **tx).await?;
    if approved > 0 {
        sqlx::query(
            "UPDATE sessions SET state = 'active', last_activity = $1
             WHERE id = $2 AND account_id = $3 AND state = 'pending_approval'",
        )
        .bind(now)
        .bind(id)
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
        return Ok(false);
    }
    if count("pending").fetch_one(&mut **tx).await? > 0
        || !end(tx, account_id, id, by, reason, now).await?
    {
        return Ok(false);
    }
    let ev = Event::new(account_id, by, "session.end", &format!("session:{id}"))
        .details(serde_json::json!({ "reason": reason.as_str() }));
    audit::append(tx, now, &ev).await?;
    let what = if reason == EndReason::ApprovalTimeout {
        "was not approved in time"
    } else {
        "was refused"
    };
    notify_failed_approval(tx, account_id, id, what, now).await?;
    Ok(true)
}

/// Drops the devices whose approval did not come within `APPROVAL_WINDOW_SECS`
/// of the start (one transaction and audit entry each); a session left with no
/// device ends (reason approval_timeout). Returns the (account, session) pairs changed.
pub(super) async fn time_out_pending(store: &Store, now: i64) -> AppResult<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT s.id, s.account_id, sd.device_id FROM session_devices sd JOIN sessions s ON s.id = sd.session_id
         WHERE sd.approval = 'pending' AND s.state IN ('active', 'pending_approval') AND s.started_at <= $1
         ORDER BY s.started_at LIMIT 2000",
    )
    .bind(now - APPROVAL_WINDOW_SECS)
    .fetch_all(&store.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.try_get(0)?;
        let account: String = r.try_get(1)?;
        let device: String = r.try_get(2)?;
        let mut tx = store.begin().await?;
        let reason = EndReason::ApprovalTimeout;
        match set_approval(
            &mut tx,
            &id,
            &device,
            ApprovalState::TimedOut,
            reason,
            "system",
            now,
        )
        .await
        {
            Err(e) if e.code == drawbridge_proto::ErrorCode::Conflict => continue, // decided meanwhile
            r => r?,
        }
        let ev = Event::new(
            &account,
            "system",
            "session.approval_timeout",
            &format!("session:{id}"),
        )
        .device(&device)
        .details(serde_json::json!({ "device_id": device }));
        audit::append(&mut tx, now, &ev).await?;
        if !settle(&mut tx, &account, &id, reason, "system", now).await? {
            notify_dropped(
                &mut tx,
                &account,
                &id,
                &device,
                "was not approved in time",
                now,
            )
            .await?;
        }
        tx.commit().await?;
        out.push((account, id));
    }
    Ok(out)
}

/// Tells the account's admins that a device was dropped from a session.
async fn notify_dropped(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    device_id: &str,
    what: &str,
    now: i64,
) -> AppResult<()> {
    let device: String = sqlx::query_scalar("SELECT name FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_one(&mut **tx)
        .await?;
    let session: String = sqlx::query_scalar("SELECT name FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    crate::notifications::add(
        tx,
        account_id,
        "approval",
        &format!("Device {device} in session {session} {what}."),
        now,
    )
    .await?;
    Ok(())
}

/// Tells the account's admins (the portal's notifications) that a start was not approved.
async fn notify_failed_approval(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    what: &str,
    now: i64,
) -> AppResult<()> {
    let name: String = sqlx::query_scalar("SELECT name FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    crate::notifications::add(
        tx,
        account_id,
        "approval",
        &format!("The start of session {name} {what}."),
        now,
    )
    .await?;
    Ok(())
}
