//! Tenancy is absolute (DESIGN §2.6): nothing of account B can be seen, named
//! or reached from account A. The probe walks every route of the OpenAPI
//! document that takes a path parameter and names B's objects in it, as each
//! of A's roles. Each test runs on SQLite and PostgreSQL.

use crate::common;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Account, TestApp};
use serde_json::{Value, json};
use std::collections::BTreeMap;

store_tests!(
    no_route_with_a_path_parameter_reaches_another_accounts_objects,
    another_accounts_devices_users_groups_and_pools_cannot_be_used_in_sessions_or_grants,
    an_activation_key_or_fleet_key_enrols_into_its_own_account_only,
);

const ROLES: [&str; 4] = ["admin", "session_admin", "user", "auditor"];

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn target_502() -> Value {
    json!({"address": "192.168.1.10", "protocol": "tcp", "ports": "502"})
}

/// A fresh Ed25519 identity: (key pair, base64 public key).
fn identity() -> (ring::signature::Ed25519KeyPair, String) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let public = STANDARD.encode(kp.public_key().as_ref());
    (kp, public)
}

/// Enrols with an activation key or a fleet key; returns the answer.
async fn enroll(
    app: &TestApp,
    key_field: &str,
    key: &str,
    name: Option<&str>,
) -> (StatusCode, Value) {
    let (kp, public) = identity();
    let mut msg = drawbridge_proto::api::ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(key.as_bytes());
    let mut body = json!({
        key_field: key,
        "public_key": public,
        "signature": STANDARD.encode(kp.sign(&msg).as_ref()),
    });
    if let Some(n) = name {
        body["name"] = json!(n);
    }
    app.call(Method::POST, "/api/v1/enroll", None, Some(body))
        .await
}

/// One account with an object of every kind. Names start with the account's
/// name so that a leak of a name shows as well as a leak of an id.
struct Tenant {
    acct: Account,
    /// Per column of ROLES: (user id, login token).
    who: Vec<(String, String)>,
    /// Object ids by kind, as the probe names them in paths.
    ids: BTreeMap<&'static str, Vec<String>>,
    /// Ids that appear only in lists (log entries, notifications, the account).
    other_ids: Vec<String>,
}

