//! The audit log: filter by time, actor, device, action; export; chain status.

use super::sessions::Names;
use crate::apiclient::enc;
use crate::web::{Layout, Viewer, download, render};
use askama::Template;
use axum::extract::Query;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{AuditEntry, AuditVerify, Device, Session};
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

/// A name for an `actor` or `object` reference, the raw reference kept for hover.
fn named(names: &Names, sessions: &HashMap<String, String>, r: &str) -> String {
    if let Some(id) = r.strip_prefix("device:") {
        return names.device(id);
    }
    if let Some(id) = r.strip_prefix("session:") {
        return session_name(sessions, id);
    }
    names.actor(r)
}

fn session_name(sessions: &HashMap<String, String>, id: &str) -> String {
    match sessions.get(id) {
        Some(n) => format!("session {n}"),
        None => format!("session {}", super::short(id)),
    }
}

/// A details object as (label, value) pairs; nested objects are flattened into
/// dotted labels, lists into comma-separated values, ids of users, devices and
/// sessions become names.
fn fields(
    names: &Names,
    sessions: &HashMap<String, String>,
    d: &serde_json::Value,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match d {
        serde_json::Value::Null => {}
        serde_json::Value::Object(_) => flatten(names, sessions, "", d, &mut out),
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

fn flatten(
    names: &Names,
    sessions: &HashMap<String, String>,
    prefix: &str,
    v: &serde_json::Value,
    out: &mut Vec<(String, String)>,
) {
    let serde_json::Value::Object(m) = v else {
        return;
    };
    for (k, v) in m.iter().take(30) {
        let label = if prefix.is_empty() {
            k.replace('_', " ")
        } else {
            format!("{prefix} {}", k.replace('_', " "))
        };
        match (k.as_str(), v) {
            ("user_id", serde_json::Value::String(id)) => out.push((label, names.user(id))),
            ("device_id", serde_json::Value::String(id)) => out.push((label, names.device(id))),
            ("session_id", serde_json::Value::String(id)) => {
                out.push((label, session_name(sessions, id)))
            }
            (_, serde_json::Value::Object(_)) if prefix.is_empty() => {
                flatten(names, sessions, &label, v, out)
            }
            (_, serde_json::Value::Null) => {}
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
    let names = Names::load(&v, &devices).await;
    let sessions: HashMap<String, String> = v
        .api
        .get::<Vec<Session>>("/api/v1/sessions")
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.id, s.name.to_string()))
        .collect();
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
                                actor: named(&names, &sessions, &e.actor),
                                actor_id: e.actor.clone(),
                                action: e.action.clone(),
                                object: named(&names, &sessions, &e.object),
                                object_id: e.object.clone(),
                                result: e.result.clone(),
                                source: e.source.clone(),
                                details: fields(&names, &sessions, &e.details),
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
    let mut users: Vec<(String, String)> = names
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
