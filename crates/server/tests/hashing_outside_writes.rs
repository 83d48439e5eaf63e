//! A new user's password (user create, first-account setup) is checked and
//! hashed in the bounded `password::Hashing` pool before the write transaction
//! opens: while every hashing slot is taken, other writes go on (on SQLite the
//! transaction is the one writer), and a create that finds no slot in time is
//! refused with `rate_limited` having changed nothing, its setup link unused.
//!
//! A login that finds the pool's queue full is refused as busy before it reads
//! anything (a flood of logins the pool cannot take costs the database nothing).
//!
//! The pool is process-wide, so this binary holds one test that runs on SQLite
//! and then on PostgreSQL.

mod common;

use axum::http::{Method, StatusCode};
use common::{PASSWORD, TestApp};
use drawbridge_server::password::Hashing;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Takes every slot of the global pool until the returned sender is dropped.
async fn take_every_slot() -> std::sync::mpsc::Sender<()> {
    let pool = Hashing::global();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..pool.limit() {
        let rx = release_rx.clone();
        let started = started_tx.clone();
        tokio::spawn(async move {
            Hashing::global()
                .run(move || {
                    let _ = started.send(());
                    // Blocks until the sender is dropped.
                    let _ = rx.lock().unwrap().recv();
                })
                .await
                .unwrap();
        });
    }
    for _ in 0..pool.limit() {
        started_rx.recv().await.unwrap();
    }
    release_tx
}

async fn users(app: &TestApp) -> i64 {
    app.count("users").await
}

async fn run(app: TestApp) {
    let app = Arc::new(app);
    let acme = app.account("acme").await;
    let before = users(&app).await;
    let link = drawbridge_server::bootstrap::new_setup_token(&app.state)
        .await
        .unwrap();
    let hold = take_every_slot().await;
    // A user create and a first-account setup wait for a slot...
    let create = {
        let (app, token) = (app.clone(), acme.admin.clone());
        tokio::spawn(async move {
            app.post(
                "/api/v1/users",
                &token,
                json!({"username": "anna", "role": "user", "password": PASSWORD}),
            )
            .await
        })
    };
    let setup = {
        let (app, link) = (app.clone(), link.clone());
        tokio::spawn(async move {
            app.call(
                Method::POST,
                "/api/v1/setup",
                None,
                Some(json!({"token": link, "account": "second", "admin_username": "admin", "admin_password": PASSWORD})),
            )
            .await
        })
    };
    // ...while other writes go on.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/groups",
            &acme.admin,
            Some(json!({"name": "night-shift"})),
        )
        .await;
    assert_eq!(v["name"], "night-shift");
    // No slot within the pool's wait: refused, nothing written.
    let (s, v) = create.await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["code"], "rate_limited", "{v}");
    let (s, v) = setup.await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(users(&app).await, before, "nothing written");
    drop(hold);
    // With slots free, both work; the setup link was not used up.
    let (s, v) = app
        .post(
            "/api/v1/users",
            &acme.admin,
            json!({"username": "anna", "role": "user", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/setup",
            None,
            Some(json!({"token": link, "account": "second", "admin_username": "admin", "admin_password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(users(&app).await, before + 2);
}

/// Every slot of the global pool taken (until the returned sender is dropped)
/// and every place among its waiters too (each waiter gives up after the
/// pool's wait of 5 s).
async fn fill_the_queue() -> (
    std::sync::mpsc::Sender<()>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let hold = take_every_slot().await;
    let pool = Hashing::global();
    let waiters = (pool.waiting()..pool.max_waiting())
        .map(|_| {
            tokio::spawn(async {
                let _ = Hashing::global().run(|| ()).await;
            })
        })
        .collect();
    while pool.waiting() < pool.max_waiting() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (hold, waiters)
}

/// A login that finds the hashing queue full is refused as busy before it
/// touches the database: with every database connection held elsewhere it is
/// still answered at once.
async fn busy_logins_are_refused_before_any_database_access(app: TestApp) {
    let acme = app.account("acme").await;
    app.user(&acme, "anna", "user").await;
    let (hold, waiters) = fill_the_queue().await;
    let mut held = Vec::new();
    while let Ok(Ok(c)) =
        tokio::time::timeout(Duration::from_millis(300), app.state.store.pool.acquire()).await
    {
        held.push(c);
    }
    let refused = tokio::time::timeout(Duration::from_secs(2), app.login("acme", "anna", PASSWORD))
        .await
        .expect("refused without waiting for a database connection");
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS, "{}", refused.1);
    assert_eq!(refused.1["code"], "rate_limited");
    drop(held);
    drop(hold);
    for w in waiters {
        w.await.unwrap();
    }
    let (s, v) = app.login("acme", "anna", PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "with the queue free again: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_hashed_outside_writes_and_busy_logins_read_nothing() {
    run(TestApp::sqlite().await).await;
    if let Some(app) = TestApp::postgres("hashing_outside_writes").await {
        run(app).await;
    }
    busy_logins_are_refused_before_any_database_access(TestApp::sqlite().await).await;
    if let Some(app) = TestApp::postgres("hashing_outside_writes_busy_login").await {
        busy_logins_are_refused_before_any_database_access(app).await;
    }
}
