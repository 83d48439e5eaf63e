//! Request and response bodies of the control API (`/api/v1`).
//!
//! Every request type rejects unknown fields. Timestamps are RFC 3339 (UTC).

use crate::model::*;
use crate::text::{LongText, Name, Region, Username};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// Most items one list field of a request may hold.
pub const MAX_LIST: usize = 256;

// ---------------------------------------------------------------- setup & login

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The one-time token from the setup link the server printed on first start.
    #[schema(min_length = 1, max_length = 128)]
    pub token: String,
    pub account: Name,
    pub admin_username: Username,
    /// Must meet the default password policy (at least 10 characters of 3 classes).
    #[schema(min_length = 10, max_length = 256)]
    pub admin_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetupResponse {
    pub account: Account,
    pub admin: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub account: String,
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    #[schema(min_length = 1, max_length = 256)]
    pub password: String,
    /// The current TOTP code, when the user has a second factor; may also be sent
    /// in a second step to `/auth/totp`.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{6}$")]
    pub totp: Option<String>,
}

/// How far a login got. Only `complete` grants access to the API; the others
/// give a token that can call only the one endpoint that finishes the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginStage {
    Complete,
    /// POST `/auth/totp` with the code.
    TotpRequired,
    /// The account requires 2FA: POST `/me/totp/enroll` then `/me/totp/confirm`.
    TotpEnrollmentRequired,
    /// The password expired: POST `/me/password`.
    PasswordChangeRequired,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token (`Authorization: Bearer …`).
    pub token: String,
    pub stage: LoginStage,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    /// Six digits.
    #[schema(pattern = "^[0-9]{6}$", min_length = 6, max_length = 6)]
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollResponse {
    /// Base32 secret, for typing into an authenticator by hand.
    pub secret: String,
    /// `otpauth://totp/...` URI, for a QR code.
    pub otpauth_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    #[schema(min_length = 1, max_length = 256)]
    pub current_password: String,
    /// Must meet the account's password policy (at least 8 characters whatever
    /// the policy; at most 256 bytes).
    #[schema(min_length = 8, max_length = 256)]
    pub new_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: User,
    pub account: Account,
    /// How the caller authenticated: `login` or `api_token`.
    pub via: String,
}

// ---------------------------------------------------------------- account & users

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub name: Name,
    pub settings: AccountSettings,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    #[serde(default)]
    pub name: Option<Name>,
    /// Only the settings given change; unknown keys are refused.
    #[serde(default)]
    pub settings: Option<AccountSettingsPatch>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub username: Username,
    pub role: Role,
    pub disabled: bool,
    pub totp_enabled: bool,
    /// Locked after too many failed logins, until this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub password_changed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: Username,
    pub role: Role,
    /// Initial password; must meet the account's policy (at least 8 characters
    /// whatever the policy; at most 256 bytes).
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub role: Option<Role>,
    /// Disabling ends every login and API token of the user and their active sessions.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Set a new password (admin reset); ends the user's logins.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 256)]
    pub password: Option<String>,
    /// Lift a lockout now.
    #[serde(default)]
    pub unlock: Option<bool>,
    /// Remove the user's second factor (they must enrol again where 2FA is required).
    #[serde(default)]
    pub reset_totp: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: Name,
    pub read_only: bool,
    /// May only read data: the device list, tags, historian, KPIs and alarms.
    #[serde(default)]
    pub data_only: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    pub name: Name,
    /// 1-365 days.
    #[schema(minimum = 1, maximum = 365)]
    pub expires_in_days: u32,
    /// A read-only token can only call GET routes.
    #[serde(default)]
    pub read_only: bool,
    /// A data-only token can only read data (the device list, tags, historian
    /// points and sync, KPIs, alarms); it is read-only as well.
    #[serde(default)]
    pub data_only: bool,
}

/// `GET /api/v1/server/trust`: what an edge or a client must trust to reach
/// this server, for enrolment files (USB/SD).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerTrust {
    /// The server's public URL.
    pub server: String,
    /// The CA of the server's self-signed certificate (PEM); none when the
    /// server has a certificate the system roots trust.
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// SHA-256 (hex) of that CA certificate (DER).
    #[serde(default)]
    pub ca_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiToken {
    /// Shown once; only its hash is stored.
    pub token: String,
    pub info: ApiToken,
}

// ---------------------------------------------------------------- groups, pools, grants

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: String,
    pub name: Name,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamed {
    pub name: Name,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub id: String,
    pub name: Name,
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: String,
    pub group_id: String,
    pub pool_id: String,
    pub level: GrantLevel,
    /// For `restricted`: the only targets allowed (still within each device's firewall).
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    pub group_id: String,
    pub pool_id: String,
    pub level: GrantLevel,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub targets: Vec<Target>,
}

