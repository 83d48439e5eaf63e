//! An account's webhook endpoints in the database: their API shape, creation with
//! a sealed secret, changes, and the record of successes and failures that
//! disables an endpoint failing for too long (and tells the admins).

use super::{EventKind, Message};
use crate::clock::from_unix;
use crate::db::{Store, Tx};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use time::OffsetDateTime;

/// Most webhooks of one account.
pub const MAX_WEBHOOKS: i64 = 20;

/// Where a webhook's secret is sealed.
pub fn secret_context(id: &str) -> String {
    format!("webhooks.secret:{id}")
}

/// A webhook endpoint (its secret is shown once, when it is created).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// The event kinds sent to it.
    pub events: Vec<EventKind>,
    /// False once disabled (by an admin, or after failing for too long).
    pub enabled: bool,
    /// Failing since (no success after this time).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A new webhook and its signing secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    /// `whsec_` + base64 of the HMAC key (Standard Webhooks); not shown again.
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://…` to a public address (see docs/security.md).
    #[schema(max_length = 2048)]
    pub url: String,
    /// At least one event kind.
    pub events: Vec<EventKind>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<EventKind>>,
    /// Enabling again clears the failure record.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Event kinds as stored: sorted, each once, at least one.
pub fn check_events(events: &[EventKind]) -> Result<Vec<EventKind>, String> {
    let mut v = events.to_vec();
    v.sort();
    v.dedup();
    if v.is_empty() {
        return Err("a webhook needs at least one event kind".into());
    }
    Ok(v)
}

const COLS: &str = "id, url, events, enabled, failing_since, last_success_at, last_error, disabled_at, disabled_reason, created_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Webhook, sqlx::Error> {
    let events: String = r.try_get("events")?;
    let t = |c: &str| -> Result<Option<OffsetDateTime>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(from_unix))
    };
    Ok(Webhook {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        failing_since: t("failing_since")?,
        last_success_at: t("last_success_at")?,
        last_error: r.try_get("last_error")?,
        disabled_at: t("disabled_at")?,
        disabled_reason: r.try_get("disabled_reason")?,
        created_at: from_unix(r.try_get("created_at")?),
    })
}

/// The ids of the account's enabled webhooks subscribed to `kind`.
pub async fn subscribed(
    tx: &mut Tx<'_>,
    account_id: &str,
    kind: EventKind,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, events FROM webhooks WHERE account_id = $1 AND enabled = 1 ORDER BY created_at, id")
        .bind(account_id)
        .fetch_all(&mut **tx)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let events: String = r.try_get(1)?;
        let events: Vec<EventKind> = serde_json::from_str(&events).unwrap_or_default();
        if events.contains(&kind) {
            out.push(r.try_get(0)?);
        }
    }
    Ok(out)
}

