//! The audit log: filter by time, actor, device, action; export; chain status.

use super::sessions::Names;
use crate::apiclient::enc;
use crate::web::{Layout, Viewer, download, render};
use askama::Template;
use axum::extract::Query;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{AuditEntry, AuditVerify, Device};
use serde::Deserialize;

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
    pub action: String,
    pub object: String,
    pub result: String,
    pub source: String,
    pub details: String,
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
}

pub async fn page(v: Viewer, Query(f): Query<Filter>) -> Response {
    let chain = match v.api.get::<AuditVerify>("/api/v1/audit/verify").await {
        Ok(c) => Some(c),
        Err(e) => return v.fail(&e),
    };
    let devices: Vec<Device> = v.api.get("/api/v1/devices").await.unwrap_or_default();
    let names = Names::load(&v, &devices).await;
    let (rows, error) = match f.api_query() {
        Err(e) => (Vec::new(), Some(e)),
        Ok(q) => {
            // The API answers oldest first (up to its maximum); the page shows the newest.
            match v
                .api
                .get::<Vec<AuditEntry>>(&format!("/api/v1/audit?{}", qs(&q)))
                .await
            {
                Ok(entries) => (
                    entries
                        .iter()
                        .rev()
                        .take(PAGE_LIMIT as usize)
                        .map(|e| Row {
                            seq: e.seq,
                            time: super::when(&e.time),
                            actor: names.actor(&e.actor),
                            action: e.action.clone(),
                            object: match e.object.strip_prefix("user:") {
                                Some(_) => format!("{} ({})", names.actor(&e.object), e.object),
                                None => e.object.clone(),
                            },
                            result: e.result.clone(),
                            source: e.source.clone(),
                            details: {
                                let d = e.details.to_string();
                                if d.chars().count() > 200 {
                                    format!("{}…", d.chars().take(200).collect::<String>())
                                } else {
                                    d
                                }
                            },
                        })
                        .collect(),
                    None,
                ),
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
        limit: PAGE_LIMIT,
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
