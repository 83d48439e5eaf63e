//! Account settings change key by key; session lists filter in the database.

use crate::common;

use axum::http::{Method, StatusCode};
use common::TestApp;
use serde_json::json;

store_tests!(
    a_settings_patch_changes_only_the_keys_it_names,
    session_lists_filter_by_state_before_they_are_limited,
);

async fn a_settings_patch_changes_only_the_keys_it_names(app: TestApp) {
    let acct = app.account("acme").await;
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": {"adhoc_allowed": true, "password_policy": {"min_length": 12}}})),
    )
    .await;
    let v = app
        .ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": {"dual_control": true}})),
        )
        .await;
    let s = &v["settings"];
    assert_eq!(s["dual_control"], true);
    assert_eq!(s["adhoc_allowed"], true, "untouched by the second patch");
    assert_eq!(s["password_policy"]["min_length"], 12);
    assert_eq!(
        s["password_policy"]["min_classes"], 3,
        "nested keys merge too"
    );
    let before = app
        .ok(Method::GET, "/api/v1/account", &acct.admin, None)
        .await;
    for bad in [
        json!({"dual_controll": true}),
        json!({"lockout_threshold": "five"}),
        json!({"lockout_threshold": 0}),
        json!([1]),
    ] {
        let (s, v) = app
            .patch("/api/v1/account", &acct.admin, json!({"settings": bad}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    assert_eq!(
        app.ok(Method::GET, "/api/v1/account", &acct.admin, None)
            .await,
        before,
        "refused patches change nothing"
    );
}

async fn session_lists_filter_by_state_before_they_are_limited(app: TestApp) {
    let acct = app.account("acme").await;
    let (d, _) = app.device(&acct, "press-1").await;
    let first = app.session(&acct.admin, &d, &[&acct.admin_id]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{first}/end"),
        &acct.admin,
        None,
    )
    .await;
    let second = app.session(&acct.admin, &d, &[&acct.admin_id]).await;
    let ended = app
        .ok(
            Method::GET,
            "/api/v1/sessions?state=ended",
            &acct.admin,
            None,
        )
        .await;
    let ids: Vec<_> = ended
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![first]);
    let prepared = app
        .ok(
            Method::GET,
            "/api/v1/sessions?state=prepared",
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(prepared.as_array().unwrap()[0]["id"], second.as_str());
    assert_eq!(prepared.as_array().unwrap().len(), 1);
}
