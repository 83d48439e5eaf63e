//! Closing tunnel records: the one path by which a session's end, a cut of
//! narrowed rights (`live::revoke`) and a disabled user end open tunnels.
//!
//! A Drawbridge client's channel writes `tunnel.down` when it closes
//! (`live::client::leave`); a standard WireGuard client (an exported wg-quick
//! config) has no channel, so closing its tunnel writes `tunnel.down` here,
//! with the edge's figures (bytes, path) and the duration, one entry per device.

use crate::audit::{self, Event};
use crate::db::Tx;
use crate::error::AppResult;
use sqlx::Row;

/// Which open tunnels to close.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// Every open tunnel of a session (it ends).
    Session(&'a str),
    /// One client's tunnel in a session (its user's rights narrowed).
    Client {
        session_id: &'a str,
        user_id: &'a str,
        key: &'a str,
    },
    /// Every open tunnel of a user in the account, in any session (disabled).
    User(&'a str),
}

impl Which<'_> {
    /// The condition on `tunnels` (as `t`) with parameters from `$2` on, and their values.
    fn filter(&self) -> (&'static str, Vec<&str>) {
        match *self {
            Which::Session(s) => ("t.session_id = $2", vec![s]),
            Which::Client {
                session_id,
                user_id,
                key,
            } => (
                "t.session_id = $2 AND t.user_id = $3 AND t.client_public_key = $4",
                vec![session_id, user_id, key],
            ),
            Which::User(u) => ("t.user_id = $2", vec![u]),
        }
    }
}

/// Ends the open tunnels `which` selects of `account_id` (`end_reason`), and
/// writes `tunnel.down` for those of standard clients (actor: the tunnel's
/// user; `reason`). Returns the ids of the sessions whose tunnels closed.
pub async fn close(
    tx: &mut Tx<'_>,
    account_id: &str,
    which: Which<'_>,
    reason: &str,
    now: i64,
) -> AppResult<Vec<String>> {
    let (cond, values) = which.filter();
    let sql = format!(
        "SELECT t.id, t.session_id, t.user_id, u.username, t.client_public_key, t.started_at,
                t.bytes_to_device, t.bytes_from_device, t.path, t.device_id, t.standard_client
         FROM tunnels t JOIN users u ON u.id = t.user_id
         WHERE t.account_id = $1 AND t.ended_at IS NULL AND {cond}
         ORDER BY t.id"
    );
    let mut select = sqlx::query(&sql).bind(account_id);
    for v in &values {
        select = select.bind(*v);
    }
    let rows = select.fetch_all(&mut **tx).await?;
    let mut sessions = Vec::new();
    for t in rows {
        let id: String = t.try_get(0)?;
        let session_id: String = t.try_get(1)?;
        // Conditional: of two closes at once, one writes the record.
        let r = sqlx::query(
            "UPDATE tunnels SET ended_at = $1, end_reason = $2 WHERE id = $3 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() == 0 {
            continue;
        }
        if t.try_get::<i64, _>(10)? == 1 {
            let user: String = t.try_get(2)?;
            let started: i64 = t.try_get(5)?;
            let device: String = t.try_get(9)?;
            let ev = Event::new(
                account_id,
                &format!("user:{user}"),
                "tunnel.down",
                &format!("session:{session_id}"),
            )
            .device(&device)
            .details(serde_json::json!({
                "username": t.try_get::<String, _>(3)?,
                "public_key": t.try_get::<String, _>(4)?,
                "standard_client": true,
                "seconds": now - started,
                "bytes_to_device": t.try_get::<i64, _>(6)?,
                "bytes_from_device": t.try_get::<i64, _>(7)?,
                "path": t.try_get::<Option<String>, _>(8)?,
                "reason": reason,
            }));
            audit::append(tx, now, &ev).await?;
        }
        if !sessions.contains(&session_id) {
            sessions.push(session_id);
        }
    }
    Ok(sessions)
}
