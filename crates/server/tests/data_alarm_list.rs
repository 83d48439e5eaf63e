//! The account's alarm list counts its limit in alarms the caller may see: a
//! user whose grant covers one device gets that device's alarms even when
//! newer alarms of other devices fill the first page. Both stores.

use crate::common;

use axum::http::Method;
use common::TestApp;
use serde_json::{Value, json};

store_tests!(the_alarm_list_limit_counts_only_alarms_the_caller_may_see);

async fn alarm(app: &TestApp, account: &str, device: &str, n: i64) {
    sqlx::query(
        "INSERT INTO alarms (id, account_id, device_id, tag, state, raised_ms, raised_value, updated_at)
         VALUES ($1, $2, $3, 'temp', 'alarm', $4, 99.5, $4)",
    )
    .bind(format!("al-{device}-{n}"))
    .bind(account)
    .bind(device)
    .bind(1_800_000_000_000 + n * 1000)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
}

async fn the_alarm_list_limit_counts_only_alarms_the_caller_may_see(app: TestApp) {
    let acct = app.account("acme").await;
    let (mine, _) = app.device(&acct, "press").await;
    let (theirs, _) = app.device(&acct, "oven").await;
    let (uid, user) = app.user(&acct, "ursula", "user").await;
    app.grant(&acct, &[&uid], &[&mine], "monitor", json!([]))
        .await;
    // Three older alarms on her device, ten newer ones on the other.
    for n in 0..3 {
        alarm(&app, &acct.id, &mine, n).await;
    }
    for n in 10..20 {
        alarm(&app, &acct.id, &theirs, n).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["device_id"].as_str().unwrap().to_string())
            .collect()
    };
    let got = app
        .ok(Method::GET, "/api/v1/alarms?limit=3", &user, None)
        .await;
    assert_eq!(ids(&got), vec![mine.clone(); 3], "{got}");
    let got = app
        .ok(Method::GET, "/api/v1/alarms?limit=2", &user, None)
        .await;
    assert_eq!(ids(&got).len(), 2);
    // The admin sees every device: the newest first, the limit exact.
    let got = app
        .ok(Method::GET, "/api/v1/alarms?limit=5", &acct.admin, None)
        .await;
    assert_eq!(ids(&got), vec![theirs.clone(); 5]);
}
