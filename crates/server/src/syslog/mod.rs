//! SIEM streaming: audit entries to syslog receivers as they are committed,
//! RFC 5424 over TCP (octet counting) or TLS (RFC 5425) ([`format`]).
//!
//! Targets are the server's (`--syslog`, every account's entries) and each
//! account's own (`PUT /api/v1/account/syslog`, admins; checked like webhook
//! URLs). Delivery is at least once and in order per account: a cursor per
//! (target, account) in the database moves only after the receiver took the
//! entries, so an outage or a restart resumes where the stream stopped; on
//! several replicas one holds a target's lease at a time ([`worker`]).

pub mod format;
pub mod worker;

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use drawbridge_proto::{Action, ApiError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Most syslog targets of one account.
pub const MAX_ACCOUNT_TARGETS: usize = 4;

/// A receiver: `tcp://HOST:PORT` or `tls://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `tcp://host:port` or `tls://host:port`; with `allow_private`
    /// false, loopback and private addresses written in the URL are refused
    /// (an account's targets, as for webhooks).
    pub fn parse(s: &str, check: Option<bool>) -> Result<Target, String> {
        if s.len() > 300 {
            return Err("a syslog URL has at most 300 characters".into());
        }
        let url = url::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "tcp" => false,
            "tls" => true,
            other => {
                return Err(format!(
                    "{other}: a syslog URL is tcp://HOST:PORT or tls://HOST:PORT"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() || url.path().len() > 1 {
            return Err("a syslog URL is only tcp://HOST:PORT or tls://HOST:PORT".into());
        }
        let host = url
            .host_str()
            .ok_or("a syslog URL needs a host")?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = url.port().ok_or("a syslog URL needs a port")?;
        if let Some(allow_private) = check {
            // The same address rule as webhooks.
            let as_https = format!("https://{}:{port}/", url.host_str().unwrap_or_default());
            crate::outbox::ssrf::check_url(&as_https, allow_private)
                .map_err(|e| e.replace("webhook", "syslog target"))?;
        }
        Ok(Target { tls, host, port })
    }

    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{host}:{}",
            if self.tls { "tls" } else { "tcp" },
            self.port
        )
    }
}

/// The HOSTNAME of this server's messages: its public URL's host.
pub fn format_host(public_url: &str) -> String {
    url::Url::parse(public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

/// An account's syslog targets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyslogTargets {
    /// `tcp://HOST:PORT` or `tls://HOST:PORT`, at most 4.
    pub targets: Vec<String>,
}

/// A target's state, for the account's admins.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyslogTargetStatus {
    pub url: String,
    /// The last entry the receiver took (the account's sequence number).
    pub sent_seq: i64,
    /// Unix seconds of the last successful send.
    pub last_sent_at: Option<i64>,
    pub last_error: Option<String>,
}

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(get_targets, put_targets))
}

/// The account's syslog targets and how far each got.
#[utoipa::path(get, path = "/api/v1/account/syslog", tag = "account",
    responses((status = 200, body = Vec<SyslogTargetStatus>), (status = 403, body = ApiError)))]
async fn get_targets(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Vec<SyslogTargetStatus>>> {
    caller
        .require(&state, Action::ManageUsers, "syslog.read")
        .await?;
    Ok(Json(worker::status(&state, &caller.account_id).await?))
}

/// Replace the account's syslog targets (admins). A new target gets the
/// account's whole audit log, from its first entry.
#[utoipa::path(put, path = "/api/v1/account/syslog", tag = "account", request_body = SyslogTargets,
    responses((status = 200, body = Vec<SyslogTargetStatus>), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn put_targets(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SyslogTargets>,
) -> AppResult<Json<Vec<SyslogTargetStatus>>> {
    caller
        .require(&state, Action::ManageUsers, "syslog.update")
        .await?;
    if req.targets.len() > MAX_ACCOUNT_TARGETS {
        return Err(AppError::invalid(format!(
            "at most {MAX_ACCOUNT_TARGETS} syslog targets"
        )));
    }
    let allow_private = state.notify.get().allow_private;
    let mut urls = Vec::new();
    for t in &req.targets {
        let t = Target::parse(t, Some(allow_private)).map_err(AppError::invalid)?;
        if !urls.contains(&t.url()) {
            urls.push(t.url());
        }
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    worker::replace_account_targets(&mut tx, &caller.account_id, &urls, now).await?;
    let ev = caller
        .event("syslog.update", "account")
        .details(serde_json::json!({"username": caller.username, "targets": urls}));
    crate::audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(worker::status(&state, &caller.account_id).await?))
}
