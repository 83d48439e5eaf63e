//! The role × action table of DESIGN §3, cell by cell, through the real API,
//! plus the grant rules that narrow it ("within their grants", `restricted`,
//! `monitor`, "own only", ad-hoc connect). Each runs on SQLite and PostgreSQL.

use crate::common;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Account, TestApp};
use serde_json::{Value, json};

store_tests!(
    every_cell_of_the_design_role_table_is_enforced_and_refusals_change_nothing,
    session_admins_release_only_devices_and_targets_inside_their_grants,
    users_are_put_into_sessions_only_for_devices_and_targets_their_grants_cover,
    a_monitor_grant_shows_the_device_but_never_yields_a_session,
    a_user_can_neither_see_nor_end_someone_elses_session,
    adhoc_connect_needs_the_account_setting_and_a_device_the_grant_covers,
);

/// What one cell of the table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// Allowed: 2xx, and the change happens.
    Y,
    /// Refused: 403 `forbidden`, nothing changes, and a `denied` audit entry names the caller.
    N,
    /// Hidden: 404 `not_found` because the object is deliberately invisible to the
    /// role (a `user` probing a session not prepared for them); nothing changes.
    /// For a list, "hidden" means the list leaves the object out.
    H,
}
use Cell::*;

/// The columns, in the order of DESIGN §3.
const ROLES: [&str; 4] = ["admin", "session_admin", "user", "auditor"];

/// One concrete request per line of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    CreateDevice,
    NewActivationKey,
    CreateFleetKey,
    ApproveDevice,
    EditFirewall,
    CreateUser,
    AssignRole,
    AccountSettings,
    CreateGroup,
    AddGroupMember,
    CreatePool,
    AddPoolDevice,
    CreateGrant,
    PrepareInsideGrants,
    PrepareOutsideGrants,
    AddDeviceInsideGrants,
    AddDeviceOutsideGrants,
    StartOwn,
    StartOthers,
    JoinOwn,
    Adhoc,
    EndOthers,
    EndOwn,
    SeeOthersActive,
    SeeOthersEnded,
    ListShowsOthers,
    SeeOwnActiveAndEnded,
    ReadAudit,
    ExportAuditCsv,
    ExportAuditJsonl,
    VerifyAudit,
}

/// DESIGN §3, line by line. Columns: admin, session_admin, user, auditor.
///
/// "Someone else" is another `user` the session was prepared for. Auditors can
/// never be assigned to a session (the server refuses it), so in the "own"
/// lines the auditor column acts on someone else's session.
#[rustfmt::skip]
const MATRIX: &[(&str, Act, [Cell; 4])] = &[
    // §3 "add/enrol devices, edit device firewall"           admin  s_adm  user  auditor
    ("add/enrol devices: add a device",                       Act::CreateDevice,           [Y, N, N, N]),
    ("add/enrol devices: new activation key",                 Act::NewActivationKey,       [Y, N, N, N]),
    ("add/enrol devices: create a fleet key",                 Act::CreateFleetKey,         [Y, N, N, N]),
    ("add/enrol devices: approve a fleet-registered device",  Act::ApproveDevice,          [Y, N, N, N]),
    ("edit device firewall",                                  Act::EditFirewall,           [Y, N, N, N]),
    // §3 "add users, assign roles, groups, pools, grants"
    ("add users",                                             Act::CreateUser,             [Y, N, N, N]),
    ("assign roles",                                          Act::AssignRole,             [Y, N, N, N]),
    ("account settings (user administration)",                Act::AccountSettings,        [Y, N, N, N]),
    ("groups: create",                                        Act::CreateGroup,            [Y, N, N, N]),
    ("groups: add a member",                                  Act::AddGroupMember,         [Y, N, N, N]),
    ("pools: create",                                         Act::CreatePool,             [Y, N, N, N]),
    ("pools: add a device",                                   Act::AddPoolDevice,          [Y, N, N, N]),
    ("grants: create",                                        Act::CreateGrant,            [Y, N, N, N]),
    // §3 "prepare sessions, choose devices and targets": session_admin within their grants
    ("prepare a session inside the preparer's grants",        Act::PrepareInsideGrants,    [Y, Y, N, N]),
    ("prepare a session outside the preparer's grants",       Act::PrepareOutsideGrants,   [Y, N, N, N]),
    // §3 "add devices to a prepared session"
    ("add a device to a prepared session (inside grants)",    Act::AddDeviceInsideGrants,  [Y, Y, N, N]),
    ("add a device to a prepared session (outside grants)",   Act::AddDeviceOutsideGrants, [Y, N, N, N]),
    // §3 "start and use a session prepared for them"
    ("start a session prepared for the caller",               Act::StartOwn,               [Y, Y, Y, N]),
    ("start a session prepared for someone else",             Act::StartOthers,            [N, N, H, N]),
    ("use a session prepared for the caller (join)",          Act::JoinOwn,                [Y, Y, Y, N]),
    ("ad-hoc connect (create and start) on a covered device", Act::Adhoc,                  [Y, Y, Y, N]),
    // §3 "end sessions": all | all | own only | no
    ("end someone else's session",                            Act::EndOthers,              [Y, Y, H, N]),
    ("end own session",                                       Act::EndOwn,                 [Y, Y, Y, N]),
    // §3 "see active and past sessions": all | all | own only | all (read-only)
    ("see someone else's active session",                     Act::SeeOthersActive,        [Y, Y, H, Y]),
    ("see someone else's past (ended) session",               Act::SeeOthersEnded,         [Y, Y, H, Y]),
    ("session list shows someone else's session",             Act::ListShowsOthers,        [Y, Y, H, Y]),
    ("see own active and past sessions",                      Act::SeeOwnActiveAndEnded,   [Y, Y, Y, Y]),
    // §3 "read and export the audit log"
    ("read the audit log",                                    Act::ReadAudit,              [Y, N, N, Y]),
    ("export the audit log as CSV",                           Act::ExportAuditCsv,         [Y, N, N, Y]),
    ("export the audit log as JSON lines",                    Act::ExportAuditJsonl,       [Y, N, N, Y]),
    ("verify the audit log's hash chain",                     Act::VerifyAudit,            [Y, N, N, Y]),
];

