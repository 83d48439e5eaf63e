//! A typed client for the control API (`/api/v1`) over HTTPS.
//!
//! TLS is rustls with the ring provider. The client trusts the system's root
//! certificates plus, optionally, one PEM file (the self-signed server's CA).

use drawbridge_proto::api::*;
use drawbridge_proto::{API_PREFIX, ErrorCode};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with its JSON error body: its message is for people
    /// (the stable code is for programs: `code()`, and `--json` callers).
    #[error("{}", human(*code, message))]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error(
        "the server's certificate is not trusted: pass --ca-file with the server's CA (printed by drawbridge-server at start) ({detail})"
    )]
    UntrustedCertificate { detail: String },
    #[error("the server's certificate is not valid for {host} ({detail}); check the server URL")]
    CertificateNameMismatch { host: String, detail: String },
    #[error("cannot reach {server}: {detail}")]
    Connect { server: String, detail: String },
    #[error("{server} did not answer in time")]
    Timeout { server: String },
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("unexpected answer from the server (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
    #[error("request failed: {0}")]
    Http(String),
}

/// An API error as a line for people: the server's message, led in by what
/// happened where the message alone would not say it.
fn human(code: ErrorCode, message: &str) -> String {
    let lead = match code {
        ErrorCode::BadRequest => "the server could not read the request",
        ErrorCode::PayloadTooLarge => "the request is too large",
        ErrorCode::Internal => "the server failed",
        _ if message.trim().is_empty() => match code {
            ErrorCode::Invalid => "a value was not accepted",
            ErrorCode::Unauthenticated => "not logged in",
            ErrorCode::LoginFailed => "login failed",
            ErrorCode::LoginIncomplete => "the login is not finished",
            ErrorCode::Forbidden => "your role or grants do not allow this",
            ErrorCode::NotFound => "not found",
            ErrorCode::Conflict => "not possible in the current state",
            ErrorCode::PasswordPolicy => "the password does not meet the policy",
            ErrorCode::RateLimited => "too many attempts; try again later",
            _ => "the code or key was not accepted",
        },
        _ => return message.to_string(),
    };
    if message.trim().is_empty() || message == lead {
        lead.to_string()
    } else {
        format!("{lead}: {message}")
    }
}

