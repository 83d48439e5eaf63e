//! Domain vocabulary: roles and their rights, grant levels, firewall targets,
//! account settings, session states.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// A user's role (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    SessionAdmin,
    User,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::SessionAdmin, Role::User, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::SessionAdmin => "session_admin",
            Role::User => "user",
            Role::Auditor => "auditor",
        }
    }

    /// The role × action matrix of DESIGN §3. The server checks this on every
    /// route; "own only" and "within their grants" are further narrowed by the
    /// server with the object at hand.
    pub fn permits(self, action: Action) -> bool {
        use Action::*;
        use Role::*;
        match action {
            ManageDevices | ManageUsers => self == Admin,
            PrepareSessions | AddSessionDevices => matches!(self, Admin | SessionAdmin),
            UseSessions => matches!(self, Admin | SessionAdmin | User),
            EndAnySession => matches!(self, Admin | SessionAdmin),
            EndOwnSession => matches!(self, Admin | SessionAdmin | User),
            ViewAllSessions => matches!(self, Admin | SessionAdmin | Auditor),
            ViewOwnSessions => true,
            ReadAudit => matches!(self, Admin | Auditor),
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, session_admin, user, auditor)"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rows of the role matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Add/enrol devices, edit device firewall, fleet keys, logbook moderation.
    ManageDevices,
    /// Add users, assign roles, groups, pools, grants, account settings.
    ManageUsers,
    /// Prepare sessions, choose devices and targets (session admins within their grants).
    PrepareSessions,
    /// Add devices to a prepared session.
    AddSessionDevices,
    /// Start and use a session prepared for the caller.
    UseSessions,
    EndAnySession,
    EndOwnSession,
    ViewAllSessions,
    ViewOwnSessions,
    /// Read and export the audit log.
    ReadAudit,
}

/// What a grant gives a group on a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantLevel {
    /// Every target the device's firewall allows.
    Full,
    /// Only the grant's listed targets (within the device's firewall).
    Restricted,
    /// No tunnel: portal, KPIs and status only.
    Monitor,
}

impl GrantLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantLevel::Full => "full",
            GrantLevel::Restricted => "restricted",
            GrantLevel::Monitor => "monitor",
        }
    }
    /// Higher is more.
    pub fn rank(self) -> u8 {
        match self {
            GrantLevel::Monitor => 0,
            GrantLevel::Restricted => 1,
            GrantLevel::Full => 2,
        }
    }
}

impl FromStr for GrantLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "restricted" => Ok(Self::Restricted),
            "monitor" => Ok(Self::Monitor),
            _ => Err(format!(
                "unknown grant level {s:?} (full, restricted, monitor)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// An inclusive port range, written `502` or `8000-8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        Self { start: p, end: p }
    }
    pub fn contains_range(&self, other: &PortRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

crate::string_schema!(
    PortRange,
    "A port (`502`) or inclusive port range (`8000-8080`), ports 1-65535.",
    Some(1),
    Some(11),
    Some("^[0-9]{1,5}(-[0-9]{1,5})?$")
);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
                Ok(v) => Ok(v),
            }
        };
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if start > end {
            return Err(format!("port range {s:?} runs backwards"));
        }
        Ok(Self { start, end })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(p: PortRange) -> String {
        p.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One allowed destination: an address or subnet, a protocol and (for tcp/udp)
/// optionally a port range; no ports means every port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, try_from = "TargetWire")]
pub struct Target {
    /// Address or CIDR, e.g. `192.168.1.10/32` or `192.168.1.0/24`.
    #[schema(value_type = String, example = "192.168.1.10/32", min_length = 2, max_length = 43)]
    pub address: IpNet,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetWire {
    address: String,
    protocol: Protocol,
    #[serde(default)]
    ports: Option<PortRange>,
}

impl TryFrom<TargetWire> for Target {
    type Error = String;
    fn try_from(w: TargetWire) -> Result<Self, String> {
        let address = parse_net(&w.address)?;
        Target::new(address, w.protocol, w.ports)
    }
}

/// Parses `a.b.c.d`, `a.b.c.d/n` or IPv6 equivalents into a network, host bits cleared.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if s.len() > 64 {
        return Err("address is too long".into());
    }
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => return Err(format!("{s:?} is not an IP address or CIDR")),
        },
    };
    Ok(net.trunc())
}

