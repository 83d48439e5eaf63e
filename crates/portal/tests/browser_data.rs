//! The data services' pages in a real browser (Debian's Chromium over
//! chromedriver): a KPI tile changes by itself while the device page and the
//! KPI overview are open (the portal's own script under its CSP, polling the
//! portal), an alarm is acknowledged with a comment from the device page, an
//! admin adds a tag with the form, a CSV export downloads, and a
//! monitor-level user gets the tiles without any control.
//!
//! Skipped with a visible line without Chromium, unless
//! `DRAWBRIDGE_REQUIRE_BROWSER=1`. With `DRAWBRIDGE_SCREENSHOTS=1` it writes
//! its pages to `docs/screenshots/`.

use crate::browser_ui;
use crate::common;
use crate::data_harness;

use browser_ui::{Ui, downloaded};
use common::TestServer;
use data_harness::{Plant, alarms_of, api, ingest, plant, point};
use drawbridge_proto::TagName;
use drawbridge_proto::data::{AlarmTransition, LiveValue, Quality, Record, RecordBody};
use drawbridge_testnet::browser::{Driver, chrome_caps, have_browser, spki_hash};
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpi_tiles_change_live_and_an_alarm_is_acknowledged_in_the_browser() {
    if !have_browser("kpi_tiles_change_live_and_an_alarm_is_acknowledged_in_the_browser") {
        return;
    }
    let server = TestServer::start().await;
    let p = plant(&server).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let downloads = tempfile::tempdir().expect("download dir");
    let driver = Driver::start();
    let spki = spki_hash(&server.cert_pem);
    let caps = chrome_caps(profile.path(), &spki, Some(downloads.path()));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("WebDriver session");
    let shots = (std::env::var("DRAWBRIDGE_SCREENSHOTS").as_deref() == Ok("1")).then(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        dir
    });
    let ui = Ui {
        c,
        base: server.url.clone(),
        shots,
    };
    story(&ui, &server, &p, downloads.path()).await;
    let _ = ui.c.clone().close().await;
    drop(driver);
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The edge's latest values, as the edge channel stores them.
async fn live(server: &TestServer, p: &Plant, values: &[(&str, f64)]) {
    let values: Vec<LiveValue> = values
        .iter()
        .map(|(tag, v)| LiveValue {
            tag: TagName::try_from(*tag).unwrap(),
            time_ms: now_ms(),
            value: Some(*v),
            quality: Quality::Good,
        })
        .collect();
    drawbridge_server::data::live::store(
        &server.state,
        &p.device,
        &["speed".into(), "oven.temp".into()],
        &values,
    )
    .await
    .expect("live values stored");
}

fn raised(seq: u64, time_ms: i64, tag: &str, value: f64) -> Record {
    Record {
        seq,
        time_ms,
        tag: TagName::try_from(tag).unwrap(),
        body: RecordBody::Alarm {
            transition: AlarmTransition::Raised,
            value: Some(value),
        },
    }
}