impl Tenant {
    async fn new(app: &TestApp, name: &str) -> Tenant {
        let acct = app.account(name).await;
        let mut who = vec![(acct.admin_id.clone(), acct.admin.clone())];
        for role in &ROLES[1..] {
            who.push(app.user(&acct, &format!("{name}-{role}"), role).await);
        }
        let (locked, _) = app.user(&acct, &format!("{name}-locked"), "user").await;
        // Devices: one enrolled with its activation key, one waiting for it,
        // one registered with the fleet key and waiting for approval.
        let (enrolled, key) = app.device(&acct, &format!("{name}-press-1")).await;
        let (st, v) = enroll(app, "activation_key", &key, None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (fresh, _) = app.device(&acct, &format!("{name}-press-2")).await;
        let fleet = app
            .ok(
                Method::POST,
                "/api/v1/fleet-keys",
                &acct.admin,
                Some(json!({"name": format!("{name}-fleet"), "expires_in_days": 30})),
            )
            .await;
        let (st, v) = enroll(
            app,
            "fleet_key",
            &s(&fleet["key"]),
            Some(&format!("{name}-press-3")),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let pending = s(&v["device_id"]);
        // Rights: the session admin and the user get the two created devices.
        let (group, pool) = app
            .grant(
                &acct,
                &[&who[1].0, &who[2].0],
                &[&enrolled, &fresh],
                "full",
                json!([]),
            )
            .await;
        let grants = app
            .ok(Method::GET, "/api/v1/grants", &acct.admin, None)
            .await;
        let grant = s(&grants[0]["id"]);
        // Sessions: prepared, active, ended.
        let user = who[2].clone();
        let prepared = app.session(&acct.admin, &enrolled, &[&user.0]).await;
        let active = app.session(&acct.admin, &enrolled, &[&user.0]).await;
        app.ok(
            Method::POST,
            &format!("/api/v1/sessions/{active}/start"),
            &user.1,
            None,
        )
        .await;
        let ended = app.session(&acct.admin, &fresh, &[&user.0]).await;
        app.ok(
            Method::POST,
            &format!("/api/v1/sessions/{ended}/start"),
            &user.1,
            None,
        )
        .await;
        app.ok(
            Method::POST,
            &format!("/api/v1/sessions/{ended}/end"),
            &user.1,
            None,
        )
        .await;
        // API tokens of the admin and of the user.
        let t1 = app
            .ok(
                Method::POST,
                "/api/v1/tokens",
                &acct.admin,
                Some(json!({"name": format!("{name}-ci"), "expires_in_days": 30})),
            )
            .await;
        let t2 = app
            .ok(
                Method::POST,
                "/api/v1/tokens",
                &user.1,
                Some(json!({"name": format!("{name}-mine"), "expires_in_days": 30})),
            )
            .await;
        // A logbook entry, a notification (a lockout) and ad-hoc connect allowed.
        let log = app
            .ok(
                Method::POST,
                &format!("/api/v1/devices/{enrolled}/logbook"),
                &user.1,
                Some(json!({"text": format!("{name}: replaced the PLC battery")})),
            )
            .await;
        for _ in 0..5 {
            app.login(name, &format!("{name}-locked"), "Wrong-Password-1")
                .await;
        }
        let notes = app
            .ok(Method::GET, "/api/v1/notifications", &acct.admin, None)
            .await;
        let note = s(&notes[0]["id"]);
        let a = app
            .ok(Method::GET, "/api/v1/account", &acct.admin, None)
            .await;
        let mut settings = a["settings"].clone();
        settings["adhoc_allowed"] = json!(true);
        app.ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": settings})),
        )
        .await;

        // A tag with historian points and an alarm on the enrolled device.
        app.ok(
            Method::PUT,
            &format!("/api/v1/devices/{enrolled}/tags"),
            &acct.admin,
            Some(json!({
                "name": "speed",
                "source": {"host": "192.168.1.10", "function": "holding_registers", "address": 3},
                "value_type": "u16",
                "kpi": true,
                "log": {"mode": "every", "period_ms": 1000},
            })),
        )
        .await;
        let alarm = data_and_alarm(app, &acct.id, &enrolled).await;
        let desktop = desktop_recording(app, &acct.id, &ended, &enrolled).await;
        // A webhook (to a loopback port nothing listens on; no worker runs here).
        app.state
            .notify
            .configure(&drawbridge_server::outbox::NotifyConfig {
                smtp: None,
                webhook_allow_private: true,
                webhook_failure_days: 5,
            })
            .expect("notification settings");
        let hook = app
            .ok(
                Method::POST,
                "/api/v1/account/webhooks",
                &acct.admin,
                Some(json!({"url": format!("http://127.0.0.1:9/{name}"), "events": ["alarm_raised"]})),
            )
            .await;

        // Single sign-on: a provider (never called here), a rule and a linked user.
        app.ok(
            Method::PUT,
            "/api/v1/account/sso",
            &acct.admin,
            Some(
                json!({"issuer": format!("https://idp.example.com/{name}"), "client_id": name,
                        "client_secret": "s3cret", "mode": "optional"}),
            ),
        )
        .await;
        let sso_rule = app
            .ok(
                Method::POST,
                "/api/v1/account/sso/rules",
                &acct.admin,
                Some(json!({"claim_value": format!("{name}-ops"), "role": "user"})),
            )
            .await;
        let sso_identity = app
            .ok(
                Method::POST,
                "/api/v1/account/sso/identities",
                &acct.admin,
                Some(json!({"user_id": user.0, "subject": format!("{name}-sub")})),
            )
            .await;

        let enrolled_id = enrolled.clone();
        let mut ids = BTreeMap::new();
        ids.insert(
            "user",
            who.iter().map(|w| w.0.clone()).chain([locked]).collect(),
        );
        ids.insert("device", vec![enrolled, fresh, pending]);
        ids.insert("group", vec![group]);
        ids.insert("pool", vec![pool]);
        ids.insert("grant", vec![grant]);
        ids.insert("session", vec![prepared, active, ended]);
        ids.insert("fleet_key", vec![s(&fleet["info"]["id"])]);
        ids.insert("token", vec![s(&t1["info"]["id"]), s(&t2["info"]["id"])]);
        ids.insert("alarm", vec![alarm]);
        ids.insert("desktop", vec![desktop]);
        ids.insert("webhook", vec![s(&hook["webhook"]["id"])]);
        ids.insert("rollout", vec![rollout(app, &acct, &enrolled_id).await]);
        ids.insert("sso_rule", vec![s(&sso_rule["id"])]);
        ids.insert("sso_identity", vec![s(&sso_identity["id"])]);
        let other_ids = vec![acct.id.clone(), s(&log["id"]), note];
        Tenant {
            acct,
            who,
            ids,
            other_ids,
        }
    }

    fn first(&self, kind: &str) -> String {
        self.ids[kind][0].clone()
    }

    fn all_ids(&self) -> Vec<String> {
        self.ids
            .values()
            .flatten()
            .chain(self.other_ids.iter())
            .cloned()
            .collect()
    }
}

/// A rollout of the server's one test release (signed under a root set here on
/// first use; releases are the operator's, not an account's) to `device`.
async fn rollout(app: &TestApp, acct: &Account, device: &str) -> String {
    use drawbridge_release::{PrivateKey, ReleaseMeta, SigningKeyCert};
    use drawbridge_server::updates::store;
    let existing: Option<String> = sqlx::query_scalar("SELECT id FROM releases LIMIT 1")
        .fetch_optional(&app.state.store.pool)
        .await
        .unwrap();
    let release = match existing {
        Some(id) => id,
        None => {
            let now = app.state.now();
            let (root, signing) = (PrivateKey::generate(), PrivateKey::generate());
            let cert = drawbridge_release::certify(
                &root,
                &SigningKeyCert {
                    name: "probe".into(),
                    public_key: signing.public(),
                    not_before: now - 60,
                    not_after: now + 86_400,
                },
            );
            let bin = b"probe edge".to_vec();
            let sig = drawbridge_release::sign_release(
                &signing,
                cert,
                &ReleaseMeta {
                    product: drawbridge_release::PRODUCT_EDGE.into(),
                    version: "9.9.9".into(),
                    target: drawbridge_release::this_target(),
                    size: bin.len() as u64,
                    sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &bin)),
                    created: now,
                    downgrade: false,
                },
            )
            .to_json();
            store::set_first_root(&app.state.store, &root.public(), now)
                .await
                .expect("root");
            store::add_release(&app.state.store, &bin, &sig, now)
                .await
                .expect("release")
                .id
        }
    };
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": release, "devices": [device]})),
        )
        .await;
    s(&v["id"])
}