impl Target {
    pub fn new(
        address: IpNet,
        protocol: Protocol,
        ports: Option<PortRange>,
    ) -> Result<Self, String> {
        if protocol == Protocol::Icmp && ports.is_some() {
            return Err("icmp targets take no ports".into());
        }
        Ok(Self {
            address: address.trunc(),
            protocol,
            ports,
        })
    }

    /// True when everything `other` allows is also allowed by `self`.
    pub fn covers(&self, other: &Target) -> bool {
        self.protocol == other.protocol
            && self.address.contains(&other.address)
            && match (&self.ports, &other.ports) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a.contains_range(b),
            }
    }
}

impl fmt::Display for Target {
    /// The same form `from_str` parses: `tcp:192.168.1.10:502`, `icmp:10.0.0.0/24`,
    /// `udp:[fd00::1]:161`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.address.prefix_len() == self.address.max_prefix_len();
        let addr = if host {
            self.address.addr().to_string()
        } else {
            self.address.to_string()
        };
        write!(f, "{}:", self.protocol.as_str())?;
        match (self.address.addr().is_ipv6(), self.ports) {
            (true, Some(_)) => write!(f, "[{addr}]")?,
            _ => f.write_str(&addr)?,
        }
        if let Some(p) = self.ports {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = String;
    /// `tcp:192.168.1.10:502`, `udp:10.0.0.0/24:1000-2000`, `icmp:192.168.1.10`, `tcp:10.0.0.5`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected PROTO:ADDRESS[:PORTS]"))?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            _ => return Err(format!("{proto:?} is not tcp, udp or icmp")),
        };
        // IPv6 with ports is written in brackets; otherwise ports follow the last
        // ':' only when what precedes it parses as an address.
        let (addr, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let (a, tail) = inner
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            match tail.strip_prefix(':') {
                Some(p) => (a, Some(p.parse::<PortRange>()?)),
                None if tail.is_empty() => (a, None),
                None => return Err(format!("{s:?}: expected :PORTS after ']'")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((a, p)) if parse_net(a).is_ok() => (a, Some(p.parse::<PortRange>()?)),
                _ => (rest, None),
            }
        };
        Target::new(parse_net(addr)?, protocol, ports)
    }
}

/// 1:1 NAT: the real LAN subnet is reached through a virtual subnet of the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NatMapping {
    #[schema(value_type = String, example = "192.168.1.0/24")]
    pub real: IpNet,
    #[schema(value_type = String, example = "10.77.1.0/24")]
    pub virtual_subnet: IpNet,
}

impl NatMapping {
    pub fn check(&self) -> Result<(), String> {
        if self.real.prefix_len() != self.virtual_subnet.prefix_len()
            || self.real.addr().is_ipv4() != self.virtual_subnet.addr().is_ipv4()
        {
            return Err("a 1:1 NAT maps subnets of the same family and size".into());
        }
        Ok(())
    }
}

/// Password rules of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    /// Minimum length in characters (8-256).
    #[schema(minimum = 8, maximum = 256)]
    pub min_length: u32,
    /// How many of the classes lower case, upper case, digit, other must appear (0-4).
    #[schema(minimum = 0, maximum = 4)]
    pub min_classes: u32,
    /// Days after which a password must be changed; 0 = never (0-3650).
    #[schema(minimum = 0, maximum = 3650)]
    pub expiry_days: u32,
    /// How many previous passwords may not be reused (0-24).
    #[schema(minimum = 0, maximum = 24)]
    pub history: u32,
    /// Refuse passwords from the built-in list of common passwords.
    pub deny_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 10,
            min_classes: 3,
            expiry_days: 0,
            history: 5,
            deny_common: true,
        }
    }
}