fn target_502() -> Value {
    json!({"address": "192.168.1.10", "protocol": "tcp", "ports": "502"})
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// One number straight from the database.
async fn scalar(app: &TestApp, sql: &str, args: &[&str]) -> i64 {
    let mut q = sqlx::query_scalar::<_, i64>(sql);
    for a in args {
        q = q.bind(a.to_string());
    }
    q.fetch_one(&app.state.store.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `denied` audit entries whose actor is this user.
async fn denials(app: &TestApp, user_id: &str) -> i64 {
    scalar(
        app,
        "SELECT COUNT(*) FROM audit_log WHERE result = 'denied' AND actor = $1",
        &[&format!("user:{user_id}")],
    )
    .await
}

/// A device registers itself with a fleet key (it then waits for an admin's approval).
async fn register_with_fleet_key(app: &TestApp, fleet_key: &str, name: &str) -> String {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let mut msg = drawbridge_proto::api::ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(fleet_key.as_bytes());
    let body = json!({
        "fleet_key": fleet_key,
        "name": name,
        "public_key": STANDARD.encode(kp.public_key().as_ref()),
        "signature": STANDARD.encode(kp.sign(&msg).as_ref()),
    });
    let (st, v) = app
        .call(Method::POST, "/api/v1/enroll", None, Some(body))
        .await;
    assert_eq!(st, StatusCode::OK, "fleet registration: {v}");
    assert_eq!(v["status"], "pending_approval");
    s(&v["device_id"])
}

/// An account with one user of each role, another plain user ("someone else"),
/// two devices covered by a `full` grant to all three non-admins and one device
/// no grant covers.
struct Fx {
    app: TestApp,
    acct: Account,
    /// Per column of ROLES: (user id, login token).
    who: Vec<(String, String)>,
    other: (String, String),
    d_in: String,
    d_in2: String,
    d_out: String,
    fleet_key: String,
}

impl Fx {
    async fn new(app: TestApp) -> Fx {
        let acct = app.account("acme").await;
        let mut who = vec![(acct.admin_id.clone(), acct.admin.clone())];
        for (name, role) in [
            ("sam", "session_admin"),
            ("uma", "user"),
            ("audrey", "auditor"),
        ] {
            who.push(app.user(&acct, name, role).await);
        }
        let other = app.user(&acct, "otto", "user").await;
        let (d_in, _) = app.device(&acct, "press-in").await;
        let (d_in2, _) = app.device(&acct, "press-in-2").await;
        let (d_out, _) = app.device(&acct, "press-out").await;
        app.grant(
            &acct,
            &[&who[1].0, &who[2].0, &other.0],
            &[&d_in, &d_in2],
            "full",
            json!([]),
        )
        .await;
        let (_, a) = app.get("/api/v1/account", &acct.admin).await;
        let mut settings = a["settings"].clone();
        settings["adhoc_allowed"] = json!(true);
        app.ok(
            Method::PATCH,
            "/api/v1/account",
            &acct.admin,
            Some(json!({"settings": settings})),
        )
        .await;
        let v = app
            .ok(
                Method::POST,
                "/api/v1/fleet-keys",
                &acct.admin,
                Some(json!({"name": "fleet", "expires_in_days": 30})),
            )
            .await;
        let fleet_key = s(&v["key"]);
        Fx {
            app,
            acct,
            who,
            other,
            d_in,
            d_in2,
            d_out,
            fleet_key,
        }
    }

    fn admin(&self) -> &str {
        &self.acct.admin
    }

    /// The user a session is prepared for in the "own" lines (auditors cannot be assigned).
    fn own_or_other(&self, role: usize) -> &(String, String) {
        if ROLES[role] == "auditor" {
            &self.other
        } else {
            &self.who[role]
        }
    }

    async fn prepare(&self, device: &str, users: &[&str]) -> String {
        self.app.session(self.admin(), device, users).await
    }

    async fn start(&self, session: &str, token: &str) {
        let v = self
            .app
            .ok(
                Method::POST,
                &format!("/api/v1/sessions/{session}/start"),
                token,
                None,
            )
            .await;
        assert_eq!(v["state"], "active", "{v}");
    }

    async fn end(&self, session: &str, token: &str) {
        let v = self
            .app
            .ok(
                Method::POST,
                &format!("/api/v1/sessions/{session}/end"),
                token,
                None,
            )
            .await;
        assert_eq!(v["state"], "ended", "{v}");
    }

    async fn fresh_device(&self, tag: &str) -> String {
        self.app.device(&self.acct, &format!("dev-{tag}")).await.0
    }

    async fn fresh_named(&self, kind: &str, tag: &str) -> String {
        let v = self
            .app
            .ok(
                Method::POST,
                &format!("/api/v1/{kind}"),
                self.admin(),
                Some(json!({"name": format!("{kind}-{tag}")})),
            )
            .await;
        s(&v["id"])
    }

    /// The objects a cell acts on, created fresh (as admin) so that cells do not interfere.
    async fn setup(&self, act: Act, role: usize) -> Vec<String> {
        let tag = format!("{act:?}-{}", ROLES[role]).to_lowercase();
        let other = self.other.0.as_str();
        match act {
            Act::NewActivationKey | Act::EditFirewall => vec![self.fresh_device(&tag).await],
            Act::ApproveDevice => vec![
                register_with_fleet_key(&self.app, &self.fleet_key, &format!("fleet-{tag}")).await,
            ],
            Act::AssignRole => {
                let v = self
                    .app
                    .ok(Method::POST, "/api/v1/users", self.admin(), Some(json!({"username": format!("u{role}-role"), "role": "user", "password": common::PASSWORD})))
                    .await;
                vec![s(&v["id"])]
            }
            Act::AddGroupMember => vec![self.fresh_named("groups", &tag).await],
            Act::AddPoolDevice => vec![self.fresh_named("pools", &tag).await],
            Act::CreateGrant => vec![
                self.fresh_named("groups", &tag).await,
                self.fresh_named("pools", &tag).await,
            ],
            Act::AddDeviceInsideGrants => vec![self.prepare(&self.d_in, &[other]).await],
            Act::AddDeviceOutsideGrants => vec![self.prepare(&self.d_in, &[]).await],
            Act::StartOwn => vec![
                self.prepare(&self.d_in, &[self.own_or_other(role).0.as_str()])
                    .await,
            ],
            Act::StartOthers => vec![self.prepare(&self.d_in, &[other]).await],
            Act::EndOthers | Act::SeeOthersActive | Act::ListShowsOthers => {
                let id = self.prepare(&self.d_in, &[other]).await;
                self.start(&id, &self.other.1).await;
                vec![id]
            }
            Act::SeeOthersEnded => {
                let id = self.prepare(&self.d_in, &[other]).await;
                self.start(&id, &self.other.1).await;
                self.end(&id, &self.other.1).await;
                vec![id]
            }
            Act::EndOwn | Act::JoinOwn => {
                let (uid, tok) = self.own_or_other(role);
                let id = self.prepare(&self.d_in, &[uid.as_str()]).await;
                self.start(&id, tok).await;
                vec![id]
            }
            Act::SeeOwnActiveAndEnded => {
                let (uid, tok) = self.own_or_other(role);
                let active = self.prepare(&self.d_in, &[uid.as_str()]).await;
                self.start(&active, tok).await;
                let ended = self.prepare(&self.d_in, &[uid.as_str()]).await;
                self.start(&ended, tok).await;
                self.end(&ended, tok).await;
                vec![active, ended]
            }
            _ => vec![],
        }
    }

    /// The request of a cell.
    fn request(&self, act: Act, role: usize, ctx: &[String]) -> (Method, String, Option<Value>) {
        let id = ctx.first().cloned().unwrap_or_default();
        let tag = format!("{act:?}-{}", ROLES[role]).to_lowercase();
        let session_body = |device: &str, users: Vec<&str>| json!({"name": tag, "devices": [{"device_id": device, "targets": [target_502()]}], "users": users});
        match act {
            Act::CreateDevice => (
                Method::POST,
                "/api/v1/devices".into(),
                Some(json!({"name": format!("new-{tag}")})),
            ),
            Act::NewActivationKey => (
                Method::POST,
                format!("/api/v1/devices/{id}/activation-key"),
                None,
            ),
            Act::CreateFleetKey => (
                Method::POST,
                "/api/v1/fleet-keys".into(),
                Some(json!({"name": tag, "expires_in_days": 7})),
            ),
            Act::ApproveDevice => (Method::POST, format!("/api/v1/devices/{id}/approve"), None),
            Act::EditFirewall => (
                Method::PATCH,
                format!("/api/v1/devices/{id}"),
                Some(
                    json!({"firewall": [{"address": "10.9.9.0/24", "protocol": "udp", "ports": "161"}]}),
                ),
            ),
            Act::CreateUser => (
                Method::POST,
                "/api/v1/users".into(),
                Some(
                    json!({"username": format!("new{role}"), "role": "user", "password": common::PASSWORD}),
                ),
            ),
            Act::AssignRole => (
                Method::PATCH,
                format!("/api/v1/users/{id}"),
                Some(json!({"role": "session_admin"})),
            ),
            Act::AccountSettings => {
                let mut settings =
                    serde_json::to_value(drawbridge_proto::AccountSettings::default()).unwrap();
                settings["adhoc_allowed"] = json!(true);
                settings["lockout_threshold"] = json!(10 + role);
                (
                    Method::PATCH,
                    "/api/v1/account".into(),
                    Some(json!({"settings": settings})),
                )
            }
            Act::CreateGroup => (
                Method::POST,
                "/api/v1/groups".into(),
                Some(json!({"name": tag})),
            ),
            Act::AddGroupMember => (
                Method::PUT,
                format!("/api/v1/groups/{id}/members/{}", self.other.0),
                None,
            ),
            Act::CreatePool => (
                Method::POST,
                "/api/v1/pools".into(),
                Some(json!({"name": tag})),
            ),
            Act::AddPoolDevice => (
                Method::PUT,
                format!("/api/v1/pools/{id}/devices/{}", self.d_out),
                None,
            ),
            Act::CreateGrant => (
                Method::POST,
                "/api/v1/grants".into(),
                Some(json!({"group_id": ctx[0], "pool_id": ctx[1], "level": "full"})),
            ),
            Act::PrepareInsideGrants => (
                Method::POST,
                "/api/v1/sessions".into(),
                Some(session_body(&self.d_in, vec![&self.other.0])),
            ),
            Act::PrepareOutsideGrants => (
                Method::POST,
                "/api/v1/sessions".into(),
                Some(session_body(&self.d_out, vec![])),
            ),
            Act::AddDeviceInsideGrants => (
                Method::POST,
                format!("/api/v1/sessions/{id}/devices"),
                Some(json!({"device_id": self.d_in2, "targets": [target_502()]})),
            ),
            Act::AddDeviceOutsideGrants => (
                Method::POST,
                format!("/api/v1/sessions/{id}/devices"),
                Some(json!({"device_id": self.d_out, "targets": [target_502()]})),
            ),
            Act::StartOwn | Act::StartOthers => {
                (Method::POST, format!("/api/v1/sessions/{id}/start"), None)
            }
            Act::JoinOwn => {
                // A fresh WireGuard public key (32 bytes, base64) per cell.
                let key: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
                    .iter()
                    .flat_map(|u| *u.as_bytes())
                    .collect();
                let body = json!({"public_key": STANDARD.encode(key)});
                (
                    Method::POST,
                    format!("/api/v1/sessions/{id}/join"),
                    Some(body),
                )
            }
            Act::Adhoc => (
                Method::POST,
                "/api/v1/sessions/adhoc".into(),
                Some(json!({"device_id": self.d_in})),
            ),
            Act::EndOthers | Act::EndOwn => {
                (Method::POST, format!("/api/v1/sessions/{id}/end"), None)
            }
            Act::SeeOthersActive | Act::SeeOthersEnded | Act::SeeOwnActiveAndEnded => {
                (Method::GET, format!("/api/v1/sessions/{id}"), None)
            }
            Act::ListShowsOthers => (Method::GET, "/api/v1/sessions".into(), None),
            Act::ReadAudit => (Method::GET, "/api/v1/audit".into(), None),
            Act::ExportAuditCsv => (Method::GET, "/api/v1/audit?format=csv".into(), None),
            Act::ExportAuditJsonl => (Method::GET, "/api/v1/audit?format=jsonl".into(), None),
            Act::VerifyAudit => (Method::GET, "/api/v1/audit/verify".into(), None),
        }
    }

    /// Performs a cell and says which kind of answer it got.
    async fn perform(&self, act: Act, role: usize, ctx: &[String]) -> Result<Cell, String> {
        let token = &self.who[role].1;
        let (method, path, body) = self.request(act, role, ctx);
        let (st, v) = self
            .app
            .call(method.clone(), &path, Some(token), body)
            .await;
        let got = classify(st, &v).map_err(|e| format!("{method} {path}: {e}"))?;
        match (act, got) {
            // A list that answers but leaves the object out hides it.
            (Act::ListShowsOthers, Y) => {
                let listed = v
                    .as_array()
                    .ok_or("the list is not an array")?
                    .iter()
                    .any(|x| x["id"] == json!(ctx[0]));
                Ok(if listed { Y } else { H })
            }
            // Both the active and the ended session must be visible.
            (Act::SeeOwnActiveAndEnded, Y) => {
                let (st2, v2) = self
                    .app
                    .get(&format!("/api/v1/sessions/{}", ctx[1]), token)
                    .await;
                let second = classify(st2, &v2)?;
                if v["state"] != "active" || (second == Y && v2["state"] != "ended") {
                    return Err(format!(
                        "unexpected states: {} / {}",
                        v["state"], v2["state"]
                    ));
                }
                Ok(second)
            }
            (Act::ExportAuditCsv, Y)
                if !v.as_str().is_some_and(|t| t.starts_with("account_id,seq,")) =>
            {
                Err(format!("not CSV: {v}"))
            }
            (Act::ExportAuditJsonl, Y)
                if !v.as_str().is_some_and(|t| {
                    t.lines().all(|l| serde_json::from_str::<Value>(l).is_ok())
                }) =>
            {
                Err(format!("not JSON lines: {v}"))
            }
            _ => Ok(got),
        }
    }

    /// The state a cell may change, straight from the database or as seen by
    /// the admin; None for read-only lines.
    async fn observe(&self, act: Act, ctx: &[String]) -> Option<Value> {
        let app = &self.app;
        let id = ctx.first().map(String::as_str).unwrap_or_default();
        let admin_get = |path: String| async move {
            let (st, v) = app.get(&path, &self.acct.admin).await;
            assert_eq!(st, StatusCode::OK, "{path}: {v}");
            v
        };
        Some(match act {
            Act::CreateDevice => json!(app.count("devices").await),
            Act::NewActivationKey => json!(
                scalar(
                    app,
                    "SELECT COUNT(*) FROM activation_keys WHERE device_id = $1",
                    &[id]
                )
                .await
            ),
            Act::CreateFleetKey => json!(app.count("fleet_keys").await),
            Act::ApproveDevice => {
                admin_get(format!("/api/v1/devices/{id}")).await["status"].clone()
            }
            Act::EditFirewall => {
                admin_get(format!("/api/v1/devices/{id}")).await["firewall"].clone()
            }
            Act::CreateUser => json!(app.count("users").await),
            Act::AssignRole => admin_get(format!("/api/v1/users/{id}")).await["role"].clone(),
            Act::AccountSettings => admin_get("/api/v1/account".into()).await["settings"].clone(),
            Act::CreateGroup => json!(app.count("groups_").await),
            Act::AddGroupMember => {
                admin_get(format!("/api/v1/groups/{id}")).await["members"].clone()
            }
            Act::CreatePool => json!(app.count("pools").await),
            Act::AddPoolDevice => admin_get(format!("/api/v1/pools/{id}")).await["devices"].clone(),
            Act::CreateGrant => json!(app.count("grants").await),
            Act::PrepareInsideGrants | Act::PrepareOutsideGrants | Act::Adhoc => {
                json!([
                    app.count("sessions").await,
                    app.count("session_devices").await,
                    app.count("session_users").await
                ])
            }
            Act::AddDeviceInsideGrants
            | Act::AddDeviceOutsideGrants
            | Act::StartOwn
            | Act::StartOthers
            | Act::EndOthers
            | Act::EndOwn => admin_get(format!("/api/v1/sessions/{id}")).await,
            Act::JoinOwn => json!(
                scalar(
                    app,
                    "SELECT COUNT(*) FROM tunnels WHERE session_id = $1",
                    &[id]
                )
                .await
            ),
            Act::SeeOthersActive
            | Act::SeeOthersEnded
            | Act::ListShowsOthers
            | Act::SeeOwnActiveAndEnded
            | Act::ReadAudit
            | Act::ExportAuditCsv
            | Act::ExportAuditJsonl
            | Act::VerifyAudit => return None,
        })
    }

    async fn check_cell(&self, act: Act, role: usize, expected: Cell) -> Result<(), String> {
        let ctx = self.setup(act, role).await;
        let before = self.observe(act, &ctx).await;
        let denied_before = denials(&self.app, &self.who[role].0).await;
        let got = self.perform(act, role, &ctx).await?;
        if got != expected {
            return Err(format!("expected {expected:?}, got {got:?}"));
        }
        let after = self.observe(act, &ctx).await;
        match (expected, &before) {
            (Y, Some(b)) if Some(b) == after.as_ref() => {
                return Err(format!("allowed, but nothing changed: {b}"));
            }
            (N | H, Some(b)) if Some(b) != after.as_ref() => {
                return Err(format!(
                    "refused, but the state changed from {b} to {}",
                    after.unwrap_or_default()
                ));
            }
            _ => {}
        }
        let denied_after = denials(&self.app, &self.who[role].0).await;
        match expected {
            N if denied_after <= denied_before => {
                Err("refused, but no `denied` audit entry names the caller".into())
            }
            Y | H if denied_after != denied_before => {
                Err("a `denied` audit entry for a request that was not refused".into())
            }
            _ => Ok(()),
        }
    }
}

/// 2xx → Y, 403 `forbidden` → N, 404 `not_found` → H; anything else is an error.
fn classify(st: StatusCode, v: &Value) -> Result<Cell, String> {
    if st.is_success() {
        Ok(Y)
    } else if st == StatusCode::FORBIDDEN && v["code"] == "forbidden" {
        Ok(N)
    } else if st == StatusCode::NOT_FOUND && v["code"] == "not_found" {
        Ok(H)
    } else {
        Err(format!("unexpected answer {st}: {v}"))
    }
}

async fn every_cell_of_the_design_role_table_is_enforced_and_refusals_change_nothing(app: TestApp) {
    let fx = Fx::new(app).await;
    let mut broken = Vec::new();
    for (line, act, cells) in MATRIX {
        for (role, expected) in cells.iter().enumerate() {
            if let Err(e) = fx.check_cell(*act, role, *expected).await {
                broken.push(format!("  {line} [{act:?}] as {}: {e}", ROLES[role]));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} cells of the DESIGN §3 table are broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
    // Every refusal above went on the record, and the chain still verifies.
    let v = fx
        .app
        .ok(Method::GET, "/api/v1/audit/verify", fx.admin(), None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
}

// ---------------------------------------------------------------- grant rules

fn t(address: &str, protocol: &str, ports: Option<&str>) -> Value {
    match ports {
        Some(p) => json!({"address": address, "protocol": protocol, "ports": p}),
        None => json!({"address": address, "protocol": protocol}),
    }
}

fn prepare_body(device: &str, targets: Value, users: &[&str]) -> Value {
    json!({"name": "job", "devices": [{"device_id": device, "targets": targets}], "users": users})
}

/// Asserts a 403 `forbidden` that created nothing and is on the record as a denial by `user_id`.
async fn assert_refused(
    app: &TestApp,
    user_id: &str,
    what: &str,
    (st, v): (StatusCode, Value),
    counts_before: [i64; 3],
) {
    assert_eq!(
        (st, v["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden")),
        "{what}: {v}"
    );
    assert_eq!(
        session_counts(app).await,
        counts_before,
        "{what}: a refused request changed sessions"
    );
    let last: Option<String> = sqlx::query_scalar(
        "SELECT result FROM audit_log WHERE actor = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(format!("user:{user_id}"))
    .fetch_optional(&app.state.store.pool)
    .await
    .expect("audit");
    assert_eq!(
        last.as_deref(),
        Some("denied"),
        "{what}: the refusal is not the caller's last audit entry"
    );
}

async fn session_counts(app: &TestApp) -> [i64; 3] {
    [
        app.count("sessions").await,
        app.count("session_devices").await,
        app.count("session_users").await,
    ]
}

async fn session_admins_release_only_devices_and_targets_inside_their_grants(app: TestApp) {
    let acct = app.account("acme").await;
    let (sam, sam_t) = app.user(&acct, "sam", "session_admin").await;
    let (d_full, _) = app.device(&acct, "press-full").await;
    let (d_restr, _) = app.device(&acct, "press-restricted").await;
    let (d_none, _) = app.device(&acct, "press-none").await;
    app.grant(&acct, &[&sam], &[&d_full], "full", json!([]))
        .await;
    app.grant(
        &acct,
        &[&sam],
        &[&d_restr],
        "restricted",
        json!([t("192.168.1.10", "tcp", Some("502"))]),
    )
    .await;

    // Inside the grants: allowed.
    let ok = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &sam_t,
            Some(prepare_body(
                &d_full,
                json!([t("192.168.1.0/24", "tcp", None)]),
                &[],
            )),
        )
        .await;
    assert_eq!(ok["state"], "prepared");
    let restr = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &sam_t,
            Some(prepare_body(
                &d_restr,
                json!([t("192.168.1.10", "tcp", Some("502"))]),
                &[],
            )),
        )
        .await;
    let restr = s(&restr["id"]);

    // Outside them: refused, nothing created, on the record.
    let cases = [
        (
            "a device no grant of theirs covers",
            &d_none,
            t("192.168.1.10", "tcp", Some("502")),
        ),
        (
            "a full grant's device, target outside the device firewall (address)",
            &d_full,
            t("10.0.0.1", "tcp", Some("22")),
        ),
        (
            "a full grant's device, target outside the device firewall (protocol)",
            &d_full,
            t("192.168.1.10", "udp", Some("161")),
        ),
        (
            "a restricted grant's device, another port",
            &d_restr,
            t("192.168.1.10", "tcp", Some("80")),
        ),
        (
            "a restricted grant's device, a wider subnet",
            &d_restr,
            t("192.168.1.0/24", "tcp", Some("502")),
        ),
        (
            "a restricted grant's device, all ports",
            &d_restr,
            t("192.168.1.10", "tcp", None),
        ),
        (
            "a restricted grant's device, another protocol",
            &d_restr,
            t("192.168.1.10", "icmp", None),
        ),
    ];
    for (what, device, target) in &cases {
        let before = session_counts(&app).await;
        let r = app
            .post(
                "/api/v1/sessions",
                &sam_t,
                prepare_body(device, json!([target]), &[]),
            )
            .await;
        assert_refused(&app, &sam, &format!("prepare: {what}"), r, before).await;
    }
    // The same through "add devices to a prepared session".
    for (what, device, target) in [
        (
            "a device no grant of theirs covers",
            &d_none,
            t("192.168.1.10", "tcp", Some("502")),
        ),
        (
            "a full grant's device, outside its firewall",
            &d_full,
            t("10.0.0.1", "tcp", Some("22")),
        ),
    ] {
        let before = session_counts(&app).await;
        let r = app
            .post(
                &format!("/api/v1/sessions/{restr}/devices"),
                &sam_t,
                json!({"device_id": device, "targets": [target]}),
            )
            .await;
        assert_refused(&app, &sam, &format!("add device: {what}"), r, before).await;
    }
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{restr}/devices"),
            &sam_t,
            Some(json!({"device_id": d_full, "targets": [t("192.168.1.20", "tcp", Some("80"))]})),
        )
        .await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    // The users they assign must be covered too, even where the session admin is.
    let (covered, _) = app.user(&acct, "carl", "user").await;
    let (bare, _) = app.user(&acct, "bert", "user").await;
    let (narrow, _) = app.user(&acct, "nora", "user").await;
    app.grant(&acct, &[&covered], &[&d_full], "full", json!([]))
        .await;
    let port_502 = t("192.168.1.10", "tcp", Some("502"));
    app.grant(
        &acct,
        &[&narrow],
        &[&d_full],
        "restricted",
        json!([port_502.clone()]),
    )
    .await;
    let body = prepare_body(&d_full, json!([port_502.clone()]), &[&covered, &narrow]);
    app.ok(Method::POST, "/api/v1/sessions", &sam_t, Some(body))
        .await;
    let port_80 = t("192.168.1.10", "tcp", Some("80"));
    for (what, target, user) in [
        ("a user without any grant", port_502, &bare),
        (
            "a restricted user, a port outside their grant",
            port_80,
            &narrow,
        ),
    ] {
        let before = session_counts(&app).await;
        let body = prepare_body(&d_full, json!([target]), &[user]);
        let r = app.post("/api/v1/sessions", &sam_t, body).await;
        assert_refused(
            &app,
            &sam,
            &format!("session admin assigns {what}"),
            r,
            before,
        )
        .await;
    }
    // An admin is bounded by the device firewall only.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &acct.admin,
            Some(prepare_body(
                &d_none,
                json!([t("192.168.1.10", "tcp", Some("502"))]),
                &[],
            )),
        )
        .await;
    assert_eq!(v["state"], "prepared");
    let before = session_counts(&app).await;
    let r = app
        .post(
            "/api/v1/sessions",
            &acct.admin,
            prepare_body(&d_none, json!([t("10.0.0.1", "tcp", Some("22"))]), &[]),
        )
        .await;
    assert_refused(
        &app,
        &acct.admin_id,
        "admin: outside the device firewall",
        r,
        before,
    )
    .await;
}

async fn users_are_put_into_sessions_only_for_devices_and_targets_their_grants_cover(app: TestApp) {
    let acct = app.account("acme").await;
    let (full, _) = app.user(&acct, "fred", "user").await;
    let (restr, restr_t) = app.user(&acct, "rita", "user").await;
    let (none, _) = app.user(&acct, "nina", "user").await;
    let (mon, _) = app.user(&acct, "moe", "user").await;
    let (aud, _) = app.user(&acct, "audrey", "auditor").await;
    let (d1, _) = app.device(&acct, "press-1").await;
    let (d2, _) = app.device(&acct, "press-2").await;
    app.grant(&acct, &[&full], &[&d1], "full", json!([])).await;
    let (restr_group, _) = app
        .grant(
            &acct,
            &[&restr],
            &[&d1],
            "restricted",
            json!([t("192.168.1.10", "tcp", Some("502"))]),
        )
        .await;
    app.grant(&acct, &[&mon], &[&d1], "monitor", json!([]))
        .await;
    let admin = acct.admin.clone();
    let me = acct.admin_id.clone();

    let both = app
        .ok(
            Method::POST,
            "/api/v1/sessions",
            &admin,
            Some(prepare_body(
                &d1,
                json!([t("192.168.1.10", "tcp", Some("502"))]),
                &[&full, &restr],
            )),
        )
        .await;
    assert_eq!(both["users"].as_array().unwrap().len(), 2);
    app.ok(
        Method::POST,
        "/api/v1/sessions",
        &admin,
        Some(prepare_body(
            &d1,
            json!([t("192.168.1.10", "tcp", Some("80"))]),
            &[&full],
        )),
    )
    .await;

    for (what, device, target, users) in [
        (
            "restricted user, a port outside the grant",
            &d1,
            t("192.168.1.10", "tcp", Some("80")),
            vec![restr.as_str()],
        ),
        (
            "restricted and full user together, a port outside the restricted grant",
            &d1,
            t("192.168.1.10", "tcp", Some("80")),
            vec![full.as_str(), restr.as_str()],
        ),
        (
            "user without any grant",
            &d1,
            t("192.168.1.10", "tcp", Some("502")),
            vec![none.as_str()],
        ),
        (
            "monitor-only user",
            &d1,
            t("192.168.1.10", "tcp", Some("502")),
            vec![mon.as_str()],
        ),
        (
            "full user, a device their grants do not cover",
            &d2,
            t("192.168.1.10", "tcp", Some("502")),
            vec![full.as_str()],
        ),
        (
            "full user, a target outside the device firewall",
            &d1,
            t("10.0.0.1", "tcp", Some("22")),
            vec![full.as_str()],
        ),
    ] {
        let before = session_counts(&app).await;
        let r = app
            .post(
                "/api/v1/sessions",
                &admin,
                prepare_body(device, json!([target]), &users),
            )
            .await;
        assert_refused(&app, &me, what, r, before).await;
    }
    // Auditors are never session users.
    let before = session_counts(&app).await;
    let (st, v) = app
        .post(
            "/api/v1/sessions",
            &admin,
            prepare_body(&d1, json!([t("192.168.1.10", "tcp", Some("502"))]), &[&aud]),
        )
        .await;
    assert!(st.is_client_error(), "an auditor in a session: {st} {v}");
    assert_eq!(session_counts(&app).await, before);

    // Adding a device the assigned users are not covered on is refused too.
    let s_full = app.session(&admin, &d1, &[&full]).await;
    let before = session_counts(&app).await;
    let r = app
        .post(
            &format!("/api/v1/sessions/{s_full}/devices"),
            &admin,
            json!({"device_id": d2, "targets": [t("192.168.1.10", "tcp", Some("502"))]}),
        )
        .await;
    assert_refused(
        &app,
        &me,
        "add a device the session's user is not covered on",
        r,
        before,
    )
    .await;

    // Grants are checked again at start: a revoked grant stops the start.
    let s_restr = app.session(&admin, &d1, &[&restr]).await;
    app.ok(
        Method::DELETE,
        &format!("/api/v1/groups/{restr_group}"),
        &admin,
        None,
    )
    .await;
    let before = session_counts(&app).await;
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{s_restr}/start"),
            Some(&restr_t),
            None,
        )
        .await;
    assert_refused(&app, &restr, "start after the grant was removed", r, before).await;
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{s_restr}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "prepared", "{v}");
}

async fn a_monitor_grant_shows_the_device_but_never_yields_a_session(app: TestApp) {
    let acct = app.account("acme").await;
    let (mon, mon_t) = app.user(&acct, "moe", "user").await;
    let (sa, sa_t) = app.user(&acct, "sam", "session_admin").await;
    let (d1, _) = app.device(&acct, "press-1").await;
    let (d2, _) = app.device(&acct, "press-2").await;
    app.grant(&acct, &[&mon, &sa], &[&d1], "monitor", json!([]))
        .await;
    let (_, a) = app.get("/api/v1/account", &acct.admin).await;
    let mut settings = a["settings"].clone();
    settings["adhoc_allowed"] = json!(true);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings})),
    )
    .await;

    // Visible: the device, its status and logbook.
    for tok in [&mon_t, &sa_t] {
        let v = app
            .ok(Method::GET, &format!("/api/v1/devices/{d1}"), tok, None)
            .await;
        assert_eq!(v["id"], json!(d1));
        let list = app.ok(Method::GET, "/api/v1/devices", tok, None).await;
        let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|d| &d["id"]).collect();
        assert_eq!(ids, vec![&json!(d1)], "only the monitored device");
        app.ok(
            Method::GET,
            &format!("/api/v1/devices/{d1}/logbook"),
            tok,
            None,
        )
        .await;
        let (st, _) = app.get(&format!("/api/v1/devices/{d2}"), tok).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    // No session: not by ad-hoc connect (with or without targets), not prepared by an admin,
    // not prepared by a session admin whose grant is monitor.
    let before = session_counts(&app).await;
    let r = app
        .post("/api/v1/sessions/adhoc", &mon_t, json!({"device_id": d1}))
        .await;
    assert_refused(&app, &mon, "ad-hoc connect with a monitor grant", r, before).await;
    let r = app
        .post(
            "/api/v1/sessions/adhoc",
            &mon_t,
            json!({"device_id": d1, "targets": [t("192.168.1.10", "tcp", Some("502"))]}),
        )
        .await;
    assert_refused(
        &app,
        &mon,
        "ad-hoc connect with a monitor grant, explicit target",
        r,
        before,
    )
    .await;
    let r = app
        .post(
            "/api/v1/sessions",
            &acct.admin,
            prepare_body(&d1, json!([t("192.168.1.10", "tcp", Some("502"))]), &[&mon]),
        )
        .await;
    assert_refused(
        &app,
        &acct.admin_id,
        "admin puts a monitor user into a session",
        r,
        before,
    )
    .await;
    let r = app
        .post(
            "/api/v1/sessions",
            &sa_t,
            prepare_body(&d1, json!([t("192.168.1.10", "tcp", Some("502"))]), &[]),
        )
        .await;
    assert_refused(
        &app,
        &sa,
        "session admin with a monitor grant prepares",
        r,
        before,
    )
    .await;
    assert_eq!(session_counts(&app).await, [0, 0, 0]);
}

