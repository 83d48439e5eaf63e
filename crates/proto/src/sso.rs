//! Single sign-on (OpenID Connect) API types: an account's provider settings,
//! the rules mapping the provider's groups to Drawbridge groups and roles, and
//! the login flows (browser code flow for the portal, device grant for the CLI).
//!
//! Every value is parsed into a bounded type when the request is read: an
//! issuer is an `https` URL (or `http` to a loopback address, for tests and
//! a provider on the same host), texts have a length limit and no control
//! characters, lists have a count limit.

use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// Where the provider sends the browser back (the redirect URI to register at
/// the provider is the server's public URL followed by this path). The portal
/// serves it and calls `POST /api/v1/sso/complete`.
pub const CALLBACK_PATH: &str = "/portal/sso/callback";

/// Where a browser starts an SSO login (`?account=NAME`); served by the portal.
pub const START_PATH: &str = "/portal/sso/start";

/// Most extra scopes, rules and MFA `amr` values.
pub const MAX_SCOPES: usize = 16;
pub const MAX_RULES: usize = 200;
pub const MAX_AMR_VALUES: usize = 16;

/// Why a bounded SSO value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoValueError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters or spaces")]
    Charset,
    #[error("{0}")]
    Url(String),
}

fn check_token(s: &str, max: usize, spaces: bool) -> Result<(), SsoValueError> {
    if s.trim().is_empty() {
        return Err(SsoValueError::Empty);
    }
    if s.chars().count() > max {
        return Err(SsoValueError::TooLong(max));
    }
    if s.chars()
        .any(|c| c.is_control() || (!spaces && c.is_whitespace()))
    {
        return Err(SsoValueError::Charset);
    }
    Ok(())
}

