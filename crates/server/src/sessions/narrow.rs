//! Narrowing a session's targets on request (`POST /sessions/{id}/narrow`):
//! per listed device, the targets it keeps, each inside one it has now. The
//! change is audited (`session.narrow`) and goes through the live revocation
//! path (`live::revoke::revalidate`); the caller pokes the touched sessions
//! after the commit, so edges cut flows to removed targets and clients lose
//! their routes, on every replica.

use crate::audit;
use crate::auth::Caller;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use drawbridge_proto::api::{MAX_LIST, SessionDevice};
use drawbridge_proto::{SessionState, Target};
use sqlx::Row;

/// Checks a request's shape before anything is read: 1 to `MAX_LIST` devices,
/// each once, each with 1 to `MAX_LIST` targets.
pub fn check_request(devices: &[SessionDevice]) -> AppResult<()> {
    if devices.is_empty() || devices.len() > MAX_LIST {
        return Err(AppError::invalid(format!(
            "name 1 to {MAX_LIST} devices with the targets each keeps"
        )));
    }
    for (i, d) in devices.iter().enumerate() {
        if d.targets.is_empty() || d.targets.len() > MAX_LIST {
            return Err(AppError::invalid(format!(
                "a device keeps 1 to {MAX_LIST} targets (to drop a device, end the session)"
            )));
        }
        if devices[..i].iter().any(|o| o.device_id == d.device_id) {
            return Err(AppError::invalid("each device may be named once"));
        }
    }
    Ok(())
}

/// Applies the narrowing in `tx`. Refuses (nothing changed) when the session has
/// ended, a device is not in it, or a kept target is not inside one the device
/// has now. A concurrent change to the same device's targets is a conflict, so
/// two narrowings can never add up to a widening. Returns whether anything changed.
pub async fn apply(
    tx: &mut Tx<'_>,
    account_id: &str,
    session_id: &str,
    state: SessionState,
    caller: &Caller,
    devices: &[SessionDevice],
    now: i64,
) -> AppResult<bool> {
    if state == SessionState::Ended {
        return Err(AppError::conflict("the session has ended already"));
    }
    // Check every device first, change afterwards: a refusal changes nothing.
    let mut plan = Vec::new();
    for d in devices {
        let raw: Option<String> = sqlx::query(
            "SELECT sd.targets FROM session_devices sd JOIN sessions s ON s.id = sd.session_id
             WHERE sd.session_id = $1 AND sd.device_id = $2 AND s.account_id = $3",
        )
        .bind(session_id)
        .bind(&d.device_id)
        .bind(account_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let Some(raw) = raw else {
            return Err(AppError::invalid(format!(
                "the device {} is not in this session",
                d.device_id
            )));
        };
        let current: Vec<Target> = serde_json::from_str(&raw).map_err(AppError::internal)?;
        let wider: Vec<String> = d
            .targets
            .iter()
            .filter(|t| !current.iter().any(|c| c.covers(t)))
            .map(Target::to_string)
            .collect();
        if !wider.is_empty() {
            return Err(AppError::invalid(format!(
                "a session can only be narrowed: {} not inside the device's current targets",
                wider.join(", ")
            )));
        }
        let mut kept: Vec<Target> = Vec::new();
        for t in &d.targets {
            if !kept.contains(t) {
                kept.push(t.clone());
            }
        }
        let unchanged = kept.len() == current.len() && kept.iter().all(|t| current.contains(t));
        if !unchanged {
            plan.push((d.device_id.clone(), raw, current, kept));
        }
    }
    let object = format!("session:{session_id}");
    for (device_id, raw, current, kept) in &plan {
        let r = sqlx::query(
            "UPDATE session_devices SET targets = $1 WHERE session_id = $2 AND device_id = $3 AND targets = $4",
        )
        .bind(serde_json::to_string(kept).map_err(AppError::internal)?)
        .bind(session_id)
        .bind(device_id)
        .bind(raw)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(AppError::conflict(
                "the session's targets changed meanwhile; reload and try again",
            ));
        }
        let removed: Vec<&Target> = current.iter().filter(|t| !kept.contains(t)).collect();
        let ev = caller
            .event("session.narrow", &object)
            .device(device_id)
            .details(serde_json::json!({
                "cause": "session.narrow",
                "username": caller.username,
                "removed_targets": removed,
                "targets": kept,
                "why": "narrowed on request",
            }));
        audit::append(tx, now, &ev).await?;
    }
    Ok(!plan.is_empty())
}
