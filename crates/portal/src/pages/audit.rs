//! The audit log: filter by time, actor, device, action; export; chain status.

use super::sessions::Names;
use crate::apiclient::enc;
use crate::web::{Layout, Viewer, download, render};
use askama::Template;
use axum::extract::Query;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{
    ApiToken, AuditEntry, AuditVerify, Device, FleetKey, Grant, Group, Pool, Session,
};
use serde::Deserialize;
use std::collections::HashMap;

/// Most entries shown on the page (exports take the API's maximum).
const PAGE_LIMIT: u32 = 500;

#[derive(Deserialize, Default, Clone)]
pub struct Filter {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    format: String,
    /// Cursor: show the entries older than this sequence number.
    #[serde(default)]
    before: String,
    /// Entries per page (1 to `PAGE_LIMIT`).
    #[serde(default)]
    per_page: String,
}

impl Filter {
    /// The API query string for these filters (without format and limit).
    fn api_query(&self) -> Result<Vec<(String, String)>, String> {
        let mut q = Vec::new();
        for (name, v) in [("from", &self.from), ("to", &self.to)] {
            if let Some(t) = super::sessions::local_to_rfc3339_pub(v)? {
                q.push((name.to_string(), t));
            }
        }
        for (name, v) in [
            ("actor", &self.actor),
            ("device", &self.device),
            ("action", &self.action),
        ] {
            let v = v.trim();
            if !v.is_empty() {
                q.push((name.to_string(), v.to_string()));
            }
        }
        Ok(q)
    }
    /// This page's own query string, for the export links.
    fn page_query(&self) -> String {
        [
            ("from", &self.from),
            ("to", &self.to),
            ("actor", &self.actor),
            ("device", &self.device),
            ("action", &self.action),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("&{k}={}", enc(v.trim())))
        .collect()
    }
}

fn qs(q: &[(String, String)]) -> String {
    q.iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub struct Row {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    /// The raw actor (`user:<id>`, …), shown on hover.
    pub actor_id: String,
    pub action: String,
    pub object: String,
    pub object_id: String,
    pub result: String,
    pub source: String,
    /// The details as labelled fields.
    pub details: Vec<(String, String)>,
    /// For an entry that stands for several events: how many, and the last one's time.
    pub repeated: Option<(i64, String)>,
}

/// Everything an audit row may name, loaded once per page from the viewer's own
/// account (the API scopes every list, so another account's ids stay ids).
struct Refs {
    names: Names,
    sessions: HashMap<String, String>,
    groups: HashMap<String, String>,
    pools: HashMap<String, String>,
    /// `grant:<id>`, `token:<id>`, `fleet_key:<id>` → a label.
    others: HashMap<String, String>,
}

impl Refs {
    async fn load(v: &Viewer, devices: &[Device]) -> Refs {
        let names = Names::load(v, devices).await;
        let sessions = v.api.get::<Vec<Session>>("/api/v1/sessions").await;
        let groups = v.api.get::<Vec<Group>>("/api/v1/groups").await;
        let pools = v.api.get::<Vec<Pool>>("/api/v1/pools").await;
        let grants = v.api.get::<Vec<Grant>>("/api/v1/grants").await;
        let tokens = v.api.get::<Vec<ApiToken>>("/api/v1/tokens").await;
        let fleet_keys = v.api.get::<Vec<FleetKey>>("/api/v1/fleet-keys").await;
        // A list the viewer may not read leaves its ids as they are.
        let groups: HashMap<String, String> = groups
            .unwrap_or_default()
            .into_iter()
            .map(|g| (g.id, g.name.to_string()))
            .collect();
        let pools: HashMap<String, String> = pools
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.id, p.name.to_string()))
            .collect();
        let mut others = HashMap::new();
        for g in grants.unwrap_or_default() {
            let side = |m: &HashMap<String, String>, id: &str| {
                m.get(id).cloned().unwrap_or_else(|| super::short(id))
            };
            let label = format!(
                "grant {} → {}",
                side(&groups, &g.group_id),
                side(&pools, &g.pool_id)
            );
            others.insert(format!("grant:{}", g.id), label);
        }
        for t in tokens.unwrap_or_default() {
            others.insert(format!("token:{}", t.id), format!("token {}", t.name));
        }
        for k in fleet_keys.unwrap_or_default() {
            others.insert(
                format!("fleet_key:{}", k.id),
                format!("fleet key {}", k.name),
            );
        }
        Refs {
            names,
            sessions: sessions
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.id, s.name.to_string()))
                .collect(),
            groups,
            pools,
            others,
        }
    }

    /// A name for an `actor` or `object` reference (the raw reference is kept for hover).
    fn named(&self, r: &str) -> String {
        if let Some(id) = r.strip_prefix("device:") {
            return self.names.device(id);
        }
        if let Some(id) = r.strip_prefix("session:") {
            return self.session(id);
        }
        if let Some(n) = r.strip_prefix("group:").and_then(|id| self.groups.get(id)) {
            return format!("group {n}");
        }
        if let Some(n) = r.strip_prefix("pool:").and_then(|id| self.pools.get(id)) {
            return format!("pool {n}");
        }
        if let Some(n) = self.others.get(r) {
            return n.clone();
        }
        if let Some(id) = r.strip_prefix("rollout:") {
            return format!("rollout {}", super::short(id));
        }
        self.names.actor(r)
    }

    fn session(&self, id: &str) -> String {
        match self.sessions.get(id) {
            Some(n) => format!("session {n}"),
            None => format!("session {}", super::short(id)),
        }
    }

    /// A details value that is an id of a known kind, as a name.
    fn id_field(&self, key: &str, id: &str) -> Option<String> {
        Some(match key {
            "user_id" | "user" => self.names.user(id),
            "device_id" | "device" => self.names.device(id),
            "session_id" => self.session(id),
            "group_id" | "group" => self.groups.get(id)?.clone(),
            "pool_id" | "pool" => self.pools.get(id)?.clone(),
            "grant_id" => self.named(&format!("grant:{id}")),
            "token_id" => self.named(&format!("token:{id}")),
            _ => return None,
        })
    }
}

