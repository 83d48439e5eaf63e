//! The API's request extractors: JSON bodies and query strings with JSON errors
//! ([`ApiJson`], [`ApiQuery`]), the remote address ([`Source`]), and the bearer
//! token resolved into a [`Caller`] (complete logins) or a [`LoginCaller`] (any
//! stage). Used by the handlers in `api/` and the channels in `live/`.

use crate::auth::{self, Caller, Via};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use drawbridge_proto::ErrorCode;
use drawbridge_proto::api::LoginStage;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body parsed into `T`; any failure is a JSON error with a code.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> AppError {
    match e {
        JsonRejection::JsonDataError(e) => {
            AppError::bad_request(format!("invalid request body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(_) => {
            AppError::bad_request("the request body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => {
            AppError::bad_request("send the body as JSON (Content-Type: application/json)")
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {MAX_BODY} bytes"),
        ),
        other => AppError::bad_request(other.body_text()),
    }
}

/// A query string parsed into `T`, with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(
                AppError::bad_request(format!("invalid query: {}", e.body_text())),
            ),
            Err(e) => Err(AppError::bad_request(e.body_text())),
        }
    }
}

/// The remote address of a request, or `unknown`.
pub fn source_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The request's remote address as an extractor.
pub struct Source(pub String);

impl FromRequestParts<AppState> for Source {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> AppResult<Self> {
        Ok(Source(source_of(parts)))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v.strip_prefix("Bearer ")?.trim();
    (!t.is_empty() && t.len() <= 128).then_some(t)
}

/// A bearer token at any stage, resolved; `source` for the audit log.
async fn resolve(state: &AppState, parts: &Parts) -> AppResult<Caller> {
    let token = bearer(parts).ok_or_else(AppError::unauthenticated)?;
    auth::resolve(state, token, source_of(parts)).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let caller = resolve(state, parts).await?;
        if caller.stage != LoginStage::Complete {
            return Err(AppError::new(
                ErrorCode::LoginIncomplete,
                "finish logging in first (second factor, TOTP enrolment or password change)",
            ));
        }
        if caller.read_only() && parts.method != Method::GET {
            return Err(AppError::new(
                ErrorCode::Forbidden,
                "this API token is read-only",
            ));
        }
        if caller.data_only() {
            let route = parts
                .extensions
                .get::<MatchedPath>()
                .map(MatchedPath::as_str);
            if !route.is_some_and(|r| crate::api::data::DATA_SCOPE.contains(&r)) {
                return Err(AppError::new(
                    ErrorCode::Forbidden,
                    "this API token may only read data (historian, KPIs, alarms, tags and the device list)",
                ));
            }
        }
        Ok(caller)
    }
}

/// A caller holding a login token at any stage; for the routes that finish a
/// login. Handlers must check `stage` themselves.
pub struct LoginCaller(pub Caller);

impl FromRequestParts<AppState> for LoginCaller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let caller = resolve(state, parts).await?;
        if caller.via != Via::Login {
            return Err(AppError::new(
                ErrorCode::Forbidden,
                "this needs an interactive login, not an API token",
            ));
        }
        Ok(LoginCaller(caller))
    }
}

impl LoginCaller {
    /// Only these stages may call the route.
    pub fn at(self, allowed: &[LoginStage]) -> AppResult<Caller> {
        if allowed.contains(&self.0.stage) {
            Ok(self.0)
        } else if self.0.stage == LoginStage::Complete {
            Err(AppError::new(
                ErrorCode::Conflict,
                "the login is already complete",
            ))
        } else {
            Err(AppError::new(
                ErrorCode::LoginIncomplete,
                "this login token can only finish the login",
            ))
        }
    }
}
