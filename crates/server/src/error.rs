//! The server's error type and its JSON rendering.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drawbridge_proto::{ApiError, ErrorCode};

/// An error a handler returns: a stable code, a message for the caller, and
/// (for internal errors) a cause that goes only to the log.
#[derive(Debug)]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
    cause: Option<anyhow::Error>,
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError {
            code,
            message: message.into(),
            cause: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, m)
    }
    pub fn forbidden() -> Self {
        Self::new(
            ErrorCode::Forbidden,
            "your role or grants do not allow this",
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no such {what}"))
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, m)
    }
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "missing, invalid or expired credentials; log in again",
        )
    }
    pub fn login_failed() -> Self {
        Self::new(
            ErrorCode::LoginFailed,
            "login failed: wrong account, user name or password, or the user is locked or disabled",
        )
    }
    pub fn invalid_code() -> Self {
        Self::new(
            ErrorCode::InvalidCode,
            "the code or key is wrong, expired or already used",
        )
    }
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        AppError {
            code: ErrorCode::Internal,
            message: "internal error; see the server log".into(),
            cause: Some(cause.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest | ErrorCode::Invalid | ErrorCode::PasswordPolicy => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthenticated | ErrorCode::LoginFailed | ErrorCode::InvalidCode => {
                StatusCode::UNAUTHORIZED
            }
            ErrorCode::LoginIncomplete | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::internal(e)
    }
}

impl From<crate::db::StoreError> for AppError {
    fn from(e: crate::db::StoreError) -> Self {
        AppError::internal(e)
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        AppError::internal(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(error = %format!("{cause:#}"), "request failed");
        }
        let status = self.status();
        let body = ApiError::new(self.code, self.message);
        (status, axum::Json(body)).into_response()
    }
}
