//! API tokens limited to data: such a token reads the device list, tags,
//! historian points and the mailbox sync, KPIs and alarms, and nothing else —
//! every other route and every write is refused and changes nothing. Both stores.

use crate::common;
use crate::live_harness;

use axum::http::{Method, StatusCode};
use common::TestApp;
use live_harness::data::*;
use live_harness::*;
use serde_json::json;

store_tests!(data_only_tokens_read_data_and_nothing_else);

async fn data_only_tokens_read_data_and_nothing_else(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    let tag = json!({
        "name": "speed",
        "source": {"host": "192.168.1.10", "function": "holding_registers", "address": 3},
        "value_type": "u16",
        "poll_ms": 500,
        "log": {"mode": "every", "period_ms": 1000},
        "kpi": true,
    });
    let (s, v) = l
        .app
        .call(
            Method::PUT,
            &format!("/api/v1/devices/{}/tags", d.id),
            Some(&acct.admin),
            Some(tag.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        push(
            &mut ws,
            "s1",
            (1..=3).map(|i| point(i, "speed", i as f64)).collect()
        )
        .await,
        Ok(3)
    );

    // Asked for as read-write, a data-only token is still read-only.
    let created = l
        .app
        .ok(
            Method::POST,
            "/api/v1/tokens",
            &acct.admin,
            Some(json!({"name": "historian", "expires_in_days": 1, "read_only": false, "data_only": true})),
        )
        .await;
    assert_eq!(created["info"]["data_only"], true, "{created}");
    assert_eq!(created["info"]["read_only"], true, "{created}");
    let listed = l
        .app
        .ok(Method::GET, "/api/v1/tokens", &acct.admin, None)
        .await;
    assert_eq!(listed[0]["data_only"], true, "{listed}");
    let data = created["token"].as_str().unwrap().to_string();

    // Every data route reads.
    let all = sync_all(&l.app, &data, 2).await;
    assert_eq!(all.len(), 3);
    let devices = l.app.ok(Method::GET, "/api/v1/devices", &data, None).await;
    assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
    let dev = format!("/api/v1/devices/{}", d.id);
    for path in [
        "/api/v1/me".to_string(),
        format!("{dev}/tags"),
        format!("{dev}/data?tag=speed"),
        format!("{dev}/data/status"),
        format!("{dev}/kpis"),
        format!("{dev}/alarms"),
        format!("{dev}/alarms/history"),
        "/api/v1/alarms".to_string(),
    ] {
        let (s, v) = l.app.get(&path, &data).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let points = l
        .app
        .ok(Method::GET, &format!("{dev}/data?tag=speed"), &data, None)
        .await;
    assert_eq!(points.as_array().map(Vec::len), Some(3), "{points}");

    // Anything else its owner (an admin) could read is refused.
    let session = l.app.session(&acct.admin, &d.id, &[]).await;
    for path in [
        dev.clone(),
        format!("{dev}/logbook"),
        format!("{dev}/access"),
        format!("{dev}/web-pins"),
        "/api/v1/sessions".to_string(),
        format!("/api/v1/sessions/{session}"),
        format!("/api/v1/sessions/{session}/tunnels"),
        format!("/api/v1/sessions/{session}/channel?public_key=x"),
        "/api/v1/audit".to_string(),
        "/api/v1/audit/verify".to_string(),
        "/api/v1/users".to_string(),
        "/api/v1/tokens".to_string(),
        "/api/v1/account".to_string(),
        "/api/v1/account/webhooks".to_string(),
        "/api/v1/account/notifications".to_string(),
        "/api/v1/grants".to_string(),
        "/api/v1/groups".to_string(),
        "/api/v1/fleet-keys".to_string(),
    ] {
        let (s, v) = l.app.get(&path, &data).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        assert_eq!(v["code"], "forbidden", "{path}: {v}");
    }

    // Writes, on data routes and elsewhere, are refused and change nothing.
    let before = (
        l.app.count("data_points").await,
        l.app.count("tags").await,
        l.app.count("sessions").await,
        l.app.count("auth_tokens").await,
        l.app.count("devices").await,
    );
    let cursor = all.last().unwrap()["txid"].to_string();
    let writes = [
        (
            Method::POST,
            "/api/v1/data/delete".to_string(),
            json!({"up_to": cursor}),
        ),
        (Method::PUT, format!("{dev}/tags"), tag),
        (Method::DELETE, format!("{dev}/tags/speed"), json!({})),
        (
            Method::POST,
            "/api/v1/alarms/x/ack".to_string(),
            json!({"comment": "ok"}),
        ),
        (
            Method::POST,
            "/api/v1/sessions".to_string(),
            json!({"device_id": d.id}),
        ),
        (
            Method::POST,
            "/api/v1/devices".to_string(),
            json!({"name": "oven"}),
        ),
        (
            Method::POST,
            "/api/v1/tokens".to_string(),
            json!({"name": "more", "expires_in_days": 1}),
        ),
        (
            Method::POST,
            format!("/api/v1/sessions/{session}/end"),
            json!({}),
        ),
    ];
    for (method, path, body) in writes {
        let (s, v) = l
            .app
            .call(method.clone(), &path, Some(&data), Some(body))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
    }
    let after = (
        l.app.count("data_points").await,
        l.app.count("tags").await,
        l.app.count("sessions").await,
        l.app.count("auth_tokens").await,
        l.app.count("devices").await,
    );
    assert_eq!(before, after);

    // The owner's own login still does all of it; a full API token too.
    let (s, v) = l.app.get(&dev, &acct.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
