//! Calls into the JSON API, in-process, as the viewer.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use drawbridge_proto::{ApiError, ErrorCode};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use tower::ServiceExt;

/// Largest API answer the portal reads (an audit export of 10000 entries fits).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One viewer's handle on the API: their token (if any) and their address.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: Option<String>,
    peer: Option<ConnectInfo<SocketAddr>>,
}

/// A raw API answer.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The API's error, when the status is not a success.
    pub fn error(&self) -> Option<ApiError> {
        if self.status.is_success() {
            return None;
        }
        Some(
            serde_json::from_slice::<ApiError>(&self.body).unwrap_or_else(|_| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("the API answered {}", self.status),
                )
            }),
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl Api {
    pub fn new(
        router: Router,
        token: Option<String>,
        peer: Option<ConnectInfo<SocketAddr>>,
    ) -> Self {
        Self {
            router,
            token,
            peer,
        }
    }

    pub fn without_token(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    pub async fn raw(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        let mut req = match req {
            Ok(r) => r,
            Err(e) => return internal(format!("bad API request: {e}")),
        };
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(peer);
        }
        let res = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = res.status();
        let body = match http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return internal(format!("reading the API's answer: {e}")),
        };
        Answer { status, body }
    }

    /// A call whose success body is JSON `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> ApiResult<T> {
        let a = self.raw(method, path, body).await;
        if let Some(e) = a.error() {
            return Err(e);
        }
        let body: &[u8] = if a.body.is_empty() { b"null" } else { &a.body };
        serde_json::from_slice(body).map_err(|e| {
            tracing::warn!(%path, error = %e, "portal: unexpected API answer");
            ApiError::new(ErrorCode::Internal, "the API's answer could not be read")
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<T> {
        self.call(Method::POST, path, Some(to_value(body)?)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> ApiResult<T> {
        self.call(Method::PATCH, path, Some(to_value(body)?)).await
    }

    /// A call without a body whose answer is ignored (204s).
    pub async fn send(&self, method: Method, path: &str) -> ApiResult<()> {
        self.call::<serde::de::IgnoredAny>(method, path, None)
            .await
            .map(|_| ())
    }
}

fn to_value(body: &impl Serialize) -> ApiResult<serde_json::Value> {
    serde_json::to_value(body).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

fn internal(msg: String) -> Answer {
    let body = serde_json::to_vec(&ApiError::new(ErrorCode::Internal, msg)).unwrap_or_default();
    Answer {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: body.into(),
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    /// Everything but RFC 3986's unreserved characters.
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}