pub async fn list(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
) -> Result<Vec<Webhook>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM webhooks WHERE account_id = $1 ORDER BY created_at, id"
    ))
    .bind(account_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// One of the account's webhooks (`None`: no such webhook in this account).
pub async fn get(
    conn: &mut sqlx::AnyConnection,
    account_id: &str,
    id: &str,
) -> Result<Option<Webhook>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM webhooks WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Why a webhook was not created.
#[derive(Debug)]
pub enum CreateError {
    TooMany,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for CreateError {
    fn from(e: sqlx::Error) -> Self {
        CreateError::Db(e)
    }
}

/// Creates a webhook with a new secret (sealed in the database); the URL and
/// events are checked already. The account's row is locked first, so concurrent
/// creations count each other and the account never has more than [`MAX_WEBHOOKS`].
pub async fn create(
    tx: &mut Tx<'_>,
    store: &Store,
    account_id: &str,
    url: &str,
    events: &[EventKind],
    now: i64,
) -> Result<CreatedWebhook, CreateError> {
    sqlx::query("UPDATE accounts SET name = name WHERE id = $1")
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(&mut **tx)
        .await?;
    if n >= MAX_WEBHOOKS {
        return Err(CreateError::TooMany);
    }
    let id = crate::secret::new_id();
    let secret = super::webhook::new_secret();
    sqlx::query(
        "INSERT INTO webhooks (id, account_id, url, events, secret, enabled, created_at) VALUES ($1, $2, $3, $4, $5, 1, $6)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(url)
    .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
    .bind(store.seal(&secret_context(&id), &secret))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let webhook = get(tx, account_id, &id)
        .await?
        .ok_or(CreateError::Db(sqlx::Error::RowNotFound))?;
    Ok(CreatedWebhook { webhook, secret })
}

/// Applies a checked change; enabling clears the failure record, disabling drops
/// what is still queued for it.
pub async fn update(
    tx: &mut Tx<'_>,
    id: &str,
    url: Option<&str>,
    events: Option<&[EventKind]>,
    enabled: Option<bool>,
) -> Result<(), sqlx::Error> {
    if let Some(url) = url {
        sqlx::query("UPDATE webhooks SET url = $1 WHERE id = $2")
            .bind(url)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(events) = events {
        sqlx::query("UPDATE webhooks SET events = $1 WHERE id = $2")
            .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    match enabled {
        Some(true) => {
            sqlx::query(
                "UPDATE webhooks SET enabled = 1, failing_since = NULL, last_error = NULL, disabled_at = NULL, disabled_reason = NULL
                 WHERE id = $1 AND enabled = 0",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Some(false) => {
            sqlx::query(
                "UPDATE webhooks SET enabled = 0, disabled_reason = 'disabled by an admin' WHERE id = $1 AND enabled = 1",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
            super::queue::drop_webhook_deliveries(tx, id, "the webhook was disabled").await?;
        }
        None => {}
    }
    Ok(())
}

/// Deletes a webhook and what was still queued for it.
pub async fn delete(tx: &mut Tx<'_>, id: &str) -> Result<(), sqlx::Error> {
    super::queue::drop_webhook_deliveries(tx, id, "the webhook was deleted").await?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What the worker needs to call a webhook: URL and secret (opened), if it is enabled.
pub async fn for_send(store: &Store, id: &str) -> anyhow::Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT url, secret FROM webhooks WHERE id = $1 AND enabled = 1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let url: String = r.try_get(0)?;
    let sealed: String = r.try_get(1)?;
    let secret = store.unseal(&secret_context(id), &sealed)?;
    Ok(Some((url, secret)))
}

pub async fn record_success(store: &Store, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhooks SET failing_since = NULL, last_error = NULL, last_success_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Records a failed call. A webhook failing for `failure_days` days without a
/// success is disabled (once, whichever replica sees it first), what is queued for
/// it dropped, and the admins told in the portal and by e-mail; returns whether
/// this call disabled it.
pub async fn record_failure(
    store: &Store,
    id: &str,
    now: i64,
    error: &str,
    failure_days: u32,
) -> Result<bool, sqlx::Error> {
    let error: String = error.chars().take(500).collect();
    let mut tx = store.begin().await?;
    sqlx::query(
        "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1), last_error = $2 WHERE id = $3",
    )
    .bind(now)
    .bind(&error)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let limit = now - i64::from(failure_days) * 24 * 3600;
    let row = sqlx::query(
        "UPDATE webhooks SET enabled = 0, disabled_at = $1, disabled_reason = $2
         WHERE id = $3 AND enabled = 1 AND failing_since <= $4 RETURNING account_id, url, failing_since",
    )
    .bind(now)
    .bind(format!("failing for {failure_days} days"))
    .bind(id)
    .bind(limit)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = row else {
        tx.commit().await?;
        return Ok(false);
    };
    let account_id: String = r.try_get(0)?;
    let url: String = r.try_get(1)?;
    let since: i64 = r.try_get(2)?;
    let dropped =
        super::queue::drop_webhook_deliveries(&mut tx, id, "the webhook was disabled").await?;
    let since_text = from_unix(since)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let text = format!(
        "The webhook {url} has failed since {since_text} and was disabled after {failure_days} days; \
         {dropped} queued deliveries were dropped. Last error: {error}. Enable it again when the \
         endpoint works (PATCH /api/v1/account/webhooks/{id} {{\"enabled\": true}})."
    );
    crate::notifications::add(&mut tx, &account_id, "webhook", &text, now).await?;
    let ev = crate::audit::Event::new(&account_id, "system", "webhook.disable", &format!("webhook:{id}"))
        .details(serde_json::json!({ "url": url, "failing_since": since, "days": failure_days, "dropped": dropped, "last_error": error }));
    crate::audit::append(&mut tx, now, &ev).await?;
    let msg = Message::new(
        EventKind::WebhookDisabled,
        "Drawbridge: a webhook was disabled",
        text,
    )
    .data(serde_json::json!({ "webhook_id": id, "url": url, "failing_since": since_text, "days": failure_days }));
    super::enqueue(&mut tx, &account_id, &msg, now).await?;
    tx.commit().await?;
    Ok(true)
}
