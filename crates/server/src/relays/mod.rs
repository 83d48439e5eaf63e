//! The relay tier (DESIGN §8): every relay instance the control plane hears from,
//! and the one relay each session uses.
//!
//! Relays announce themselves: a standalone relay with every poll of the
//! revocation feed (`drawbridge_relay::feed::announce`, signed by its relay
//! credential), each replica for its embedded relay once a second. The `relays`
//! table holds the last heartbeat of each; every replica reloads it once a
//! second ([`spawn`]). A session is assigned a relay when it first needs one
//! (`sessions.relay`, by [`pick::decide`], the same answer on every replica);
//! both its edge and its clients are handed that relay's URL. When the relay
//! stops sending heartbeats or drains, [`sweep`] moves its sessions to a live
//! one and tells their peers, which reconnect there while their WireGuard
//! sessions go on.

pub mod pick;

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use drawbridge_relay::feed::announce::Heartbeat;
use serde::Serialize;
use sqlx::{AnyConnection, Row};
use std::sync::RwLock;
use std::time::Duration;

/// How often a replica sends its own heartbeat, reloads the table and sweeps.
pub const TICK: Duration = Duration::from_secs(1);
/// Sessions moved per relay and sweep at most.
const MOVE_BATCH: i64 = 500;

/// One relay instance as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relay {
    pub name: String,
    /// This instance's WebSocket URL.
    pub url: String,
    pub region: String,
    pub stun: Vec<String>,
    pub bridge: Option<String>,
    pub draining: bool,
    pub drain_requested: bool,
    pub standby: bool,
    pub connections: i64,
    /// Unix seconds of the last heartbeat.
    pub heartbeat_at: i64,
}

/// This replica's embedded relay, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Unique among the relays (each replica needs its own).
    pub name: String,
    /// The URL that reaches this replica's relay, not the load balancer.
    pub url: Option<String>,
    pub region: String,
    /// Takes sessions only when no other relay is alive.
    pub standby: bool,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            name: DEFAULT_LOCAL_NAME.into(),
            url: None,
            region: String::new(),
            standby: false,
        }
    }
}

pub const DEFAULT_LOCAL_NAME: &str = "local";

/// The relays as this replica last read them.
#[derive(Default)]
pub struct Relays {
    local: RwLock<Local>,
    known: RwLock<Vec<Relay>>,
    /// Since when (unix seconds) this replica has read the relays table without a
    /// failure; 0: since its start. Heartbeats are not recorded while the database
    /// is away, so after an outage relays are judged as after a start.
    reachable_since: std::sync::atomic::AtomicI64,
    /// The last reload failed.
    unreachable: std::sync::atomic::AtomicBool,
}

impl Relays {
    pub fn set_local(&self, local: Local) {
        if let Ok(mut l) = self.local.write() {
            *l = local;
        }
    }

