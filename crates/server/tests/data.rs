//! Data services over the real edge channel: tags reach the edge, historian
//! records are stored exactly once and synced exactly once, alarms go through
//! their states with acknowledgement, KPI values flow only while watched,
//! retention purges old points; hostile input changes nothing. Both stores.

use crate::common;
use crate::live_harness;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::TestApp;
use drawbridge_proto::TagName;
use drawbridge_proto::channel::{EdgeToServer, ServerToEdge};
use drawbridge_proto::data::{AlarmTransition, LiveValue, Quality, Record, RecordBody};
use http_body_util::BodyExt;
use live_harness::data::*;
use live_harness::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tower::ServiceExt;

store_tests!(
    tags_reach_the_edge_and_bad_tags_change_nothing,
    records_are_stored_once_and_synced_once,
    alarms_are_raised_acknowledged_returned_and_ended,
    kpi_values_flow_only_while_someone_watches,
    retention_purges_points_older_than_the_account_keeps,
    absent_and_present_values_alternate_without_breaking_the_channel,
);

fn tag(name: &str, host: &str, kpi: bool) -> Value {
    json!({
        "name": name,
        "description": "motor speed",
        "source": {"host": host, "function": "holding_registers", "address": 3},
        "value_type": "u16",
        "unit": "rpm",
        "poll_ms": 500,
        "log": {"mode": "every", "period_ms": 1000},
        "kpi": kpi,
    })
}