/// An account's settings (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettings {
    pub password_policy: PasswordPolicy,
    /// Every user must use a TOTP second factor.
    pub require_totp: bool,
    /// Failed logins in a row that lock a user (1-100).
    #[schema(minimum = 1, maximum = 100)]
    pub lockout_threshold: u32,
    /// How long a lockout lasts, in minutes (1-1440).
    #[schema(minimum = 1, maximum = 1440)]
    pub lockout_minutes: u32,
    /// Login sessions end after this much inactivity, in minutes (1-1440).
    #[schema(minimum = 1, maximum = 1440)]
    pub login_idle_minutes: u32,
    /// Login sessions end this long after login whatever happens, in hours (1-720).
    #[schema(minimum = 1, maximum = 720)]
    pub login_absolute_hours: u32,
    /// Users may create-and-start a session on a device their grant covers.
    pub adhoc_allowed: bool,
    /// Each session start must be approved on site or by an approver.
    pub dual_control: bool,
    /// Longest allowed session, in minutes (1-43200).
    #[schema(minimum = 1, maximum = 43200)]
    pub max_session_minutes: u32,
    /// A session with no tunnel traffic ends after this many minutes (1-1440).
    #[schema(minimum = 1, maximum = 1440)]
    pub session_idle_minutes: u32,
    /// Historian points are kept this many days, then purged (1-90).
    #[schema(minimum = 1, maximum = 90)]
    pub data_retention_days: u32,
    /// Browser desktop sessions (VNC): recorded, and whether a desktop may open
    /// while its recording cannot be stored.
    pub desktop_recording: RecordingMode,
    /// Desktop recordings are kept this many days, then deleted (1-3650).
    #[schema(minimum = 1, maximum = 3650)]
    pub recording_retention_days: u32,
    /// Largest recording of one desktop session, in MiB (1-4096). At the limit a
    /// required recording ends the desktop; otherwise it goes on unrecorded.
    #[schema(minimum = 1, maximum = 4096)]
    pub recording_max_mb: u32,
}

/// Whether browser desktop sessions are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    /// Recorded; a desktop does not open (and ends) when its recording cannot be stored.
    #[default]
    Required,
    /// Recorded when storage works; the desktop goes on without it otherwise.
    BestEffort,
    /// Not recorded.
    Off,
}

impl RecordingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingMode::Required => "required",
            RecordingMode::BestEffort => "best_effort",
            RecordingMode::Off => "off",
        }
    }
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            password_policy: PasswordPolicy::default(),
            require_totp: false,
            lockout_threshold: 5,
            lockout_minutes: 15,
            login_idle_minutes: 30,
            login_absolute_hours: 12,
            adhoc_allowed: false,
            dual_control: false,
            max_session_minutes: 8 * 60,
            session_idle_minutes: 60,
            data_retention_days: 10,
            desktop_recording: RecordingMode::Required,
            recording_retention_days: 90,
            recording_max_mb: 512,
        }
    }
}

impl AccountSettings {
    /// Checks every bound; the message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        let p = &self.password_policy;
        let range = |name: &str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(format!("{name} must be between {lo} and {hi}"))
            } else {
                Ok(())
            }
        };
        range("password_policy.min_length", p.min_length, 8, 256)?;
        range("password_policy.min_classes", p.min_classes, 0, 4)?;
        range("password_policy.expiry_days", p.expiry_days, 0, 3650)?;
        range("password_policy.history", p.history, 0, 24)?;
        range("lockout_threshold", self.lockout_threshold, 1, 100)?;
        range("lockout_minutes", self.lockout_minutes, 1, 1440)?;
        range("login_idle_minutes", self.login_idle_minutes, 1, 1440)?;
        range("login_absolute_hours", self.login_absolute_hours, 1, 720)?;
        range("max_session_minutes", self.max_session_minutes, 1, 43200)?;
        range("session_idle_minutes", self.session_idle_minutes, 1, 1440)?;
        range("data_retention_days", self.data_retention_days, 1, 90)?;
        range(
            "recording_retention_days",
            self.recording_retention_days,
            1,
            3650,
        )?;
        range("recording_max_mb", self.recording_max_mb, 1, 4096)?;
        Ok(())
    }
}

/// A change to an account's settings: only the keys given change (a JSON merge
/// patch, RFC 7396, with the value types of [`AccountSettings`]); unknown keys and
/// wrong types are refused when the body is parsed, bounds by [`AccountSettings::check`]
/// on the result. A key given as `null` is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSettingsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_policy: Option<PasswordPolicyPatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_totp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub lockout_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1440)]
    pub lockout_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1440)]
    pub login_idle_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 720)]
    pub login_absolute_hours: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adhoc_allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dual_control: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 43200)]
    pub max_session_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1440)]
    pub session_idle_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 90)]
    pub data_retention_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desktop_recording: Option<RecordingMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3650)]
    pub recording_retention_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4096)]
    pub recording_max_mb: Option<u32>,
}

