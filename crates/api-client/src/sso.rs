//! Single sign-on: whether an account has it, the CLI's device grant
//! (`/sso/device/start`, `/sso/device/poll`), and the account's SSO settings
//! and rules (admins).

use crate::client::{Client, erased, seg};
use crate::error::{Error, Result};
use drawbridge_proto::api::LoginResponse;
use drawbridge_proto::sso::*;
use reqwest::{Method, StatusCode};

/// What one poll of a device login says.
#[derive(Debug)]
pub enum DevicePoll {
    /// Not approved yet: poll again after this many seconds.
    Pending(u32),
    /// Approved: an ordinary login (its stage may still ask for a second factor).
    Done(Box<LoginResponse>),
}

impl Client {
    /// Whether the account offers single sign-on (no login needed).
    pub async fn sso_provider(&self, account: &str) -> Result<SsoPublicInfo> {
        self.json(
            Method::GET,
            "/sso/provider",
            &[("account", account.to_string())],
            None,
        )
        .await
    }

    /// Begins a device-grant login at the account's provider.
    pub async fn sso_device_start(&self, account: &str) -> Result<SsoDeviceStartResponse> {
        self.post(
            "/sso/device/start",
            &SsoDeviceStartRequest {
                account: account.to_string(),
            },
        )
        .await
    }

    /// Polls a device-grant login once.
    pub async fn sso_device_poll(&self, poll_token: &str) -> Result<DevicePoll> {
        let body = SsoDevicePollRequest {
            poll_token: poll_token.to_string(),
        };
        let (status, bytes) = self
            .send(
                Method::POST,
                "/sso/device/poll",
                &[],
                Some(&erased::Body(&body)),
            )
            .await?;
        let parse_err = |e: serde_json::Error| Error::Unexpected {
            status: status.as_u16(),
            detail: format!("the answer does not parse: {e}"),
        };
        if status == StatusCode::ACCEPTED {
            let p: SsoDevicePending = serde_json::from_slice(&bytes).map_err(parse_err)?;
            return Ok(DevicePoll::Pending(p.interval));
        }
        let login: LoginResponse = serde_json::from_slice(&bytes).map_err(parse_err)?;
        Ok(DevicePoll::Done(Box::new(login)))
    }

    /// The account's provider settings (admins); `None` when there is none.
    pub async fn sso_settings(&self) -> Result<Option<SsoSettings>> {
        match self.get("/account/sso").await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.code() == Some(drawbridge_proto::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the account's provider (admins); the body is `SsoSettingsRequest`'s JSON.
    pub async fn set_sso_settings(&self, req: &serde_json::Value) -> Result<SsoSettings> {
        self.json(Method::PUT, "/account/sso", &[], Some(&erased::Body(req)))
            .await
    }

    pub async fn sso_rules(&self) -> Result<Vec<SsoRule>> {
        self.get("/account/sso/rules").await
    }
    /// Adds a rule (admins); the body is `SsoRuleRequest`'s JSON.
    pub async fn add_sso_rule(&self, req: &serde_json::Value) -> Result<SsoRule> {
        self.post("/account/sso/rules", req).await
    }
    pub async fn delete_sso_rule(&self, id: &str) -> Result<()> {
        self.delete(&format!("/account/sso/rules/{}", seg(id)))
            .await
    }
    pub async fn test_sso(&self) -> Result<SsoTestResult> {
        self.post_empty_body("/account/sso/test").await
    }
}