// ---------------------------------------------------------------- devices

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceStatus {
    /// Enrolled: the device holds a certificate bound to its key.
    pub enrolled: bool,
    /// Self-registered with the fleet key, waiting for an admin's approval.
    pub pending_approval: bool,
    pub online: bool,
    /// The on-site remote-access switch.
    pub switch_on: bool,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(default)]
    pub public_endpoint: Option<String>,
    /// Disabled by an admin: its edge channel and relay connections are refused.
    #[serde(default)]
    pub disabled: bool,
    /// Archived: out of service for good, hidden from the device list, kept for its history.
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: String,
    pub name: Name,
    #[serde(default)]
    pub serial: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub lan_subnets: Vec<ipnet::IpNet>,
    pub nat: Vec<NatMapping>,
    pub firewall: Vec<Target>,
    pub status: DeviceStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// This machine always needs on-site approval: a session's start reaches it
    /// only after the edge's local approval (an approver in the cloud cannot approve it).
    #[serde(default)]
    pub onsite_approval: bool,
    /// Web UIs on released targets, for browser access.
    #[serde(default)]
    pub web_services: Vec<WebService>,
    /// Where the machine is: a new session of this device prefers relays of this
    /// region while its edge has measured no relay.
    #[serde(default)]
    pub region: Option<Region>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    pub name: Name,
    #[serde(default)]
    pub serial: Option<Name>,
    #[serde(default)]
    #[schema(value_type = Vec<String>, max_items = 256)]
    pub lan_subnets: Vec<ipnet::IpNet>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub nat: Vec<NatMapping>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub firewall: Vec<Target>,
}

