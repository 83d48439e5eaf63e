//! Notifications for an account's admins (lockouts, approvals, …): the one
//! place they are written and read.

use crate::clock::from_unix;
use crate::db::{Store, Tx};
use drawbridge_proto::api::Notification;
use sqlx::Row;

/// Most notifications one read returns, newest first.
pub const MAX_LIST: i64 = 200;

/// Adds a notification for the account's admins, in the caller's transaction
/// (it commits with the change it reports, or not at all).
pub async fn add(
    tx: &mut Tx<'_>,
    account_id: &str,
    kind: &str,
    message: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (id, account_id, kind, message, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(crate::secret::new_id())
    .bind(account_id)
    .bind(kind)
    .bind(message)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The account's latest notifications, newest first.
pub async fn list(store: &Store, account_id: &str) -> Result<Vec<Notification>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, message, created_at FROM notifications WHERE account_id = $1 ORDER BY created_at DESC LIMIT $2",
    )
    .bind(account_id)
    .bind(MAX_LIST)
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Notification {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                message: r.try_get("message")?,
                created_at: from_unix(r.try_get("created_at")?),
            })
        })
        .collect()
}