async fn story(ui: &Ui, server: &TestServer, p: &Plant, downloads: &Path) {
    use reqwest::Method;
    // ---- the device's tags (the API), an hour of history, two alarms, live values.
    for tag in [
        json!({"name": "speed", "description": "Main drive", "source": {"host": "192.168.1.10", "function": "holding_registers", "address": 3},
               "value_type": "u16", "unit": "rpm", "kpi": true, "log": {"mode": "every", "period_ms": 60000}}),
        json!({"name": "oven.temp", "description": "Oven zone 1", "source": {"host": "192.168.1.10", "function": "input_registers", "address": 100},
               "value_type": "f32", "unit": "°C", "kpi": true, "log": {"mode": "on_change", "deadband": 0.5},
               "alarm": {"kind": "limits", "high": 80.0, "deadband": 2.0, "min_duration_ms": 5000}}),
        json!({"name": "door.open", "source": {"host": "192.168.1.10", "function": "coils", "address": 7},
               "value_type": "bool", "alarm": {"kind": "state", "alarm_when": true}}),
    ] {
        let (s, body) = api(
            &p.admin,
            Method::PUT,
            &format!("/api/v1/devices/{}/tags", p.device),
            Some(tag),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    let start = now_ms() - 3_600_000;
    let mut records: Vec<Record> = (0..60u64)
        .map(|i| {
            let t = start + i as i64 * 60_000;
            point(
                i + 1,
                t,
                "speed",
                Some(1450.0 + (i % 7) as f64 * 5.0),
                Quality::Good,
            )
        })
        .collect();
    records.push(raised(61, now_ms() - 120_000, "oven.temp", 86.2));
    records.push(raised(62, now_ms() - 60_000, "door.open", 1.0));
    ingest(server, p, "s1", records).await;
    let alarms = alarms_of(server, p).await;
    let temp_alarm = alarms
        .iter()
        .find(|a| a.tag == "oven.temp")
        .unwrap()
        .id
        .clone();
    live(server, p, &[("speed", 1480.0), ("oven.temp", 72.4)]).await;
    let speed = format!("[data-kpi='{}/speed'] .kpi-value", p.device);

    // ---- fred (full grant): the tiles move by themselves while the page is open.
    ui.login("Plant", "fred").await;
    ui.find("#me-link").await;
    ui.go(&p.page()).await;
    ui.wait_text(&speed, "1480", 10).await;
    live(server, p, &[("speed", 1523.0), ("oven.temp", 74.9)]).await;
    ui.wait_text(&speed, "1523", 10).await;
    assert!(
        ui.text("#kpi-live-status").await.starts_with("Live"),
        "the script runs under the page's CSP"
    );
    ui.scroll_to("#data").await;
    ui.shot("device-data").await;

    // He acknowledges the oven alarm with a comment.
    let row = format!("#alarm-{temp_alarm}");
    ui.fill(
        &format!("{row} textarea[name=comment]"),
        "Oven door was left open after cleaning; closed it.",
    )
    .await;
    ui.submit(&format!("{row} button.ack-button")).await;
    assert!(
        ui.flash().await.contains("is acknowledged"),
        "{}",
        ui.source().await
    );
    assert_eq!(
        ui.text(&format!("{row} .alarm-state")).await,
        "acknowledged"
    );
    assert!(
        ui.text("#alarm-history")
            .await
            .contains("Oven door was left open")
    );
    let a = alarms_of(server, p)
        .await
        .into_iter()
        .find(|a| a.id == temp_alarm)
        .unwrap();
    assert_eq!(a.acked_by.as_deref(), Some("fred"));

    // The KPI overview is live too.
    ui.submit("#nav-kpis").await;
    ui.wait_text(&speed, "1523", 10).await;
    live(server, p, &[("speed", 1610.0), ("oven.temp", 75.3)]).await;
    ui.wait_text(&speed, "1610", 10).await;
    ui.shot("kpis").await;
    ui.go("/portal/alarms").await;
    ui.find(".ack-form").await;
    ui.shot("alarms").await;

    // A CSV export of the speed history, from the device page's form.
    ui.go(&p.page()).await;
    ui.select("#export-tag", "speed").await;
    ui.click("#export-submit").await;
    let csv = downloaded(downloads, "drawbridge-Press-speed.csv").await;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("time,tag,value,quality"));
    assert_eq!(lines.count(), 60);
    ui.logout().await;

    // ---- the admin adds a tag with the form.
    ui.login("Plant", "admin").await;
    ui.find("#me-link").await;
    ui.go(&p.page()).await;
    ui.click("#tag-add summary").await;
    ui.fill("#tag-new-name", "line.pressure").await;
    ui.fill("#tag-new-description", "Hydraulic pressure").await;
    ui.fill("#tag-new-host", "192.168.1.20").await;
    ui.fill("#tag-new-address", "40").await;
    ui.select("#tag-new-type", "f32").await;
    ui.fill("#tag-new-unit", "bar").await;
    ui.click("#tag-new-kpi").await;
    ui.scroll_to("#tag-add").await;
    ui.shot("tag-form").await;
    ui.submit("#tag-new-save").await;
    assert!(
        ui.flash().await.contains("Tag line.pressure was saved"),
        "{}",
        ui.flash().await
    );
    assert!(
        ui.text("#tag-table")
            .await
            .contains("192.168.1.20:502 unit 1 · holding register 40")
    );
    // ... and edits one: the form opens filled in, the name stays.
    ui.submit("#tag-edit-link-speed").await;
    assert_eq!(
        ui.find("#tag-edit-speed-unit")
            .await
            .prop("value")
            .await
            .unwrap(),
        Some("rpm".into())
    );
    ui.fill("#tag-edit-speed-unit", "1/min").await;
    ui.submit("#tag-edit-speed-save").await;
    assert!(ui.flash().await.contains("Tag speed was saved"));
    assert!(ui.text("#tag-speed").await.contains("1/min"));
    ui.logout().await;

    // ---- mona (monitor): live tiles, no controls.
    ui.login("Plant", "mona").await;
    ui.find("#me-link").await;
    ui.go(&p.page()).await;
    live(server, p, &[("speed", 1377.0)]).await;
    ui.wait_text(&speed, "1377", 10).await;
    for control in [".ack-form", ".tag-form", ".tag-delete"] {
        assert!(
            ui.c.find(Locator::Css(control)).await.is_err(),
            "a monitor user gets no {control}"
        );
    }
    // The data pages at phone width.
    ui.c.set_window_size(390, 844).await.expect("resize");
    for page in [p.page(), "/portal/kpis".into(), "/portal/alarms".into()] {
        ui.go(&page).await;
        ui.find("#me-link").await;
        assert!(ui.fits_width().await, "{page} fits a phone's width");
    }
}
