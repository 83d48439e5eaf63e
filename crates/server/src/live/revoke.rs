//! Taking rights away reaches running tunnels (DESIGN §2.10).
//!
//! Every change that can narrow what someone may reach (a role change, removal
//! from a group, a deleted group, pool or grant, a pool losing a device, a
//! narrower device firewall) calls [`revalidate`] inside the transaction that
//! makes the change. It re-reads the account's running sessions and checks
//! each open tunnel against `rights::access` — the one place grants are
//! computed — and each session's targets against the device firewall:
//!
//! - a session target outside the device's firewall is removed from the session;
//! - a tunnel whose user may no longer use sessions, or whose access no longer
//!   covers every target of every device of the session (the rule `join` applies),
//!   is closed (`end_reason = access_revoked`).
//!
//! Each cut is audited with what was cut and why. After the commit the caller
//! pokes the touched sessions ([`crate::live::notify_sessions`]): every replica's
//! edges and clients re-read their desired state from the database, the edge
//! drops the peer (and its relay grant) and its forwarder cuts flows to targets
//! no longer released.

use crate::audit::{self, Event};
use crate::db::Tx;
use crate::error::AppResult;
use crate::records;
use crate::rights;
use drawbridge_proto::{Action, Role, Target};
use sqlx::Row;
use std::collections::HashMap;

/// The end reason of a tunnel closed because its user's rights narrowed.
pub const ACCESS_REVOKED: &str = "access_revoked";

/// Re-checks every running session of `account_id` after a change that may have
/// narrowed rights (`cause`: the audit action that caused it). Returns the ids of
/// the sessions that changed, for [`crate::live::notify_sessions`] after the commit.
pub async fn revalidate(
    tx: &mut Tx<'_>,
    account_id: &str,
    actor: &str,
    cause: &str,
    now: i64,
) -> AppResult<Vec<String>> {
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE account_id = $1 AND state IN ('active', 'pending_approval') ORDER BY id",
    )
    .bind(account_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut touched = Vec::new();
    // (user, device) → may the user reach these targets; users' (role, name).
    let mut users: HashMap<String, (Role, String, bool)> = HashMap::new();
    for session_id in sessions {
        let object = format!("session:{session_id}");
        let mut changed = false;
        // The session's devices with their targets, narrowed to each device's firewall.
        let rows = sqlx::query(
            "SELECT sd.device_id, sd.targets, d.firewall FROM session_devices sd JOIN devices d ON d.id = sd.device_id
             WHERE sd.session_id = $1 AND d.account_id = $2 ORDER BY sd.device_id",
        )
        .bind(&session_id)
        .bind(account_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut devices: Vec<(String, Vec<Target>, Vec<Target>)> = Vec::new();
        for r in rows {
            let device_id: String = r.try_get(0)?;
            let targets: Vec<Target> = records::json_col(&r, "targets")?;
            let firewall: Vec<Target> = records::json_col(&r, "firewall")?;
            let (kept, removed): (Vec<Target>, Vec<Target>) = targets
                .into_iter()
                .partition(|t| firewall.iter().any(|f| f.covers(t)));
            if !removed.is_empty() {
                sqlx::query(
                    "UPDATE session_devices SET targets = $1 WHERE session_id = $2 AND device_id = $3",
                )
                .bind(serde_json::to_string(&kept).map_err(crate::error::AppError::internal)?)
                .bind(&session_id)
                .bind(&device_id)
                .execute(&mut **tx)
                .await?;
                let ev = Event::new(account_id, actor, "session.narrow", &object)
                    .device(&device_id)
                    .details(serde_json::json!({
                        "cause": cause,
                        "removed_targets": removed,
                        "targets": kept,
                        "why": "outside the device firewall",
                    }));
                audit::append(tx, now, &ev).await?;
                changed = true;
            }
            devices.push((device_id, kept, firewall));
        }
        // Every open tunnel of the session, by client key.
        let tunnels = sqlx::query(
            "SELECT DISTINCT user_id, client_public_key FROM tunnels
             WHERE session_id = $1 AND ended_at IS NULL ORDER BY user_id, client_public_key",
        )
        .bind(&session_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut verdicts: HashMap<String, Option<serde_json::Value>> = HashMap::new();
        for t in tunnels {
            let user_id: String = t.try_get(0)?;
            let key: String = t.try_get(1)?;
            if !users.contains_key(&user_id) {
                let u = records::user(tx, account_id, &user_id).await?;
                users.insert(user_id.clone(), (u.role, u.username, u.disabled));
            }
            let (role, username, disabled) = users[&user_id].clone();
            if !verdicts.contains_key(&user_id) {
                let why = refusal(tx, account_id, &user_id, role, disabled, &devices).await?;
                verdicts.insert(user_id.clone(), why);
            }
            let Some(why) = verdicts[&user_id].clone() else {
                continue;
            };
            // Closed as a session's end closes tunnels (`tunnel.down` for a
            // standard WireGuard client, which has no channel to record it).
            let which = crate::sessions::tunnels::Which::Client {
                session_id: &session_id,
                user_id: &user_id,
                key: &key,
            };
            let closed =
                crate::sessions::tunnels::close(tx, account_id, which, ACCESS_REVOKED, now).await?;
            if closed.is_empty() {
                continue;
            }
            sqlx::query("DELETE FROM tunnel_signals WHERE session_id = $1 AND client_key = $2")
                .bind(&session_id)
                .bind(&key)
                .execute(&mut **tx)
                .await?;
            let mut details = why;
            details["cause"] = cause.into();
            details["username"] = username.into();
            details["public_key"] = key.into();
            details["reason"] = ACCESS_REVOKED.into();
            let ev = Event::new(account_id, actor, "tunnel.cut", &object).details(details);
            audit::append(tx, now, &ev).await?;
            changed = true;
        }
        if changed {
            touched.push(session_id);
        }
    }
    Ok(touched)
}

/// Why `user_id` may no longer hold a tunnel into a session with these devices
/// (device id, targets, firewall), or None when they still may.
async fn refusal(
    tx: &mut Tx<'_>,
    account_id: &str,
    user_id: &str,
    role: Role,
    disabled: bool,
    devices: &[(String, Vec<Target>, Vec<Target>)],
) -> AppResult<Option<serde_json::Value>> {
    if disabled {
        return Ok(Some(serde_json::json!({ "why": "the user is disabled" })));
    }
    if !role.permits(Action::UseSessions) {
        return Ok(Some(serde_json::json!({
            "why": format!("the role {} may not use sessions", role.as_str()),
        })));
    }
    for (device_id, targets, firewall) in devices {
        let access = rights::access(tx, account_id, user_id, role, device_id).await?;
        let lost: Vec<&Target> = targets
            .iter()
            .filter(|t| !access.allows(firewall, t))
            .collect();
        if !lost.is_empty() || !access.can_tunnel() {
            return Ok(Some(serde_json::json!({
                "why": "the user's grants no longer cover the session's targets",
                "device_id": device_id,
                "targets_not_allowed": lost,
            })));
        }
    }
    Ok(None)
}
