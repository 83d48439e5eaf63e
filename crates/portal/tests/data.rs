//! The data services' pages over real HTTPS, on SQLite and PostgreSQL: the tag
//! form (every field, a refused form changes nothing), acknowledging an alarm
//! with a comment, CSV/JSON export (formula cells neutralised, paged past the
//! API's page size), live KPI tiles and their JSON route, and what a
//! monitor-level user sees and may not do (the controls are missing and a
//! forged form is refused by the API).
//!
//! Data goes in through the server library, as the edge channel stores it
//! (`data::ingest::records`, `data::live::store`).

use crate::common;
use crate::data_harness;

use common::{Browser, TestServer, between};
use drawbridge_proto::TagName;
use drawbridge_proto::data::{
    AlarmRule, AlarmTransition, BadReason, LiveValue, LogMode, ModbusFunction, Quality, Record,
    ValueType, WordOrder,
};
use drawbridge_proto::mailbox::AlarmState;
use serde_json::{Value, json};

store_tests!(
    tags_are_added_edited_and_deleted_and_a_refused_form_changes_nothing,
    an_alarm_is_acknowledged_with_a_comment_and_kept_in_the_history,
    export_gives_the_range_as_csv_with_formulas_neutralised_and_as_json,
    a_monitor_user_sees_the_data_but_no_controls_and_forged_forms_are_refused,
    kpi_tiles_show_the_latest_value_and_polling_keeps_the_watch,
);

use data_harness::*;