impl Error {
    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Normalises a server address: adds `https://` when no scheme is given,
/// refuses plain HTTP, drops a trailing slash.
pub fn normalize_server(url: &str) -> Result<String> {
    let url = url.trim();
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| Error::BadUrl {
        url: url.into(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() != "https" {
        return Err(Error::BadUrl {
            url: url.into(),
            reason: "the server is reached over https only".into(),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::BadUrl {
            url: url.into(),
            reason: "no host".into(),
        });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::BadUrl {
            url: url.into(),
            reason: "give only scheme, host, port and path".into(),
        });
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Builds the rustls configuration: ring provider, system roots plus `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    // Missing or unreadable system stores are not fatal: --ca-file may be all we need.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let ca_err = |reason: String| Error::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ca_err(format!("not a PEM certificate file ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("unusable certificate ({e})")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The first rustls error in an error's chain (looking inside `io::Error`s too).
fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error::source() skips the wrapped error itself; look at it directly.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_rustls_error(inner))
        {
            return Some(inner);
        }
        cur = err.source();
    }
    None
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The innermost error's message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The control API, as one server and (optionally) one bearer token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The TLS settings, for the WebSocket channel and the relay.
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for `server` trusting the system roots and `ca_file`.
    pub fn new(server: &str, ca_file: Option<&Path>) -> Result<Self> {
        let base = normalize_server(server)?;
        let tls = tls_config(ca_file)?;
        let mut ws_tls = tls.clone();
        ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()]; // WebSockets upgrade over HTTP/1.1
        let mut builder = reqwest::Client::builder();
        // HTTPS_PROXY is honoured by reqwest itself; DRAWBRIDGE_PROXY names ours explicitly.
        if let Ok(p) = std::env::var("DRAWBRIDGE_PROXY")
            && !p.trim().is_empty()
        {
            let proxy = reqwest::Proxy::all(p.trim()).map_err(|_| {
                Error::Tls(
                    "DRAWBRIDGE_PROXY is not a proxy URL (http://[user:password@]host:port)".into(),
                )
            })?;
            builder = builder.proxy(proxy);
        }
        let http = builder
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("drawbridge/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Tls(chain_text(&e)))?;
        Ok(Client {
            http,
            base,
            token: None,
            tls: Arc::new(ws_tls),
        })
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn set_token(&mut self, token: impl Into<String>) {
        self.token = Some(token.into());
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// TLS settings for WebSockets (channel, relay): the same trust, HTTP/1.1 only.
    pub fn ws_tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if let Some(tls) = find_rustls_error(&e) {
            return match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                ) => Error::CertificateNameMismatch {
                    host: url::Url::parse(&self.base)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                        .unwrap_or_default(),
                    detail: tls.to_string(),
                },
                rustls::Error::InvalidCertificate(_) => Error::UntrustedCertificate {
                    detail: tls.to_string(),
                },
                other => Error::Connect {
                    server: self.base.clone(),
                    detail: format!("TLS: {other}"),
                },
            };
        }
        if e.is_timeout() {
            return Error::Timeout {
                server: self.base.clone(),
            };
        }
        if e.is_connect() {
            return Error::Connect {
                server: self.base.clone(),
                detail: root_cause(&e),
            };
        }
        Error::Http(chain_text(&e))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn erased::Json>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        self.send_full(method, path, query, body)
            .await
            .map(|(status, _, bytes)| (status, bytes))
    }

    /// [`Self::send`], also handing back the response headers.
    async fn send_full(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn erased::Json>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut req = self.http.request(method, self.url(path));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_json());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return Ok((status, headers, bytes.to_vec()));
        }
        match serde_json::from_slice::<drawbridge_proto::ApiError>(&bytes) {
            Ok(e) => Err(Error::Api {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            }),
            Err(_) => Err(Error::Unexpected {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn erased::Json>,
    ) -> Result<T> {
        let (status, bytes) = self.send(method, path, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Unexpected {
            status: status.as_u16(),
            detail: format!("the answer does not parse: {e}"),
        })
    }

    async fn empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn erased::Json>,
    ) -> Result<()> {
        self.send(method, path, &[], body).await.map(|_| ())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(Method::GET, path, &[], None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.json(Method::POST, path, &[], Some(&erased::Body(body)))
            .await
    }

    async fn post_empty_body<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(Method::POST, path, &[], None).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.json(Method::PATCH, path, &[], Some(&erased::Body(body)))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.empty(Method::DELETE, path, None).await
    }

    pub async fn put(&self, path: &str) -> Result<()> {
        self.empty(Method::PUT, path, None).await
    }

    // ------------------------------------------------------------ auth & me

    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse> {
        self.post("/auth/login", req).await
    }
    pub async fn login_totp(&self, code: &str) -> Result<LoginResponse> {
        self.post("/auth/totp", &TotpCode { code: code.into() })
            .await
    }
    pub async fn logout(&self) -> Result<()> {
        self.empty(Method::POST, "/auth/logout", None).await
    }
    pub async fn me(&self) -> Result<WhoAmI> {
        self.get("/me").await
    }
    pub async fn change_password(&self, current: &str, new: &str) -> Result<LoginResponse> {
        let req = PasswordChangeRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.post("/me/password", &req).await
    }
    pub async fn totp_enroll(&self) -> Result<TotpEnrollResponse> {
        self.post_empty_body("/me/totp/enroll").await
    }
    pub async fn totp_confirm(&self, code: &str) -> Result<LoginResponse> {
        self.post("/me/totp/confirm", &TotpCode { code: code.into() })
            .await
    }

    // ------------------------------------------------------------ tokens

    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.get("/tokens").await
    }
    pub async fn create_token(&self, req: &CreateApiToken) -> Result<CreatedApiToken> {
        self.post("/tokens", req).await
    }
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.delete(&format!("/tokens/{}", seg(id))).await
    }

    // ------------------------------------------------------------ account

    pub async fn account(&self) -> Result<Account> {
        self.get("/account").await
    }
    pub async fn update_account(&self, req: &UpdateAccount) -> Result<Account> {
        self.patch("/account", req).await
    }
    pub async fn notifications(&self) -> Result<Vec<Notification>> {
        self.get("/notifications").await
    }

    // ------------------------------------------------------------ users

    pub async fn users(&self) -> Result<Vec<User>> {
        self.get("/users").await
    }
    pub async fn user(&self, id: &str) -> Result<User> {
        self.get(&format!("/users/{}", seg(id))).await
    }
    pub async fn create_user(&self, req: &CreateUser) -> Result<User> {
        self.post("/users", req).await
    }
    pub async fn update_user(&self, id: &str, req: &UpdateUser) -> Result<User> {
        self.patch(&format!("/users/{}", seg(id)), req).await
    }

    // ------------------------------------------------------------ groups, pools, grants

    pub async fn groups(&self) -> Result<Vec<Group>> {
        self.get("/groups").await
    }
    pub async fn group(&self, id: &str) -> Result<Group> {
        self.get(&format!("/groups/{}", seg(id))).await
    }
    pub async fn create_group(&self, name: drawbridge_proto::Name) -> Result<Group> {
        self.post("/groups", &CreateNamed { name }).await
    }
    pub async fn delete_group(&self, id: &str) -> Result<()> {
        self.delete(&format!("/groups/{}", seg(id))).await
    }
    pub async fn add_member(&self, group: &str, user: &str) -> Result<()> {
        self.put(&format!("/groups/{}/members/{}", seg(group), seg(user)))
            .await
    }
    pub async fn remove_member(&self, group: &str, user: &str) -> Result<()> {
        self.delete(&format!("/groups/{}/members/{}", seg(group), seg(user)))
            .await
    }
    pub async fn pools(&self) -> Result<Vec<Pool>> {
        self.get("/pools").await
    }
    pub async fn pool(&self, id: &str) -> Result<Pool> {
        self.get(&format!("/pools/{}", seg(id))).await
    }
    pub async fn create_pool(&self, name: drawbridge_proto::Name) -> Result<Pool> {
        self.post("/pools", &CreateNamed { name }).await
    }
    pub async fn delete_pool(&self, id: &str) -> Result<()> {
        self.delete(&format!("/pools/{}", seg(id))).await
    }
    pub async fn add_pool_device(&self, pool: &str, device: &str) -> Result<()> {
        self.put(&format!("/pools/{}/devices/{}", seg(pool), seg(device)))
            .await
    }
    pub async fn remove_pool_device(&self, pool: &str, device: &str) -> Result<()> {
        self.delete(&format!("/pools/{}/devices/{}", seg(pool), seg(device)))
            .await
    }
    pub async fn grants(&self) -> Result<Vec<Grant>> {
        self.get("/grants").await
    }
    pub async fn create_grant(&self, req: &CreateGrant) -> Result<Grant> {
        self.post("/grants", req).await
    }
    pub async fn delete_grant(&self, id: &str) -> Result<()> {
        self.delete(&format!("/grants/{}", seg(id))).await
    }

    // ------------------------------------------------------------ devices

    pub async fn devices(&self) -> Result<Vec<Device>> {
        self.get("/devices").await
    }
    pub async fn device(&self, id: &str) -> Result<Device> {
        self.get(&format!("/devices/{}", seg(id))).await
    }
    pub async fn create_device(&self, req: &CreateDevice) -> Result<CreatedDevice> {
        self.post("/devices", req).await
    }
    pub async fn update_device(&self, id: &str, req: &UpdateDevice) -> Result<Device> {
        self.patch(&format!("/devices/{}", seg(id)), req).await
    }
    pub async fn delete_device(&self, id: &str) -> Result<()> {
        self.delete(&format!("/devices/{}", seg(id))).await
    }
    pub async fn approve_device(&self, id: &str) -> Result<Device> {
        self.post_empty_body(&format!("/devices/{}/approve", seg(id)))
            .await
    }
    /// Archived devices (hidden from `devices`).
    pub async fn archived_devices(&self) -> Result<Vec<Device>> {
        self.get("/devices?archived=true").await
    }
    /// `disable`, `enable` or `archive` a device.
    pub async fn device_service(&self, id: &str, verb: &str) -> Result<Device> {
        self.post_empty_body(&format!("/devices/{}/{verb}", seg(id)))
            .await
    }
    pub async fn replace_device(&self, id: &str) -> Result<ActivationKey> {
        self.post_empty_body(&format!("/devices/{}/replace", seg(id)))
            .await
    }
    pub async fn new_activation_key(&self, id: &str) -> Result<ActivationKey> {
        self.post_empty_body(&format!("/devices/{}/activation-key", seg(id)))
            .await
    }
    pub async fn logbook(&self, id: &str) -> Result<Vec<LogEntry>> {
        self.get(&format!("/devices/{}/logbook", seg(id))).await
    }
    pub async fn add_log(&self, id: &str, req: &CreateLogEntry) -> Result<LogEntry> {
        self.post(&format!("/devices/{}/logbook", seg(id)), req)
            .await
    }
    pub async fn fleet_keys(&self) -> Result<Vec<FleetKey>> {
        self.get("/fleet-keys").await
    }
    pub async fn create_fleet_key(&self, req: &CreateFleetKey) -> Result<CreatedFleetKey> {
        self.post("/fleet-keys", req).await
    }
    pub async fn revoke_fleet_key(&self, id: &str) -> Result<()> {
        self.delete(&format!("/fleet-keys/{}", seg(id))).await
    }

    // ------------------------------------------------------------ sessions

    pub async fn sessions(
        &self,
        state: Option<drawbridge_proto::SessionState>,
    ) -> Result<Vec<Session>> {
        let query: Vec<(&str, String)> = state
            .map(|s| vec![("state", s.as_str().to_string())])
            .unwrap_or_default();
        self.json(Method::GET, "/sessions", &query, None).await
    }
    pub async fn session(&self, id: &str) -> Result<Session> {
        self.get(&format!("/sessions/{}", seg(id))).await
    }
    pub async fn prepare_session(&self, req: &PrepareSession) -> Result<Session> {
        self.post("/sessions", req).await
    }
    pub async fn add_session_device(&self, id: &str, req: &SessionDevice) -> Result<Session> {
        self.post(&format!("/sessions/{}/devices", seg(id)), req)
            .await
    }
    pub async fn start_session(&self, id: &str) -> Result<Session> {
        self.post_empty_body(&format!("/sessions/{}/start", seg(id)))
            .await
    }
    pub async fn end_session(&self, id: &str) -> Result<Session> {
        self.post_empty_body(&format!("/sessions/{}/end", seg(id)))
            .await
    }
    /// An approver's decision on devices waiting for approval (one, or every one an approver may decide).
    pub async fn decide_session(
        &self,
        id: &str,
        req: &drawbridge_proto::api::Decision,
    ) -> Result<Session> {
        self.post(&format!("/sessions/{}/approve", seg(id)), req)
            .await
    }
    pub async fn adhoc_session(&self, req: &AdhocSession) -> Result<Session> {
        self.post("/sessions/adhoc", req).await
    }

    // ------------------------------------------------------------ audit

    /// The export (`json`, `jsonl` or `csv`) in the server's format. With a
    /// `limit`, one page of at most that many entries; without, every page the
    /// server has (it says where the next one starts in `x-next-after-seq`),
    /// joined into one document: one JSON array, JSON lines, or CSV with one header.
    /// `page_size` sets how many entries each request asks for while reading every page.
    pub async fn audit_export(&self, q: &AuditQuery, page_size: Option<u32>) -> Result<Vec<u8>> {
        let fmt_time = |t: &time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &q.from {
            query.push(("from", fmt_time(t)));
        }
        if let Some(t) = &q.to {
            query.push(("to", fmt_time(t)));
        }
        if let Some(v) = &q.actor {
            query.push(("actor", v.clone()));
        }
        if let Some(v) = &q.device {
            query.push(("device", v.clone()));
        }
        if let Some(v) = &q.action {
            query.push(("action", v.clone()));
        }
        if let Some(v) = &q.format {
            query.push(("format", v.clone()));
        }
        if let Some(v) = &q.order {
            query.push(("order", v.clone()));
        }
        if let Some(v) = q.limit.or(page_size) {
            query.push(("limit", v.to_string()));
        }
        let format = q.format.as_deref().unwrap_or("json");
        let mut pages = AuditPages::new(format);
        let mut after = q.after_seq;
        loop {
            let mut page_query = query.clone();
            if let Some(seq) = after {
                page_query.push(("after_seq", seq.to_string()));
            }
            let (_, headers, body) = self
                .send_full(Method::GET, "/audit", &page_query, None)
                .await?;
            pages.push(&body)?;
            let next = headers
                .get(AUDIT_NEXT_AFTER_SEQ)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            match next {
                // A cursor that does not move on would loop forever: stop there.
                Some(seq) if q.limit.is_none() && after != Some(seq) => after = Some(seq),
                _ => break,
            }
        }
        pages.finish()
    }
    pub async fn audit_verify(&self) -> Result<AuditVerify> {
        self.get("/audit/verify").await
    }
}

/// The header in which the server names the cursor of the next audit page.
const AUDIT_NEXT_AFTER_SEQ: &str = "x-next-after-seq";

/// Audit export pages joined into one document of their format.
struct AuditPages {
    format: String,
    out: Vec<u8>,
    entries: Vec<serde_json::Value>,
    pages: usize,
}

impl AuditPages {
    fn new(format: &str) -> AuditPages {
        AuditPages {
            format: format.to_string(),
            out: Vec::new(),
            entries: Vec::new(),
            pages: 0,
        }
    }

    fn push(&mut self, page: &[u8]) -> Result<()> {
        self.pages += 1;
        match self.format.as_str() {
            "json" => {
                let v: Vec<serde_json::Value> =
                    serde_json::from_slice(page).map_err(|_| Error::Unexpected {
                        status: 200,
                        detail: "the audit page is not a JSON array".into(),
                    })?;
                self.entries.extend(v);
            }
            "csv" if self.pages > 1 => {
                // Every page starts with the header line; keep the first one only.
                let body = match page.iter().position(|&b| b == b'\n') {
                    Some(i) => &page[i + 1..],
                    None => &[][..],
                };
                self.out.extend_from_slice(body);
            }
            _ => self.out.extend_from_slice(page),
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        if self.format == "json" {
            return serde_json::to_vec(&self.entries).map_err(|_| Error::Unexpected {
                status: 200,
                detail: "the audit entries do not serialise".into(),
            });
        }
        Ok(self.out)
    }
}

/// Percent-encodes one path segment (ids are plain, but never trust input).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.bytes().all(|b| b == b'.') {
        // "", "." and ".." would be resolved as dot segments; make them plain names.
        out.push_str("%20");
    }
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Serialising a request body without making `send` generic.
mod erased {
    use serde::Serialize;

    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }

    pub struct Body<'a, T: Serialize>(pub &'a T);

    impl<T: Serialize> Json for Body<'_, T> {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self.0).expect("request bodies serialise")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_messages_without_raw_codes() {
        let e = |code, message: &str| {
            Error::Api {
                status: 400,
                code,
                message: message.into(),
            }
            .to_string()
        };
        let shown = e(
            ErrorCode::InvalidCode,
            "the code or key is wrong, expired or already used",
        );
        assert_eq!(shown, "the code or key is wrong, expired or already used");
        assert_eq!(
            e(ErrorCode::Forbidden, ""),
            "your role or grants do not allow this"
        );
        assert_eq!(
            e(ErrorCode::BadRequest, "missing field `name`"),
            "the server could not read the request: missing field `name`"
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Invalid,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthenticated,
            ErrorCode::LoginFailed,
            ErrorCode::LoginIncomplete,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::PasswordPolicy,
            ErrorCode::InvalidCode,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
        ] {
            for m in ["", "some message"] {
                let shown = e(code, m);
                assert!(!shown.contains(code.as_str()), "{shown}");
                assert!(!shown.is_empty());
            }
        }
    }

    #[test]
    fn server_urls_are_normalised_and_https_only() {
        assert_eq!(
            normalize_server("127.0.0.1:8443").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            normalize_server("https://h.example/").unwrap(),
            "https://h.example"
        );
        assert_eq!(
            normalize_server("https://h.example/db/").unwrap(),
            "https://h.example/db"
        );
        assert!(normalize_server("http://h.example").is_err());
        assert!(normalize_server("https://").is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("abc-123_x"), "abc-123_x");
        assert_eq!(seg("../x y"), "..%2Fx%20y");
        assert_eq!(seg(".."), "%20..");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "hello").unwrap();
        let e = tls_config(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = tls_config(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