/// Historian points of tag `speed` and a raised alarm on `device`, as its edge
/// would push them; the alarm's id.
/// An ended desktop of `session` on `device`, recorded (a stored header chunk).
async fn desktop_recording(app: &TestApp, account: &str, session: &str, device: &str) -> String {
    let id = format!("rec-{account}");
    sqlx::query(
        "INSERT INTO desktop_recordings (id, account_id, session_id, device_id, target, user_id, view_only, state, mode, recorded, started_at, ended_at)
         VALUES ($1, $2, $3, $4, '192.168.1.10:5900', 'nobody', 0, 'ended', 'required', 1, 1, 2)",
    )
    .bind(&id)
    .bind(account)
    .bind(session)
    .bind(device)
    .execute(&app.state.store.pool)
    .await
    .unwrap();
    id
}

async fn data_and_alarm(app: &TestApp, account: &str, device: &str) -> String {
    use drawbridge_proto::data::{AlarmTransition, BufferStatus, Quality, Record, RecordBody};
    let tag = drawbridge_proto::TagName::try_from("speed").unwrap();
    let records = vec![
        Record {
            seq: 1,
            time_ms: 1_800_000_000_000,
            tag: tag.clone(),
            body: RecordBody::Point {
                value: Some(1450.0),
                quality: Quality::Good,
            },
        },
        Record {
            seq: 2,
            time_ms: 1_800_000_000_001,
            tag,
            body: RecordBody::Alarm {
                transition: AlarmTransition::Raised,
                value: Some(1500.0),
            },
        },
    ];
    let buffer = BufferStatus {
        stream: "probe".into(),
        pending: 0,
        dropped: 0,
    };
    let done =
        drawbridge_server::data::ingest::records(&app.state, account, device, buffer, records)
            .await
            .expect("ingest");
    done.alarms[0].alarm_id.clone()
}

/// The names of a path's parameters, in order.
fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

/// Which kind of object a path parameter names. A new route whose parameter
/// is not covered here fails the probe, so that it gets added.
fn kind_of(path: &str, param: &str) -> Option<&'static str> {
    const BY_PREFIX: [(&str, &str); 14] = [
        ("/api/v1/rollouts/{id}", "rollout"),
        ("/api/v1/account/sso/rules/{id}", "sso_rule"),
        ("/api/v1/account/sso/identities/{id}", "sso_identity"),
        ("/api/v1/alarms/{id}", "alarm"),
        ("/api/v1/desktops/{id}", "desktop"),
        ("/api/v1/account/webhooks/{id}", "webhook"),
        ("/api/v1/users/{id}", "user"),
        ("/api/v1/groups/{id}", "group"),
        ("/api/v1/pools/{id}", "pool"),
        ("/api/v1/grants/{id}", "grant"),
        ("/api/v1/devices/{id}", "device"),
        ("/api/v1/fleet-keys/{id}", "fleet_key"),
        ("/api/v1/tokens/{id}", "token"),
        ("/api/v1/sessions/{id}", "session"),
    ];
    match param {
        "user_id" => Some("user"),
        "device_id" | "device" => Some("device"),
        "id" => BY_PREFIX
            .iter()
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, k)| *k),
        _ => None,
    }
}