async fn tags_are_added_edited_and_deleted_and_a_refused_form_changes_nothing(server: TestServer) {
    let mut p = plant(&server).await;
    let page = p.admin.get(&p.page()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("id=\"tag-form-new\""),
        "admins get the form"
    );
    let csrf = page.csrf();
    let post = format!("/portal/devices/{}/tags", p.device);

    // A tag with every field.
    let r = p
        .admin
        .post(
            &post,
            &pairs(&tag_form(&csrf, "oven.temp", "192.168.1.10", "°C")),
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with(&p.page()), "{}", r.location());
    let page = p.admin.follow(&r).await;
    assert!(
        flash(&page.body).contains("Tag oven.temp was saved"),
        "{}",
        flash(&page.body)
    );
    let tags = stored_tags(&server, &p.device).await;
    assert_eq!(tags.len(), 1);
    let t = &tags[0];
    assert_eq!(t.name.as_str(), "oven.temp");
    assert_eq!(t.description, "Oven zone 1");
    assert_eq!(t.source.host.to_string(), "192.168.1.10");
    assert_eq!(
        (t.source.port, t.source.unit_id, t.source.address),
        (1502, 3, 100)
    );
    assert_eq!(t.source.function, ModbusFunction::InputRegisters);
    assert_eq!(
        (t.value_type, t.word_order),
        (ValueType::F32, WordOrder::LowFirst)
    );
    assert_eq!(
        (t.scale, t.offset, t.unit.as_str(), t.poll_ms),
        (0.1, -40.0, "°C", 500)
    );
    assert_eq!(t.log, LogMode::OnChange { deadband: 0.5 });
    assert!(t.kpi);
    assert_eq!(
        t.alarm,
        Some(AlarmRule::Limits {
            high: Some(240.0),
            low: None,
            deadband: 2.0,
            min_duration_ms: 5000
        })
    );
    // The page shows it in words, and its edit form filled in.
    assert!(
        page.body
            .contains("192.168.1.10:1502 unit 3 · input register 100"),
        "{}",
        page.body
    );
    assert!(page.body.contains("f32 (low word first)"));
    assert!(page.body.contains("above 240, deadband 2, for 5000 ms"));
    assert!(
        !page.body.contains("id=\"tag-form-edit-"),
        "edit forms only on request"
    );
    let link = format!(
        "href=\"/portal/devices/{}?edit=oven.temp#tag-edit\"",
        p.device
    );
    assert!(page.body.contains(&link), "{}", page.body);
    let page = p.admin.get(&format!("{}?edit=oven.temp", p.page())).await;
    let edit = between(&page.body, "id=\"tag-form-edit-oven.temp\"", "</form>");
    assert!(edit.contains("name=\"host\" required maxlength=\"15\" value=\"192.168.1.10\""));
    assert!(edit.contains("<option value=\"input_registers\" selected>"));
    assert!(edit.contains("name=\"kpi\" id=\"tag-edit-oven.temp-kpi\" checked"));

    // An edit to a host outside the device's LAN: the API's message, nothing
    // changed, back at the tag's edit form.
    let mut outside = tag_form(&csrf, "oven.temp", "10.9.9.9", "K");
    outside.push(("editing", "1".into()));
    let r = p.admin.post(&post, &pairs(&outside)).await;
    assert!(
        r.location().ends_with("?edit=oven.temp#tag-edit"),
        "{}",
        r.location()
    );
    let page = p.admin.follow(&r).await;
    assert!(page.body.contains("id=\"tag-form-edit-oven.temp\""));
    assert!(page.body.contains("class=\"flash error\""), "{}", page.body);
    assert!(
        flash(&page.body).contains("not in the device"),
        "{}",
        flash(&page.body)
    );
    assert_eq!(
        stored_tags(&server, &p.device).await,
        tags,
        "nothing changed"
    );
    // A new tag with that host is not created.
    let r = p
        .admin
        .post(&post, &pairs(&tag_form(&csrf, "outside", "10.9.9.9", "K")))
        .await;
    assert!(flash(&p.admin.follow(&r).await.body).contains("not in the device"));
    // Refused by the tag's own rules (a poll period below 100 ms), and a field
    // that is no number at all (the portal's own message): nothing changes.
    let mut fast = tag_form(&csrf, "oven.temp", "192.168.1.10", "K");
    fast.iter_mut().find(|(k, _)| *k == "poll_ms").unwrap().1 = "10".into();
    let r = p.admin.post(&post, &pairs(&fast)).await;
    assert!(flash(&p.admin.follow(&r).await.body).contains("poll_ms"));
    let mut nan = tag_form(&csrf, "oven.temp", "192.168.1.10", "K");
    nan.iter_mut().find(|(k, _)| *k == "scale").unwrap().1 = "ten".into();
    let r = p.admin.post(&post, &pairs(&nan)).await;
    assert!(flash(&p.admin.follow(&r).await.body).contains("Scale"));
    assert_eq!(
        stored_tags(&server, &p.device).await,
        tags,
        "nothing changed"
    );

    // A good edit: another unit, a state alarm on a bool coil, logged every minute.
    let mut door = tag_form(&csrf, "oven.temp", "192.168.1.11", "");
    for (k, v) in [
        ("function", "coils"),
        ("value_type", "bool"),
        ("scale", "1"),
        ("offset", "0"),
        ("log_mode", "every"),
        ("log_period_ms", "60000"),
        ("kpi", ""),
        ("alarm_kind", "state"),
        ("alarm_when", "false"),
        ("alarm_min_ms", "0"),
    ] {
        door.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v.into();
    }
    let r = p.admin.post(&post, &pairs(&door)).await;
    assert!(flash(&p.admin.follow(&r).await.body).contains("was saved"));
    let t = &stored_tags(&server, &p.device).await[0];
    assert_eq!(t.source.function, ModbusFunction::Coils);
    assert_eq!(t.log, LogMode::Every { period_ms: 60000 });
    assert_eq!(
        t.alarm,
        Some(AlarmRule::State {
            alarm_when: false,
            min_duration_ms: 0
        })
    );
    assert!(!t.kpi);

    // Delete.
    let r = p
        .admin
        .post(
            &format!("/portal/devices/{}/tags/oven.temp/delete", p.device),
            &[("csrf", &csrf)],
        )
        .await;
    let page = p.admin.follow(&r).await;
    assert!(flash(&page.body).contains("was deleted"));
    assert!(stored_tags(&server, &p.device).await.is_empty());
    assert!(page.body.contains("No tags"));
    let actions: Vec<String> = server
        .audit_actions()
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    for a in ["tag.create", "tag.update", "tag.delete"] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
}

