//! Shared set-up of the data services' portal tests (`data`, `browser_data`):
//! a plant with an admin, a full-grant user and a monitor-grant user on one
//! device, data put in through the server library as the edge channel stores
//! it, and the tag form as a browser posts it.
#![allow(dead_code)]

use crate::common::{Browser, PASSWORD, TestServer, between};
use drawbridge_proto::TagName;
use drawbridge_proto::data::{AlarmTransition, BufferStatus, Quality, Record, RecordBody, TagSpec};
use drawbridge_proto::mailbox::Alarm;
use serde_json::{Value, json};

/// 2027-01-15T08:00:00Z, in the future of any retention purge.
pub const T0: i64 = 1_800_000_000_000;

/// Admin, fred (user, full grant), mona (user, monitor grant), and the device
/// "Press" with LAN 192.168.1.0/24, in a pool both grants cover.
pub struct Plant {
    pub admin: Browser,
    pub fred: Browser,
    pub mona: Browser,
    pub account: String,
    pub device: String,
}

impl Plant {
    pub fn page(&self) -> String {
        format!("/portal/devices/{}", self.device)
    }
}

pub async fn api(
    b: &Browser,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let token = b.cookies.get("db_session").expect("logged in");
    let mut req = b
        .http
        .request(method, format!("{}{path}", b.base))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("API call");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn plant(server: &TestServer) -> Plant {
    use reqwest::Method;
    let mut admin = Browser::new(server);
    admin.setup(&server.setup_token().await, "Plant").await;
    admin.login("Plant", "admin", PASSWORD).await;
    let (_, me) = api(&admin, Method::GET, "/api/v1/me", None).await;
    let account = me["account"]["id"].as_str().unwrap().to_string();
    let (s, created) = api(
        &admin,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "Press", "lan_subnets": ["192.168.1.0/24"], "firewall": [{"protocol": "tcp", "address": "192.168.1.0/24"}]})),
    )
    .await;
    assert_eq!(s, 200, "{created}");
    let device = created["device"]["id"].as_str().unwrap().to_string();
    let (_, pool) = api(
        &admin,
        Method::POST,
        "/api/v1/pools",
        Some(json!({"name": "Hall"})),
    )
    .await;
    let pool = pool["id"].as_str().unwrap().to_string();
    let (s, _) = api(
        &admin,
        Method::PUT,
        &format!("/api/v1/pools/{pool}/devices/{device}"),
        None,
    )
    .await;
    assert!(s < 300, "pool device {s}");
    for (user, level) in [("fred", "full"), ("mona", "monitor")] {
        let (s, u) = api(
            &admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": user, "role": "user", "password": PASSWORD})),
        )
        .await;
        assert_eq!(s, 200, "{u}");
        let uid = u["id"].as_str().unwrap();
        let (_, g) = api(
            &admin,
            Method::POST,
            "/api/v1/groups",
            Some(json!({"name": format!("{user} crew")})),
        )
        .await;
        let gid = g["id"].as_str().unwrap();
        let (s, _) = api(
            &admin,
            Method::PUT,
            &format!("/api/v1/groups/{gid}/members/{uid}"),
            None,
        )
        .await;
        assert!(s < 300, "member {s}");
        let (s, grant) = api(
            &admin,
            Method::POST,
            "/api/v1/grants",
            Some(json!({"group_id": gid, "pool_id": pool, "level": level})),
        )
        .await;
        assert_eq!(s, 200, "{grant}");
    }
    let mut fred = Browser::new(server);
    fred.login("Plant", "fred", PASSWORD).await;
    let mut mona = Browser::new(server);
    mona.login("Plant", "mona", PASSWORD).await;
    Plant {
        admin,
        fred,
        mona,
        account,
        device,
    }
}

/// Stores records as the edge channel does.
pub async fn ingest(server: &TestServer, p: &Plant, stream: &str, records: Vec<Record>) {
    drawbridge_server::data::ingest::records(
        &server.state,
        &p.account,
        &p.device,
        BufferStatus {
            stream: stream.into(),
            pending: 0,
            dropped: 0,
        },
        records,
    )
    .await
    .expect("records stored");
}

pub fn point(seq: u64, time_ms: i64, tag: &str, value: Option<f64>, quality: Quality) -> Record {
    Record {
        seq,
        time_ms,
        tag: TagName::try_from(tag).unwrap(),
        body: RecordBody::Point { value, quality },
    }
}

pub fn alarm(seq: u64, time_ms: i64, tag: &str, transition: AlarmTransition, value: f64) -> Record {
    Record {
        seq,
        time_ms,
        tag: TagName::try_from(tag).unwrap(),
        body: RecordBody::Alarm {
            transition,
            value: Some(value),
        },
    }
}

pub async fn stored_tags(server: &TestServer, device: &str) -> Vec<TagSpec> {
    let mut conn = server.state.store.pool.acquire().await.unwrap();
    drawbridge_server::data::tags::list(&mut conn, device)
        .await
        .expect("tags")
}

pub async fn alarms_of(server: &TestServer, p: &Plant) -> Vec<Alarm> {
    let mut conn = server.state.store.pool.acquire().await.unwrap();
    drawbridge_server::data::alarms::list(&mut conn, &p.account, Some(&p.device), true, 100)
        .await
        .expect("alarms")
}

/// Every field of the tag form, as a browser posts it.
pub fn tag_form(csrf: &str, name: &str, host: &str, unit: &str) -> Vec<(&'static str, String)> {
    vec![
        ("csrf", csrf.into()),
        ("name", name.into()),
        ("description", "Oven zone 1".into()),
        ("host", host.into()),
        ("port", "1502".into()),
        ("unit_id", "3".into()),
        ("function", "input_registers".into()),
        ("address", "100".into()),
        ("value_type", "f32".into()),
        ("word_order", "low_first".into()),
        ("scale", "0.1".into()),
        ("offset", "-40".into()),
        ("unit", unit.into()),
        ("poll_ms", "500".into()),
        ("log_mode", "on_change".into()),
        ("log_deadband", "0.5".into()),
        ("log_period_ms", "".into()),
        ("kpi", "on".into()),
        ("alarm_kind", "limits".into()),
        ("alarm_high", "240".into()),
        ("alarm_low", "".into()),
        ("alarm_deadband", "2".into()),
        ("alarm_min_ms", "5000".into()),
        ("alarm_when", "true".into()),
    ]
}

/// The viewer's rights on the device, as the API tells the portal.
pub async fn access(b: &Browser, device: &str) -> Value {
    let path = format!("/api/v1/devices/{device}/access");
    api(b, reqwest::Method::GET, &path, None).await.1
}

pub fn pairs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn flash(body: &str) -> &str {
    between(body, "id=\"flash\">", "</p>")
}
