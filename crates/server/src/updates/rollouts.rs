//! Rollouts: an admin's decision to install a release on a set of devices,
//! canaries first, inside a maintenance window, never while a session runs on
//! the device, pausing for the admins when too many devices fail.
//!
//! Each device's row moves `pending` → `offered` (here, when the device's turn
//! has come) → the states its edge reports ([`UpdateState`]). [`advance`] runs
//! every few seconds on every replica; each of its steps is one conditional
//! statement, so replicas running it at once change each thing once.

use super::store::{self, broken};
use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use drawbridge_proto::update::{
    CreateRollout, MAX_ROLLOUT_DEVICES, MAX_ROLLOUT_POOLS, Rollout, RolloutDevice, RolloutWindow,
    UpdateState,
};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};

/// A device row still in progress (not final, not cancelled).
pub const OPEN_STATES: &str = "('pending', 'offered', 'waiting', 'downloading', 'installing')";
/// Device states that count toward a rollout's pause (the edge's failures).
pub const FAILURE_STATES: &str = "('failed', 'rolled_back', 'refused')";
/// The server's own final state for a device that runs a newer version than a
/// rollout without a downgrade installs: nothing to do, and not a failure.
pub const SKIPPED: &str = "skipped";
/// States in which the edge holds an offer.
pub const OFFER_STATES: &str = "('offered', 'waiting', 'downloading', 'installing')";