/// A plausible, valid body for the routes that take one, so that a refusal
/// cannot hide behind a 400. `own_device` is a device of the caller's account.
fn body_for(method: &str, path: &str, own_device: &str) -> Option<Value> {
    Some(match (method, path) {
        ("PATCH", "/api/v1/users/{id}") => json!({"disabled": true, "role": "auditor"}),
        ("PATCH", "/api/v1/devices/{id}") => json!({"name": "probe-renamed", "firewall": []}),
        ("POST", "/api/v1/devices/{id}/logbook") => json!({"text": "probe was here"}),
        ("POST", "/api/v1/sessions/{id}/devices") => {
            json!({"device_id": own_device, "targets": [target_502()]})
        }
        ("POST", "/api/v1/sessions/{id}/approve") => json!({"approve": true}),
        ("POST", "/api/v1/sessions/{id}/narrow") => {
            json!({"devices": [{"device_id": own_device, "targets": [target_502()]}]})
        }
        ("POST", "/api/v1/sessions/{id}/web") => {
            json!({"device_id": own_device, "target": "192.168.1.10:502"})
        }
        ("POST", "/api/v1/devices/{id}/web-pins/accept") => {
            json!({"target": "192.168.1.10:443", "sha256": "00".repeat(32)})
        }
        ("PUT", "/api/v1/devices/{id}/tags") => json!({
            "name": "probe",
            "source": {"host": "192.168.1.10", "function": "holding_registers", "address": 1},
            "value_type": "u16",
            "kpi": true,
        }),
        ("POST", "/api/v1/alarms/{id}/ack") => json!({"comment": "probe"}),
        ("PUT", "/api/v1/devices/{id}/desktop-passwords") => {
            json!({"target": "192.168.1.10:5900", "password": "probe"})
        }
        ("PUT", "/api/v1/users/{id}/email") => json!({"email": "probe@example.com"}),
        ("PATCH", "/api/v1/account/webhooks/{id}") => json!({"enabled": false}),
        ("POST", "/api/v1/sessions/{id}/join") => {
            json!({"public_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})
        }
        _ => return None,
    })
}

/// Path parameters that name no object: they get one plausible value each.
fn fixed_value(param: &str) -> Option<&'static str> {
    match param {
        // A released TCP target (browser access to a device's web UI).
        "target" => Some("192.168.1.10:502"),
        // The path below a device web service.
        "path" => Some("probe/index.html"),
        // A tag of the device (the device is the object that counts).
        "name" => Some("speed"),
        _ => None,
    }
}

fn fill(path: &str, values: &[String]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    for seg in path.split('/') {
        if seg.starts_with('{') {
            out.push(values[i].clone());
            i += 1;
        } else {
            out.push(seg.to_string());
        }
    }
    out.join("/")
}

/// One probe request: a route with concrete ids, a method and maybe a body.
struct Probe {
    method: Method,
    template: String,
    /// The ids to put into the path (B's, or A's and B's mixed).
    ids: Vec<String>,
    /// The same path with every B id replaced by an id that exists nowhere.
    unknown: Vec<String>,
    body: Option<Value>,
    /// Required query parameters, as `?a=b`.
    query: String,
    /// A WebSocket route: sent over a real connection with upgrade headers, so
    /// that the handler (and its lookup) runs instead of the upgrade's rejection.
    upgrade: bool,
}

impl Probe {
    fn path(&self, ids: &[String]) -> String {
        format!("{}{}", fill(&self.template, ids), self.query)
    }
}

/// Routes an edge calls with a request signed by its identity key, never with a
/// user's token: every token gets `unauthorized` before any lookup. Their own
/// tests prove that a device gets only what is offered to it
/// (updates.rs: the_binary_goes_only_to_a_device_that_signs_for_it_and_has_it_offered).
const DEVICE_SIGNED_ROUTES: [&str; 1] = ["/api/v1/edge/releases/{id}"];

/// WebSocket routes with a path parameter. One missing here shows in the probe
/// as an answer other than `not_found` (the upgrade's own rejection).
const UPGRADE_ROUTES: [&str; 1] = ["/api/v1/sessions/{id}/channel"];

/// A plausible value for a required query parameter.
fn query_value(name: &str) -> Option<&'static str> {
    match name {
        // A WireGuard public key (32 bytes, base64).
        "key" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        // A tag name (historian range query).
        "tag" => Some("speed"),
        _ => None,
    }
}

