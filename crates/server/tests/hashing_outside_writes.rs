//! A new user's password (user create, first-account setup) is checked and
//! hashed in the bounded `password::Hashing` pool before the write transaction
//! opens: while every hashing slot is taken, other writes go on (on SQLite the
//! transaction is the one writer), and a create that finds no slot in time is
//! refused with `rate_limited` having changed nothing, its setup link unused.
//!
//! The pool is process-wide, so this binary holds one test that runs on SQLite
//! and then on PostgreSQL.

mod common;

use axum::http::{Method, StatusCode};
use common::{PASSWORD, TestApp};
use drawbridge_server::password::Hashing;
use serde_json::json;
use std::sync::Arc;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_user_passwords_are_hashed_in_the_bounded_pool_before_the_write_transaction() {
    run(TestApp::sqlite().await).await;
    if let Some(app) = TestApp::postgres("hashing_outside_writes").await {
        run(app).await;
    }
}
