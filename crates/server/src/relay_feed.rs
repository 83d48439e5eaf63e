//! The revocation feed for standalone relays (`GET /relay/v1/revoked?after=CURSOR`,
//! format and relay side in `drawbridge_relay::feed`).
//!
//! It is derived from the sessions table, so every replica serves the same feed: the
//! ended sessions whose `valid_until` (the latest expiry of any of their tokens) is
//! still ahead, ordered by (`ended_at`, `id`). The cursor is `ENDED_AT.ID`, the last
//! entry sent. Once caught up, the next cursor is set back to `now - SETTLE_SECS`, so
//! the last minute is sent again on every poll: a session whose end committed late
//! (a slow transaction, another replica's clock a little behind) is still delivered.
//!
//! Readers authenticate with a relay credential signed by the relay-token signing key
//! (`drawbridge-server relay-credential`); anything else is refused before the
//! database is asked.

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drawbridge_proto::ErrorCode;
use drawbridge_relay::feed::announce::Heartbeat;
use drawbridge_relay::feed::{FEED_PATH, MAX_CURSOR_LEN, MAX_PAGE, Page, Revoked};
use drawbridge_relay::token::MAX_SESSION_ID_LEN;
use sqlx::Row;

/// Longest query (cursor and heartbeat).
const MAX_QUERY: usize = 2048;

/// How far back every poll looks again once caught up (seconds).
pub const SETTLE_SECS: i64 = 60;

/// The feed's route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(FEED_PATH, get(revoked))
        .with_state(state)
}

/// Issues a relay credential valid for `days` days.
pub fn credential(
    key: &drawbridge_relay::SigningKey,
    relay: &str,
    now: i64,
    days: u32,
) -> anyhow::Result<String> {
    let expires_at = u64::try_from(now)? + u64::from(days) * 86_400;
    drawbridge_relay::feed::issue_credential(
        key,
        &drawbridge_relay::feed::Credential {
            relay: relay.to_string(),
            expires_at,
        },
    )
    .map_err(|e| anyhow::anyhow!("relay credential: {e}"))
}

async fn revoked(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match serve(&state, &headers, query.as_deref().unwrap_or("")).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn serve(state: &AppState, headers: &HeaderMap, query: &str) -> AppResult<Page> {
    let refused = || AppError::new(ErrorCode::Unauthenticated, "a relay credential is required");
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(refused)?;
    let now = state.now();
    let reader = drawbridge_relay::feed::verify_credential(
        &state.relay_key.verifying_key(),
        credential.trim(),
        u64::try_from(now).unwrap_or(0),
    )
    .map_err(|e| {
        tracing::info!(error = %e, "revocation feed: relay credential refused");
        refused()
    })?;
    if query.len() > MAX_QUERY {
        return Err(AppError::new(ErrorCode::BadRequest, "query too long"));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut after = None;
    for (k, v) in &pairs {
        match (k.as_str(), after.is_some()) {
            ("after", false) => after = Some(v.as_str()),
            ("after", true) => return Err(AppError::new(ErrorCode::BadRequest, "`after` once")),
            (k, _) if Heartbeat::KEYS.contains(&k) => {}
            _ => {
                return Err(AppError::new(
                    ErrorCode::BadRequest,
                    "unknown query parameter",
                ));
            }
        }
    }
    let after = parse_cursor(after.unwrap_or(""))?;
    // The relay's heartbeat, when it announces itself (the relay tier).
    let heartbeat = Heartbeat::from_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()))?;
    if let Some(hb) = &heartbeat
        && let Err(e) = crate::relays::record_heartbeat(state, &reader.relay, hb).await
    {
        if e.code == ErrorCode::Internal {
            return Err(e);
        }
        // A refused announcement (the name of a replica's embedded relay) must
        // not cost the relay its revocations: the page is served all the same.
        tracing::warn!(relay = %reader.relay, error = %e.message, "a relay's announcement was refused; it still gets the revocation feed");
        metrics::counter!("relay_announcements_refused_total").increment(1);
    }
    let page = page(state, after, now).await?;
    tracing::debug!(relay = %reader.relay, entries = page.revoked.len(), "revocation feed read");
    Ok(page)
}

/// `ENDED_AT.ID` → (ended_at, id); empty → from the beginning.
fn parse_cursor(s: &str) -> AppResult<(i64, String)> {
    if s.is_empty() {
        return Ok((-1, String::new()));
    }
    let bad = || AppError::new(ErrorCode::BadRequest, "malformed cursor");
    if s.len() > MAX_CURSOR_LEN {
        return Err(bad());
    }
    let (t, id) = s.split_once('.').ok_or_else(bad)?;
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(bad());
    }
    Ok((t.parse().map_err(|_| bad())?, id.to_string()))
}

/// One page after `after` at time `now`.
async fn page(state: &AppState, after: (i64, String), now: i64) -> AppResult<Page> {
    let rows = sqlx::query(
        "SELECT id, valid_until, ended_at FROM sessions
         WHERE state = 'ended' AND valid_until > $1
           AND (ended_at > $2 OR (ended_at = $2 AND id > $3))
         ORDER BY ended_at, id LIMIT $4",
    )
    .bind(now)
    .bind(after.0)
    .bind(&after.1)
    .bind(MAX_PAGE as i64 + 1)
    .fetch_all(&state.store.pool)
    .await?;
    let more = rows.len() > MAX_PAGE;
    let mut revoked = Vec::with_capacity(rows.len().min(MAX_PAGE));
    let mut last = None;
    for r in rows.iter().take(MAX_PAGE) {
        let id: String = r.try_get(0)?;
        let until: i64 = r.try_get(1)?;
        let ended_at: i64 = r.try_get(2)?;
        last = Some(format!("{ended_at}.{id}"));
        revoked.push(Revoked {
            session: id,
            until: u64::try_from(until).unwrap_or(0),
        });
    }
    let next = match last {
        Some(key) if more => key,
        // Caught up: the last minute again next time (late commits, clock skew).
        _ => format!("{}.", (now - SETTLE_SECS).max(0)),
    };
    Ok(Page {
        revoked,
        next,
        more,
    })
}