/// Every (route, method) of the OpenAPI document with a path parameter, with
/// B's ids substituted: for one parameter each of B's objects of that kind; for
/// two, B's with B's, A's with B's and B's with A's.
fn probes(a: &Tenant, b: &Tenant) -> (Vec<Probe>, Vec<String>) {
    let (_, doc) = drawbridge_server::api::routes();
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    let random = || uuid::Uuid::new_v4().to_string();
    for (path, item) in doc.paths.paths.iter() {
        let all_params = path_params(path);
        if all_params.is_empty() || DEVICE_SIGNED_ROUTES.contains(&path.as_str()) {
            continue;
        }
        // Parameters naming no object get their fixed value in the template.
        let mut template = path.clone();
        for p in &all_params {
            if let Some(v) = fixed_value(p) {
                template = template.replace(&format!("{{{p}}}"), v);
            }
        }
        let params: Vec<&String> = all_params
            .iter()
            .filter(|p| fixed_value(p).is_none())
            .collect();
        let kinds: Vec<Option<&str>> = params.iter().map(|p| kind_of(path, p)).collect();
        if kinds.iter().any(Option::is_none) {
            unmapped.push(format!(
                "{path}: parameters {params:?} have no mapping to object kinds"
            ));
            continue;
        }
        let kinds: Vec<&str> = kinds.into_iter().flatten().collect();
        let ops = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
            (Method::HEAD, &item.head),
            (Method::OPTIONS, &item.options),
            (Method::TRACE, &item.trace),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let body = if op.request_body.is_some() {
                match body_for(method.as_str(), path, &a.first("device")) {
                    Some(b) => Some(b),
                    None => {
                        unmapped.push(format!(
                            "{method} {path}: takes a body but the probe has none for it"
                        ));
                        continue;
                    }
                }
            } else {
                None
            };
            let mut query = Vec::new();
            let params_json = serde_json::to_value(&op.parameters).expect("parameters");
            for p in params_json.as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default();
                // A required parameter that is not in the path template goes into the
                // query, whatever the document says its place is.
                if p["required"] != true || all_params.iter().any(|x| x == name) {
                    continue;
                }
                match query_value(name) {
                    Some(v) => query.push(format!("{name}={}", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())),
                    None => unmapped.push(format!(
                        "{method} {path}: the required query parameter {name:?} has no value in the probe"
                    )),
                }
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let upgrade = UPGRADE_ROUTES.contains(&path.as_str());
            let mut combos: Vec<(Vec<String>, Vec<String>)> = Vec::new();
            match kinds.as_slice() {
                [k] => {
                    for id in &b.ids[k] {
                        combos.push((vec![id.clone()], vec![random()]));
                    }
                }
                [k1, k2] => {
                    for id1 in &b.ids[k1] {
                        for id2 in &b.ids[k2] {
                            combos.push((vec![id1.clone(), id2.clone()], vec![random(), random()]));
                        }
                    }
                    for id2 in &b.ids[k2] {
                        combos.push((vec![a.first(k1), id2.clone()], vec![a.first(k1), random()]));
                    }
                    for id1 in &b.ids[k1] {
                        combos.push((vec![id1.clone(), a.first(k2)], vec![random(), a.first(k2)]));
                    }
                }
                _ => {
                    unmapped.push(format!(
                        "{path}: more than two path parameters; extend the probe"
                    ));
                    continue;
                }
            }
            for (ids, unknown) in combos {
                out.push(Probe {
                    method: method.clone(),
                    template: template.clone(),
                    ids,
                    unknown,
                    body: body.clone(),
                    query: query.clone(),
                    upgrade,
                });
            }
        }
    }
    (out, unmapped)
}

/// B's objects as B's admin and user see them, and B's rows straight from the database.
async fn snapshot(app: &TestApp, b: &Tenant) -> Value {
    let mut out = serde_json::Map::new();
    let admin = &b.acct.admin;
    let mut paths: Vec<String> = [
        "/api/v1/users",
        "/api/v1/devices",
        "/api/v1/sessions",
        "/api/v1/groups",
        "/api/v1/pools",
        "/api/v1/grants",
        "/api/v1/fleet-keys",
        "/api/v1/tokens",
        "/api/v1/notifications",
        "/api/v1/account",
        "/api/v1/audit/verify",
        "/api/v1/rollouts",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    for d in &b.ids["device"] {
        paths.push(format!("/api/v1/devices/{d}/logbook"));
    }
    for p in paths {
        out.insert(
            format!("admin GET {p}"),
            app.ok(Method::GET, &p, admin, None).await,
        );
    }
    out.insert(
        "user GET /api/v1/tokens".into(),
        app.ok(Method::GET, "/api/v1/tokens", &b.who[2].1, None)
            .await,
    );
    let pool = &app.state.store.pool;
    for table in [
        "users",
        "auth_tokens",
        "groups_",
        "devices",
        "activation_keys",
        "fleet_keys",
        "pools",
        "grants",
        "logbook",
        "sessions",
        "tunnels",
        "audit_log",
        "notifications",
        "rollouts",
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE account_id = $1"
        ))
        .bind(&b.acct.id)
        .fetch_one(pool)
        .await
        .expect(table);
        out.insert(format!("rows {table}"), json!(n));
    }
    for (name, sql) in [
        (
            "live tokens",
            "SELECT COUNT(*) FROM auth_tokens WHERE account_id = $1 AND revoked_at IS NULL",
        ),
        (
            "unused activation keys",
            "SELECT COUNT(*) FROM activation_keys WHERE account_id = $1 AND used_at IS NULL",
        ),
        (
            "group members",
            "SELECT COUNT(*) FROM group_members m JOIN groups_ g ON g.id = m.group_id WHERE g.account_id = $1",
        ),
        (
            "pool devices",
            "SELECT COUNT(*) FROM pool_devices p JOIN pools o ON o.id = p.pool_id WHERE o.account_id = $1",
        ),
        (
            "session devices",
            "SELECT COUNT(*) FROM session_devices d JOIN sessions s ON s.id = d.session_id WHERE s.account_id = $1",
        ),
        (
            "session users",
            "SELECT COUNT(*) FROM session_users u JOIN sessions s ON s.id = u.session_id WHERE s.account_id = $1",
        ),
        (
            "links to other accounts' users",
            "SELECT COUNT(*) FROM group_members m JOIN groups_ g ON g.id = m.group_id JOIN users u ON u.id = m.user_id WHERE g.account_id = $1 AND u.account_id <> g.account_id",
        ),
        (
            "links to other accounts' devices",
            "SELECT COUNT(*) FROM pool_devices p JOIN pools o ON o.id = p.pool_id JOIN devices d ON d.id = p.device_id WHERE o.account_id = $1 AND d.account_id <> o.account_id",
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(&b.acct.id)
            .fetch_one(pool)
            .await
            .expect(name);
        out.insert(name.into(), json!(n));
    }
    Value::Object(out)
}