macro_rules! sso_text {
    ($(#[$doc:meta])* $name:ident, $max:expr, $spaces:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);
        crate::string_schema!(
            $name,
            concat!("Text of 1 to ", stringify!($max), " characters without control characters."),
            Some(1),
            Some($max),
            None::<&str>
        );
        impl $name {
            pub const MAX: usize = $max;
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = SsoValueError;
            fn try_from(s: String) -> Result<Self, SsoValueError> {
                check_token(&s, $max, $spaces)?;
                Ok(Self(s))
            }
        }
        impl TryFrom<&str> for $name {
            type Error = SsoValueError;
            fn try_from(s: &str) -> Result<Self, SsoValueError> {
                Self::try_from(s.to_string())
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

sso_text!(
    /// A client id, a claim name or an `amr` value: 1..=256 characters, no spaces.
    SsoToken, 256, false
);
sso_text!(
    /// A group claim's value as the provider sends it (a name, a path or an
    /// object id): 1..=256 characters.
    ClaimValue, 256, true
);
sso_text!(
    /// What the login button says after "Sign in with": 1..=64 characters.
    SsoLabel, 64, true
);

impl fmt::Debug for SsoToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Debug for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Debug for SsoLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A client secret: 1..=1024 characters. Write-only: never serialised back by
/// the server, and its `Debug` shows nothing.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct ClientSecret(String);
crate::string_schema!(
    ClientSecret,
    "The client secret the provider issued (write-only).",
    Some(1),
    Some(1024),
    None::<&str>
);
impl ClientSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for ClientSecret {
    type Error = SsoValueError;
    fn try_from(s: String) -> Result<Self, SsoValueError> {
        check_token(&s, 1024, false)?;
        Ok(Self(s))
    }
}
impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// An OpenID provider's issuer: `https://…`, or `http://` to a loopback
/// address; no query, no fragment, no user info; at most 512 characters.
/// Kept exactly as written (the provider's `iss` must equal it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Issuer(String);
crate::string_schema!(
    Issuer,
    "The provider's issuer URL: https, or http to a loopback address; exactly as the provider's discovery document states it.",
    Some(8),
    Some(512),
    None::<&str>
);
impl Issuer {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Issuer {
    type Error = SsoValueError;
    fn try_from(s: String) -> Result<Self, SsoValueError> {
        check_token(&s, 512, false)?;
        let u = url::Url::parse(&s).map_err(|e| SsoValueError::Url(format!("not a URL: {e}")))?;
        if u.query().is_some() || u.fragment().is_some() {
            return Err(SsoValueError::Url(
                "an issuer has no query or fragment".into(),
            ));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(SsoValueError::Url("an issuer has no user info".into()));
        }
        let loopback = match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => return Err(SsoValueError::Url("an issuer needs a host".into())),
        };
        match u.scheme() {
            "https" => Ok(Self(s)),
            "http" if loopback => Ok(Self(s)),
            "http" => Err(SsoValueError::Url(
                "an issuer must be https (http only to a loopback address)".into(),
            )),
            other => Err(SsoValueError::Url(format!(
                "{other}: an issuer must be an https URL"
            ))),
        }
    }
}
impl TryFrom<&str> for Issuer {
    type Error = SsoValueError;
    fn try_from(s: &str) -> Result<Self, SsoValueError> {
        Self::try_from(s.to_string())
    }
}
impl From<Issuer> for String {
    fn from(v: Issuer) -> String {
        v.0
    }
}
impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an account's users sign in through its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SsoMode {
    /// Configured but not offered.
    Off,
    /// Offered next to passwords.
    Optional,
    /// The only way in, except the break-glass admin's password (audited loudly).
    Required,
}

impl SsoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SsoMode::Off => "off",
            SsoMode::Optional => "optional",
            SsoMode::Required => "required",
        }
    }
    pub fn parse(s: &str) -> Option<SsoMode> {
        Some(match s {
            "off" => SsoMode::Off,
            "optional" => SsoMode::Optional,
            "required" => SsoMode::Required,
            _ => return None,
        })
    }
}

fn default_groups_claim() -> SsoToken {
    SsoToken("groups".into())
}
fn default_role() -> Role {
    Role::User
}
/// The `amr` values (RFC 8176) that count as a second factor by default.
pub const DEFAULT_MFA_AMR: [&str; 4] = ["mfa", "otp", "hwk", "swk"];
fn default_mfa_amr() -> Vec<SsoToken> {
    DEFAULT_MFA_AMR
        .iter()
        .map(|s| SsoToken((*s).into()))
        .collect()
}

/// `PUT /api/v1/account/sso`: the account's OpenID provider.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoSettingsRequest {
    pub issuer: Issuer,
    /// The confidential client (code flow, and the device grant unless `cli_client_id` is set).
    pub client_id: SsoToken,
    /// Required the first time; omitted keeps the stored secret. Never shown again.
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// A public client for `drawbridge login --sso` (device grant), where the
    /// provider allows that grant only for public clients (Entra ID, Okta).
    #[serde(default)]
    pub cli_client_id: Option<SsoToken>,
    /// Shown as "Sign in with …"; default "single sign-on".
    #[serde(default)]
    pub label: Option<SsoLabel>,
    /// Scopes asked for besides `openid` (default `email`, `profile`), at most 16.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub scopes: Option<Vec<SsoToken>>,
    /// The ID token claim holding the user's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: SsoToken,
    pub mode: SsoMode,
    /// Create a user at the first login of an unknown subject.
    #[serde(default)]
    pub jit: bool,
    /// The role of a user created at the first login (default `user`); also the
    /// role a user falls back to when no rule grants one any more.
    #[serde(default = "default_role")]
    pub jit_role: Role,
    /// The provider's `amr` claim may stand in for the account's TOTP.
    #[serde(default)]
    pub amr_mfa: bool,
    /// Which `amr` values count as a second factor (default mfa, otp, hwk, swk).
    #[serde(default = "default_mfa_amr")]
    #[schema(max_items = 16)]
    pub mfa_amr_values: Vec<SsoToken>,
    /// The one user who may still log in with a password when `mode` is `required`.
    #[serde(default)]
    pub break_glass_user_id: Option<String>,
}

/// An account's provider as the admins see it (the secret is never shown).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoSettings {
    pub issuer: String,
    pub client_id: String,
    /// A secret is stored (its value is never returned).
    pub client_secret_set: bool,
    pub cli_client_id: Option<String>,
    pub label: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub mode: SsoMode,
    pub jit: bool,
    pub jit_role: Role,
    pub amr_mfa: bool,
    pub mfa_amr_values: Vec<String>,
    pub break_glass_user_id: Option<String>,
    /// The redirect URI to register at the provider.
    pub redirect_uri: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `POST /api/v1/account/sso/rules`: members of the provider group