/// Creates a rollout for the caller's account; returns its id.
pub async fn create(
    state: &AppState,
    account_id: &str,
    created_by: &str,
    ev: Event,
    req: &CreateRollout,
) -> AppResult<String> {
    if req.devices.len() > MAX_ROLLOUT_DEVICES
        || req.pools.len() > MAX_ROLLOUT_POOLS
        || req.canaries.len() > MAX_ROLLOUT_POOLS
    {
        return Err(AppError::invalid(
            "at most 1,000 devices and 100 pools or canaries",
        ));
    }
    if req.canary_percent > 100 || req.soak_minutes > 43_200 {
        return Err(AppError::invalid(
            "canary_percent is 0 to 100, soak_minutes at most 43200",
        ));
    }
    if !(1..=10_000).contains(&req.failure_threshold) {
        return Err(AppError::invalid("failure_threshold is 1 to 10000"));
    }
    let window = match &req.window {
        None => None,
        Some(w) => Some(
            w.parsed()
                .ok_or_else(|| AppError::invalid("the window's ends are HH:MM (UTC)"))?,
        ),
    };
    let release = store::get(&state.store, &req.release_id)
        .await?
        .ok_or_else(|| AppError::not_found("release"))?;
    store::check_installable(&state.store, &release.id, state.now()).await?;
    if req.downgrade && !release.downgrade {
        return Err(AppError::invalid(
            "this release is not signed as a downgrade release (drawbridge-release sign --downgrade)",
        ));
    }
    let now = state.now();
    let id = crate::secret::new_id();
    let mut tx = state.store.begin().await?;
    // One creation at a time per account (the account's row lock), so that
    // two rollouts started at once cannot both take a device.
    sqlx::query("UPDATE accounts SET settings = settings WHERE id = $1")
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    // The devices: named ones and the pools' members, all of this account.
    let mut devices: BTreeSet<String> = BTreeSet::new();
    for d in &req.devices {
        let ok: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM devices WHERE id = $1 AND account_id = $2 AND archived = 0",
        )
        .bind(d)
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        if ok.is_none() {
            return Err(AppError::not_found("device"));
        }
        devices.insert(d.clone());
    }
    for p in &req.pools {
        let ok: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM pools WHERE id = $1 AND account_id = $2")
                .bind(p)
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?;
        if ok.is_none() {
            return Err(AppError::not_found("pool"));
        }
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM pool_devices pd JOIN devices d ON d.id = pd.device_id
             WHERE pd.pool_id = $1 AND d.account_id = $2 AND d.archived = 0",
        )
        .bind(p)
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await?;
        devices.extend(members);
    }
    if devices.is_empty() {
        return Err(AppError::invalid("the rollout names no device"));
    }
    if devices.len() > 100_000 {
        return Err(AppError::invalid("at most 100,000 devices in one rollout"));
    }
    let mut canaries: BTreeSet<String> = BTreeSet::new();
    for c in &req.canaries {
        if !devices.contains(c) {
            return Err(AppError::invalid(
                "a canary must be one of the rollout's devices",
            ));
        }
        canaries.insert(c.clone());
    }
    // A share of the rest, in an order fixed by the rollout's id.
    let extra = (devices.len() * usize::from(req.canary_percent)).div_ceil(100);
    let mut rest: Vec<&String> = devices.iter().filter(|d| !canaries.contains(*d)).collect();
    rest.sort_by_key(|d| {
        ring::digest::digest(&ring::digest::SHA256, format!("{id}/{d}").as_bytes())
            .as_ref()
            .to_vec()
    });
    let picked: Vec<String> = rest
        .into_iter()
        .take(extra.saturating_sub(canaries.len()))
        .cloned()
        .collect();
    canaries.extend(picked);
    let stage = if canaries.is_empty() { "all" } else { "canary" };
    sqlx::query(
        "INSERT INTO rollouts (id, account_id, release_id, state, stage, stage_changed_at, soak_secs,
             failure_threshold, window_start, window_end, downgrade, paused_reason, created_by, created_at)
         VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10, NULL, $11, $5)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(&release.id)
    .bind(stage)
    .bind(now)
    .bind(i64::from(req.soak_minutes) * 60)
    .bind(i64::from(req.failure_threshold))
    .bind(window.map(|w| i64::from(w.0)))
    .bind(window.map(|w| i64::from(w.1)))
    .bind(i64::from(req.downgrade))
    .bind(created_by)
    .execute(&mut *tx)
    .await?;
    for d in &devices {
        // One rollout at a time per device.
        let busy: Option<String> = sqlx::query_scalar(&format!(
            "SELECT r.id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
             WHERE rd.device_id = $1 AND r.state IN ('running', 'paused') AND rd.state IN {OPEN_STATES}"
        ))
        .bind(d)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(other) = busy {
            return Err(AppError::conflict(format!(
                "device {d} is in rollout {other}, which has not ended; cancel it first"
            )));
        }
        sqlx::query(
            "INSERT INTO rollout_devices (rollout_id, device_id, canary, state, from_version, message, updated_at)
             VALUES ($1, $2, $3, 'pending', NULL, NULL, $4)",
        )
        .bind(&id)
        .bind(d)
        .bind(i64::from(canaries.contains(d)))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let mut ev = ev;
    ev.object = format!("rollout:{id}");
    let ev = ev.details(serde_json::json!({
        "username": created_by, "release": release.id, "version": release.version, "target": release.target,
        "devices": devices.len(), "canaries": canaries.len(), "soak_minutes": req.soak_minutes,
        "window": req.window, "failure_threshold": req.failure_threshold, "downgrade": req.downgrade,
    }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    advance(state).await?;
    Ok(id)
}

/// Pauses, resumes or cancels a rollout of the account (`to`: the new state).
/// Edges holding an offer that has not started installing are told to drop it.
pub async fn set_state(
    state: &AppState,
    account_id: &str,
    id: &str,
    to: &str,
    ev: Event,
) -> AppResult<()> {
    let from: &[&str] = match to {
        "paused" => &["running"],
        "running" => &["paused"],
        "cancelled" => &["running", "paused"],
        _ => return Err(AppError::invalid("unknown rollout state")),
    };
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT state FROM rollouts WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?;
    let current = current.ok_or_else(|| AppError::not_found("rollout"))?;
    if !from.contains(&current.as_str()) {
        return Err(AppError::conflict(format!("the rollout is {current}")));
    }
    let r = sqlx::query(
        "UPDATE rollouts SET state = $1, paused_reason = NULL, stage_changed_at = CASE WHEN $1 = 'running' THEN $2 ELSE stage_changed_at END
         WHERE id = $3 AND state = $4",
    )
    .bind(to)
    .bind(now)
    .bind(id)
    .bind(&current)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict("the rollout changed at the same time"));
    }
    let withdrawn = withdraw(&mut tx, id, to == "cancelled", now).await?;
    // Resuming is the admins' decision to go on past the failures so far:
    // they stay on record but no longer count toward a pause.
    let forgiven = if to == "running" {
        sqlx::query(&format!(
            "UPDATE rollout_devices SET forgiven = 1 WHERE rollout_id = $1 AND forgiven = 0 AND state IN {FAILURE_STATES}"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    } else {
        0
    };
    audit::append(
        &mut tx,
        now,
        &ev.details(serde_json::json!({ "from": current, "to": to, "failures_passed": forgiven })),
    )
    .await?;
    tx.commit().await?;
    for d in withdrawn {
        crate::live::device_changed(state, &d);
    }
    if to == "running" {
        advance(state).await?;
    }
    Ok(())
}

/// Takes back offers not yet being installed (back to `pending`, or
/// `cancelled`); returns the devices to tell.
async fn withdraw(
    tx: &mut crate::db::Tx<'_>,
    rollout_id: &str,
    cancel: bool,
    now: i64,
) -> AppResult<Vec<String>> {
    let devices: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM rollout_devices WHERE rollout_id = $1 AND state IN ('offered', 'waiting', 'downloading')",
    )
    .bind(rollout_id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE rollout_devices SET state = $1, updated_at = $2 WHERE rollout_id = $3 AND state IN {}",
        if cancel {
            "('pending', 'offered', 'waiting', 'downloading')"
        } else {
            "('offered', 'waiting', 'downloading')"
        }
    ))
    .bind(if cancel { "cancelled" } else { "pending" })
    .bind(now)
    .bind(rollout_id)
    .execute(&mut **tx)
    .await?;
    Ok(devices)
}