async fn an_alarm_is_acknowledged_with_a_comment_and_kept_in_the_history(server: TestServer) {
    let mut p = plant(&server).await;
    ingest(
        &server,
        &p,
        "s1",
        vec![alarm(1, T0, "temp", AlarmTransition::Raised, 251.5)],
    )
    .await;
    let id = alarms_of(&server, &p).await[0].id.clone();
    // fred (full grant) sees the alarm with its form, on the device page and the alarms page.
    let page = p.fred.get(&p.page()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let row = between(&page.body, &format!("id=\"alarm-{id}\""), "</tr>");
    assert!(
        row.contains("<span class=\"state alarm-state alarm\">alarm</span>"),
        "{row}"
    );
    assert!(
        row.contains("2027-01-15 08:00:00 UTC") && row.contains("at 251.5"),
        "{row}"
    );
    assert!(
        row.contains(&format!("action=\"/portal/alarms/{id}/ack\"")),
        "{row}"
    );
    let list = p.fred.get("/portal/alarms").await;
    assert!(
        list.body
            .contains(&format!("action=\"/portal/alarms/{id}/ack\""))
    );
    assert!(
        list.body.contains(">Press</a>"),
        "the alarms page names the device"
    );

    let back = format!("{}#data-alarms", p.page());
    let comment = "Cooling valve 3 was closed; opened it.";
    let r = p
        .fred
        .post(
            &format!("/portal/alarms/{id}/ack"),
            &[
                ("csrf", &page.csrf()),
                ("back", &back),
                ("comment", comment),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), back);
    let page = p.fred.follow(&r).await;
    assert!(
        flash(&page.body).contains("is acknowledged"),
        "{}",
        flash(&page.body)
    );
    let a = &alarms_of(&server, &p).await[0];
    assert_eq!(a.state, AlarmState::Acknowledged);
    assert_eq!(a.ack_comment.as_deref(), Some(comment));
    assert_eq!(a.acked_by.as_deref(), Some("fred"));
    let row = between(&page.body, &format!("id=\"alarm-{id}\""), "</tr>");
    assert!(!row.contains("ack-form"), "acknowledged once: no form");
    assert!(
        row.contains("Cooling valve 3 was closed; opened it."),
        "{row}"
    );
    let history = between(&page.body, "id=\"alarm-history\"", "</table>");
    assert!(
        history.contains("acknowledged") && history.contains("fred"),
        "{history}"
    );
    assert!(history.contains("Cooling valve 3"), "{history}");

    // A second acknowledgement (a stale page): the API's conflict, shown.
    let r = p
        .fred
        .post(
            &format!("/portal/alarms/{id}/ack"),
            &[
                ("csrf", &page.csrf()),
                ("back", "/portal/alarms"),
                ("comment", "again"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/portal/alarms");
    let again = p.fred.follow(&r).await;
    assert!(
        again.body.contains("class=\"flash error\""),
        "{}",
        again.body
    );
    assert_eq!(
        alarms_of(&server, &p).await[0].ack_comment.as_deref(),
        Some(comment)
    );
    // An outside "back" goes to the alarms page instead.
    let r = p
        .fred
        .post(
            &format!("/portal/alarms/{id}/ack"),
            &[
                ("csrf", &page.csrf()),
                ("back", "https://evil.example/"),
                ("comment", ""),
            ],
        )
        .await;
    assert_eq!(r.location(), "/portal/alarms");

    // Back to normal: ended, gone from the open alarms, listed under all.
    ingest(
        &server,
        &p,
        "s1",
        vec![alarm(
            2,
            T0 + 60_000,
            "temp",
            AlarmTransition::Returned,
            230.0,
        )],
    )
    .await;
    assert_eq!(alarms_of(&server, &p).await[0].state, AlarmState::Ended);
    let open = p.fred.get("/portal/alarms").await;
    assert!(!open.body.contains(&format!("id=\"alarm-{id}\"")));
    let all = p.fred.get("/portal/alarms?all=true").await;
    let row = between(&all.body, &format!("id=\"alarm-{id}\""), "</tr>");
    assert!(row.contains(">ended<") && row.contains("at 230"), "{row}");
    let actions = server.audit_actions().await;
    assert!(
        actions.iter().any(|a| a.0 == "alarm.ack" && a.1 == "ok"),
        "{actions:?}"
    );
}

async fn export_gives_the_range_as_csv_with_formulas_neutralised_and_as_json(server: TestServer) {
    let mut p = plant(&server).await;
    let bad = Quality::Bad {
        reason: BadReason::Timeout,
    };
    ingest(
        &server,
        &p,
        "s1",
        vec![
            point(1, T0, "speed", Some(1.5), Quality::Good),
            point(2, T0 + 1000, "speed", Some(-3.25), Quality::Good),
            point(3, T0 + 2000, "speed", Some(2.0), Quality::Good),
            point(4, T0 + 3000, "speed", None, bad),
            point(5, T0 + 4000, "speed", Some(7.0), Quality::Good),
            point(6, T0 + 1000, "-2-3", Some(5.0), Quality::Good),
        ],
    )
    .await;
    let page = p.admin.get(&p.page()).await;
    let form = between(&page.body, "id=\"export-form\"", "</form>");
    for t in ["speed", "-2-3"] {
        assert!(form.contains(&format!("<option value=\"{t}\">")), "{form}");
    }
    assert!(page.body.contains("Times are read as UTC"));
    let status = between(&page.body, "id=\"data-status-summary\"", "</dl>");
    assert!(status.contains("<dd>6</dd>"), "{status}");
    assert!(
        status.contains("2027-01-15 08:00:00 UTC") && status.contains("2027-01-15 08:00:04 UTC")
    );

    let path = |q: &str| format!("/portal/devices/{}/export?{q}", p.device);
    let csv = p
        .admin
        .get(&path(
            "tag=speed&from=2027-01-15T08%3A00%3A01&to=2027-01-15T08%3A00%3A04&format=csv",
        ))
        .await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(csv.header("content-type").starts_with("text/csv"));
    assert_eq!(
        csv.header("content-disposition"),
        "attachment; filename=\"drawbridge-Press-speed.csv\""
    );
    assert_eq!(
        csv.body,
        "time,tag,value,quality\r\n\
         2027-01-15T08:00:01.000Z,speed,-3.25,good\r\n\
         2027-01-15T08:00:02.000Z,speed,2,good\r\n\
         2027-01-15T08:00:03.000Z,speed,,timeout\r\n"
    );
    // A tag name a spreadsheet would read as a formula is neutralised.
    let csv = p.admin.get(&path("tag=-2-3&format=csv")).await;
    assert_eq!(
        csv.body,
        "time,tag,value,quality\r\n2027-01-15T08:00:01.000Z,'-2-3,5,good\r\n"
    );
    // JSON, the whole range.
    let js = p.admin.get(&path("tag=speed&format=json")).await;
    assert!(
        js.header("content-disposition")
            .contains("drawbridge-Press-speed.json")
    );
    let doc: Value = serde_json::from_str(&js.body).expect("JSON");
    assert_eq!(doc["device"], "Press");
    let pts = doc["points"].as_array().unwrap();
    assert_eq!(pts.len(), 5);
    assert_eq!(pts[3]["value"], Value::Null);
    assert_eq!(pts[3]["quality"], "timeout");
    assert_eq!(pts[1]["time"], "2027-01-15T08:00:01.000Z");
    // A range that ends before it starts, and a date that is none: a message, no file.
    for q in [
        "tag=speed&from=2027-01-15T08%3A00%3A04&to=2027-01-15T08%3A00%3A01",
        "tag=speed&from=soon",
        "tag=",
    ] {
        let r = p.admin.get(&path(q)).await;
        assert_eq!(r.status, 303, "{q}");
        assert!(r.location().ends_with("#data-export"));
        assert!(
            p.admin
                .follow(&r)
                .await
                .body
                .contains("class=\"flash error\""),
            "{q}"
        );
    }

    // More points than one API page, three per millisecond: every one once, in order.
    let n = 10_500u64;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            point(
                100 + i,
                T0 + 10_000_000 + (i / 3) as i64,
                "flow",
                Some(i as f64),
                Quality::Good,
            )
        })
        .collect();
    for chunk in records.chunks(1000) {
        ingest(&server, &p, "s1", chunk.to_vec()).await;
    }
    let csv = p.admin.get(&path("tag=flow&format=csv")).await;
    assert_eq!(csv.status, 200);
    let values: Vec<u64> = csv
        .body
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(values, (0..n).collect::<Vec<_>>());
}

async fn a_monitor_user_sees_the_data_but_no_controls_and_forged_forms_are_refused(
    server: TestServer,
) {
    use reqwest::Method;
    let mut p = plant(&server).await;
    let tag = json!({
        "name": "speed", "source": {"host": "192.168.1.10", "function": "holding_registers", "address": 3},
        "value_type": "u16", "unit": "rpm", "kpi": true, "log": {"mode": "every", "period_ms": 1000},
    });
    let (s, _) = api(
        &p.admin,
        Method::PUT,
        &format!("/api/v1/devices/{}/tags", p.device),
        Some(tag),
    )
    .await;
    assert_eq!(s, 201);
    ingest(
        &server,
        &p,
        "s1",
        vec![
            point(1, T0, "speed", Some(1480.0), Quality::Good),
            alarm(2, T0 + 500, "temp", AlarmTransition::Raised, 99.0),
        ],
    )
    .await;
    let id = alarms_of(&server, &p).await[0].id.clone();

    // mona (monitor): KPI tiles, alarms, history, status, export; no controls.
    let page = p.mona.get(&p.page()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("data-kpi=\"{}/speed\"", p.device))
    );
    assert!(page.body.contains(&format!("id=\"alarm-{id}\"")));
    assert!(page.body.contains("id=\"alarm-history\""));
    assert!(page.body.contains("id=\"data-status-summary\""));
    assert!(page.body.contains("id=\"export-form\""));
    for control in ["ack-form", "tag-form-", "tag-delete", "/tags\""] {
        assert!(
            !page.body.contains(control),
            "no {control} for a monitor user"
        );
    }
    let alarms = p.mona.get("/portal/alarms").await;
    assert!(alarms.body.contains(&format!("id=\"alarm-{id}\"")));
    assert!(!alarms.body.contains("ack-form"));
    let kpis = p.mona.get("/portal/kpis").await;
    assert!(
        kpis.body
            .contains(&format!("data-kpi=\"{}/speed\"", p.device))
    );
    let csv = p
        .mona
        .get(&format!(
            "/portal/devices/{}/export?tag=speed&format=csv",
            p.device
        ))
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.contains(",speed,1480,good"), "{}", csv.body);

    // Forged forms (with her own valid CSRF token): the API refuses, nothing changes.
    let csrf = page.csrf();
    let r = p
        .mona
        .post(
            &format!("/portal/alarms/{id}/ack"),
            &[("csrf", &csrf), ("back", &p.page()), ("comment", "me too")],
        )
        .await;
    let back = p.mona.follow(&r).await;
    assert!(back.body.contains("class=\"flash error\""), "{}", back.body);
    assert_eq!(alarms_of(&server, &p).await[0].state, AlarmState::Alarm);
    let before = stored_tags(&server, &p.device).await;
    let r = p
        .mona
        .post(
            &format!("/portal/devices/{}/tags", p.device),
            &pairs(&tag_form(&csrf, "sneaky", "192.168.1.10", "")),
        )
        .await;
    assert!(
        p.mona
            .follow(&r)
            .await
            .body
            .contains("class=\"flash error\"")
    );
    let r = p
        .mona
        .post(
            &format!("/portal/devices/{}/tags/speed/delete", p.device),
            &[("csrf", &csrf)],
        )
        .await;
    assert!(
        p.mona
            .follow(&r)
            .await
            .body
            .contains("class=\"flash error\"")
    );
    assert_eq!(stored_tags(&server, &p.device).await, before);
    let denied: Vec<String> = server
        .audit_actions()
        .await
        .into_iter()
        .filter(|a| a.1 == "denied")
        .map(|a| a.0)
        .collect();
    for a in ["alarm.ack", "tag.put", "tag.delete"] {
        assert!(denied.iter().any(|d| d == a), "{a} denied in {denied:?}");
    }

    // What each may do, as the API tells the portal.
    assert_eq!(
        access(&p.mona, &p.device).await,
        json!({"level": "monitor", "can_tunnel": false, "can_manage": false})
    );
    assert_eq!(
        access(&p.fred, &p.device).await,
        json!({"level": "full", "can_tunnel": true, "can_manage": false})
    );
    assert_eq!(
        access(&p.admin, &p.device).await,
        json!({"level": "full", "can_tunnel": true, "can_manage": true})
    );

    // fred (full grant) acknowledges but edits no tags.
    let page = p.fred.get(&p.page()).await;
    assert!(page.body.contains("ack-form"));
    assert!(!page.body.contains("tag-form-") && !page.body.contains("tag-delete"));
}

