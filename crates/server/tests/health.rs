//! `/healthz` on PostgreSQL answers from its own probe: a replica whose request
//! pool is exhausted still answers healthy, at once.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_every_pooled_connection_busy_still_answers_healthy_at_once() {
    let Some(app) = TestApp::postgres("health_busy_pool").await else {
        return;
    };
    drawbridge_server::health::spawn(app.state.clone());
    for _ in 0..100 {
        if app.state.health.cached() == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.state.health.cached(),
        Some(true),
        "the probe reached the database"
    );
    // Every connection of the request pool in use, as under a flood of requests.
    let pool = &app.state.store.pool;
    let mut held = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        held.push(pool.acquire().await.unwrap());
    }
    for _ in 0..3 {
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            app.call(Method::GET, "/healthz", None, None),
        )
        .await
        .expect("an answer within a load balancer's check timeout");
        assert_eq!(answer.0, StatusCode::OK, "{:?}", answer.1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    drop(held);
}
