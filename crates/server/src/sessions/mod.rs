//! Sessions as records: loading, the rules for who may be put into a session
//! with which targets, and the state changes (start, end, and the sweeps that
//! end sessions on expiry, idle timeout or an edge gone offline). Dual control
//! per device lives in `approval`.

use crate::audit::{self, Event};
use crate::clock::from_unix;
use crate::db::{Store, Tx};
use crate::error::{AppError, AppResult};
use crate::records;
use crate::rights;
use drawbridge_proto::api::{DeviceApproval, MAX_LIST, Session, SessionDevice};
use drawbridge_proto::{ApprovalState, EndReason, Name, Role, SessionState};
use sqlx::{AnyConnection, Row};

mod approval;
pub mod narrow;
pub mod tunnels;
use approval::time_out_pending;
pub use approval::{APPROVAL_WINDOW_SECS, Decided, Decider, decide};

/// An edge counts as online while its channel is up and it was heard from this recently.
pub const ONLINE_WINDOW_SECS: i64 = 90;

pub const SESSION_COLS: &str = "id, name, state, adhoc, created_by, created_at, valid_from, valid_until, started_at, started_by, ended_at, ended_by, end_reason, web_requests, web_bytes";

fn bad(what: &str) -> AppError {
    AppError::internal(anyhow::anyhow!("stored session {what} does not parse"))
}

pub async fn load(conn: &mut AnyConnection, account_id: &str, id: &str) -> AppResult<Session> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLS} FROM sessions WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| AppError::not_found("session"))?;
    let devices = sqlx::query(
        "SELECT device_id, targets FROM session_devices WHERE session_id = $1 ORDER BY device_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(SessionDevice {
            device_id: r.try_get("device_id")?,
            targets: records::json_col(r, "targets")?,
        })
    })
    .collect::<AppResult<Vec<_>>>()?;
    let approvals = if row.try_get::<Option<i64>, _>("started_at")?.is_some() {
        approvals(conn, id).await?
    } else {
        Vec::new()
    };
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM session_users WHERE session_id = $1 ORDER BY user_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let opt_time =
        |c: &str| -> AppResult<_> { Ok(row.try_get::<Option<i64>, _>(c)?.map(from_unix)) };
    Ok(Session {
        id: row.try_get("id")?,
        name: Name::try_from(row.try_get::<String, _>("name")?).map_err(|_| bad("name"))?,
        state: row
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|_| bad("state"))?,
        devices,
        users,
        adhoc: row.try_get::<i64, _>("adhoc")? != 0,
        created_by: row.try_get("created_by")?,
        created_at: from_unix(row.try_get("created_at")?),
        valid_from: from_unix(row.try_get("valid_from")?),
        valid_until: from_unix(row.try_get("valid_until")?),
        started_at: opt_time("started_at")?,
        started_by: row.try_get("started_by")?,
        ended_at: opt_time("ended_at")?,
        ended_by: row.try_get("ended_by")?,
        end_reason: row
            .try_get::<Option<String>, _>("end_reason")?
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| bad("end reason"))?,
        approvals,
        web_requests: row.try_get("web_requests")?,
        web_bytes: row.try_get("web_bytes")?,
    })
}

/// Each device's approval in a session (dual control per device).
async fn approvals(conn: &mut AnyConnection, id: &str) -> AppResult<Vec<DeviceApproval>> {
    sqlx::query(
        "SELECT device_id, approval, decided_by, decided_at FROM session_devices
         WHERE session_id = $1 ORDER BY device_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(DeviceApproval {
            device_id: r.try_get("device_id")?,
            state: r
                .try_get::<String, _>("approval")?
                .parse()
                .map_err(|_| bad("approval"))?,
            decided_by: r.try_get("decided_by")?,
            decided_at: r.try_get::<Option<i64>, _>("decided_at")?.map(from_unix),
        })
    })
    .collect()
}

