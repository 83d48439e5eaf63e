//! The periodic sweep covers every running session, however many there are:
//! no page size leaves idle or expired sessions running. Each runs on SQLite
//! and PostgreSQL.

use crate::common;

use common::TestApp;
use drawbridge_server::background::sweep;

store_tests!(
    the_idle_sweep_ends_every_idle_session_however_many_there_are,
    the_expiry_sweep_ends_every_expired_session_however_many_there_are,
);

/// More than any page or limit the sweep ever used (2,000).
const MANY: usize = 2_100;

/// Inserts `MANY` active sessions straight into the database (the API would take
/// minutes): started and last active `idle_for` seconds ago, valid for `valid_for` more.
async fn many_sessions(app: &TestApp, account_id: &str, idle_for: i64, valid_for: i64) {
    let now = app.state.now();
    let mut tx = app.state.store.begin().await.unwrap();
    for _ in 0..MANY {
        sqlx::query(
            "INSERT INTO sessions (id, account_id, name, state, adhoc, created_by, created_at, valid_from, valid_until, started_at, last_activity)
             VALUES ($1, $2, 'bulk', 'active', 0, 'system', $3, $3, $4, $3, $3)",
        )
        .bind(drawbridge_server::secret::new_id())
        .bind(account_id)
        .bind(now - idle_for)
        .bind(now + valid_for)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn running(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE state <> 'ended'")
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap()
}

async fn the_idle_sweep_ends_every_idle_session_however_many_there_are(app: TestApp) {
    let acct = app.account("acme").await;
    let idle = i64::from(drawbridge_proto::AccountSettings::default().session_idle_minutes) * 60;
    many_sessions(&app, &acct.id, idle + 10, 86_400).await;
    let ended = sweep(&app.state).await.unwrap();
    assert_eq!(ended.len(), MANY, "one sweep ends them all");
    assert_eq!(running(&app).await, 0);
    let reasons: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE end_reason = 'idle_timeout'")
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(reasons, MANY as i64);
}

async fn the_expiry_sweep_ends_every_expired_session_however_many_there_are(app: TestApp) {
    let acct = app.account("acme").await;
    many_sessions(&app, &acct.id, 0, 60).await;
    app.clock().advance(61);
    let ended = sweep(&app.state).await.unwrap();
    assert_eq!(ended.len(), MANY, "one sweep ends them all");
    assert_eq!(running(&app).await, 0);
}
