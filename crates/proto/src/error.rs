//! The API's error body: a stable machine code and a human message.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or query could not be parsed (bad JSON, wrong types, unknown fields).
    BadRequest,
    /// The request parsed but a value is not acceptable.
    Invalid,
    /// The body is larger than the route accepts.
    PayloadTooLarge,
    /// No or an invalid, expired or revoked credential.
    Unauthenticated,
    /// Login failed. Deliberately the same for unknown user, wrong password and locked user.
    LoginFailed,
    /// The credential is only good for finishing login (TOTP, enrolment or password change).
    LoginIncomplete,
    /// The caller's role or grants do not allow this.
    Forbidden,
    /// No such object in the caller's account (also used for other accounts' objects).
    NotFound,
    /// The object exists but is in a state that does not allow this.
    Conflict,
    /// The new password does not meet the account's policy.
    PasswordPolicy,
    /// A one-time code or key was wrong, expired or already used.
    InvalidCode,
    /// Too many requests; try again later.
    RateLimited,
    /// Something failed on the server; details are in the server log.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Invalid => "invalid",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::LoginFailed => "login_failed",
            ErrorCode::LoginIncomplete => "login_incomplete",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PasswordPolicy => "password_policy",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Every error response of the API has this body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