/// `GET /api/v1/devices/{id}/access`: what the caller may do with one device
/// they can see (so a client shows only the controls that will work).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceAccess {
    /// The caller's strongest grant on the device; admins `full`; absent for
    /// auditors (they read every device and reach none).
    #[serde(default)]
    pub level: Option<GrantLevel>,
    /// Sessions and tunnels to the device, and acknowledging its alarms: a full
    /// or restricted grant, or an admin.
    pub can_tunnel: bool,
    /// Changing the device, its tags and their alarm rules (admins).
    pub can_manage: bool,
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// true: archived devices only; false or absent: devices in service only.
    #[serde(default)]
    pub archived: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedDevice {
    pub device: Device,
    pub activation: ActivationKey,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationKey {
    /// Shown once; only its hash is stored. Single use.
    pub key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    #[serde(default)]
    pub name: Option<Name>,
    #[serde(default)]
    pub serial: Option<Name>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 256)]
    pub lan_subnets: Option<Vec<ipnet::IpNet>>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub nat: Option<Vec<NatMapping>>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub firewall: Option<Vec<Target>>,
    /// This machine always needs on-site approval (see `Device::onsite_approval`).
    #[serde(default)]
    pub onsite_approval: Option<bool>,
    /// Web UIs on released targets (see `Device::web_services`); replaces the list.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub web_services: Option<Vec<WebService>>,
    /// Where the machine is (see `Device::region`); `null` clears it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub region: Option<Option<Region>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    pub id: String,
    pub device_id: String,
    pub author: String,
    pub text: LongText,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLogEntry {
    pub text: LongText,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetKey {
    pub id: String,
    pub name: Name,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFleetKey {
    pub name: Name,
    /// 1-365 days.
    #[schema(minimum = 1, maximum = 365)]
    pub expires_in_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedFleetKey {
    /// Shown once; only its hash is stored.
    pub key: String,
    pub info: FleetKey,
}

/// The edge proves possession of its identity key by signing
/// `ENROLL_CONTEXT || key` (the activation or fleet key) with it (Ed25519).
pub const ENROLL_CONTEXT: &[u8] = b"drawbridge-enroll-v1\0";
/// For fetching a certificate after fleet approval the edge signs
/// `CERT_FETCH_CONTEXT || device_id || unix_seconds (decimal)`.
pub const CERT_FETCH_CONTEXT: &[u8] = b"drawbridge-cert-fetch-v1\0";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// A device's one-time activation key, or
    #[serde(default)]
    pub activation_key: Option<String>,
    /// the account's fleet key (the device then waits for approval).
    #[serde(default)]
    pub fleet_key: Option<String>,
    /// Name and serial, for fleet enrolment only.
    #[serde(default)]
    pub name: Option<Name>,
    #[serde(default)]
    pub serial: Option<Name>,
    /// The device's Ed25519 public key, base64 (32 bytes).
    #[schema(min_length = 44, max_length = 44)]
    pub public_key: String,
    /// Ed25519 signature, base64, of `ENROLL_CONTEXT || key`.
    pub signature: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnrollStatus {
    Enrolled,
    PendingApproval,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    pub device_id: String,
    pub account_id: String,
    pub status: EnrollStatus,
    /// PEM device certificate signed by the server's device CA (when enrolled).
    #[serde(default)]
    pub certificate: Option<String>,
    /// PEM of the device CA.
    #[serde(default)]
    pub ca_certificate: Option<String>,
    /// The root key of signed edge releases (base64 Ed25519 public key) that
    /// the server trusts now; the edge pins it and accepts a later root only
    /// through a rotation signed by the one it holds.
    #[serde(default)]
    pub release_root: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFetch {
    pub device_id: String,
    pub timestamp: i64,
    /// Ed25519 signature, base64, of `CERT_FETCH_CONTEXT || device_id || timestamp`.
    pub signature: String,
}

// ---------------------------------------------------------------- sessions

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionDevice {
    pub device_id: String,
    /// The released targets on this device.
    #[schema(min_items = 1, max_items = 256)]
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: String,
    pub name: Name,
    pub state: SessionState,
    pub devices: Vec<SessionDevice>,
    pub users: Vec<String>,
    pub adhoc: bool,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub started_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub ended_by: Option<String>,
    #[serde(default)]
    pub end_reason: Option<EndReason>,
    /// Each device's approval, once started (dual control per device).
    #[serde(default)]
    pub approvals: Vec<DeviceApproval>,
    /// Requests proxied to the session's devices by browser access and the API's
    /// device HTTP route, and their bytes (both ways).
    #[serde(default)]
    pub web_requests: i64,
    #[serde(default)]
    pub web_bytes: i64,
}

/// One device's approval in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceApproval {
    pub device_id: String,
    pub state: ApprovalState,
    /// `device:<id>` for the site's own decision, `user:<id>`/`api:<id>` for an approver, `system` for a timeout.
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareSession {
    pub name: Name,
    #[schema(min_items = 1, max_items = 256)]
    pub devices: Vec<SessionDevice>,
    /// User ids allowed to start and use the session.
    #[schema(max_items = 256)]
    pub users: Vec<String>,
    /// Defaults to now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    /// Defaults to `valid_from` + the account's maximum session length.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
}

/// Narrow a session's targets (`POST /sessions/{id}/narrow`): for each listed
/// device, the targets it keeps. Every kept target must lie inside one the device
/// has in the session now (a narrower address or port range, or fewer targets);
/// nothing can be widened. Devices not listed keep their targets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NarrowSession {
    #[schema(min_items = 1, max_items = 256)]
    pub devices: Vec<SessionDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdhocSession {
    pub device_id: String,
    /// Defaults to everything the caller's grant allows on the device.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 256)]
    pub targets: Option<Vec<Target>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    /// prepared, pending_approval, active or ended.
    #[serde(default)]
    pub state: Option<SessionState>,
}

// ---------------------------------------------------------------- audit & notifications

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub account_id: String,
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `user:<id>`, `device:<id>`, `api:<id>` or `system`.
    pub actor: String,
    pub action: String,
    pub object: String,
    /// `ok`, `denied`, `failed`.
    pub result: String,
    pub source: String,
    pub details: serde_json::Value,
    pub hash: String,
    /// Set when this entry stands for several events: repeats of a refused edge
    /// authentication or enrolment within its window are counted on the first
    /// entry instead of written (not part of the entry's hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<AuditRepeated>,
}

/// How many events one audit entry stands for, and when the first and last were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRepeated {
    /// Events counted, the entry's own included (at least 2).
    pub count: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    /// Entries before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub to: Option<OffsetDateTime>,
    /// Exact actor, e.g. `user:<id>`.
    #[serde(default)]
    pub actor: Option<String>,
    /// Entries about this device id.
    #[serde(default)]
    pub device: Option<String>,
    /// Action prefix, e.g. `login` or `session.`.
    #[serde(default)]
    pub action: Option<String>,
    /// `json` (default, an array), `jsonl` or `csv`.
    #[serde(default)]
    pub format: Option<String>,
    /// At most this many entries (default and maximum 10000). When more match, the
    /// answer's `x-next-after-seq` header is the cursor for the next page.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Cursor: only entries after this sequence number in the chosen order (above
    /// it oldest-first, below it newest-first).
    #[serde(default)]
    pub after_seq: Option<i64>,
    /// `asc` (default: oldest first) or `desc` (newest first).
    #[serde(default)]
    pub order: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerify {
    pub ok: bool,
    pub entries: i64,
    /// The first sequence number whose entry or link is wrong.
    #[serde(default)]
    pub first_broken_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: String,
    pub kind: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An approver's answer to a session waiting for approval.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub approve: bool,
    /// The device to decide for; without it, every device still waiting that
    /// an approver may decide (not those that need on-site approval).
    #[serde(default)]
    pub device_id: Option<String>,
}

/// One client tunnel of a session (one row per client join and device).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TunnelInfo {
    pub id: String,
    pub user: String,
    pub device_id: String,
    pub overlay_ip: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// `relay` or `direct`, once reported.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_reason: Option<String>,
    pub bytes_to_device: i64,
    pub bytes_from_device: i64,
    #[serde(default)]
    pub end_reason: Option<String>,
}

pub use crate::web::{OpenWeb, OpenedWeb, WebScheme, WebService};