/// Every list route, as each of A's roles: none may contain any of B's ids or names.
async fn assert_lists_show_nothing_of(app: &TestApp, a: &Tenant, b: &Tenant, when: &str) {
    let b_ids = b.all_ids();
    let b_name = b.acct.name.clone();
    let mut paths: Vec<String> = [
        "/api/v1/devices",
        "/api/v1/users",
        "/api/v1/sessions",
        "/api/v1/sessions?state=active",
        "/api/v1/groups",
        "/api/v1/pools",
        "/api/v1/grants",
        "/api/v1/audit",
        "/api/v1/audit?format=jsonl",
        "/api/v1/audit?format=csv",
        "/api/v1/fleet-keys",
        "/api/v1/tokens",
        "/api/v1/notifications",
        "/api/v1/account",
        "/api/v1/me",
        "/api/v1/rollouts",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    for d in &a.ids["device"] {
        paths.push(format!("/api/v1/devices/{d}/logbook"));
    }
    for (role, (_, token)) in ROLES.iter().zip(&a.who) {
        for p in &paths {
            let (st, v) = app.get(p, token).await;
            let text = match &v {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            if *role == "admin" {
                assert_eq!(st, StatusCode::OK, "{when}: {role} GET {p}: {v}");
            } else {
                // Refused by role, or (a logbook) a device of A outside the role's grants.
                let refused = (st == StatusCode::FORBIDDEN && v["code"] == "forbidden")
                    || (st == StatusCode::NOT_FOUND && p.ends_with("/logbook"));
                assert!(
                    st == StatusCode::OK || refused,
                    "{when}: {role} GET {p}: {st} {v}"
                );
            }
            for id in &b_ids {
                assert!(
                    !text.contains(id.as_str()),
                    "{when}: {role} GET {p} shows B's id {id}: {text}"
                );
            }
            assert!(
                !text.contains(&b_name),
                "{when}: {role} GET {p} shows B's name: {text}"
            );
        }
    }
    // Filters naming B's objects find nothing either.
    for p in [
        format!("/api/v1/audit?device={}", b.first("device")),
        format!("/api/v1/audit?actor=user:{}", b.acct.admin_id),
        format!("/api/v1/audit?actor=device:{}", b.first("device")),
    ] {
        let v = app.ok(Method::GET, &p, &a.acct.admin, None).await;
        assert_eq!(v, json!([]), "{when}: GET {p}");
    }
}

/// The app on a plain-HTTP loopback port, for the requests that need a real
/// connection (WebSocket upgrades).
struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(app: &TestApp) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app.app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server { addr, task }
    }

    /// Sends a probe: in-process, or for WebSocket routes as a real upgrade request.
    async fn send(
        &self,
        app: &TestApp,
        pr: &Probe,
        path: &str,
        token: &str,
    ) -> (StatusCode, Value) {
        if !pr.upgrade {
            return app
                .call(pr.method.clone(), path, Some(token), pr.body.clone())
                .await;
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let req = format!(
            "{} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            pr.method
        );
        conn.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if head.starts_with("http/1.1 101") || buf.len() >= end + 4 + len {
                        return end;
                    }
                }
                let n = conn.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the server closed the connection mid-answer");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("an answer in time");
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let code: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = &buf[end + 4..];
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
        };
        (StatusCode::from_u16(code).expect("status"), v)
    }
}