/// A change to a password policy: only the keys given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicyPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 8, maximum = 256)]
    pub min_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4)]
    pub min_classes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3650)]
    pub expiry_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 24)]
    pub history: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_common: Option<bool>,
}

impl AccountSettingsPatch {
    /// `current` with the given keys replaced; the caller checks the bounds.
    pub fn apply(&self, current: &AccountSettings) -> AccountSettings {
        let mut s = current.clone();
        if let Some(p) = &self.password_policy {
            let q = &mut s.password_policy;
            q.min_length = p.min_length.unwrap_or(q.min_length);
            q.min_classes = p.min_classes.unwrap_or(q.min_classes);
            q.expiry_days = p.expiry_days.unwrap_or(q.expiry_days);
            q.history = p.history.unwrap_or(q.history);
            q.deny_common = p.deny_common.unwrap_or(q.deny_common);
        }
        s.require_totp = self.require_totp.unwrap_or(s.require_totp);
        s.lockout_threshold = self.lockout_threshold.unwrap_or(s.lockout_threshold);
        s.lockout_minutes = self.lockout_minutes.unwrap_or(s.lockout_minutes);
        s.login_idle_minutes = self.login_idle_minutes.unwrap_or(s.login_idle_minutes);
        s.login_absolute_hours = self.login_absolute_hours.unwrap_or(s.login_absolute_hours);
        s.adhoc_allowed = self.adhoc_allowed.unwrap_or(s.adhoc_allowed);
        s.dual_control = self.dual_control.unwrap_or(s.dual_control);
        s.max_session_minutes = self.max_session_minutes.unwrap_or(s.max_session_minutes);
        s.session_idle_minutes = self.session_idle_minutes.unwrap_or(s.session_idle_minutes);
        s.data_retention_days = self.data_retention_days.unwrap_or(s.data_retention_days);
        s.desktop_recording = self.desktop_recording.unwrap_or(s.desktop_recording);
        s.recording_retention_days = self
            .recording_retention_days
            .unwrap_or(s.recording_retention_days);
        s.recording_max_mb = self.recording_max_mb.unwrap_or(s.recording_max_mb);
        s
    }
}

impl From<&AccountSettings> for AccountSettingsPatch {
    /// A patch that sets every key to `s`'s value.
    fn from(s: &AccountSettings) -> Self {
        let p = &s.password_policy;
        Self {
            password_policy: Some(PasswordPolicyPatch {
                min_length: Some(p.min_length),
                min_classes: Some(p.min_classes),
                expiry_days: Some(p.expiry_days),
                history: Some(p.history),
                deny_common: Some(p.deny_common),
            }),
            require_totp: Some(s.require_totp),
            lockout_threshold: Some(s.lockout_threshold),
            lockout_minutes: Some(s.lockout_minutes),
            login_idle_minutes: Some(s.login_idle_minutes),
            login_absolute_hours: Some(s.login_absolute_hours),
            adhoc_allowed: Some(s.adhoc_allowed),
            dual_control: Some(s.dual_control),
            max_session_minutes: Some(s.max_session_minutes),
            session_idle_minutes: Some(s.session_idle_minutes),
            data_retention_days: Some(s.data_retention_days),
            desktop_recording: Some(s.desktop_recording),
            recording_retention_days: Some(s.recording_retention_days),
            recording_max_mb: Some(s.recording_max_mb),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Prepared,
    /// Started, waiting for on-site or approver consent (dual control).
    PendingApproval,
    Active,
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Prepared => "prepared",
            SessionState::PendingApproval => "pending_approval",
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }
}

impl FromStr for SessionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prepared" => Ok(Self::Prepared),
            "pending_approval" => Ok(Self::PendingApproval),
            "active" => Ok(Self::Active),
            "ended" => Ok(Self::Ended),
            _ => Err(format!("unknown session state {s:?}")),
        }
    }
}

/// Where one device of a session stands with its approval (dual control per
/// device): each device's site decides for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Approved (or no approval needed): the session runs on this device.
    Approved,
    /// Waiting for the site or an approver.
    Pending,
    /// Refused: the device was dropped from the session.
    Refused,
    /// Nobody decided in time: the device was dropped from the session.
    TimedOut,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Approved => "approved",
            ApprovalState::Pending => "pending",
            ApprovalState::Refused => "refused",
            ApprovalState::TimedOut => "timed_out",
        }
    }
}