async fn a_user_can_neither_see_nor_end_someone_elses_session(app: TestApp) {
    let acct = app.account("acme").await;
    let (u1, u1_t) = app.user(&acct, "ulla", "user").await;
    let (u2, u2_t) = app.user(&acct, "ute", "user").await;
    let (d1, _) = app.device(&acct, "press-1").await;
    app.grant(&acct, &[&u1, &u2], &[&d1], "full", json!([]))
        .await;
    let theirs = app.session(&acct.admin, &d1, &[&u2]).await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{theirs}/start"),
            &u2_t,
            None,
        )
        .await;
    assert_eq!(v["state"], "active");
    let snapshot = app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{theirs}"),
            &acct.admin,
            None,
        )
        .await;

    for (m, path) in [
        (Method::POST, format!("/api/v1/sessions/{theirs}/end")),
        (Method::GET, format!("/api/v1/sessions/{theirs}")),
        (Method::POST, format!("/api/v1/sessions/{theirs}/start")),
    ] {
        let (st, v) = app.call(m.clone(), &path, Some(&u1_t), None).await;
        assert_eq!(
            (st, v["code"].clone()),
            (StatusCode::NOT_FOUND, json!("not_found")),
            "{m} {path}: {v}"
        );
    }
    let list = app.ok(Method::GET, "/api/v1/sessions", &u1_t, None).await;
    assert!(!list.to_string().contains(&theirs), "{list}");
    let after = app
        .ok(
            Method::GET,
            &format!("/api/v1/sessions/{theirs}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(after, snapshot, "the session is untouched");
    assert_eq!(after["state"], "active");
    assert_eq!(
        scalar(
            &app,
            "SELECT COUNT(*) FROM sessions WHERE id = $1 AND state = 'active' AND ended_at IS NULL",
            &[&theirs]
        )
        .await,
        1
    );

    // Its own user ends it, as "user"; the other still cannot touch it afterwards.
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{theirs}/end"),
            &u2_t,
            None,
        )
        .await;
    assert_eq!(
        (v["state"].clone(), v["end_reason"].clone()),
        (json!("ended"), json!("user"))
    );
    let (st, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/sessions/{theirs}/end"),
            Some(&u1_t),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A session prepared for both is "own" for each of them.
    let shared = app.session(&acct.admin, &d1, &[&u1, &u2]).await;
    app.ok(
        Method::POST,
        &format!("/api/v1/sessions/{shared}/start"),
        &u2_t,
        None,
    )
    .await;
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{shared}/end"),
            &u1_t,
            None,
        )
        .await;
    assert_eq!(v["ended_by"], json!(format!("user:{u1}")));
}