async fn no_route_with_a_path_parameter_reaches_another_accounts_objects(app: TestApp) {
    let a = Tenant::new(&app, "alpha").await;
    let b = Tenant::new(&app, "bravo").await;
    let (probes, unmapped) = probes(&a, &b);
    assert!(
        unmapped.is_empty(),
        "routes the tenancy probe does not cover yet:\n{}",
        unmapped.join("\n")
    );
    // The probe is not empty by accident: every kind and the known routes are in it.
    for (m, p) in [
        (Method::GET, "/api/v1/devices/{id}"),
        (Method::PUT, "/api/v1/groups/{id}/members/{user_id}"),
        (Method::DELETE, "/api/v1/pools/{id}/devices/{device_id}"),
        (Method::POST, "/api/v1/sessions/{id}/end"),
        (Method::DELETE, "/api/v1/tokens/{id}"),
        (Method::DELETE, "/api/v1/fleet-keys/{id}"),
        (Method::DELETE, "/api/v1/grants/{id}"),
        (Method::PATCH, "/api/v1/users/{id}"),
        (Method::POST, "/api/v1/sessions/{id}/web"),
        (Method::POST, "/api/v1/devices/{id}/web-pins/accept"),
        (Method::POST, "/api/v1/rollouts/{id}/cancel"),
        (
            Method::GET,
            "/api/v1/sessions/{id}/devices/{device}/http/192.168.1.10:502/probe/index.html",
        ),
    ] {
        assert!(
            probes.iter().any(|x| x.method == m && x.template == p),
            "the probe lacks {m} {p}"
        );
    }

    let before = snapshot(&app, &b).await;
    assert_lists_show_nothing_of(&app, &a, &b, "before the probe").await;

    let server = Server::start(&app).await;
    let mut leaks = Vec::new();
    for (role, (_, token)) in ROLES.iter().zip(&a.who) {
        for pr in &probes {
            let path = pr.path(&pr.ids);
            let (st, v) = server.send(&app, pr, &path, token).await;
            let is_404 = st == StatusCode::NOT_FOUND && v["code"] == "not_found";
            if *role == "admin" {
                // The admin may do everything in A: only the account boundary can stop it.
                if !is_404 {
                    leaks.push(format!("{role} {} {path}: {st} {v}", pr.method));
                }
                continue;
            }
            // Other roles may be refused by role before any lookup; the answer must
            // then be the very one an id that exists nowhere gets, so it tells nothing.
            let unknown = server.send(&app, pr, &pr.path(&pr.unknown), token).await;
            let is_403 = st == StatusCode::FORBIDDEN && v["code"] == "forbidden";
            if !(is_404 || is_403) || (st, &v) != (unknown.0, &unknown.1) {
                leaks.push(format!(
                    "{role} {} {path}: {st} {v} (an unknown id gets {} {})",
                    pr.method, unknown.0, unknown.1
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} probes of B's objects from A did not answer not_found:\n{}",
        leaks.len(),
        leaks.join("\n")
    );

    let after = snapshot(&app, &b).await;
    assert_eq!(before, after, "the probe from A changed B's data");
    assert_lists_show_nothing_of(&app, &a, &b, "after the probe").await;
    // B still works: its user can end its active session.
    let active = &b.ids["session"][1];
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{active}/end"),
            &b.who[2].1,
            None,
        )
        .await;
    assert_eq!(v["state"], "ended");
    let v = app
        .ok(Method::GET, "/api/v1/audit/verify", &b.acct.admin, None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
}

async fn another_accounts_devices_users_groups_and_pools_cannot_be_used_in_sessions_or_grants(
    app: TestApp,
) {
    let a = Tenant::new(&app, "alpha").await;
    let b = Tenant::new(&app, "bravo").await;
    let counts = |app: &TestApp| {
        let pool = app.state.store.pool.clone();
        async move {
            let mut out = Vec::new();
            for t in [
                "sessions",
                "session_devices",
                "session_users",
                "grants",
                "group_members",
                "pool_devices",
            ] {
                let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}"))
                    .fetch_one(&pool)
                    .await
                    .expect(t);
                out.push(n);
            }
            out
        }
    };
    let before = counts(&app).await;
    let (a_admin, a_sa, a_user) = (&a.acct.admin, &a.who[1].1, &a.who[2].1);
    let (a_dev, b_dev) = (a.first("device"), b.first("device"));
    let a_user_id = a.who[2].0.clone();
    let b_user_id = b.who[2].0.clone();
    let session = |device: &str, users: Vec<&str>| json!({"name": "cross", "devices": [{"device_id": device, "targets": [target_502()]}], "users": users});
    let a_prepared = a.ids["session"][0].clone();
    let cases: Vec<(&str, &String, String, Value)> = vec![
        (
            "prepare with B's device",
            a_admin,
            "/api/v1/sessions".into(),
            session(&b_dev, vec![]),
        ),
        (
            "prepare with B's device (session admin)",
            a_sa,
            "/api/v1/sessions".into(),
            session(&b_dev, vec![]),
        ),
        (
            "prepare with B's device for A's user",
            a_admin,
            "/api/v1/sessions".into(),
            session(&b_dev, vec![&a_user_id]),
        ),
        (
            "prepare with A's device for B's user",
            a_admin,
            "/api/v1/sessions".into(),
            session(&a_dev, vec![&b_user_id]),
        ),
        (
            "prepare with A's device for B's user (session admin)",
            a_sa,
            "/api/v1/sessions".into(),
            session(&a_dev, vec![&b_user_id]),
        ),
        (
            "add B's device to A's prepared session",
            a_admin,
            format!("/api/v1/sessions/{a_prepared}/devices"),
            json!({"device_id": b_dev, "targets": [target_502()]}),
        ),
        (
            "add B's device to A's prepared session (session admin)",
            a_sa,
            format!("/api/v1/sessions/{a_prepared}/devices"),
            json!({"device_id": b_dev, "targets": [target_502()]}),
        ),
        (
            "ad-hoc connect to B's device",
            a_user,
            "/api/v1/sessions/adhoc".into(),
            json!({"device_id": b_dev}),
        ),
        (
            "ad-hoc connect to B's device (admin)",
            a_admin,
            "/api/v1/sessions/adhoc".into(),
            json!({"device_id": b_dev}),
        ),
        (
            "grant B's group a level on A's pool",
            a_admin,
            "/api/v1/grants".into(),
            json!({"group_id": b.first("group"), "pool_id": a.first("pool"), "level": "full"}),
        ),
        (
            "grant A's group a level on B's pool",
            a_admin,
            "/api/v1/grants".into(),
            json!({"group_id": a.first("group"), "pool_id": b.first("pool"), "level": "monitor"}),
        ),
        (
            "grant B's group a level on B's pool",
            a_admin,
            "/api/v1/grants".into(),
            json!({"group_id": b.first("group"), "pool_id": b.first("pool"), "level": "full"}),
        ),
    ];
    for (what, token, path, body) in cases {
        let (st, v) = app.post(&path, token, body).await;
        assert_eq!(
            (st, v["code"].clone()),
            (StatusCode::NOT_FOUND, json!("not_found")),
            "{what}: {v}"
        );
        assert!(
            !v.to_string().contains("bravo"),
            "{what}: the error names B's object: {v}"
        );
    }
    assert_eq!(counts(&app).await, before, "nothing was created or linked");
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{a_prepared}"),
            a_admin,
            None,
        )
        .await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 1, "{v}");
}