fn system_event(account_id: &str, action: &str, rollout_id: &str) -> Event {
    Event::new(
        account_id,
        "system",
        action,
        &format!("rollout:{rollout_id}"),
    )
}

/// One pass over every running rollout: pause on failures, move from the
/// canaries to everyone after the soak, offer to devices whose turn it is,
/// end rollouts with nothing left to do.
pub async fn advance(state: &AppState) -> AppResult<()> {
    let now = state.now();
    let minute = ((now.rem_euclid(86_400)) / 60) as u32;
    let running = sqlx::query(
        "SELECT r.id, r.account_id, r.stage, r.stage_changed_at, r.soak_secs, r.failure_threshold,
                r.window_start, r.window_end, r.downgrade, rel.version
         FROM rollouts r JOIN releases rel ON rel.id = r.release_id WHERE r.state = 'running'",
    )
    .fetch_all(&state.store.pool)
    .await?;
    for r in running {
        let id: String = r.try_get(0)?;
        let account: String = r.try_get(1)?;
        let stage: String = r.try_get(2)?;
        let stage_at: i64 = r.try_get(3)?;
        let soak: i64 = r.try_get(4)?;
        let threshold: i64 = r.try_get(5)?;
        let window = match (
            r.try_get::<Option<i64>, _>(6)?,
            r.try_get::<Option<i64>, _>(7)?,
        ) {
            (Some(s), Some(e)) => Some((s as u32, e as u32)),
            _ => None,
        };
        let downgrade = r.try_get::<i64, _>(8)? != 0;
        let version: String = r.try_get(9)?;
        let rows = sqlx::query(
            "SELECT rd.device_id, rd.canary, rd.state, d.agent_version, rd.updated_at, rd.forgiven, d.name
             FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id WHERE rd.rollout_id = $1",
        )
        .bind(&id)
        .fetch_all(&state.store.pool)
        .await?;
        let mut failures = 0i64;
        let mut failed_canaries: Vec<String> = Vec::new();
        let mut open = 0usize;
        let mut canaries_open = false;
        let mut canaries_last = stage_at;
        let mut due: Vec<(String, Option<String>)> = Vec::new();
        for row in &rows {
            let device: String = row.try_get(0)?;
            let canary = row.try_get::<i64, _>(1)? != 0;
            let st: String = row.try_get(2)?;
            let running_version: Option<String> = row.try_get(3)?;
            let updated: i64 = row.try_get(4)?;
            let forgiven = row.try_get::<i64, _>(5)? != 0;
            let parsed = st.parse::<UpdateState>().ok();
            if parsed.is_some_and(|s| s.is_failure()) && !forgiven {
                failures += 1;
                if canary {
                    failed_canaries.push(row.try_get(6)?);
                }
            }
            let final_ = parsed.is_some_and(|s| s.is_final()) || st == "cancelled" || st == SKIPPED;
            if !final_ {
                open += 1;
            }
            if canary {
                if final_ {
                    canaries_last = canaries_last.max(updated);
                } else {
                    canaries_open = true;
                }
            }
            if st == "pending" && (stage == "all" || canary) {
                due.push((device, running_version));
            }
        }
        // A canary that failed stops the rollout whatever the threshold: the
        // rest goes only after canaries that all succeeded.
        let pause_for = if !failed_canaries.is_empty() && stage == "canary" {
            Some(format!("canary {} failed", failed_canaries.join(", ")))
        } else if failures >= threshold {
            Some(format!(
                "{failures} device(s) failed (threshold {threshold})"
            ))
        } else {
            None
        };
        if let Some(reason) = pause_for {
            let mut tx = state.store.begin().await?;
            let r = sqlx::query(
                "UPDATE rollouts SET state = 'paused', paused_reason = $1 WHERE id = $2 AND state = 'running'",
            )
            .bind(&reason)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                let withdrawn = withdraw(&mut tx, &id, false, now).await?;
                audit::append(
                    &mut tx,
                    now,
                    &system_event(&account, "rollout.pause", &id)
                        .result("failure")
                        .details(serde_json::json!({ "reason": reason })),
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(rollout = %id, %reason, "rollout paused");
                for d in withdrawn {
                    crate::live::device_changed(state, &d);
                }
            }
            continue;
        }
        if open == 0 {
            let mut tx = state.store.begin().await?;
            let r = sqlx::query(
                "UPDATE rollouts SET state = 'done' WHERE id = $1 AND state = 'running'",
            )
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                audit::append(&mut tx, now, &system_event(&account, "rollout.done", &id)).await?;
                tx.commit().await?;
            }
            continue;
        }
        if stage == "canary" && !canaries_open && now >= canaries_last + soak {
            let mut tx = state.store.begin().await?;
            let r = sqlx::query(
                "UPDATE rollouts SET stage = 'all', stage_changed_at = $1 WHERE id = $2 AND stage = 'canary' AND state = 'running'",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                audit::append(
                    &mut tx,
                    now,
                    &system_event(&account, "rollout.stage", &id)
                        .details(serde_json::json!({ "stage": "all" })),
                )
                .await?;
                tx.commit().await?;
            }
            // The rest is offered on the next pass.
            continue;
        }
        if window.is_some_and(|(s, e)| !RolloutWindow::contains(s, e, minute)) {
            continue;
        }
        for (device, running_version) in due {
            offer(
                state,
                &account,
                &id,
                &device,
                &version,
                running_version.as_deref(),
                downgrade,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Offers the release to one device whose turn has come, unless a session is
/// active or waiting on it; a device that runs that version already is done,
/// one that runs a newer one without a downgrade is refused.
#[allow(clippy::too_many_arguments)]
async fn offer(
    state: &AppState,
    account: &str,
    rollout_id: &str,
    device: &str,
    version: &str,
    running: Option<&str>,
    downgrade: bool,
    now: i64,
) -> AppResult<()> {
    let busy: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM session_devices sd JOIN sessions s ON s.id = sd.session_id
         WHERE sd.device_id = $1 AND s.state IN ('active', 'pending_approval') LIMIT 1",
    )
    .bind(device)
    .fetch_optional(&state.store.pool)
    .await?;
    if busy.is_some() {
        return Ok(());
    }
    let target = semver::Version::parse(version).ok();
    let current = running.and_then(|v| semver::Version::parse(v).ok());
    // By precedence (build metadata does not count), as the edge compares.
    let order = match (&current, &target) {
        (Some(c), Some(t)) => Some(c.cmp_precedence(t)),
        _ => None,
    };
    let (to, message) = match order {
        Some(std::cmp::Ordering::Equal) => ("succeeded", Some("runs this version already")),
        Some(std::cmp::Ordering::Greater) if !downgrade => (
            SKIPPED,
            Some("runs a newer version; only an explicit downgrade installs an older one"),
        ),
        _ => ("offered", None),
    };
    let mut tx = state.store.begin().await?;
    let r = sqlx::query(
        "UPDATE rollout_devices SET state = $1, message = $2, from_version = $3, updated_at = $4
         WHERE rollout_id = $5 AND device_id = $6 AND state = 'pending'",
    )
    .bind(to)
    .bind(message)
    .bind(running)
    .bind(now)
    .bind(rollout_id)
    .bind(device)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(());
    }
    let action = if to == "offered" {
        "update.offer"
    } else {
        "update.skip"
    };
    audit::append(
        &mut tx,
        now,
        &system_event(account, action, rollout_id)
            .device(device)
            .details(serde_json::json!({ "version": version, "running": running, "state": to, "message": message })),
    )
    .await?;
    tx.commit().await?;
    if to == "offered" {
        crate::live::device_changed(state, device);
    }
    Ok(())
}

/// The account's rollouts, newest first (without their devices), or one with them.
pub async fn list(
    state: &AppState,
    account_id: &str,
    one: Option<&str>,
) -> AppResult<Vec<Rollout>> {
    let rows = sqlx::query(
        "SELECT r.id, r.release_id, r.state, r.stage, r.soak_secs, r.failure_threshold, r.window_start,
                r.window_end, r.downgrade, r.paused_reason, r.created_by, r.created_at
         FROM rollouts r WHERE r.account_id = $1 AND ($2 = '' OR r.id = $2)
         ORDER BY r.created_at DESC, r.id DESC LIMIT 200",
    )
    .bind(account_id)
    .bind(one.unwrap_or(""))
    .fetch_all(&state.store.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        let release_id: String = r.try_get(1)?;
        let release = store::get(&state.store, &release_id)
            .await?
            .ok_or_else(|| broken("a rollout's release is gone"))?;
        let devices = sqlx::query(
            "SELECT rd.device_id, d.name, rd.canary, rd.state, rd.from_version, rd.message, rd.updated_at
             FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
             WHERE rd.rollout_id = $1 ORDER BY rd.canary DESC, d.name",
        )
        .bind(&id)
        .fetch_all(&state.store.pool)
        .await?;
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut list = Vec::new();
        for d in &devices {
            let st: String = d.try_get(3)?;
            *counts.entry(st.clone()).or_default() += 1;
            if one.is_some() {
                list.push(RolloutDevice {
                    device_id: d.try_get(0)?,
                    name: d.try_get(1)?,
                    canary: d.try_get::<i64, _>(2)? != 0,
                    state: st,
                    from_version: d.try_get(4)?,
                    message: d.try_get(5)?,
                    updated_at: d.try_get(6)?,
                });
            }
        }
        let minutes = |v: Option<i64>| v.map(|m| format!("{:02}:{:02}", m / 60, m % 60));
        let window = match (minutes(r.try_get(6)?), minutes(r.try_get(7)?)) {
            (Some(start), Some(end)) => Some(RolloutWindow { start, end }),
            _ => None,
        };
        out.push(Rollout {
            id,
            release,
            state: r.try_get(2)?,
            stage: r.try_get(3)?,
            soak_minutes: (r.try_get::<i64, _>(4)? / 60) as u32,
            failure_threshold: r.try_get::<i64, _>(5)? as u32,
            window,
            downgrade: r.try_get::<i64, _>(8)? != 0,
            paused_reason: r.try_get(9)?,
            created_by: r.try_get(10)?,
            created_at: r.try_get(11)?,
            counts,
            devices: list,
        });
    }
    Ok(out)
}