    /// Since when relays that have not been heard from may be judged down
    /// (the replica's start, or the end of its last database outage). While the
    /// last reload failed nobody is judged: the heartbeats this replica holds are
    /// stale, not the relays.
    pub fn judged_since(&self, started_at: i64) -> i64 {
        if self.unreachable.load(std::sync::atomic::Ordering::Relaxed) {
            return i64::MAX;
        }
        started_at.max(
            self.reachable_since
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn local(&self) -> Local {
        self.local.read().map(|l| l.clone()).unwrap_or_default()
    }

    fn known(&self) -> Vec<Relay> {
        self.known.read().map(|k| k.clone()).unwrap_or_default()
    }
}

/// The URL this replica's embedded relay is reached at (`relay_url`, or
/// derived from the public URL).
pub fn local_url(state: &AppState) -> String {
    state
        .relays
        .local()
        .url
        .unwrap_or_else(|| crate::live::state::relay_url(state))
}

/// The embedded relay's entry now (always live from this replica's view).
fn local_entry(state: &AppState) -> Relay {
    let l = state.relays.local();
    let row = state.relays.known().into_iter().find(|r| r.name == l.name);
    Relay {
        url: local_url(state),
        name: l.name,
        region: l.region,
        stun: state.stun_servers(),
        bridge: state.bridge_endpoint(),
        draining: false,
        drain_requested: row.is_some_and(|r| r.drain_requested),
        standby: l.standby,
        connections: i64::try_from(state.relay.connections()).unwrap_or(i64::MAX),
        heartbeat_at: state.now(),
    }
}

/// Every relay as this replica sees it: its own embedded one and the last
/// heartbeats of the others.
pub fn view(state: &AppState) -> Vec<Relay> {
    let local = local_entry(state);
    let mut out: Vec<Relay> = state
        .relays
        .known()
        .into_iter()
        .filter(|r| r.name != local.name)
        .collect();
    out.insert(0, local);
    out
}

/// Records a heartbeat (a standalone relay's, or this replica's own).
async fn upsert(state: &AppState, r: &Relay) -> AppResult<()> {
    let stun =
        serde_json::to_string(&r.stun).map_err(|e| AppError::internal(anyhow::Error::from(e)))?;
    sqlx::query(
        "INSERT INTO relays (name, url, region, stun, bridge, draining, standby, connections, heartbeat_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (name) DO UPDATE SET url = excluded.url, region = excluded.region,
           stun = excluded.stun, bridge = excluded.bridge, draining = excluded.draining,
           standby = excluded.standby, connections = excluded.connections,
           heartbeat_at = excluded.heartbeat_at",
    )
    .bind(&r.name)
    .bind(&r.url)
    .bind(&r.region)
    .bind(stun)
    .bind(r.bridge.as_deref())
    .bind(i64::from(r.draining))
    .bind(i64::from(r.standby))
    .bind(r.connections)
    .bind(r.heartbeat_at)
    .execute(&state.store.pool)
    .await?;
    Ok(())
}

/// A standalone relay's heartbeat, from its feed poll (`name` from its credential).
pub async fn record_heartbeat(state: &AppState, name: &str, hb: &Heartbeat) -> AppResult<()> {
    if name == state.relays.local().name {
        return Err(AppError::conflict(
            "a replica's embedded relay has this name; give the relay a credential with another name",
        ));
    }
    let a = &hb.announce;
    upsert(
        state,
        &Relay {
            name: name.to_string(),
            url: a.url.clone(),
            region: a.region.clone(),
            stun: a.stun.clone(),
            bridge: a.bridge.clone(),
            draining: hb.draining,
            drain_requested: false,
            standby: false,
            connections: i64::try_from(hb.connections).unwrap_or(i64::MAX),
            heartbeat_at: state.now(),
        },
    )
    .await
}

/// The columns [`relay_row`] reads.
const RELAY_COLS: &str = "name, url, region, stun, bridge, draining, drain_requested, standby, connections, heartbeat_at";

fn relay_row(r: &sqlx::any::AnyRow) -> AppResult<Relay> {
    Ok(Relay {
        name: r.try_get("name")?,
        url: r.try_get("url")?,
        region: r.try_get("region")?,
        stun: crate::records::json_col(r, "stun")?,
        bridge: r.try_get("bridge")?,
        draining: r.try_get::<i64, _>("draining")? != 0,
        drain_requested: r.try_get::<i64, _>("drain_requested")? != 0,
        standby: r.try_get::<i64, _>("standby")? != 0,
        connections: r.try_get("connections")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
    })
}

/// The relays an edge is asked to measure: those taking sessions.
pub fn probes(state: &AppState) -> Vec<drawbridge_proto::channel::RelayProbe> {
    let now = state.now();
    view(state)
        .into_iter()
        .filter(|r| r.takes_sessions(now))
        .take(drawbridge_proto::channel::MAX_RELAY_PROBES)
        .map(|r| drawbridge_proto::channel::RelayProbe {
            name: r.name,
            url: r.url,
        })
        .collect()
}

/// Whether a peer's measurements are within bounds: at most
/// [`MAX_RELAY_PROBES`](drawbridge_proto::channel::MAX_RELAY_PROBES) relays,
/// names of 1 to 64 bytes, at most 60 s.
pub fn rtt_in_bounds(rtt: &[drawbridge_proto::channel::RelayRtt]) -> bool {
    rtt.len() <= drawbridge_proto::channel::MAX_RELAY_PROBES
        && rtt
            .iter()
            .all(|r| !r.relay.is_empty() && r.relay.len() <= 64 && r.rtt_ms <= 60_000)
}

/// Who measured: an edge (its device) or a client (its user).
#[derive(Debug, Clone, Copy)]
pub enum Measurer<'a> {
    Device(&'a str),
    User(&'a str),
}

/// Keeps the round-trip times an edge or a client measured (bounded by the caller).
pub async fn record_rtt(
    state: &AppState,
    who: Measurer<'_>,
    rtt: &[drawbridge_proto::channel::RelayRtt],
) -> AppResult<()> {
    let map: std::collections::BTreeMap<&str, u32> =
        rtt.iter().map(|r| (r.relay.as_str(), r.rtt_ms)).collect();
    let (sql, id) = match who {
        Measurer::Device(id) => ("UPDATE devices SET relay_rtt = $1 WHERE id = $2", id),
        Measurer::User(id) => ("UPDATE users SET relay_rtt = $1 WHERE id = $2", id),
    };
    for (relay, ms) in &map {
        let secs = f64::from(*ms) / 1000.0;
        match who {
            Measurer::Device(_) => {
                metrics::histogram!("relay_edge_rtt_seconds", "relay" => relay.to_string())
                    .record(secs)
            }
            Measurer::User(_) => {
                metrics::histogram!("relay_client_rtt_seconds", "relay" => relay.to_string())
                    .record(secs)
            }
        }
    }
    let json =
        serde_json::to_string(&map).map_err(|e| AppError::internal(anyhow::Error::from(e)))?;
    sqlx::query(sql)
        .bind(json)
        .bind(id)
        .execute(&state.store.pool)
        .await?;
    Ok(())
}

/// Where a session's peers are: the round-trip times to each relay summed over
/// its devices' edges (a relay some device has not measured is left out) and
/// the clients of its users that measured (from their last report; a user who
/// never did does not count), and the devices' configured regions. The sum is
/// the round trip edge → relay → client through each relay.
pub async fn session_near(conn: &mut AnyConnection, session_id: &str) -> AppResult<pick::Near> {
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT d.relay_rtt, d.region FROM session_devices sd JOIN devices d ON d.id = sd.device_id
         WHERE sd.session_id = $1 AND sd.approval IN ('approved', 'pending')",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut total: Option<std::collections::HashMap<String, u32>> = None;
    let mut regions = Vec::new();
    for (rtt, region) in rows {
        regions.extend(region);
        let m: std::collections::HashMap<String, u32> = rtt
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        total = Some(match total {
            None => m,
            Some(t) => t
                .into_iter()
                .filter_map(|(k, v)| m.get(&k).map(|w| (k, v.saturating_add(*w))))
                .collect(),
        });
    }
    let users: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT u.relay_rtt FROM session_users su JOIN users u ON u.id = su.user_id
         WHERE su.session_id = $1 AND u.relay_rtt IS NOT NULL",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?;
    if let Some(t) = total.as_mut() {
        for rtt in users.into_iter().flatten() {
            let Ok(m) = serde_json::from_str::<std::collections::HashMap<String, u32>>(&rtt) else {
                continue;
            };
            *t = std::mem::take(t)
                .into_iter()
                .filter_map(|(k, v)| m.get(&k).map(|w| (k, v.saturating_add(*w))))
                .collect();
        }
    }
    Ok(pick::Near {
        rtt: total.unwrap_or_default(),
        regions,
    })
}

/// Sends this replica's heartbeat and reloads every relay's.
pub async fn refresh(state: &AppState) -> AppResult<()> {
    upsert(state, &local_entry(state)).await?;
    let rows = sqlx::query(&format!("SELECT {RELAY_COLS} FROM relays ORDER BY name"))
        .fetch_all(&state.store.pool)
        .await?;
    let known = rows.iter().map(relay_row).collect::<AppResult<Vec<_>>>()?;
    let now = state.now();
    for r in &known {
        metrics::gauge!("relay_up", "relay" => r.name.clone())
            .set(f64::from(u8::from(r.live(now))));
        metrics::gauge!("relay_peer_connections", "relay" => r.name.clone())
            .set(r.connections as f64);
        metrics::gauge!("relay_draining", "relay" => r.name.clone())
            .set(f64::from(u8::from(r.draining || r.drain_requested)));
    }
    let per_relay: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relay, COUNT(*) FROM sessions WHERE state = 'active' AND relay IS NOT NULL GROUP BY relay",
    )
    .fetch_all(&state.store.pool)
    .await?;
    for r in &known {
        let n = per_relay
            .iter()
            .find(|(name, _)| *name == r.name)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("relay_sessions", "relay" => r.name.clone()).set(n as f64);
    }
    if let Ok(mut k) = state.relays.known.write() {
        *k = known;
    }
    Ok(())
}

/// The relay of session `session_id` (assigned `assigned`), assigning one when
/// none is, or the assigned one is down, draining, or lacks a needed bridge.
/// Only active sessions are assigned; others are told the assigned or the
/// first relay without anything being recorded.
pub async fn session_relay(
    state: &AppState,
    conn: &mut AnyConnection,
    session_id: &str,
    assigned: Option<String>,
    active: bool,
    needs_bridge: bool,
) -> AppResult<Relay> {
    let mut relays = view(state);
    if let Some(a) = &assigned
        && !relays.iter().any(|r| &r.name == a)
    {
        // Assigned by a replica that has heard of a relay this one has not
        // reloaded yet: read it now rather than move the session away from it.
        relays.extend(relay_named(conn, a).await?);
    }
    let now = state.now();
    let since = state.relays.judged_since(state.started_at);
    let assigned_name = assigned.as_deref();
    let unknown = pick::Near::default();
    let standby_only = active
        && matches!(
            pick::decide(session_id, assigned_name, &relays, now, since, needs_bridge, &unknown),
            pick::Decision::Move(r) if r.standby
        );
    if standby_only {
        // Only a standby relay would take it: this replica may not have reloaded
        // a relay that came back or was announced a moment ago. Read them now.
        let rows = sqlx::query(&format!("SELECT {RELAY_COLS} FROM relays ORDER BY name"))
            .fetch_all(&mut *conn)
            .await?;
        for row in rows.iter().map(relay_row) {
            let row = row?;
            match relays.iter_mut().find(|r| r.name == row.name) {
                Some(r) if row.heartbeat_at > r.heartbeat_at => *r = row,
                Some(_) => {}
                None => relays.push(row),
            }
        }
    }
    let mut decision = pick::decide(
        session_id,
        assigned_name,
        &relays,
        now,
        since,
        needs_bridge,
        &unknown,
    );
    let near = if active && matches!(decision, pick::Decision::Move(_)) {
        // Where the edges are matters only when a relay is (re)assigned.
        session_near(conn, session_id).await?
    } else {
        unknown.clone()
    };
    if near != unknown {
        decision = pick::decide(
            session_id,
            assigned_name,
            &relays,
            now,
            since,
            needs_bridge,
            &near,
        );
    }
    let chosen = match decision {
        pick::Decision::Keep(r) | pick::Decision::Fallback(r) => return Ok(r.clone()),
        pick::Decision::Move(r) if !active => {
            return Ok(assigned
                .and_then(|a| relays.iter().find(|x| x.name == a))
                .unwrap_or(r)
                .clone());
        }
        pick::Decision::Move(r) => r,
        pick::Decision::Nothing => return Ok(local_entry(state)),
    };
    let moved =
        sqlx::query("UPDATE sessions SET relay = $1 WHERE id = $2 AND COALESCE(relay, '') = $3")
            .bind(&chosen.name)
            .bind(session_id)
            .bind(assigned.as_deref().unwrap_or(""))
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if moved == 0 {
        // Another replica decided first: go with its choice.
        let now_assigned: Option<String> =
            sqlx::query_scalar("SELECT relay FROM sessions WHERE id = $1")
                .bind(session_id)
                .fetch_optional(&mut *conn)
                .await?
                .flatten();
        if let Some(a) = now_assigned {
            if let Some(r) = relays.iter().find(|x| x.name == a) {
                return Ok(r.clone());
            }
            if let Some(row) = relay_named(conn, &a).await? {
                return Ok(row);
            }
        }
        return Ok(chosen.clone());
    }
    let Some(from) = &assigned else {
        // A first assignment: whoever asks next reads it (peers told earlier were
        // told of a session that was not active yet, and its start pokes them).
        tracing::debug!(session = %session_id, relay = %chosen.name, "session assigned a relay");
        return Ok(chosen.clone());
    };
    tracing::info!(session = %session_id, from = %from, to = %chosen.name, "session moved to another relay");
    metrics::counter!("relay_session_moves_total").increment(1);
    // Every peer of the session hears of the move, wherever it was decided (the
    // sweep, or one peer's request that found the old relay gone). In a task of
    // its own: the caller holds a connection, and SQLite's pool has only one.
    let (st, id) = (state.clone(), session_id.to_string());
    tokio::spawn(async move {
        if let Err(e) = crate::live::notify_sessions(&st, &[id]).await {
            tracing::warn!(error = %e.message, "telling a session's peers of its new relay failed");
        }
    });
    Ok(chosen.clone())
}

/// One relay's row, read now.
async fn relay_named(conn: &mut AnyConnection, name: &str) -> AppResult<Option<Relay>> {
    let row = sqlx::query(&format!("SELECT {RELAY_COLS} FROM relays WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(relay_row).transpose()
}

/// Whether a standard WireGuard client (bridged through the relay) is in the session.
pub async fn needs_bridge(conn: &mut AnyConnection, session_id: &str) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tunnels WHERE session_id = $1 AND ended_at IS NULL AND standard_client <> 0",
    )
    .bind(session_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// One pass: heartbeat, reload, and the active sessions of relays that are down
/// or draining moved to live ones (their edges and clients told at once).
/// Returns the sessions moved.
pub async fn sweep(state: &AppState) -> AppResult<Vec<String>> {
    use std::sync::atomic::Ordering;
    if let Err(e) = refresh(state).await {
        state.relays.unreachable.store(true, Ordering::Relaxed);
        return Err(e);
    }
    if state.relays.unreachable.swap(false, Ordering::Relaxed) {
        state
            .relays
            .reachable_since
            .store(state.now(), Ordering::Relaxed);
    }
    let since = state.relays.judged_since(state.started_at);
    let now = state.now();
    let relays = view(state);
    let mut moved = Vec::new();
    let mut conn = state.store.pool.acquire().await?;
    // Standby relays hand their sessions back as soon as another relay takes them.
    let others = relays.iter().any(|r| !r.standby && r.takes_sessions(now));
    for gone in relays
        .iter()
        .filter(|r| r.to_leave(now, since) || (r.standby && others))
    {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE relay = $1 AND state = 'active' ORDER BY id LIMIT $2",
        )
        .bind(&gone.name)
        .bind(MOVE_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        for id in ids {
            let bridge = needs_bridge(&mut conn, &id).await?;
            let r =
                session_relay(state, &mut conn, &id, Some(gone.name.clone()), true, bridge).await?;
            if r.name != gone.name {
                moved.push(id);
            }
        }
    }
    drop(conn);
    if !moved.is_empty() {
        // Their peers were told by `session_relay`.
        tracing::info!(
            sessions = moved.len(),
            "moved sessions off relays that are down or draining"
        );
    }
    Ok(moved)
}

/// Runs [`sweep`] every [`TICK`].
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Failures in a row: the first is logged, then one a minute, and the recovery.
        let mut failures: u64 = 0;
        loop {
            tick.tick().await;
            match sweep(&state).await {
                Ok(_) if failures > 0 => {
                    tracing::info!(failures, "relay sweep works again");
                    failures = 0;
                }
                Ok(_) => {}
                Err(e) => {
                    if failures.is_multiple_of(60) {
                        tracing::warn!(error = %e.message, failures, "relay sweep failed");
                    }
                    failures += 1;
                }
            }
        }
    });
}

/// An operator drains (or un-drains) a relay: it takes no new sessions and its
/// sessions move away within seconds. Returns whether the relay is known.
pub async fn set_drain(store: &crate::db::Store, name: &str, drain: bool) -> AppResult<bool> {
    let n = sqlx::query("UPDATE relays SET drain_requested = $1 WHERE name = $2")
        .bind(i64::from(drain))
        .bind(name)
        .execute(&store.pool)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Every known relay with its active sessions, for `drawbridge-server relays list`.
pub async fn list(store: &crate::db::Store) -> AppResult<Vec<(Relay, i64)>> {
    let rows = sqlx::query(
        "SELECT r.name, r.url, r.region, r.stun, r.bridge, r.draining, r.drain_requested, r.standby,
                r.connections, r.heartbeat_at,
                (SELECT COUNT(*) FROM sessions s WHERE s.relay = r.name AND s.state = 'active') AS sessions
         FROM relays r ORDER BY r.name",
    )
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((relay_row(r)?, r.try_get("sessions")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn silent_relay() -> Relay {
        Relay {
            name: "r1".into(),
            url: "wss://r1/relay/v1".into(),
            region: String::new(),
            stun: vec![],
            bridge: None,
            draining: false,
            drain_requested: false,
            standby: false,
            connections: 0,
            heartbeat_at: 1_000,
        }
    }

    #[test]
    fn while_the_last_reload_failed_no_relay_is_judged_down() {
        let relays = Relays::default();
        let now = 1_000 + 3_600;
        assert!(silent_relay().to_leave(now, relays.judged_since(0)));
        // The database is away: the heartbeats held are stale, not the relays.
        relays.unreachable.store(true, Ordering::Relaxed);
        assert_eq!(relays.judged_since(0), i64::MAX);
        assert!(!silent_relay().to_leave(now, relays.judged_since(0)));
        // Back: judged again, from the end of the outage.
        relays.unreachable.store(false, Ordering::Relaxed);
        relays.reachable_since.store(now, Ordering::Relaxed);
        assert!(!silent_relay().to_leave(now + 1, relays.judged_since(0)));
    }
}
