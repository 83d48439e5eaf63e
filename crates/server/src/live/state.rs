//! Desired state, read from the database: what an edge must run and what a
//! joined client needs. Relay tokens are minted here, naming exactly the keys
//! of the same session on the other side.

use crate::error::{AppError, AppResult};
use crate::records;
use crate::state::AppState;
use drawbridge_proto::channel::{EdgePeer, EdgeSession, JoinDevice, JoinResponse};
use drawbridge_proto::{NatMapping, SessionState, Target, WgKey};
use sqlx::{AnyConnection, Row};

/// A key column: parsed (`WgKey`) before it was stored, so one that does not
/// parse now is a fault of the store.
fn stored_key(text: String) -> AppResult<WgKey> {
    text.parse()
        .map_err(|e| AppError::internal(anyhow::anyhow!("stored WireGuard key: {e}")))
}

/// The embedded relay's URL derived from the public URL (behind a load balancer
/// set each replica's own with `relay_url`).
pub fn relay_url(state: &AppState) -> String {
    let base = state.public_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}{}", drawbridge_relay::RELAY_PATH)
}

/// The STUN servers of a session's relay, or this server's when it names none.
fn relay_stun(state: &AppState, stun: Vec<String>) -> Vec<String> {
    if stun.is_empty() {
        state.stun_servers()
    } else {
        stun
    }
}

fn token(
    state: &AppState,
    session_id: &str,
    me: WgKey,
    peers: &[WgKey],
    until: i64,
    bridge: bool,
) -> Option<String> {
    let allowed: Vec<[u8; 32]> = peers.iter().map(|p| p.to_bytes()).take(64).collect();
    let claims = drawbridge_relay::Claims {
        session_id: session_id.to_string(),
        peer: me.to_bytes(),
        allowed_peers: allowed,
        expires_at: u64::try_from(until).unwrap_or(0),
        bridge,
    };
    drawbridge_relay::token::issue(&state.relay_key, &claims).ok()
}

/// Device ids of a session (for hub notifications).
pub async fn session_device_ids(
    conn: &mut AnyConnection,
    session_id: &str,
) -> AppResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT device_id FROM session_devices WHERE session_id = $1")
            .bind(session_id)
            .fetch_all(conn)
            .await?,
    )
}

/// Maps real targets to what the client routes: with 1:1 NAT, a target inside a
/// real subnet is reached at the same offset in the virtual subnet.
pub fn client_view(targets: &[Target], nat: &[NatMapping]) -> Vec<Target> {
    targets
        .iter()
        .map(|t| {
            for m in nat {
                if m.real.contains(&t.address)
                    && let Some(v) = translate(&t.address, m)
                {
                    let mut t = t.clone();
                    t.address = v;
                    return t;
                }
            }
            t.clone()
        })
        .collect()
}

fn translate(net: &ipnet::IpNet, m: &NatMapping) -> Option<ipnet::IpNet> {
    use std::net::IpAddr;
    let offset = match (net.network(), m.real.network()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u128::from(u32::from(a) - u32::from(b)),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) - u128::from(b),
        _ => return None,
    };
    let addr = match m.virtual_subnet.network() {
        IpAddr::V4(v) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v).checked_add(u32::try_from(offset).ok()?)?,
        )),
        IpAddr::V6(v) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v).checked_add(offset)?)),
    };
    ipnet::IpNet::new(addr, net.prefix_len()).ok()
}