/// Who prepares checks the devices and targets against their own grants (session
/// admins), and every assigned user must be covered too: each target of each
/// device must be allowed by the user's access to that device.
pub async fn check_assignment(
    conn: &mut AnyConnection,
    account_id: &str,
    preparer: Option<(&str, Role)>,
    devices: &[SessionDevice],
    users: &[String],
) -> AppResult<()> {
    if devices.is_empty() || devices.len() > MAX_LIST || users.len() > MAX_LIST {
        return Err(AppError::invalid(format!(
            "a session has 1 to {MAX_LIST} devices and at most {MAX_LIST} users"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in devices {
        if !seen.insert(d.device_id.as_str()) {
            return Err(AppError::invalid("a device appears twice"));
        }
        if d.targets.is_empty() || d.targets.len() > MAX_LIST {
            return Err(AppError::invalid(format!(
                "each device releases 1 to {MAX_LIST} targets"
            )));
        }
    }
    // (user id, role, user name) of everyone whose rights must cover the targets.
    let mut checks: Vec<(String, Role, String)> = Vec::new();
    if let Some((id, role)) = preparer {
        let name = records::user(conn, account_id, id).await?.username;
        checks.push((id.to_string(), role, name));
    }
    for u in users {
        let user = records::user(conn, account_id, u).await?;
        if user.disabled {
            return Err(AppError::invalid(format!(
                "user {} is disabled",
                user.username
            )));
        }
        if user.role == Role::Auditor {
            return Err(AppError::invalid(format!(
                "user {} is an auditor and cannot use sessions",
                user.username
            )));
        }
        checks.push((user.id, user.role, user.username));
    }
    for d in devices {
        let device = records::device(conn, account_id, &d.device_id).await?;
        if device.status.archived || device.status.disabled {
            return Err(AppError::conflict(format!(
                "device {} is {}",
                device.name,
                if device.status.archived {
                    "archived"
                } else {
                    "disabled"
                }
            )));
        }
        for (user_id, role, name) in &checks {
            let access = rights::access(conn, account_id, user_id, *role, &device.id).await?;
            for t in &d.targets {
                // A monitor grant reaches a device's desktops only, in the browser
                // and view-only (the server's peer; never a tunnel of its own).
                let desktop = access == rights::Access::Monitor
                    && device.firewall.iter().any(|f| f.covers(t))
                    && crate::desktop::is_desktop_target(&device.web_services, t);
                if !access.allows(&device.firewall, t) && !desktop {
                    return Err(AppError::new(
                        drawbridge_proto::ErrorCode::Forbidden,
                        format!(
                            "target {t} on device {} is outside the device firewall or the grants of user {name}",
                            device.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Inserts a prepared session.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    tx: &mut Tx<'_>,
    account_id: &str,
    name: &Name,
    devices: &[SessionDevice],
    users: &[String],
    created_by: &str,
    valid_from: i64,
    valid_until: i64,
    adhoc: bool,
    now: i64,
) -> AppResult<String> {
    let id = crate::secret::new_id();
    sqlx::query(
        "INSERT INTO sessions (id, account_id, name, state, adhoc, created_by, created_at, valid_from, valid_until)
         VALUES ($1, $2, $3, 'prepared', $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(name.as_str())
    .bind(i64::from(adhoc))
    .bind(created_by)
    .bind(now)
    .bind(valid_from)
    .bind(valid_until)
    .execute(&mut **tx)
    .await?;
    for d in devices {
        add_device(tx, &id, d).await?;
    }
    for u in users {
        sqlx::query("INSERT INTO session_users (session_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(&id)
            .bind(u)
            .execute(&mut **tx)
            .await?;
    }
    Ok(id)
}

pub async fn add_device(tx: &mut Tx<'_>, session_id: &str, d: &SessionDevice) -> AppResult<()> {
    let r = sqlx::query(
        "INSERT INTO session_devices (session_id, device_id, targets) VALUES ($1, $2, $3)",
    )
    .bind(session_id)
    .bind(&d.device_id)
    .bind(serde_json::to_string(&d.targets).map_err(AppError::internal)?)
    .execute(&mut **tx)
    .await;
    match r {
        Err(e) if crate::db::is_unique_violation(&e) => {
            Err(AppError::conflict("the device is in the session already"))
        }
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// Moves a prepared session to active, or to pending approval when no device
/// may run yet. Under dual control every device waits for its own approval; a
/// device flagged "always needs on-site approval" waits whatever the account says.
pub async fn start(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    by: &str,
    dual_control: bool,
    now: i64,
) -> AppResult<SessionState> {
    // Site consent: every device of the session must be online with its switch on.
    let devices = sqlx::query(
        "SELECT d.name, d.online, d.switch_on, d.last_seen, d.id, d.onsite_approval, d.disabled + d.archived FROM session_devices sd JOIN devices d ON d.id = sd.device_id
         WHERE sd.session_id = $1 AND d.account_id = $2",
    )
    .bind(id)
    .bind(account_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut approved = 0;
    let mut waiting = Vec::new();
    for d in devices {
        let name: String = d.try_get(0)?;
        let last_seen: Option<i64> = d.try_get(3)?;
        let online =
            d.try_get::<i64, _>(1)? != 0 && last_seen.is_some_and(|t| now - t < ONLINE_WINDOW_SECS);
        if d.try_get::<i64, _>(6)? != 0 {
            return Err(AppError::conflict(format!(
                "device {name} is disabled or archived"
            )));
        }
        if !online {
            return Err(AppError::conflict(format!("device {name} is offline")));
        }
        if d.try_get::<i64, _>(2)? == 0 {
            return Err(AppError::conflict(format!(
                "remote access is switched off at the site of device {name}"
            )));
        }
        let waits = dual_control || d.try_get::<i64, _>(5)? != 0;
        let approval = if waits {
            waiting.push(name);
            ApprovalState::Pending
        } else {
            approved += 1;
            ApprovalState::Approved
        };
        sqlx::query(
            "UPDATE session_devices SET approval = $1, decided_by = NULL, decided_at = NULL
             WHERE session_id = $2 AND device_id = $3",
        )
        .bind(approval.as_str())
        .bind(id)
        .bind(d.try_get::<String, _>(4)?)
        .execute(&mut **tx)
        .await?;
    }
    let next = if approved > 0 {
        SessionState::Active
    } else {
        SessionState::PendingApproval
    };
    let r = sqlx::query(
        "UPDATE sessions SET state = $1, started_at = $2, started_by = $3, last_activity = $2
         WHERE id = $4 AND account_id = $5 AND state = 'prepared' AND valid_from <= $2 AND valid_until > $2",
    )
    .bind(next.as_str())
    .bind(now)
    .bind(by)
    .bind(id)
    .bind(account_id)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict(
            "only a prepared session inside its validity window can be started",
        ));
    }
    if !waiting.is_empty() {
        crate::outbox::producers::approval_waiting(tx, account_id, id, by, &waiting, now).await?;
    }
    Ok(next)
}

/// Ends a session that has not ended yet. Returns false when it had already ended.
pub async fn end(
    tx: &mut Tx<'_>,
    account_id: &str,
    id: &str,
    by: &str,
    reason: EndReason,
    now: i64,
) -> AppResult<bool> {
    let r = sqlx::query(
        "UPDATE sessions SET state = 'ended', ended_at = $1, ended_by = $2, end_reason = $3
         WHERE id = $4 AND account_id = $5 AND state <> 'ended'",
    )
    .bind(now)
    .bind(by)
    .bind(reason.as_str())
    .bind(id)
    .bind(account_id)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() == 1 {
        sqlx::query("DELETE FROM tunnel_signals WHERE session_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        tunnels::close(
            tx,
            account_id,
            tunnels::Which::Session(id),
            reason.as_str(),
            now,
        )
        .await?;
    }
    Ok(r.rows_affected() == 1)
}

/// Ends the running sessions a user started (when the user is disabled).
pub async fn end_for_user(
    tx: &mut Tx<'_>,
    account_id: &str,
    user_id: &str,
    reason: EndReason,
    actor: &str,
    now: i64,
) -> AppResult<Vec<String>> {
    // The user's own tunnels in any session close too.
    let mut touched = tunnels::close(
        tx,
        account_id,
        tunnels::Which::User(user_id),
        reason.as_str(),
        now,
    )
    .await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE account_id = $1 AND started_by = $2 AND state IN ('active', 'pending_approval')",
    )
    .bind(account_id)
    .bind(format!("user:{user_id}"))
    .fetch_all(&mut **tx)
    .await?;
    for id in ids {
        if end(tx, account_id, &id, actor, reason, now).await? {
            touched.push(id.clone());
            let ev = Event::new(account_id, actor, "session.end", &format!("session:{id}"))
                .details(serde_json::json!({ "reason": reason.as_str() }));
            audit::append(tx, now, &ev).await?;
        }
    }
    touched.sort();
    touched.dedup();
    Ok(touched)
}

/// Ends every session whose validity window has passed; returns their ids.
pub async fn expire_due(store: &Store, now: i64) -> AppResult<Vec<String>> {
    let mut due = Vec::new();
    let mut after = String::new();
    // Every one, in pages (keyset on the id), however many there are.
    loop {
        let page = sqlx::query(
            "SELECT id, account_id FROM sessions WHERE state <> 'ended' AND valid_until <= $1 AND id > $2
             ORDER BY id LIMIT 500",
        )
        .bind(now)
        .bind(&after)
        .fetch_all(&store.pool)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.try_get(0)?;
        due.extend(page);
    }
    let mut ended = Vec::new();
    for row in due {
        let id: String = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let mut tx = store.begin().await?;
        if end(&mut tx, &account, &id, "system", EndReason::Expiry, now).await? {
            let ev = Event::new(&account, "system", "session.end", &format!("session:{id}"))
                .details(serde_json::json!({ "reason": "expiry" }));
            audit::append(&mut tx, now, &ev).await?;
            ended.push(id);
        }
        tx.commit().await?;
    }
    Ok(ended)
}

/// How long an edge may stay unheard-from before its running sessions end
/// (reason `edge_offline`). Generous: a tunnel may well keep working while its
/// edge cannot reach the control plane, and the edge learns of the end only
/// when it is back.
pub const EDGE_OFFLINE_GRACE_SECS: i64 = 5 * 60;

/// Ends the running sessions with a device whose edge has not been heard from
/// for longer than [`EDGE_OFFLINE_GRACE_SECS`]. Nothing ends until this process
/// has been up for the grace period itself (`up_since`): after the control
/// plane's own outage, edges get their chance to reconnect first.
pub async fn end_for_offline_edges(
    store: &Store,
    up_since: i64,
    now: i64,
) -> AppResult<Vec<String>> {
    if now - up_since < EDGE_OFFLINE_GRACE_SECS {
        return Ok(Vec::new());
    }
    let cutoff = now - EDGE_OFFLINE_GRACE_SECS;
    let rows = sqlx::query(
        "SELECT DISTINCT s.id, s.account_id, d.id FROM sessions s
         JOIN session_devices sd ON sd.session_id = s.id
         JOIN devices d ON d.id = sd.device_id AND d.account_id = s.account_id
         WHERE s.state IN ('active', 'pending_approval') AND (d.last_seen IS NULL OR d.last_seen < $1)
         AND sd.approval IN ('approved', 'pending')",
    )
    .bind(cutoff)
    .fetch_all(&store.pool)
    .await?;
    let mut ended = Vec::new();
    for row in rows {
        let id: String = row.try_get(0)?;
        let account: String = row.try_get(1)?;
        let device: String = row.try_get(2)?;
        let mut tx = store.begin().await?;
        if end(
            &mut tx,
            &account,
            &id,
            "system",
            EndReason::EdgeOffline,
            now,
        )
        .await?
        {
            let ev = Event::new(&account, "system", "session.end", &format!("session:{id}"))
                .details(serde_json::json!({
                    "reason": EndReason::EdgeOffline.as_str(),
                    "device_id": device,
                    "offline_for_secs_at_least": EDGE_OFFLINE_GRACE_SECS,
                }));
            audit::append(&mut tx, now, &ev).await?;
            ended.push(id);
        }
        tx.commit().await?;
    }
    Ok(ended)
}

/// Drops devices whose approval did not come in time (see `time_out_pending`),
/// and ends active sessions idle for longer than their account allows. Returns
/// the (account, session) pairs ended or changed.
pub async fn end_stale(store: &Store, now: i64) -> AppResult<Vec<(String, String)>> {
    let mut out = time_out_pending(store, now).await?;
    // Every running session, a page at a time (keyset on the id), however many there are.
    let mut after = String::new();
    loop {
        let page = sqlx::query(
            "SELECT s.id, s.account_id, s.state, s.started_at, s.last_activity, a.settings
             FROM sessions s JOIN accounts a ON a.id = s.account_id
             WHERE s.state = 'active' AND s.id > $1 ORDER BY s.id LIMIT 500",
        )
        .bind(&after)
        .fetch_all(&store.pool)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.try_get(0)?;
        for r in page {
            let id: String = r.try_get(0)?;
            let account: String = r.try_get(1)?;
            let state: String = r.try_get(2)?;
            let started: i64 = r.try_get::<Option<i64>, _>(3)?.unwrap_or(now);
            let activity: i64 = r.try_get::<Option<i64>, _>(4)?.unwrap_or(started);
            let settings: drawbridge_proto::AccountSettings = records::json_col(&r, "settings")?;
            let reason = if state == "active"
                && now - activity >= i64::from(settings.session_idle_minutes) * 60
            {
                EndReason::IdleTimeout
            } else {
                continue;
            };
            let mut tx = store.begin().await?;
            if end(&mut tx, &account, &id, "system", reason, now).await? {
                let ev = Event::new(&account, "system", "session.end", &format!("session:{id}"))
                    .details(serde_json::json!({ "reason": reason.as_str() }));
                audit::append(&mut tx, now, &ev).await?;
                out.push((account, id));
            }
            tx.commit().await?;
        }
    }
    Ok(out)
}