/// `claim_value` get the Drawbridge group and/or the role.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoRuleRequest {
    pub claim_value: ClaimValue,
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    /// Of several matching rules with a role, the lowest priority wins (default 100).
    #[serde(default = "default_priority")]
    #[schema(minimum = 0, maximum = 10000)]
    pub priority: u16,
}
fn default_priority() -> u16 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoRule {
    pub id: String,
    pub claim_value: String,
    pub group_id: Option<String>,
    pub role: Option<Role>,
    pub priority: u16,
}

/// `POST /api/v1/account/sso/identities`: an existing user signs in as this
/// provider subject (`sub`); for accounts without just-in-time creation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoLinkRequest {
    pub user_id: String,
    pub subject: ClaimValue,
}

/// A user's link to a provider subject.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoIdentity {
    pub id: String,
    pub user_id: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
}

/// `POST /api/v1/account/sso/test`: what the provider's discovery document says.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoTestResult {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub signing_algs: Vec<String>,
    /// Whether the CLI can use the device grant.
    pub device_grant: bool,
}

/// `GET /api/v1/sso/provider?account=NAME` (public): whether to show the button.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoPublicInfo {
    pub enabled: bool,
    pub required: bool,
    pub label: String,
}

/// `POST /api/v1/sso/start`: begin a browser login.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoStartRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub account: String,
}

/// Send the browser to `authorize_url`, and keep `binding` in a cookie of the
/// browser (HttpOnly, Secure, SameSite=Lax, path `/portal/sso`, 10 minutes):
/// `/sso/complete` accepts the answer only with it, so a login cannot be
/// finished in a browser other than the one that started it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoStartResponse {
    pub authorize_url: String,
    pub binding: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /api/v1/sso/complete`: the provider's answer at the redirect URI
/// (its query parameters as they came) and the browser's `binding` cookie.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoCompleteRequest {
    #[schema(max_length = 256)]
    pub binding: String,
    #[schema(max_length = 512)]
    pub state: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub code: Option<String>,
    /// RFC 9207: the issuer the answer claims to come from.
    #[serde(default)]
    #[schema(max_length = 512)]
    pub iss: Option<String>,
    /// The provider refused (`access_denied`, …).
    #[serde(default)]
    #[schema(max_length = 256)]
    pub error: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub error_description: Option<String>,
}

/// `POST /api/v1/sso/device/start`: begin a CLI login with the device grant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoDeviceStartRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub account: String,
}

/// Show the user `verification_uri` and `user_code` (or open
/// `verification_uri_complete`), then poll with `poll_token` every `interval` seconds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoDeviceStartResponse {
    /// A secret: whoever holds it gets the login once approved.
    pub poll_token: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /api/v1/sso/device/poll`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoDevicePollRequest {
    #[schema(max_length = 128)]
    pub poll_token: String,
}

/// `202` answer of `/sso/device/poll` while the user has not approved yet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoDevicePending {
    /// `pending`
    pub status: String,
    /// Seconds to wait before the next poll.
    pub interval: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_or_loopback_http() {
        assert!(Issuer::try_from("https://login.example.com/tenant/v2.0").is_ok());
        assert!(Issuer::try_from("http://127.0.0.1:4000").is_ok());
        assert!(Issuer::try_from("http://[::1]:4000").is_ok());
        assert!(Issuer::try_from("http://localhost:4000").is_ok());
        assert!(Issuer::try_from("http://idp.example.com").is_err());
        assert!(Issuer::try_from("ftp://idp.example.com").is_err());
        assert!(Issuer::try_from("https://idp.example.com/?x=1").is_err());
        assert!(Issuer::try_from("https://u:p@idp.example.com").is_err());
        assert!(Issuer::try_from(format!("https://a.example/{}", "x".repeat(600))).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = ClientSecret::try_from("hunter2-hunter2".to_string()).expect("secret");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