async fn kpi_tiles_show_the_latest_value_and_polling_keeps_the_watch(server: TestServer) {
    let mut p = plant(&server).await;
    let page = p.admin.get(&p.page()).await;
    let mut kpi = tag_form(&page.csrf(), "speed", "192.168.1.10", "rpm");
    kpi.iter_mut().find(|(k, _)| *k == "value_type").unwrap().1 = "u16".into();
    let r = p
        .admin
        .post(&format!("/portal/devices/{}/tags", p.device), &pairs(&kpi))
        .await;
    assert!(flash(&p.admin.follow(&r).await.body).contains("was saved"));
    let live = |value: f64| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        vec![LiveValue {
            tag: TagName::try_from("speed").unwrap(),
            time_ms: now,
            value: Some(value),
            quality: Quality::Good,
        }]
    };
    drawbridge_server::data::live::store(
        &server.state,
        &p.device,
        &["speed".into()],
        &live(1480.0),
    )
    .await
    .unwrap();

    // The device page: the tile, the script file, and the CSP that allows it.
    let page = p.mona.get(&p.page()).await;
    let tile = between(
        &page.body,
        &format!("data-kpi=\"{}/speed\"", p.device),
        "</div>\n</div>",
    );
    assert!(
        tile.contains("<span class=\"kpi-value\">1480</span>"),
        "{tile}"
    );
    assert!(tile.contains("rpm") && tile.contains("good"), "{tile}");
    assert!(
        page.body
            .contains("<script src=\"/portal/assets/kpi.js\" defer></script>")
    );
    assert!(!page.body.contains("<script>"), "no inline script");
    let csp = page.header("content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    // Other pages stay without script.
    let dash = p.mona.get("/portal/").await;
    assert!(
        !dash
            .header("content-security-policy")
            .contains("script-src")
    );
    let js = p.mona.get("/portal/assets/kpi.js").await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert!(js.body.contains("textContent") && !js.body.contains("innerHTML"));

    // The live route: the latest value, and each poll keeps the watch.
    let url = between(&page.body, "data-kpi-live=\"", "\"").replace("&amp;", "&");
    assert_eq!(url, format!("/portal/kpis/live?device={}", p.device));
    let watched_by = |state: &drawbridge_server::state::AppState| {
        let state = state.clone();
        let device = p.device.clone();
        async move {
            drawbridge_server::data::live::watched(&state, &device)
                .await
                .unwrap()
        }
    };
    assert!(
        watched_by(&server.state).await,
        "viewing the page watches the device"
    );
    let got = p.mona.get(&url).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.header("content-type").starts_with("application/json"));
    let v: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(v["tiles"][0]["value"], "1480");
    assert_eq!(v["tiles"][0]["key"], format!("{}/speed", p.device));
    drawbridge_server::data::live::store(
        &server.state,
        &p.device,
        &["speed".into()],
        &live(1493.5),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&p.mona.get(&url).await.body).unwrap();
    assert_eq!(v["tiles"][0]["value"], "1493.5");
    assert_eq!(v["tiles"][0]["quality"], "good");
    // Six seconds after the last poll nobody watches any more.
    server.state.clock.advance(7);
    assert!(
        !watched_by(&server.state).await,
        "the watch ended with the polls"
    );
    p.mona.get(&url).await;
    assert!(watched_by(&server.state).await, "a poll watches again");
    // Without a login: 401, no values.
    let anon = Browser::new(&server).get(&url).await;
    assert_eq!(anon.status, 401);
    assert!(!anon.body.contains("1493"));

    // The overview.
    let kpis = p.mona.get("/portal/kpis").await;
    assert!(kpis.body.contains("id=\"nav-kpis\""));
    assert!(kpis.body.contains(&format!("id=\"kpis-{}\"", p.device)));
    assert!(
        kpis.body
            .contains("<span class=\"kpi-value\">1493.5</span>")
    );
    assert!(
        kpis.header("content-security-policy")
            .contains("script-src 'self'")
    );
}