/// Everything the edge must run: sessions approved for this device (active)
/// and sessions waiting for this device's approval (pending, whatever the
/// session's other devices did). A device refused or timed out is not told
/// about the session any more.
pub async fn edge_sessions(state: &AppState, device_id: &str) -> AppResult<Vec<EdgeSession>> {
    let mut conn = state.store.pool.acquire().await?;
    let rows = sqlx::query(
        "SELECT s.id, s.name, s.state, s.valid_until, s.relay, sd.targets, sd.edge_public_key, sd.approval, d.nat, u.username AS requested_by
         FROM sessions s JOIN session_devices sd ON sd.session_id = s.id JOIN devices d ON d.id = sd.device_id
         LEFT JOIN users u ON s.started_by = 'user:' || u.id
         WHERE sd.device_id = $1 AND s.account_id = d.account_id AND s.state IN ('active', 'pending_approval')
         AND sd.approval IN ('approved', 'pending')
         ORDER BY s.id",
    )
    .bind(device_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let session_id: String = r.try_get("id")?;
        let valid_until: i64 = r.try_get("valid_until")?;
        let edge_key = r
            .try_get::<Option<String>, _>("edge_public_key")?
            .map(stored_key)
            .transpose()?;
        let peers_rows = sqlx::query(
            "SELECT t.client_public_key, t.overlay_ip, u.username, t.standard_client FROM tunnels t JOIN users u ON u.id = t.user_id
             WHERE t.session_id = $1 AND t.device_id = $2 AND t.ended_at IS NULL ORDER BY t.started_at",
        )
        .bind(&session_id)
        .bind(device_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut peers = Vec::new();
        for p in peers_rows {
            peers.push(EdgePeer {
                public_key: stored_key(p.try_get(0)?)?,
                overlay_ip: p.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                user: p.try_get(2)?,
                bridged: p.try_get::<i64, _>(3)? != 0,
            });
        }
        let st: SessionState = if r.try_get::<String, _>("approval")? == "pending" {
            SessionState::PendingApproval
        } else {
            r.try_get::<String, _>("state")?
                .parse()
                .map_err(|_| AppError::internal(anyhow::anyhow!("session state")))?
        };
        let keys: Vec<WgKey> = peers.iter().map(|p| p.public_key).collect();
        let relay = crate::relays::session_relay(
            state,
            &mut conn,
            &session_id,
            r.try_get("relay")?,
            st == SessionState::Active,
            peers.iter().any(|p| p.bridged),
        )
        .await?;
        let relay_token = match (&edge_key, st) {
            (Some(k), SessionState::Active) => {
                let k = *k;
                // The edge takes standard clients from the relay's UDP bridge only
                // when the session has one.
                let bridge = peers.iter().any(|p| p.bridged);
                token(state, &session_id, k, &keys, valid_until, bridge)
            }
            _ => None,
        };
        let desktops = sqlx::query(
            "SELECT u.username, r.target, r.view_only, r.started_at, r.recorded FROM desktop_recordings r
             JOIN users u ON u.id = r.user_id
             WHERE r.session_id = $1 AND r.device_id = $2 AND r.state = 'live' ORDER BY r.started_at",
        )
        .bind(&session_id)
        .bind(device_id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|d| {
            Ok(drawbridge_proto::channel::EdgeDesktop {
                user: d.try_get(0)?,
                target: d.try_get(1)?,
                view_only: d.try_get::<i64, _>(2)? != 0,
                since: d.try_get(3)?,
                recorded: d.try_get::<i64, _>(4)? != 0,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
        out.push(EdgeSession {
            desktops,
            session_id,
            name: r.try_get("name")?,
            state: st,
            valid_until,
            targets: records::json_col(&r, "targets")?,
            nat: records::json_col(&r, "nat")?,
            peers,
            relay_url: relay.url,
            relay_token,
            stun: relay_stun(state, relay.stun),
            requested_by: r.try_get("requested_by")?,
        });
    }
    Ok(out)
}

/// The join data of one client tunnel (by the client's key) in a session:
/// routes, keys and relay grants for the devices approved so far only (the
/// others arrive in an update when they are approved).
pub async fn join_data(
    state: &AppState,
    account_id: &str,
    session_id: &str,
    client_key: &str,
) -> AppResult<JoinResponse> {
    let mut conn = state.store.pool.acquire().await?;
    let s = crate::sessions::load(&mut conn, account_id, session_id).await?;
    let tunnel = sqlx::query(
        "SELECT id, overlay_ip FROM tunnels WHERE session_id = $1 AND client_public_key = $2 ORDER BY started_at DESC LIMIT 1",
    )
    .bind(session_id)
    .bind(client_key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| AppError::not_found("tunnel"))?;
    let rows = sqlx::query(
        "SELECT sd.device_id, sd.targets, sd.edge_public_key, d.name, d.nat, d.online, d.last_seen
         FROM session_devices sd JOIN devices d ON d.id = sd.device_id
         WHERE sd.session_id = $1 AND sd.approval = 'approved' ORDER BY d.name",
    )
    .bind(session_id)
    .fetch_all(&mut *conn)
    .await?;
    let now = state.now();
    let mut devices = Vec::new();
    let mut edge_keys = Vec::new();
    for r in rows {
        let targets: Vec<Target> = records::json_col(&r, "targets")?;
        let nat: Vec<NatMapping> = records::json_col(&r, "nat")?;
        let key = r
            .try_get::<Option<String>, _>("edge_public_key")?
            .map(stored_key)
            .transpose()?;
        edge_keys.extend(key);
        let last_seen: Option<i64> = r.try_get("last_seen")?;
        devices.push(JoinDevice {
            device_id: r.try_get("device_id")?,
            name: r.try_get("name")?,
            edge_public_key: key,
            targets: client_view(&targets, &nat),
            online: r.try_get::<i64, _>("online")? != 0
                && last_seen.is_some_and(|t| now - t < crate::sessions::ONLINE_WINDOW_SECS),
        });
    }
    let valid_until = s.valid_until.unix_timestamp();
    let assigned: Option<String> = sqlx::query_scalar("SELECT relay FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_one(&mut *conn)
        .await?;
    let bridge = crate::relays::needs_bridge(&mut conn, session_id).await?;
    let relay = crate::relays::session_relay(
        state,
        &mut conn,
        session_id,
        assigned,
        s.state == SessionState::Active,
        bridge,
    )
    .await?;
    let relay_token = if s.state == SessionState::Active && !edge_keys.is_empty() {
        token(
            state,
            session_id,
            stored_key(client_key.to_string())?,
            &edge_keys,
            valid_until,
            false,
        )
    } else {
        None
    };
    Ok(JoinResponse {
        tunnel_id: tunnel.try_get(0)?,
        session_id: session_id.to_string(),
        state: s.state,
        overlay_ip: tunnel.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
        relay_url: relay.url,
        relay_token,
        stun: relay_stun(state, relay.stun),
        devices,
        valid_until,
        bridge_endpoint: relay.bridge,
        relays: crate::relays::probes(state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_one_nat_moves_targets_into_the_virtual_subnet() {
        let nat = vec![NatMapping {
            real: "192.168.1.0/24".parse().unwrap(),
            virtual_subnet: "10.77.1.0/24".parse().unwrap(),
        }];
        let t: Target = "tcp:192.168.1.10:502".parse().unwrap();
        let other: Target = "tcp:192.168.2.10:502".parse().unwrap();
        let v = client_view(&[t, other.clone()], &nat);
        assert_eq!(v[0].to_string(), "tcp:10.77.1.10:502");
        assert_eq!(v[1], other, "outside the mapping: unchanged");
    }
}