/// A details object as (label, value) pairs; nested objects are flattened into
/// dotted labels, lists into comma-separated values, ids of users, devices,
/// sessions, groups, pools, grants and tokens become names.
fn fields(refs: &Refs, d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match d {
        serde_json::Value::Null => {}
        serde_json::Value::Object(_) => flatten(refs, "", d, &mut out),
        other => out.push(("details".into(), clip(plain(other)))),
    }
    out.truncate(30);
    out
}

fn clip(s: String) -> String {
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// A value as text without JSON quoting: objects as `key=value` pairs.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(", "),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn flatten(refs: &Refs, prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    let serde_json::Value::Object(m) = v else {
        return;
    };
    for (k, v) in m.iter().take(30) {
        let label = if prefix.is_empty() {
            k.replace('_', " ")
        } else {
            format!("{prefix} {}", k.replace('_', " "))
        };
        if let serde_json::Value::String(id) = v
            && let Some(name) = refs.id_field(k, id)
        {
            out.push((label, name));
            continue;
        }
        match v {
            serde_json::Value::Object(_) if prefix.is_empty() => flatten(refs, &label, v, out),
            serde_json::Value::Null => {}
            _ => out.push((label, clip(plain(v)))),
        }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    l: Layout,
    f: Filter,
    rows: Vec<Row>,
    error: Option<String>,
    chain: Option<AuditVerify>,
    users: Vec<(String, String)>,
    devices: Vec<(String, String)>,
    export_query: String,
    limit: u32,
    /// The link to the next (older) page, when there is one.
    older: Option<String>,
}

pub async fn page(v: Viewer, Query(f): Query<Filter>) -> Response {
    let chain = match v
        .api
        .get::<AuditVerify>("/api/v1/audit/verify?incremental=true")
        .await
    {
        Ok(c) => Some(c),
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = v.api.get("/api/v1/devices").await.unwrap_or_default();
    let refs = Refs::load(&v, &devices).await;
    let mut older = None;
    let per_page = f
        .per_page
        .trim()
        .parse::<u32>()
        .map_or(PAGE_LIMIT, |n| n.clamp(1, PAGE_LIMIT));
    let (rows, error) = match f.api_query() {
        Err(e) => (Vec::new(), Some(e)),
        Ok(mut q) => {
            // One page, newest first, from the cursor on; one entry more than shown
            // tells whether an older page exists.
            q.push(("order".into(), "desc".into()));
            q.push(("limit".into(), (per_page + 1).to_string()));
            if let Ok(before) = f.before.trim().parse::<i64>() {
                q.push(("after_seq".into(), before.to_string()));
            }
            match v
                .api
                .get::<Vec<AuditEntry>>(&format!("/api/v1/audit?{}", qs(&q)))
                .await
            {
                Ok(mut entries) => {
                    if entries.len() > per_page as usize {
                        entries.truncate(per_page as usize);
                        if let Some(last) = entries.last() {
                            older = Some(format!(
                                "/portal/audit?before={}&per_page={per_page}{}",
                                last.seq,
                                f.page_query()
                            ));
                        }
                    }
                    (
                        entries
                            .iter()
                            .map(|e| Row {
                                seq: e.seq,
                                time: super::when(&e.time),
                                actor: refs.named(&e.actor),
                                actor_id: e.actor.clone(),
                                action: e.action.clone(),
                                object: refs.named(&e.object),
                                object_id: e.object.clone(),
                                result: e.result.clone(),
                                source: e.source.clone(),
                                details: fields(&refs, &e.details),
                                repeated: e
                                    .repeated
                                    .as_ref()
                                    .map(|r| (r.count, super::when(&r.last))),
                            })
                            .collect(),
                        None,
                    )
                }
                Err(e) => (Vec::new(), Some(e.message)),
            }
        }
    };
    let mut users: Vec<(String, String)> = refs
        .names
        .users
        .iter()
        .map(|(id, n)| (format!("user:{id}"), n.clone()))
        .collect();
    users.sort_by(|a, b| a.1.cmp(&b.1));
    let page = AuditPage {
        l: v.layout("Audit log"),
        export_query: f.page_query(),
        f,
        rows,
        error,
        chain,
        users,
        devices: devices
            .iter()
            .map(|d| (d.id.clone(), d.name.to_string()))
            .collect(),
        limit: per_page,
        older,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

pub async fn export(v: Viewer, Query(f): Query<Filter>) -> Response {
    let (format, name, ctype) = match f.format.as_str() {
        "csv" => ("csv", "drawbridge-audit.csv", "text/csv; charset=utf-8"),
        _ => ("jsonl", "drawbridge-audit.jsonl", "application/x-ndjson"),
    };
    let mut q = match f.api_query() {
        Ok(q) => q,
        Err(e) => return crate::web::error_page(StatusCode::BAD_REQUEST, &e),
    };
    q.push(("format".into(), format.into()));
    let a = v
        .api
        .raw(Method::GET, &format!("/api/v1/audit?{}", qs(&q)), None)
        .await;
    if let Some(e) = a.error() {
        return v.fail(&e);
    }
    download(name, ctype, a.body)
}
