//! The outbox's deliveries in the database: queued with an event, claimed with a
//! lease, marked sent, retried with capped exponential backoff, given up, purged.

use crate::db::{Backend, Store, Tx};
use sqlx::Row;

/// How a delivery travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// To one e-mail address (`target`).
    Email,
    /// To one webhook (`target`: its id).
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
    fn parse(s: &str) -> Option<Channel> {
        match s {
            "email" => Some(Channel::Email),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

/// First retry after this many seconds; each further one waits twice as long…
pub const BACKOFF_FIRST_SECS: i64 = 30;
/// …up to this.
pub const BACKOFF_MAX_SECS: i64 = 3600;
/// A claimed delivery is someone else's to take after this long (its replica died).
/// It covers a whole claimed batch: [`CLAIM_BATCH`] deliveries, 8 at a time
/// (`worker::CONCURRENCY`), each at most 30 s (`mail::TIMEOUT`), is 120 s.
pub const LEASE_SECS: i64 = 300;
/// An e-mail still not accepted this long after its event is given up.
pub const EMAIL_GIVE_UP_SECS: i64 = 3 * 24 * 3600;
/// Finished deliveries (and their events) are kept this long, then purged.
pub const KEEP_SECS: i64 = 30 * 24 * 3600;
/// Most deliveries one claim takes.
pub const CLAIM_BATCH: i64 = 32;

/// The wait before retry number `attempts` (1 = after the first failure):
/// 30 s, 60 s, 120 s, … capped at one hour.
pub fn backoff(attempts: i64) -> i64 {
    let doublings = attempts.clamp(1, 20) - 1;
    BACKOFF_FIRST_SECS
        .saturating_mul(1i64 << doublings)
        .min(BACKOFF_MAX_SECS)
}

pub async fn insert_delivery(
    tx: &mut Tx<'_>,
    event_id: &str,
    account_id: &str,
    channel: Channel,
    target: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox_deliveries (id, event_id, account_id, channel, target, state, attempts, next_at, created_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
    )
    .bind(crate::secret::new_id())
    .bind(event_id)
    .bind(account_id)
    .bind(channel.as_str())
    .bind(target)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The event a delivery tells about.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// `msg_…`: the webhook-id, and the e-mail's Message-ID.
    pub id: String,
    pub account_id: String,
    pub kind: String,
    pub subject: String,
    pub text: String,
    /// JSON.
    pub data: String,
    /// File name, content type and bytes.
    pub attachment: Option<(String, String, Vec<u8>)>,
    pub created_at: i64,
}

/// A delivery this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub channel: Channel,
    pub target: String,
    /// Including this one.
    pub attempts: i64,
    pub created_at: i64,
    pub event: EventRow,
}

/// Takes up to `limit` due deliveries of the given channels for `lease_secs`:
/// pending, due, and not leased (or the lease ran out). On PostgreSQL rows another
/// replica is claiming are skipped (`FOR UPDATE SKIP LOCKED`), and the outer
/// condition is checked again on the locked row, so two replicas never hold one
/// delivery at once; SQLite has a single writer.
pub async fn claim(
    store: &Store,
    owner: &str,
    channels: &[Channel],
    now: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let Some(first) = channels.first() else {
        return Ok(Vec::new());
    };
    let second = channels.get(1).unwrap_or(first);
    let lock = match store.backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let due = "state = 'pending' AND next_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) AND channel IN ($5, $6)";
    let rows = sqlx::query(&format!(
        "UPDATE outbox_deliveries SET lease_until = $1, lease_owner = $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM outbox_deliveries WHERE {due} ORDER BY next_at LIMIT $4 {lock})
         AND {due}
         RETURNING id, event_id, channel, target, attempts, created_at"
    ))
    .bind(now + LEASE_SECS)
    .bind(owner)
    .bind(now)
    .bind(limit)
    .bind(first.as_str())
    .bind(second.as_str())
    .fetch_all(&store.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut events: std::collections::HashMap<String, EventRow> = Default::default();
    for r in rows {
        let event_id: String = r.try_get("event_id")?;
        let event = match events.get(&event_id) {
            Some(e) => e.clone(),
            None => {
                let e = load_event(store, &event_id).await?;
                events.insert(event_id.clone(), e.clone());
                e
            }
        };
        let channel: String = r.try_get("channel")?;
        let Some(channel) = Channel::parse(&channel) else {
            continue;
        };
        out.push(Claimed {
            id: r.try_get("id")?,
            channel,
            target: r.try_get("target")?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
            event,
        });
    }
    Ok(out)
}

async fn load_event(store: &Store, id: &str) -> Result<EventRow, sqlx::Error> {
    let r = sqlx::query(
        "SELECT id, account_id, kind, subject, body, data, attachment_name, attachment_type, attachment, created_at
         FROM outbox_events WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&store.pool)
    .await?;
    let attachment = match (
        r.try_get::<Option<String>, _>("attachment_name")?,
        r.try_get::<Option<String>, _>("attachment_type")?,
        r.try_get::<Option<String>, _>("attachment")?,
    ) {
        (Some(name), Some(kind), Some(b64)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .map(|bytes| (name, kind, bytes))
        }
        _ => None,
    };
    Ok(EventRow {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        text: r.try_get("body")?,
        data: r.try_get("data")?,
        attachment,
        created_at: r.try_get("created_at")?,
    })
}

/// The delivery arrived (also when another replica's lease on it ran out meanwhile).
pub async fn mark_sent(store: &Store, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_deliveries SET state = 'sent', sent_at = $1, lease_until = NULL, lease_owner = NULL, last_error = NULL
         WHERE id = $2 AND state = 'pending'",
    )
    .bind(now)
    .bind(id)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// The attempt failed: retried after the backoff, or given up (`failed`). Only
/// while this worker still holds the lease (a newer claim wins).
pub async fn mark_failed(
    store: &Store,
    d: &Claimed,
    owner: &str,
    now: i64,
    error: &str,
    give_up: bool,
) -> Result<(), sqlx::Error> {
    let error: String = error.chars().take(500).collect();
    sqlx::query(
        "UPDATE outbox_deliveries SET state = $1, next_at = $2, last_error = $3, lease_until = NULL, lease_owner = NULL
         WHERE id = $4 AND state = 'pending' AND lease_owner = $5",
    )
    .bind(if give_up { "failed" } else { "pending" })
    .bind(now + backoff(d.attempts) + jitter(d.attempts))
    .bind(error)
    .bind(&d.id)
    .bind(owner)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Up to a tenth of the backoff, so retries of many deliveries spread out.
fn jitter(attempts: i64) -> i64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..=backoff(attempts) / 10)
}

/// Gives up the pending deliveries to a webhook (it was disabled or deleted).
pub async fn drop_webhook_deliveries(
    tx: &mut Tx<'_>,
    webhook_id: &str,
    why: &str,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE outbox_deliveries SET state = 'dropped', last_error = $1, lease_until = NULL, lease_owner = NULL
         WHERE channel = 'webhook' AND target = $2 AND state = 'pending'",
    )
    .bind(why)
    .bind(webhook_id)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Housekeeping any replica may do at any time: e-mails pending too long are given
/// up; finished deliveries and events older than [`KEEP_SECS`] are deleted, and
/// once-markers older than 400 days.
pub async fn purge(store: &Store, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_deliveries SET state = 'failed', last_error = COALESCE(last_error, 'not sent in time')
         WHERE channel = 'email' AND state = 'pending' AND created_at < $1 AND (lease_until IS NULL OR lease_until <= $2)",
    )
    .bind(now - EMAIL_GIVE_UP_SECS)
    .bind(now)
    .execute(&store.pool)
    .await?;
    sqlx::query("DELETE FROM outbox_deliveries WHERE state <> 'pending' AND created_at < $1")
        .bind(now - KEEP_SECS)
        .execute(&store.pool)
        .await?;
    sqlx::query(
        "DELETE FROM outbox_events WHERE created_at < $1
         AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.event_id = outbox_events.id)",
    )
    .bind(now - KEEP_SECS)
    .execute(&store.pool)
    .await?;
    sqlx::query("DELETE FROM outbox_once WHERE created_at < $1")
        .bind(now - 400 * 24 * 3600)
        .execute(&store.pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_thirty_seconds_up_to_an_hour() {
        assert_eq!(
            (1..=9).map(backoff).collect::<Vec<_>>(),
            [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        );
        assert_eq!(backoff(0), 30);
        assert_eq!(backoff(i64::MAX), 3600);
    }
}