async fn adhoc_connect_needs_the_account_setting_and_a_device_the_grant_covers(app: TestApp) {
    let acct = app.account("acme").await;
    let (u, u_t) = app.user(&acct, "ulla", "user").await;
    let (r, r_t) = app.user(&acct, "rita", "user").await;
    let (aud, aud_t) = app.user(&acct, "audrey", "auditor").await;
    let (d1, _) = app.device(&acct, "press-1").await;
    let (d2, _) = app.device(&acct, "press-2").await;
    app.grant(&acct, &[&u], &[&d1], "full", json!([])).await;
    app.grant(
        &acct,
        &[&r],
        &[&d1],
        "restricted",
        json!([t("192.168.1.10", "tcp", Some("502"))]),
    )
    .await;

    // Off by default: refused and on the record.
    let before = session_counts(&app).await;
    let res = app
        .post("/api/v1/sessions/adhoc", &u_t, json!({"device_id": d1}))
        .await;
    assert_refused(
        &app,
        &u,
        "ad-hoc connect while the account does not allow it",
        res,
        before,
    )
    .await;

    let (_, a) = app.get("/api/v1/account", &acct.admin).await;
    let mut settings = a["settings"].clone();
    settings["adhoc_allowed"] = json!(true);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings.clone()})),
    )
    .await;

    // Allowed: a session like any other, started, for the caller alone, on the record.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions/adhoc",
            &u_t,
            Some(json!({"device_id": d1})),
        )
        .await;
    assert_eq!(
        (v["state"].clone(), v["adhoc"].clone(), v["users"].clone()),
        (json!("active"), json!(true), json!([u]))
    );
    assert_eq!(v["devices"][0]["device_id"], json!(d1));
    assert_eq!(
        v["devices"][0]["targets"].as_array().unwrap().len(),
        2,
        "full: the device firewall: {v}"
    );
    let id = s(&v["id"]);
    let (_, audit) = app
        .get("/api/v1/audit?action=session.adhoc", &acct.admin)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["object"] == json!(format!("session:{id}")) && e["result"] == "ok"),
        "{audit}"
    );
    // A restricted grant gives its targets only.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions/adhoc",
            &r_t,
            Some(json!({"device_id": d1})),
        )
        .await;
    assert_eq!(
        v["devices"][0]["targets"],
        json!([t("192.168.1.10/32", "tcp", Some("502"))])
    );

    // Not on a device the grant does not cover (invisible to the user), not outside the grant,
    // not for auditors.
    let before = session_counts(&app).await;
    let (st, v) = app
        .post("/api/v1/sessions/adhoc", &u_t, json!({"device_id": d2}))
        .await;
    assert_eq!(
        (st, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found")),
        "{v}"
    );
    assert_eq!(session_counts(&app).await, before);
    let res = app
        .post(
            "/api/v1/sessions/adhoc",
            &r_t,
            json!({"device_id": d1, "targets": [t("192.168.1.10", "tcp", Some("80"))]}),
        )
        .await;
    assert_refused(
        &app,
        &r,
        "ad-hoc connect outside a restricted grant",
        res,
        before,
    )
    .await;
    let res = app
        .post(
            "/api/v1/sessions/adhoc",
            &u_t,
            json!({"device_id": d1, "targets": [t("10.0.0.1", "tcp", Some("22"))]}),
        )
        .await;
    assert_refused(
        &app,
        &u,
        "ad-hoc connect outside the device firewall",
        res,
        before,
    )
    .await;
    let res = app
        .post("/api/v1/sessions/adhoc", &aud_t, json!({"device_id": d1}))
        .await;
    assert_refused(&app, &aud, "ad-hoc connect by an auditor", res, before).await;

    // Under dual control it waits for approval like any other start.
    settings["dual_control"] = json!(true);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings.clone()})),
    )
    .await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/sessions/adhoc",
            &u_t,
            Some(json!({"device_id": d1})),
        )
        .await;
    assert_eq!(v["state"], "pending_approval", "{v}");

    // Switched off again: refused again.
    settings["adhoc_allowed"] = json!(false);
    app.ok(
        Method::PATCH,
        "/api/v1/account",
        &acct.admin,
        Some(json!({"settings": settings})),
    )
    .await;
    let before = session_counts(&app).await;
    let res = app
        .post("/api/v1/sessions/adhoc", &u_t, json!({"device_id": d1}))
        .await;
    assert_refused(
        &app,
        &u,
        "ad-hoc connect after the account stopped allowing it",
        res,
        before,
    )
    .await;
}