async fn an_activation_key_or_fleet_key_enrols_into_its_own_account_only(app: TestApp) {
    let a = app.account("alpha").await;
    let b = app.account("bravo").await;
    let (b_dev, b_key) = app.device(&b, "bravo-press").await;
    let devices_before = app.ok(Method::GET, "/api/v1/devices", &a.admin, None).await;

    let (st, v) = enroll(&app, "activation_key", &b_key, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["account_id"].clone(), v["device_id"].clone()),
        (json!(b.id), json!(b_dev)),
        "{v}"
    );
    assert_eq!(v["status"], "enrolled");
    // B sees its device enrolled; A sees nothing of it, not in lists, not by id, not in its audit.
    let d = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{b_dev}"),
            &b.admin,
            None,
        )
        .await;
    assert_eq!(d["status"]["enrolled"], true, "{d}");
    let (st, _) = app.get(&format!("/api/v1/devices/{b_dev}"), &a.admin).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        app.ok(Method::GET, "/api/v1/devices", &a.admin, None).await,
        devices_before
    );
    let a_audit = app.ok(Method::GET, "/api/v1/audit", &a.admin, None).await;
    assert!(!a_audit.to_string().contains(&b_dev), "{a_audit}");
    let b_audit = app
        .ok(
            Method::GET,
            "/api/v1/audit?action=device.enroll",
            &b.admin,
            None,
        )
        .await;
    assert_eq!(b_audit.as_array().unwrap().len(), 1, "{b_audit}");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM devices WHERE account_id = $1")
            .bind(&a.id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap(),
        0
    );

    // A fleet key registers into its own account: A's key gives a device A must
    // approve, which B never sees and cannot approve.
    let fleet = app
        .ok(
            Method::POST,
            "/api/v1/fleet-keys",
            &a.admin,
            Some(json!({"name": "alpha-fleet", "expires_in_days": 1})),
        )
        .await;
    let (st, v) = enroll(&app, "fleet_key", &s(&fleet["key"]), Some("alpha-edge")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["account_id"], json!(a.id));
    let pending = s(&v["device_id"]);
    let (st, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/devices/{pending}/approve"),
            Some(&b.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let b_list = app.ok(Method::GET, "/api/v1/devices", &b.admin, None).await;
    assert!(!b_list.to_string().contains(&pending), "{b_list}");
    let d = app
        .ok(
            Method::POST,
            &format!("/api/v1/devices/{pending}/approve"),
            &a.admin,
            None,
        )
        .await;
    assert_eq!(d["status"]["enrolled"], true, "{d}");
}