impl FromStr for ApprovalState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Approved, Self::Pending, Self::Refused, Self::TimedOut]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown approval state {s:?}"))
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    User,
    Admin,
    Expiry,
    IdleTimeout,
    SiteSwitch,
    EdgeOffline,
    UserDisabled,
    Refused,
    /// Nobody approved the start in time (dual control).
    ApprovalTimeout,
    /// An admin disabled or archived one of the session's devices.
    DeviceDisabled,
    /// A replacement gateway enrolled for one of the session's devices.
    DeviceReplaced,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::User => "user",
            EndReason::Admin => "admin",
            EndReason::Expiry => "expiry",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::SiteSwitch => "site_switch",
            EndReason::EdgeOffline => "edge_offline",
            EndReason::UserDisabled => "user_disabled",
            EndReason::Refused => "refused",
            EndReason::ApprovalTimeout => "approval_timeout",
            EndReason::DeviceDisabled => "device_disabled",
            EndReason::DeviceReplaced => "device_replaced",
        }
    }
}

impl FromStr for EndReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::User,
            Self::Admin,
            Self::Expiry,
            Self::IdleTimeout,
            Self::SiteSwitch,
            Self::EdgeOffline,
            Self::UserDisabled,
            Self::Refused,
            Self::ApprovalTimeout,
            Self::DeviceDisabled,
            Self::DeviceReplaced,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown end reason {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn a_subnet_target_covers_hosts_and_port_subranges_inside_it() {
        let wide = t("tcp:192.168.1.0/24:1-1024");
        assert!(wide.covers(&t("tcp:192.168.1.10:502")));
        assert!(wide.covers(&t("tcp:192.168.1.10:100-200")));
        assert!(!wide.covers(&t("tcp:192.168.1.10:8080")));
        assert!(!wide.covers(&t("udp:192.168.1.10:502")));
        assert!(!wide.covers(&t("tcp:192.168.2.10:502")));
        assert!(
            !wide.covers(&t("tcp:192.168.1.10")),
            "all ports is more than 1-1024"
        );
        assert!(t("tcp:192.168.1.0/24").covers(&t("tcp:192.168.1.10")));
        assert!(t("icmp:10.0.0.0/8").covers(&t("icmp:10.1.2.3")));
    }

    #[test]
    fn targets_parse_strictly() {
        assert!("tcp:192.168.1.10:0".parse::<Target>().is_err());
        assert!("tcp:192.168.1.10:70000".parse::<Target>().is_err());
        assert!("tcp:192.168.1.10:20-10".parse::<Target>().is_err());
        assert!("icmp:192.168.1.10:5".parse::<Target>().is_err());
        assert!("sctp:192.168.1.10".parse::<Target>().is_err());
        assert!("tcp:not-an-ip".parse::<Target>().is_err());
        assert_eq!(
            t("tcp:192.168.1.77/24").address.to_string(),
            "192.168.1.0/24"
        );
        assert_eq!(t("tcp:fd00::1:502").ports, Some(PortRange::single(502)));
        assert_eq!(t("tcp:[fd00::1]:502").ports, Some(PortRange::single(502)));
        for s in [
            "tcp:192.168.1.10:502",
            "icmp:10.0.0.0/24",
            "udp:[fd00::1]:161-162",
            "tcp:10.0.0.0/8",
        ] {
            assert_eq!(t(s).to_string(), s, "display is parseable");
            assert_eq!(t(&t(s).to_string()), t(s));
        }
        let json = serde_json::to_string(&t("tcp:10.0.0.1:502")).unwrap();
        assert_eq!(
            serde_json::from_str::<Target>(&json).unwrap(),
            t("tcp:10.0.0.1:502")
        );
        assert!(
            serde_json::from_str::<Target>(r#"{"address":"10.0.0.1","protocol":"tcp","x":1}"#)
                .is_err()
        );
    }

    #[test]
    fn default_settings_are_within_their_own_bounds() {
        AccountSettings::default().check().unwrap();
        let mut s = AccountSettings::default();
        s.password_policy.min_length = 4;
        assert!(s.check().unwrap_err().contains("min_length"));
    }
}
