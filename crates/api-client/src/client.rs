//! The [`Client`]: one server address, an optional bearer token, and the
//! request plumbing (JSON bodies, the server's error bodies, path segments)
//! that the resource methods (`resources.rs`, `audit.rs`) are built on.

use crate::error::{Error, Result, chain_text, from_transport};
use crate::tls::tls_config;
use drawbridge_proto::API_PREFIX;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
        from_transport(&self.base, e)
    }

    pub(crate) async fn send(
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
    pub(crate) async fn send_full(
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
        Err(error_body(status, &bytes))
    }

    /// A GET whose answer is read as it arrives (an event stream): the
    /// response once its status is a success, the server's error otherwise.
    /// `timeout` replaces the client's (which would cut a long stream).
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .get(self.url(path))
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // An error body is small; read at most a little of anything else.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while bytes.len() < MAX_STREAM_ERROR_BODY {
            match self.chunk(&mut resp).await? {
                Some(c) => bytes.extend_from_slice(&c),
                None => break,
            }
        }
        bytes.truncate(MAX_STREAM_ERROR_BODY);
        Err(error_body(status, &bytes))
    }

    /// The next piece of a streamed body (None: it ended).
    pub(crate) async fn chunk(&self, resp: &mut reqwest::Response) -> Result<Option<Vec<u8>>> {
        resp.chunk()
            .await
            .map(|c| c.map(|b| b.to_vec()))
            .map_err(|e| self.transport_error(e))
    }

    pub(crate) async fn json<T: DeserializeOwned>(
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

    pub(crate) async fn empty(
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

    pub(crate) async fn post_empty_body<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
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
}

/// Most of a refused stream's answer that is read (its error body).
const MAX_STREAM_ERROR_BODY: usize = 64 * 1024;

/// A failed answer as an [`Error`]: the server's error body, or the start of whatever it sent.
fn error_body(status: StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<drawbridge_proto::ApiError>(bytes) {
        Ok(e) => Error::Api {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
        },
        Err(_) => Error::Unexpected {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

/// Percent-encodes one path segment (ids are plain, but never trust input).
pub(crate) fn seg(s: &str) -> String {
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
pub(crate) mod erased {
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
}