async fn tags_reach_the_edge_and_bad_tags_change_nothing(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    let path = format!("/api/v1/devices/{}/tags", d.id);

    let (s, v) = l
        .app
        .call(
            Method::PUT,
            &path,
            Some(&acct.admin),
            Some(tag("speed", "192.168.1.10", true)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let got = within::<ServerToEdge>(&mut ws, 5, |m| matches!(m, ServerToEdge::Tags { .. }))
        .await
        .expect("the edge hears of the tag within seconds");
    let ServerToEdge::Tags { tags } = got else {
        unreachable!()
    };
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].name.as_str(), "speed");
    assert_eq!(tags[0].source.address, 3);

    // A host outside the device's LAN, a poll period too short, an array body,
    // an unknown field: refused, nothing changes, the edge hears nothing.
    for bad in [
        tag("x", "10.0.0.1", false),
        tag("x", "127.0.0.1", false),
        json!([tag("x", "192.168.1.10", false)]),
        {
            let mut t = tag("x", "192.168.1.10", false);
            t["poll_ms"] = json!(10);
            t
        },
        {
            let mut t = tag("x", "192.168.1.10", false);
            t["write"] = json!(true);
            t
        },
    ] {
        let (s, v) = l
            .app
            .call(Method::PUT, &path, Some(&acct.admin), Some(bad))
            .await;
        assert!(s.is_client_error(), "{s} {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let listed = l.app.ok(Method::GET, &path, &acct.admin, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Only admins write tags; a monitor-level user reads them.
    let (uid, user) = l.app.user(&acct, "mona", "user").await;
    l.app
        .grant(&acct, &[&uid], &[&d.id], "monitor", json!([]))
        .await;
    let (s, _) = l
        .app
        .call(
            Method::PUT,
            &path,
            Some(&user),
            Some(tag("y", "192.168.1.10", false)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = l.app.get(&path, &user).await;
    assert_eq!(s, StatusCode::OK);

    // 30 KPI tags at once: exactly 16 KPIs per device, whatever the interleaving.
    let puts = (0..30).map(|i| {
        let (app, path, admin) = (&l.app, path.clone(), acct.admin.clone());
        async move {
            app.call(
                Method::PUT,
                &path,
                Some(&admin),
                Some(tag(&format!("k{i}"), "192.168.1.11", true)),
            )
            .await
            .0
        }
    });
    let codes = futures_util::future::join_all(puts).await;
    let created = codes.iter().filter(|c| **c == StatusCode::CREATED).count();
    assert_eq!(created, 15, "one KPI existed, 15 more fit: {codes:?}");
    let listed = l.app.ok(Method::GET, &path, &acct.admin, None).await;
    let kpis = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kpi"] == true)
        .count();
    assert_eq!(kpis, 16);

    // Deleting a tag reaches the edge too; an unknown tag is 404.
    let (s, _) = l.app.delete(&format!("{path}/speed"), &acct.admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let got = within::<ServerToEdge>(&mut ws, 5, |m| {
        matches!(m, ServerToEdge::Tags { tags } if !tags.iter().any(|t| t.name.as_str() == "speed"))
    })
    .await;
    assert!(got.is_some(), "the edge hears of the deletion");
    let (s, _) = l.app.delete(&format!("{path}/speed"), &acct.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = l
        .app
        .delete(&format!("{path}/bad%20name"), &acct.admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Configuration changes are on the audit chain.
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action IN ('tag.create', 'tag.delete')",
    )
    .fetch_one(&l.app.state.store.pool)
    .await
    .unwrap();
    assert_eq!(n, 17);
}

async fn records_are_stored_once_and_synced_once(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let a = enrolled(&l, &acct, "press").await;
    let b = enrolled(&l, &acct, "oven").await;
    let mut wa = edge(&l, &a, true).await;
    let mut wb = edge(&l, &b, true).await;

    assert_eq!(
        push(
            &mut wa,
            "s1",
            (1..=5).map(|i| point(i, "t", i as f64)).collect()
        )
        .await,
        Ok(5)
    );
    // A re-send after a lost acknowledgement overlaps: nothing twice.
    assert_eq!(
        push(
            &mut wa,
            "s1",
            (3..=8).map(|i| point(i, "t", i as f64)).collect()
        )
        .await,
        Ok(8)
    );
    assert_eq!(push(&mut wa, "s1", vec![]).await, Ok(8));
    // A new buffer (a replaced gateway) starts a new stream at 1.
    assert_eq!(
        push(
            &mut wa,
            "s2",
            (1..=2).map(|i| point(i, "t", 100.0 + i as f64)).collect()
        )
        .await,
        Ok(2)
    );
    assert_eq!(
        push(
            &mut wb,
            "sb",
            (1..=4).map(|i| point(i, "u", -(i as f64))).collect()
        )
        .await,
        Ok(4)
    );

    // Hostile records: out of order, too many, bad stream, absurd time. Refused, nothing stored.
    let before = l.app.count("data_points").await;
    assert!(
        push(&mut wa, "s1", vec![point(10, "t", 1.0), point(9, "t", 1.0)])
            .await
            .is_err()
    );
    assert!(
        push(
            &mut wa,
            "s1",
            (100..1101).map(|i| point(i, "t", 1.0)).collect()
        )
        .await
        .is_err()
    );
    assert!(push(&mut wa, "", vec![point(20, "t", 1.0)]).await.is_err());
    let mut late = point(30, "t", 1.0);
    late.time_ms = i64::MAX;
    assert!(push(&mut wa, "s1", vec![late]).await.is_err());
    assert_eq!(l.app.count("data_points").await, before);
    assert_eq!(before, 8 + 2 + 4);

    // The sync loop gets every point once, in order, whatever the page size.
    for limit in [1, 3, 1000] {
        let all = sync_all(&l.app, &acct.admin, limit).await;
        assert_eq!(all.len(), 14, "limit {limit}");
        let ids: Vec<i64> = all.iter().map(|p| p["txid"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let values: HashSet<String> = all
            .iter()
            .map(|p| format!("{}/{}", p["device_id"].as_str().unwrap(), p["value"]))
            .collect();
        assert_eq!(values.len(), 14);
    }
    // Points arriving after a sync finished come with the next call from its cursor.
    let page = l
        .app
        .ok(
            Method::GET,
            "/api/v1/data/sync?limit=1000",
            &acct.admin,
            None,
        )
        .await;
    let cursor = page["cursor"].as_str().unwrap().to_string();
    assert_eq!(push(&mut wa, "s1", vec![point(9, "t", 9.0)]).await, Ok(9));
    let next = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/data/sync?after={cursor}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(next["points"].as_array().unwrap().len(), 1, "{next}");
    assert_eq!(next["points"][0]["value"], 9.0);
    assert_eq!(next["more_data_available"], false);

    // Bad cursors and limits are refused.
    for q in [
        "after=12",
        "after=t-1",
        "after=tx",
        "limit=0",
        "limit=10001",
        "after=t99999999999999999999",
    ] {
        let (s, v) = l
            .app
            .get(&format!("/api/v1/data/sync?{q}"), &acct.admin)
            .await;
        assert!(s.is_client_error(), "{q}: {s} {v}");
    }

    // A user who sees one device gets its points only; the cursor passes the others.
    let (uid, user) = l.app.user(&acct, "mona", "user").await;
    l.app
        .grant(&acct, &[&uid], &[&b.id], "monitor", json!([]))
        .await;
    let mine = sync_all(&l.app, &user, 2).await;
    assert_eq!(mine.len(), 4);
    assert!(mine.iter().all(|p| p["device_id"] == b.id.as_str()));

    // Range query and status of one device.
    let range = l
        .app
        .ok(
            Method::GET,
            &format!(
                "/api/v1/devices/{}/data?tag=t&from_ms=1800000003000&to_ms=1800000006000",
                a.id
            ),
            &acct.admin,
            None,
        )
        .await;
    let times: Vec<i64> = range
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["time_ms"].as_i64().unwrap())
        .collect();
    // Stream s1 seq 3..=5 and stream s2 seq 3.. (none): times 3000..6000 exclusive.
    assert_eq!(
        times,
        vec![1_800_000_003_000, 1_800_000_004_000, 1_800_000_005_000]
    );
    let (s, _) = l
        .app
        .get(&format!("/api/v1/devices/{}/data/status", a.id), &user)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a device the user cannot see");
    let st = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/data/status", a.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(st["points"], 11);

    // Deleting up to a cursor (admins only) forgets exactly those points.
    let first = l
        .app
        .ok(Method::GET, "/api/v1/data/sync?limit=5", &acct.admin, None)
        .await;
    let up_to = first["cursor"].as_str().unwrap();
    let (s, _) = l
        .app
        .post("/api/v1/data/delete", &user, json!({"up_to": up_to}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let del = l
        .app
        .ok(
            Method::POST,
            "/api/v1/data/delete",
            &acct.admin,
            Some(json!({"up_to": up_to})),
        )
        .await;
    assert_eq!(del["deleted"], 5);
    assert_eq!(sync_all(&l.app, &acct.admin, 100).await.len(), 10);

    // A device without tags but with stored records: its edge (which may still
    // hold records of tags deleted since) hears an empty tag list, and pushes.
    drop(wa);
    let mut again = edge(&l, &a, true).await;
    let got =
        within::<ServerToEdge>(&mut again, 5, |m| matches!(m, ServerToEdge::Tags { .. })).await;
    assert!(
        matches!(&got, Some(ServerToEdge::Tags { tags }) if tags.is_empty()),
        "{got:?}"
    );
    // A device whose only tag was deleted before its edge pushed anything: the
    // edge may hold records of it, so it hears an (empty) tag list too.
    let e = enrolled(&l, &acct, "mill").await;
    let tags = format!("/api/v1/devices/{}/tags", e.id);
    l.app
        .ok(
            Method::PUT,
            &tags,
            &acct.admin,
            Some(tag("gone", "192.168.1.10", false)),
        )
        .await;
    let (s, _) = l.app.delete(&format!("{tags}/gone"), &acct.admin).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut we = edge(&l, &e, true).await;
    let got = within::<ServerToEdge>(&mut we, 5, |m| matches!(m, ServerToEdge::Tags { .. })).await;
    assert!(
        matches!(&got, Some(ServerToEdge::Tags { tags }) if tags.is_empty()),
        "{got:?}"
    );
    // A device that never had data hears nothing of the data services.
    let c = enrolled(&l, &acct, "lathe").await;
    let mut wc = edge(&l, &c, true).await;
    let got = within::<ServerToEdge>(&mut wc, 3, |m| matches!(m, ServerToEdge::Tags { .. })).await;
    assert!(got.is_none(), "{got:?}");
}

async fn alarms_are_raised_acknowledged_returned_and_ended(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    let alarm = |seq: u64, t: AlarmTransition, v: f64| Record {
        seq,
        time_ms: 1_800_000_000_000 + seq as i64,
        tag: TagName::try_from("temp").unwrap(),
        body: RecordBody::Alarm {
            transition: t,
            value: Some(v),
        },
    };
    l.app
        .ok(
            Method::PUT,
            "/api/v1/account/notifications",
            &acct.admin,
            Some(json!({"recipients": {"alarm_raised": ["shift@example.com"], "alarm_returned": ["shift@example.com"]}})),
        )
        .await;
    assert_eq!(
        push(&mut ws, "s", vec![alarm(1, AlarmTransition::Raised, 91.0)]).await,
        Ok(1)
    );
    // Raised again (an edge that restarted): still one alarm.
    assert_eq!(
        push(&mut ws, "s", vec![alarm(2, AlarmTransition::Raised, 92.0)]).await,
        Ok(2)
    );
    let open = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/alarms", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["state"], "alarm");
    assert_eq!(open[0]["raised_ms"], 1_800_000_000_001i64);
    assert_eq!(open[0]["raised_value"], 91.0);
    let id = open[0]["id"].as_str().unwrap().to_string();

    // Monitor-level users see it but may not acknowledge; restricted users may.
    let (mid, monitor) = l.app.user(&acct, "mona", "user").await;
    l.app
        .grant(&acct, &[&mid], &[&d.id], "monitor", json!([]))
        .await;
    let (rid, restricted) = l.app.user(&acct, "rita", "user").await;
    l.app
        .grant(
            &acct,
            &[&rid],
            &[&d.id],
            "restricted",
            json!([{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]),
        )
        .await;
    let seen = l
        .app
        .ok(Method::GET, "/api/v1/alarms", &monitor, None)
        .await;
    assert_eq!(seen.as_array().unwrap().len(), 1);
    let ack = format!("/api/v1/alarms/{id}/ack");
    let (s, _) = l.app.post(&ack, &monitor, json!({"comment": "x"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = l
        .app
        .post(&ack, &restricted, json!({"comment": "a\u{0}b"}))
        .await;
    assert!(s.is_client_error(), "{v}");
    let (s, v) = l.app.post(&ack, &restricted, json!(["x"])).await;
    assert!(s.is_client_error(), "{v}");
    // Two acknowledgements at once: one wins.
    let (r1, r2) = tokio::join!(
        l.app
            .post(&ack, &restricted, json!({"comment": "valve checked"})),
        l.app.post(&ack, &acct.admin, json!({"comment": "me too"})),
    );
    let codes = [r1.0, r2.0];
    assert!(
        codes.contains(&StatusCode::OK) && codes.contains(&StatusCode::CONFLICT),
        "{codes:?}"
    );
    let a = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/alarms", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(a[0]["state"], "acknowledged");

    // Back to normal: acknowledged and returned is ended.
    assert_eq!(
        push(
            &mut ws,
            "s",
            vec![alarm(3, AlarmTransition::Returned, 70.0)]
        )
        .await,
        Ok(3)
    );
    let open = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/alarms", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(open.as_array().unwrap().len(), 0, "{open}");
    let all = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/alarms?all=true", d.id),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(all[0]["state"], "ended");
    assert_eq!(all[0]["returned_value"], 70.0);

    // Returned first, then acknowledged: ended as well.
    assert_eq!(
        push(
            &mut ws,
            "s",
            vec![
                alarm(4, AlarmTransition::Raised, 95.0),
                alarm(5, AlarmTransition::Returned, 60.0)
            ]
        )
        .await,
        Ok(5)
    );
    let open = l
        .app
        .ok(Method::GET, "/api/v1/alarms", &acct.admin, None)
        .await;
    assert_eq!(open[0]["state"], "returned");
    let second = open[0]["id"].as_str().unwrap().to_string();
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/alarms/{second}/ack"),
            &acct.admin,
            Some(json!({"comment": ""})),
        )
        .await;
    let (s, _) = l
        .app
        .post(
            &format!("/api/v1/alarms/{second}/ack"),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let h = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/alarms/history", d.id),
            &monitor,
            None,
        )
        .await;
    let events: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.iter().filter(|e| **e == "raised").count(), 2, "{h}");
    assert_eq!(
        events.iter().filter(|e| **e == "returned").count(),
        2,
        "{h}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "acknowledged").count(),
        2,
        "{h}"
    );
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|e| e["comment"] == "valve checked" || e["comment"] == "me too")
    );
    let results: Vec<String> =
        sqlx::query_scalar("SELECT result FROM audit_log WHERE action = 'alarm.ack' ORDER BY seq")
            .fetch_all(&l.app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(
        results,
        ["denied", "ok", "ok"],
        "acknowledgements and the refused one are on the audit chain"
    );
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE kind = 'alarm.raised'")
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(n, 2, "each raised alarm told once");
    // … and queued for e-mail (delivered by the outbox worker; tests/outbox.rs).
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, data FROM outbox_events ORDER BY created_at, kind")
            .fetch_all(&l.app.state.store.pool)
            .await
            .unwrap();
    let raised = kinds.iter().filter(|(k, _)| k == "alarm_raised").count();
    let returned = kinds.iter().filter(|(k, _)| k == "alarm_returned").count();
    assert_eq!((raised, returned), (2, 2), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|(_, data)| data.contains(&d.id) && data.contains("\"temp\"")),
        "{kinds:?}"
    );
    // Another account sees none of it.
    let other = l.app.account("other").await;
    let (s, _) = l.app.post(&ack, &other.admin, json!({"comment": ""})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let none = l
        .app
        .ok(Method::GET, "/api/v1/alarms?all=true", &other.admin, None)
        .await;
    assert_eq!(none.as_array().unwrap().len(), 0);
}

/// Reads server-sent events from an in-process request until `want` accepts one.
async fn sse_until(body: &mut Body, secs: u64, want: impl Fn(&Value) -> bool) -> Option<Value> {
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            let frame = body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                buf.push_str(&String::from_utf8_lossy(&data));
            }
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                    && let Ok(v) = serde_json::from_str::<Value>(data)
                    && want(&v)
                {
                    return Some(v);
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn kpi_values_flow_only_while_someone_watches(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    l.app
        .ok(
            Method::PUT,
            &format!("/api/v1/devices/{}/tags", d.id),
            &acct.admin,
            Some(tag("speed", "192.168.1.10", true)),
        )
        .await;
    within::<ServerToEdge>(&mut ws, 5, |m| matches!(m, ServerToEdge::Tags { .. }))
        .await
        .expect("tags");
    // Nobody watches: no watch for the edge.
    let early = within::<ServerToEdge>(
        &mut ws,
        3,
        |m| matches!(m, ServerToEdge::Watch { for_ms } if *for_ms > 0),
    )
    .await;
    assert!(early.is_none(), "{early:?}");

    // A monitor-level user opens the stream: the edge is told to send.
    let (uid, user) = l.app.user(&acct, "mona", "user").await;
    l.app
        .grant(&acct, &[&uid], &[&d.id], "monitor", json!([]))
        .await;
    let req = Request::builder()
        .uri("/api/v1/kpis/stream")
        .header("authorization", format!("Bearer {user}"))
        .body(Body::empty())
        .unwrap();
    let res = l.app.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let watch = within::<ServerToEdge>(
        &mut ws,
        5,
        |m| matches!(m, ServerToEdge::Watch { for_ms } if *for_ms > 0),
    )
    .await;
    assert!(watch.is_some(), "the edge is told someone watches");

    // What the edge sends reaches the viewer; a tag that is no KPI is ignored.
    let live_value = |tag: &str, v: f64, t: i64| LiveValue {
        tag: TagName::try_from(tag).unwrap(),
        time_ms: t,
        value: Some(v),
        quality: Quality::Good,
    };
    send(
        &mut ws,
        &EdgeToServer::Live {
            values: vec![
                live_value("speed", 1450.0, 1_800_000_000_000),
                live_value("other", 1.0, 1_800_000_000_000),
            ],
        },
    )
    .await;
    let got = sse_until(&mut body, 5, |v| v["value"] == 1450.0)
        .await
        .expect("the viewer gets the value");
    assert_eq!(got["tag"], "speed");
    assert_eq!(got["unit"], "rpm");
    // (an edge sends about once a second)
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(
        &mut ws,
        &EdgeToServer::Live {
            values: vec![live_value("speed", 1460.0, 1_800_000_001_000)],
        },
    )
    .await;
    sse_until(&mut body, 5, |v| v["value"] == 1460.0)
        .await
        .expect("and the next one");
    // A burst of live values (a hostile or broken edge) is taken about once a
    // second: the first after a pause, not the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..10 {
        send(
            &mut ws,
            &EdgeToServer::Live {
                values: vec![live_value(
                    "speed",
                    2000.0 + f64::from(i),
                    1_800_000_002_000 + i64::from(i),
                )],
            },
        )
        .await;
    }
    sse_until(&mut body, 5, |v| v["value"] == 2000.0)
        .await
        .expect("the first of the burst");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored: f64 = sqlx::query_scalar("SELECT value FROM tag_live")
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2000.0, "the rest of the burst was dropped");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tag_live")
        .fetch_one(&l.app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "only KPI tags are stored");

    // The viewer leaves: within seconds the edge is told to stop.
    drop(body);
    let stop = within::<ServerToEdge>(&mut ws, 12, |m| {
        matches!(m, ServerToEdge::Watch { for_ms: 0 })
    })
    .await;
    assert!(stop.is_some(), "the edge is told to stop");

    // Another account cannot watch this device.
    let other = l.app.account("other").await;
    let (s, _) = l
        .app
        .get(
            &format!("/api/v1/kpis/stream?device={}", d.id),
            &other.admin,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = l
        .app
        .get(&format!("/api/v1/devices/{}/kpis", d.id), &other.admin)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let k = l
        .app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{}/kpis", d.id),
            &user,
            None,
        )
        .await;
    assert_eq!(k[0]["value"], 2000.0);
}

async fn retention_purges_points_older_than_the_account_keeps(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    let now_ms = l.app.state.now() * 1000;
    let at = |seq: u64, age_days: i64| {
        let mut p = point(seq, "t", seq as f64);
        p.time_ms = now_ms - age_days * 86_400_000;
        p
    };
    // The newest an hour ahead of the server's clock (an edge's clock may be).
    let mut ahead = at(4, 0);
    ahead.time_ms += 3_600_000;
    assert_eq!(
        push(&mut ws, "s", vec![at(1, 12), at(2, 9), at(3, 1), ahead]).await,
        Ok(4)
    );
    // Default: 10 days.
    assert_eq!(
        drawbridge_server::data::purge(&l.app.state).await.unwrap(),
        1
    );
    // The account keeps 5 days from now on.
    l.app
        .ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": {"data_retention_days": 5}})),
        )
        .await;
    assert_eq!(
        drawbridge_server::data::purge(&l.app.state).await.unwrap(),
        1
    );
    // Two days later the next one goes too.
    l.app.clock().advance(2 * 86_400);
    assert_eq!(
        drawbridge_server::data::purge(&l.app.state).await.unwrap(),
        0
    );
    l.app.clock().advance(3 * 86_400);
    assert_eq!(
        drawbridge_server::data::purge(&l.app.state).await.unwrap(),
        1
    );
    assert_eq!(l.app.count("data_points").await, 1);
    let (s, _) = l
        .app
        .patch(
            "/api/v1/account",
            &acct.admin,
            json!({"settings": {"data_retention_days": 91}}),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
}

/// sqlx's Any driver once bound an absent number so that PostgreSQL refused
/// the same statement's next execution with a value, closing the edge's
/// channel: bad-quality points, alarms without a value and live values
/// without one, alternating with present ones, must all be taken.
async fn absent_and_present_values_alternate_without_breaking_the_channel(app: TestApp) {
    let l = live(app).await;
    let acct = l.app.account("acme").await;
    let d = enrolled(&l, &acct, "press").await;
    let mut ws = edge(&l, &d, true).await;
    l.app
        .ok(
            Method::PUT,
            &format!("/api/v1/devices/{}/tags", d.id),
            &acct.admin,
            Some(tag("speed", "192.168.1.10", true)),
        )
        .await;
    within::<ServerToEdge>(&mut ws, 5, |m| matches!(m, ServerToEdge::Tags { .. }))
        .await
        .expect("tags");
    let mut seq = 0;
    for round in 0..12u32 {
        let value = (round % 2 == 0).then_some(f64::from(round));
        let mut next = |body: RecordBody| {
            seq += 1;
            Record {
                seq,
                time_ms: 1_800_000_000_000 + seq as i64,
                tag: TagName::try_from("speed").unwrap(),
                body,
            }
        };
        let quality = if value.is_some() {
            Quality::Good
        } else {
            Quality::Bad {
                reason: drawbridge_proto::data::BadReason::Timeout,
            }
        };
        let transition = if round % 4 < 2 {
            AlarmTransition::Raised
        } else {
            AlarmTransition::Returned
        };
        let records = vec![
            next(RecordBody::Point { value, quality }),
            next(RecordBody::Alarm { transition, value }),
        ];
        assert_eq!(push(&mut ws, "s", records).await, Ok(seq), "round {round}");
        send(
            &mut ws,
            &EdgeToServer::Live {
                values: vec![LiveValue {
                    tag: TagName::try_from("speed").unwrap(),
                    time_ms: 1_800_000_000_000 + i64::from(round),
                    value,
                    quality,
                }],
            },
        )
        .await;
    }
    // Still connected and answering.
    assert_eq!(
        push(&mut ws, "s", vec![point(1000, "speed", 1.0)]).await,
        Ok(1000)
    );
    let points = sync_all(&l.app, &acct.admin, 1000).await;
    assert_eq!(points.len(), 13);
    assert_eq!(points.iter().filter(|p| p["value"].is_null()).count(), 6);
    assert!(
        points
            .iter()
            .filter(|p| p["value"].is_null())
            .all(|p| p["quality"]["quality"] == "bad")
    );
}
