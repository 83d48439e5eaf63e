//! The command line: clap definitions and what each command does.

use crate::api::{self, Client};
use crate::config::{self, Credentials};
use crate::show::{self, Fields};
use crate::table::Table;
use crate::{Error, Result, fail, prompt};
use clap::{Args, Parser, Subcommand};
use drawbridge_proto::api::*;
use drawbridge_proto::{
    AccountSettings, ErrorCode, GrantLevel, LongText, Name, NatMapping, Role, SessionState, Target,
    Username,
};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// Environment variable holding an API token for automation.
pub const TOKEN_ENV: &str = "DRAWBRIDGE_TOKEN";

#[derive(Parser, Debug)]
#[command(
    name = "drawbridge",
    version,
    about = "Drawbridge: secure remote access to industrial machines.",
    long_about = "Drawbridge: secure remote access to industrial machines.\n\n\
        Log in once with `drawbridge login`; later commands use the stored login \
        (or an API token in DRAWBRIDGE_TOKEN). Lists print tables, or the server's \
        JSON with --json.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Server URL, e.g. https://drawbridge.example.com (default: the one you logged in to).
    #[arg(long, global = true, env = "DRAWBRIDGE_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Also trust this CA certificate (PEM), e.g. the ca.pem of a self-signed server.
    #[arg(long, global = true, env = "DRAWBRIDGE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables and messages.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Log in and store the login in your config directory.
    Login(LoginArgs),
    /// End the login on the server and remove it from this computer.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// List the devices you can see.
    Devices,
    /// Show, add, change, enrol and annotate devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// List sessions (admins, session admins and auditors see all; users their own).
    Sessions {
        /// Only sessions in this state: prepared, pending_approval, active or ended.
        #[arg(long)]
        state: Option<SessionState>,
    },
    /// Show, prepare, start and end sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// List the account's users.
    Users,
    /// Add and change users (admins).
    #[command(subcommand)]
    User(UserCmd),
    /// List user groups.
    Groups,
    /// Manage user groups (admins).
    #[command(subcommand)]
    Group(GroupCmd),
    /// List device pools.
    Pools,
    /// Manage device pools (admins).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// List grants (a group's level on a pool).
    Grants,
    /// Give groups access to pools (admins).
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Account-wide enrolment keys for devices that then wait for approval (admins).
    #[command(subcommand, name = "fleet-key")]
    FleetKey(FleetKeyCmd),
    /// Your API tokens for automation (use one with DRAWBRIDGE_TOKEN).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Change your password.
    Password(PasswordArgs),
    /// Your second factor (TOTP).
    #[command(subcommand)]
    Totp(TotpCmd),
    /// The account's name and settings.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Notifications for admins (lockouts and the like).
    Notifications,
    /// Export and verify the audit log (admins and auditors).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Bring a tunnel up into a session (starting it if needed) and stay in the foreground.
    Connect(crate::connect::ConnectArgs),
    /// Show the tunnels `drawbridge connect` has up on this computer.
    Status,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Account name (default: the last one you logged in to).
    #[arg(long, short = 'a')]
    pub account: Option<String>,
    /// User name (default: the last one you logged in as).
    #[arg(long, short = 'u', alias = "username")]
    pub user: Option<String>,
    /// Read the password from the first line of standard input instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
    /// The current code of your authenticator app (asked for when needed otherwise).
    #[arg(long, value_name = "CODE")]
    pub totp: Option<String>,
    /// When the password has expired, take the new one from this file's first line.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// List the devices you can see.
    List,
    /// Show one device.
    Show { device: String },
    /// Add a device (admins); prints its one-time activation key.
    Create {
        name: String,
        #[command(flatten)]
        spec: DeviceSpec,
    },
    /// Change a device (admins). A list option replaces the whole list.
    Update {
        device: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        spec: DeviceSpec,
        /// Remove every LAN subnet.
        #[arg(long, conflicts_with = "lan_subnet")]
        clear_lan_subnets: bool,
        /// Remove every 1:1 NAT mapping.
        #[arg(long, conflicts_with = "nat")]
        clear_nat: bool,
        /// Remove every firewall entry (nothing on the device is reachable).
        #[arg(long, conflicts_with = "allow")]
        clear_firewall: bool,
        /// `on`: this machine always needs on-site approval (only its edge's
        /// local approval lets a session reach it); `off`: the account's rule.
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        onsite_approval: Option<bool>,
    },
    /// Remove a device that was never used in a session (admins).
    Delete { device: String },
    /// Approve a device that enrolled with a fleet key (admins).
    Approve { device: String },
    /// Issue a new activation key for a device not enrolled yet (admins).
    ActivationKey { device: String },
    /// Write a note into the device's logbook (TEXT `-` reads standard input).
    Log { device: String, text: String },
    /// Show the device's logbook, newest first.
    Logbook { device: String },
    /// Take a device out of service (admins), e.g. a stolen gateway: its edge is
    /// refused and disconnected, its running sessions end, their relay connections close.
    Disable { device: String },
    /// Put a disabled device back into service (admins).
    Enable { device: String },
    /// Issue an activation key for a replacement gateway of the same device (admins).
    /// When the new gateway enrols with it, the old one's key stops working at once.
    Replace { device: String },
    /// Archive a device that was used in sessions instead of deleting it (admins):
    /// out of service for good, hidden from lists, its history kept.
    Archive { device: String },
    /// List archived devices.
    Archived,
}

#[derive(Args, Debug, Default)]
pub struct DeviceSpec {
    /// Serial number.
    #[arg(long)]
    pub serial: Option<String>,
    /// A LAN subnet behind the device, e.g. 192.168.1.0/24 (repeatable).
    #[arg(long, visible_alias = "lan", value_name = "CIDR")]
    pub lan_subnet: Vec<ipnet::IpNet>,
    /// 1:1 NAT, REAL=VIRTUAL, e.g. 192.168.1.0/24=10.77.1.0/24 (repeatable).
    #[arg(long, value_name = "REAL=VIRTUAL", value_parser = parse_nat)]
    pub nat: Vec<NatMapping>,
    /// A firewall entry: what may be reached, e.g. tcp:192.168.1.10:502 or icmp:192.168.1.0/24 (repeatable).
    #[arg(long, value_name = "TARGET")]
    pub allow: Vec<Target>,
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// List sessions.
    List {
        /// Only sessions in this state: prepared, pending_approval, active or ended.
        #[arg(long)]
        state: Option<SessionState>,
    },
    /// Show one session (by id or name).
    Show { session: String },
    /// Prepare a session (admins; session admins within their grants).
    Prepare {
        /// The session's name.
        name: String,
        /// DEVICE=TARGET[,TARGET...], e.g. press-3=tcp:192.168.1.10:502,icmp:192.168.1.10;
        /// DEVICE alone releases everything the device's firewall allows (repeatable).
        #[arg(
            long = "device",
            short = 'd',
            required = true,
            value_name = "DEVICE=TARGETS"
        )]
        devices: Vec<String>,
        /// A user who may start and use the session, by name or id (repeatable).
        #[arg(long = "user", short = 'u', value_name = "USER")]
        users: Vec<String>,
        /// Start of the validity window (RFC 3339 or YYYY-MM-DD; default: now).
        #[arg(long, value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// End of the validity window (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_time, conflicts_with = "duration")]
        until: Option<OffsetDateTime>,
        /// Length of the validity window, e.g. 2h, 90m, 1d (default: the account's maximum).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<time::Duration>,
    },
    /// Start a session prepared for you.
    Start { session: String },
    /// End a session.
    End { session: String },
    /// Approve a session's start for its devices waiting for approval, as an
    /// approver other than who started it (not devices that need on-site approval).
    Approve {
        session: String,
        /// Only this device (default: every device waiting that an approver may decide).
        #[arg(long)]
        device: Option<String>,
    },
    /// Refuse a session's start for its devices waiting for approval (they are dropped).
    Refuse {
        session: String,
        /// Only this device (default: every device waiting).
        #[arg(long)]
        device: Option<String>,
    },
    /// Add a device to a prepared session (admins, session admins).
    AddDevice {
        session: String,
        /// DEVICE=TARGET[,TARGET...] or DEVICE alone (everything its firewall allows).
        #[arg(long = "device", short = 'd', value_name = "DEVICE=TARGETS")]
        device: String,
    },
    /// Write a standard WireGuard (wg-quick) config for a session: for machines where
    /// only a stock WireGuard client may run. Starts the session if needed.
    ExportWireguard {
        session: String,
        /// Write the config to this new file (mode 0600) instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Create and start a session for yourself on one device, where the account allows it.
    Adhoc {
        device: String,
        /// Only these targets (default: everything your grant allows) (repeatable).
        #[arg(long, value_name = "TARGET")]
        target: Vec<Target>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// List users.
    List,
    /// Show one user.
    Show { user: String },
    /// Add a user (admins). The password is asked for unless given otherwise.
    Create {
        username: String,
        /// admin, session_admin, user or auditor.
        #[arg(long, default_value = "user")]
        role: Role,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Change a user (admins).
    Update {
        user: String,
        /// New role: admin, session_admin, user or auditor.
        #[arg(long)]
        role: Option<Role>,
        /// Disable the user: ends their logins, API tokens and running sessions.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable a disabled user.
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        password: PasswordSource,
        /// Ask for a new password on the terminal.
        #[arg(long, conflicts_with_all = ["password_file", "password_stdin"])]
        reset_password: bool,
        /// Lift a lockout after failed logins.
        #[arg(long)]
        unlock: bool,
        /// Remove the user's second factor.
        #[arg(long)]
        reset_totp: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct PasswordSource {
    /// Take the password from this file's first line.
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Take the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// List groups.
    List,
    /// Show one group and its members.
    Show { group: String },
    /// Create a group.
    Create { name: String },
    /// Delete a group and its grants.
    Delete { group: String },
    /// Put users into a group.
    #[command(name = "add-member")]
    AddMember {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Take users out of a group.
    #[command(name = "remove-member")]
    RemoveMember {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// List pools.
    List,
    /// Show one pool and its devices.
    Show { pool: String },
    /// Create a pool.
    Create { name: String },
    /// Delete a pool and its grants.
    Delete { pool: String },
    /// Put devices into a pool.
    AddDevice {
        pool: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Take devices out of a pool.
    RemoveDevice {
        pool: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrantCmd {
    /// List grants.
    List,
    /// Give a group a level on a pool.
    Create {
        #[arg(long)]
        group: String,
        #[arg(long)]
        pool: String,
        /// full (every target the device firewall allows), restricted (only --target) or monitor (no tunnel).
        #[arg(long)]
        level: GrantLevel,
        /// For restricted grants: an allowed target (repeatable).
        #[arg(long, value_name = "TARGET")]
        target: Vec<Target>,
    },
    /// Remove a grant: by id, or by --group and --pool.
    Delete {
        #[arg(required_unless_present_all = ["group", "pool"], conflicts_with_all = ["group", "pool"])]
        grant: Option<String>,
        #[arg(long, requires = "pool")]
        group: Option<String>,
        #[arg(long, requires = "group")]
        pool: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetKeyCmd {
    /// List fleet keys.
    List,
    /// Create a fleet key; prints it once.
    Create {
        name: String,
        /// Days until it expires (1-365).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Revoke a fleet key (by id or name).
    Revoke { key: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// List your API tokens.
    List,
    /// Create an API token; prints it once.
    Create {
        name: String,
        /// Days until it expires (1-365).
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// The token may only read (GET).
        #[arg(long)]
        read_only: bool,
    },
    /// Revoke one of your API tokens (by id or name).
    Revoke { token: String },
}

#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// Take the current password from this file's first line.
    #[arg(long, value_name = "FILE")]
    pub current_password_file: Option<PathBuf>,
    /// Take the new password from this file's first line.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TotpCmd {
    /// Set up a second factor. Without --code: makes a new key, prints it for your
    /// authenticator app, then asks for a code (the key waits on the server until a
    /// code confirms it, so you can also confirm later with --code).
    Enable {
        /// Confirm the key printed by an earlier `drawbridge totp enable` with a code
        /// from your app (no new key is made).
        #[arg(long)]
        code: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// Show the account and its settings.
    Show,
    /// Change settings, e.g. `require_totp=true password_policy.min_length=12` (admins).
    Set {
        /// SETTING=VALUE pairs; see `drawbridge account show` for the names.
        #[arg(value_name = "SETTING=VALUE")]
        settings: Vec<String>,
        /// Rename the account.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Print audit entries (admins and auditors).
    Export {
        /// jsonl (default), csv or json.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv", "json"])]
        format: String,
        /// Entries at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// Entries before this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, value_parser = parse_time)]
        to: Option<OffsetDateTime>,
        /// Entries by this actor: a user name, `user:<id>`, `device:<id>`, `api:<id>` or `system`.
        #[arg(long)]
        actor: Option<String>,
        /// Entries about this device (name or id).
        #[arg(long)]
        device: Option<String>,
        /// Entries whose action starts with this, e.g. `login` or `session.`.
        #[arg(long)]
        action: Option<String>,
        /// At most this many entries, in one request (server maximum 10000).
        /// Without it every matching entry is read, page by page.
        #[arg(long)]
        limit: Option<u32>,
        /// Entries per request while reading every page (default: the server's maximum).
        #[arg(long, value_name = "N", conflicts_with = "limit", value_parser = clap::value_parser!(u32).range(1..=10000))]
        page_size: Option<u32>,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check the account's audit hash chain; exits non-zero if it is broken.
    Verify,
}

// ------------------------------------------------------------------ parsers

fn parse_nat(s: &str) -> std::result::Result<NatMapping, String> {
    let (real, virt) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected REAL=VIRTUAL, e.g. 192.168.1.0/24=10.77.1.0/24"))?;
    let m = NatMapping {
        real: drawbridge_proto::parse_net(real.trim())?,
        virtual_subnet: drawbridge_proto::parse_net(virt.trim())?,
    };
    m.check()?;
    Ok(m)
}

/// RFC 3339, or a date `YYYY-MM-DD` meaning its midnight UTC.
pub fn parse_time(s: &str) -> std::result::Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!("{s:?} is not a time: use RFC 3339 (2026-11-22T14:00:00Z) or YYYY-MM-DD")
        })
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`).
pub fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

/// `90m`, `2h`, `1d`, `1h30m`, `45s`.
pub fn parse_duration(s: &str) -> std::result::Result<time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 30m, 2h, 1d or 1h30m");
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: i64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(time::Duration::seconds(total))
}

/// `DEVICE=TARGET[,TARGET...]` or `DEVICE`.
pub fn parse_device_spec(s: &str) -> std::result::Result<(String, Option<Vec<Target>>), String> {
    let Some((dev, list)) = s.split_once('=') else {
        let dev = s.trim();
        if dev.is_empty() {
            return Err("empty device".into());
        }
        return Ok((dev.to_string(), None));
    };
    let dev = dev.trim();
    if dev.is_empty() {
        return Err(format!("{s:?}: no device before '='"));
    }
    let targets = list
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<Target>())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err(format!("{s:?}: no targets after '='"));
    }
    Ok((dev.to_string(), Some(targets)))
}

fn name(s: &str, what: &str) -> Result<Name> {
    Name::try_from(s).map_err(|e| Error::user(format!("{what} {s:?}: {e}")))
}

// ------------------------------------------------------------------ context

/// Resolved connection for a command: the client and how to print.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) json: bool,
    /// The stored login in use (none when DRAWBRIDGE_TOKEN is used).
    stored: Option<Credentials>,
}

fn env_token() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn connect(g: &Global) -> Result<Ctx> {
    let stored = config::load()?;
    let server = match (&g.server, &stored) {
        (Some(s), _) => api::normalize_server(s)?,
        (None, Some(c)) => c.server.clone(),
        (None, None) => fail!(
            "not logged in: run `drawbridge login --server URL --account ACCOUNT --user USER`"
        ),
    };
    let same_server = stored.as_ref().filter(|c| c.server == server);
    let ca_file = g
        .ca_file
        .clone()
        .or_else(|| same_server.and_then(|c| c.ca_file.clone()));
    let client = Client::new(&server, ca_file.as_deref())?;
    if let Some(token) = env_token() {
        return Ok(Ctx {
            client: client.with_token(token),
            json: g.json,
            stored: None,
        });
    }
    let Some(creds) = same_server.cloned() else {
        fail!(
            "not logged in to {server}: run `drawbridge login --server {server} --account ACCOUNT --user USER`"
        );
    };
    Ok(Ctx {
        client: client.with_token(creds.token.clone()),
        json: g.json,
        stored: Some(creds),
    })
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("API types serialise");
    out(&format!("{s}\n"))
}

fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        // `drawbridge devices | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(Error::Io {
            context: "writing standard output".into(),
            source,
        }),
    }
}

fn print_table(t: &Table, none: &str) -> Result<()> {
    if t.is_empty() {
        eprintln!("{none}");
        Ok(())
    } else {
        out(&t.render())
    }
}

/// Either the JSON of `v`, or the human text `f` makes.
fn emit<T: Serialize>(ctx: &Ctx, v: &T, f: impl FnOnce() -> String) -> Result<()> {
    if ctx.json { print_json(v) } else { out(&f()) }
}

// ------------------------------------------------------------------ name resolution

/// Picks one item by exact id, exact name, or case-insensitive unique name.
fn pick<'a, T>(
    items: &'a [T],
    input: &str,
    kind: &str,
    list_cmd: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    if let Some(x) = items.iter().find(|x| id(x) == input) {
        return Ok(x);
    }
    let exact: Vec<&T> = items.iter().filter(|x| name(x) == input).collect();
    let matches = if exact.is_empty() {
        items
            .iter()
            .filter(|x| name(x).eq_ignore_ascii_case(input))
            .collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => fail!("no {kind} {input:?} (see `drawbridge {list_cmd}`)"),
        many => fail!(
            "{} {kind}s are named {input:?}; use an id: {}",
            many.len(),
            many.iter().map(|x| id(x)).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// When the caller may not list (e.g. a `user` asking for groups), the input is taken as an id.
fn listing_refused(e: &api::Error) -> bool {
    matches!(e.code(), Some(ErrorCode::Forbidden))
}

impl Ctx {
    pub(crate) async fn device(&self, input: &str) -> Result<Device> {
        let mut all = self.client.devices().await?;
        if !all
            .iter()
            .any(|d| d.id == input || d.name.as_str().eq_ignore_ascii_case(input))
        {
            // Archived devices are hidden from the list but can still be named.
            all.extend(self.client.archived_devices().await.unwrap_or_default());
        }
        Ok(pick(
            &all,
            input,
            "device",
            "devices",
            |d| &d.id,
            |d| d.name.as_str(),
        )?
        .clone())
    }

    pub(crate) async fn device_id(&self, input: &str) -> Result<String> {
        Ok(self.device(input).await?.id)
    }

    async fn user_id(&self, input: &str) -> Result<String> {
        match self.client.users().await {
            Ok(all) => Ok(pick(
                &all,
                input,
                "user",
                "users",
                |u| &u.id,
                |u| u.username.as_str(),
            )?
            .id
            .clone()),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    async fn group_id(&self, input: &str) -> Result<String> {
        match self.client.groups().await {
            Ok(all) => Ok(pick(
                &all,
                input,
                "group",
                "groups",
                |g| &g.id,
                |g| g.name.as_str(),
            )?
            .id
            .clone()),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    async fn pool_id(&self, input: &str) -> Result<String> {
        match self.client.pools().await {
            Ok(all) => Ok(
                pick(&all, input, "pool", "pools", |p| &p.id, |p| p.name.as_str())?
                    .id
                    .clone(),
            ),
            Err(e) if listing_refused(&e) => Ok(input.to_string()),
            Err(e) => Err(e.into()),
        }
    }

    /// A session by id, or by name (preferring the one that has not ended).
    pub(crate) async fn session_id(&self, input: &str) -> Result<String> {
        let all = self.client.sessions(None).await?;
        if all.iter().any(|s| s.id == input) {
            return Ok(input.to_string());
        }
        let named: Vec<&Session> = all.iter().filter(|s| s.name.as_str() == input).collect();
        let live: Vec<&Session> = named
            .iter()
            .copied()
            .filter(|s| s.state != SessionState::Ended)
            .collect();
        match (named.as_slice(), live.as_slice()) {
            ([one], _) | (_, [one]) => Ok(one.id.clone()),
            ([], _) => fail!("no session {input:?} (see `drawbridge sessions`)"),
            (many, _) => fail!(
                "{} sessions are named {input:?}; use an id: {}",
                many.len(),
                many.iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Names for ids, best effort (a `user` cannot list everything).
    async fn device_names(&self) -> HashMap<String, String> {
        self.client
            .devices()
            .await
            .map(|v| v.into_iter().map(|d| (d.id, d.name.to_string())).collect())
            .unwrap_or_default()
    }

    async fn user_names(&self) -> HashMap<String, String> {
        self.client
            .users()
            .await
            .map(|v| {
                v.into_iter()
                    .map(|u| (u.id, u.username.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn session_devices(&self, specs: &[String]) -> Result<Vec<SessionDevice>> {
        let all = self.client.devices().await?;
        let mut out = Vec::new();
        for spec in specs {
            let (dev, targets) = parse_device_spec(spec).map_err(Error::User)?;
            let d = pick(
                &all,
                &dev,
                "device",
                "devices",
                |d| &d.id,
                |d| d.name.as_str(),
            )?;
            let targets = match targets {
                Some(t) => t,
                None if d.firewall.is_empty() => fail!(
                    "device {} allows nothing in its firewall; name the targets: --device {}=tcp:ADDRESS:PORT",
                    d.name,
                    d.name
                ),
                None => d.firewall.clone(),
            };
            out.push(SessionDevice {
                device_id: d.id.clone(),
                targets,
            });
        }
        Ok(out)
    }
}

fn name_of(map: &HashMap<String, String>, id: &str) -> String {
    map.get(id).cloned().unwrap_or_else(|| id.to_string())
}

// ------------------------------------------------------------------ dispatch

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Login(args) => login(&g, args).await,
        Command::Logout => logout(&g).await,
        Command::Whoami => whoami(&connect(&g)?).await,
        Command::Devices | Command::Device(DeviceCmd::List) => devices(&connect(&g)?).await,
        Command::Device(cmd) => device(&connect(&g)?, cmd).await,
        Command::Sessions { state } | Command::Session(SessionCmd::List { state }) => {
            sessions(&connect(&g)?, state).await
        }
        Command::Session(cmd) => session(&connect(&g)?, cmd).await,
        Command::Users | Command::User(UserCmd::List) => users(&connect(&g)?).await,
        Command::User(cmd) => user(&connect(&g)?, cmd).await,
        Command::Groups | Command::Group(GroupCmd::List) => groups(&connect(&g)?).await,
        Command::Group(cmd) => group(&connect(&g)?, cmd).await,
        Command::Pools | Command::Pool(PoolCmd::List) => pools(&connect(&g)?).await,
        Command::Pool(cmd) => pool(&connect(&g)?, cmd).await,
        Command::Grants | Command::Grant(GrantCmd::List) => grants(&connect(&g)?).await,
        Command::Grant(cmd) => grant(&connect(&g)?, cmd).await,
        Command::FleetKey(cmd) => fleet_key(&connect(&g)?, cmd).await,
        Command::Token(cmd) => token(&connect(&g)?, cmd).await,
        Command::Password(args) => password(&connect(&g)?, args).await,
        Command::Totp(TotpCmd::Enable { code }) => totp_enable(&connect(&g)?, code).await,
        Command::Account(cmd) => account(&connect(&g)?, cmd).await,
        Command::Notifications => notifications(&connect(&g)?).await,
        Command::Audit(cmd) => audit(&connect(&g)?, cmd).await,
        Command::Connect(args) => crate::connect::run(&connect(&g)?, args).await,
        Command::Status => crate::connect::status(g.json),
    }
}

// ------------------------------------------------------------------ login

async fn login(g: &Global, args: LoginArgs) -> Result<()> {
    let previous = config::load()?;
    let server = match (&g.server, &previous) {
        (Some(s), _) => api::normalize_server(s)?,
        (None, Some(c)) => c.server.clone(),
        (None, None) => fail!("which server? pass --server URL"),
    };
    let same = previous.as_ref().filter(|c| c.server == server);
    let account = match (args.account, same) {
        (Some(a), _) => a,
        (None, Some(c)) => c.account.clone(),
        (None, None) => fail!("which account? pass --account NAME"),
    };
    let user = match (args.user, same) {
        (Some(u), _) => u,
        (None, Some(c)) => c.user.clone(),
        (None, None) => fail!("which user? pass --user NAME"),
    };
    let ca_file = match g
        .ca_file
        .clone()
        .or_else(|| same.and_then(|c| c.ca_file.clone()))
    {
        Some(p) => Some(std::path::absolute(&p).map_err(|source| Error::Io {
            context: format!("resolving {}", p.display()),
            source,
        })?),
        None => None,
    };
    let mut client = Client::new(&server, ca_file.as_deref())?;
    // Fail on an untrusted certificate before asking for a password.
    if !args.password_stdin {
        probe(&client).await?;
    }
    let password = if args.password_stdin {
        prompt::secret_from_stdin("password")?
    } else {
        prompt::secret(&format!("Password for {user}@{account}: "), "password")?
    };
    let mut resp = client
        .login(&LoginRequest {
            account: account.clone(),
            username: user.clone(),
            password: password.clone(),
            totp: args.totp.clone(),
        })
        .await?;
    // Walk the stages until the login is complete.
    for _ in 0..6 {
        client.set_token(resp.token.clone());
        resp = match resp.stage {
            LoginStage::Complete => break,
            LoginStage::TotpRequired => {
                let code = prompt::line(
                    "Code from your authenticator app: ",
                    "TOTP code (pass it with --totp CODE)",
                )?;
                client.login_totp(&code).await?
            }
            LoginStage::PasswordChangeRequired => {
                eprintln!("Your password has expired; choose a new one.");
                let new = match &args.new_password_file {
                    Some(f) => prompt::secret_from_file(f, "new password")?,
                    None => prompt::new_password("password")?,
                };
                client.change_password(&password, &new).await?
            }
            LoginStage::TotpEnrollmentRequired => {
                eprintln!("Your account requires a second factor; set it up now.");
                let e = client.totp_enroll().await?;
                print_totp_secret(&e)?;
                let code = prompt::line("Code from your authenticator app: ", "TOTP code")?;
                client.totp_confirm(&code).await?
            }
        };
    }
    if resp.stage != LoginStage::Complete {
        fail!("the login did not complete");
    }
    client.set_token(resp.token.clone());
    let me = client.me().await?;
    let creds = Credentials {
        server: server.clone(),
        ca_file,
        account: me.account.name.to_string(),
        user: me.user.username.to_string(),
        token: resp.token.clone(),
        expires_at: resp
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
    };
    let path = config::save(&creds)?;
    // The login this one replaces is ended on the server, best effort.
    if let Some(old) = previous.as_ref().filter(|c| c.token != creds.token)
        && let Ok(c) = Client::new(&old.server, old.ca_file.as_deref())
    {
        let _ = c.with_token(old.token.clone()).logout().await;
    }
    if g.json {
        return print_json(&me);
    }
    eprintln!(
        "Logged in to {server} as {} ({}) in account {}; login stored in {}.",
        me.user.username,
        me.user.role,
        me.account.name,
        path.display()
    );
    Ok(())
}

/// An unauthenticated request that only proves the TLS connection works.
async fn probe(client: &Client) -> Result<()> {
    match client.me().await {
        Ok(_) => Ok(()),
        Err(api::Error::Api { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn print_totp_secret(e: &TotpEnrollResponse) -> Result<()> {
    out(&format!(
        "Add this key to your authenticator app (TOTP, SHA-1, 6 digits, 30 s):\n  secret: {}\n  uri:    {}\n",
        e.secret, e.otpauth_uri
    ))
}

async fn logout(g: &Global) -> Result<()> {
    let Some(creds) = config::load()? else {
        eprintln!("Not logged in.");
        return Ok(());
    };
    let ca = g.ca_file.clone().or_else(|| creds.ca_file.clone());
    let ended = match Client::new(&creds.server, ca.as_deref()) {
        Ok(c) => c.with_token(creds.token.clone()).logout().await,
        Err(e) => Err(e),
    };
    config::remove()?;
    match ended {
        Ok(())
        | Err(api::Error::Api {
            code: ErrorCode::Unauthenticated,
            ..
        }) => {
            eprintln!("Logged out of {}.", creds.server);
        }
        Err(e) => eprintln!(
            "Removed the stored login, but could not end it on {}: {e}",
            creds.server
        ),
    }
    Ok(())
}

async fn whoami(ctx: &Ctx) -> Result<()> {
    let me = ctx.client.me().await?;
    emit(ctx, &me, || {
        let mut f = Fields::new();
        f.add("User", format!("{} ({})", me.user.username, me.user.role))
            .add("User ID", &me.user.id)
            .add(
                "Account",
                format!("{} ({})", me.account.name, me.account.id),
            )
            .add("Server", ctx.client.server())
            .add(
                "Via",
                if me.via == "api_token" {
                    "API token"
                } else {
                    "login"
                },
            )
            .add("2FA", if me.user.totp_enabled { "on" } else { "off" });
        if let Some(t) = ctx
            .stored
            .as_ref()
            .and_then(|c| c.expires_at.as_deref())
            .and_then(|exp| parse_time(exp).ok())
        {
            f.add("Login ends", show::time(&t));
        }
        f.render()
    })
}

async fn password(ctx: &Ctx, args: PasswordArgs) -> Result<()> {
    let current = match &args.current_password_file {
        Some(f) => prompt::secret_from_file(f, "current password")?,
        None => prompt::secret("Current password: ", "current password")?,
    };
    let new = match &args.new_password_file {
        Some(f) => prompt::secret_from_file(f, "new password")?,
        None => prompt::new_password("password")?,
    };
    let resp = ctx.client.change_password(&current, &new).await?;
    replace_stored_token(ctx, &resp)?;
    eprintln!("Password changed. Your other logins and API tokens were ended.");
    Ok(())
}

/// After a password change or TOTP set-up the server answers with a fresh login.
fn replace_stored_token(ctx: &Ctx, resp: &LoginResponse) -> Result<()> {
    if let Some(mut creds) = ctx.stored.clone() {
        creds.token = resp.token.clone();
        creds.expires_at = resp
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        config::save(&creds)?;
    }
    if resp.stage != LoginStage::Complete {
        eprintln!("Log in again with `drawbridge login` to finish the next step.");
    }
    Ok(())
}

async fn totp_enable(ctx: &Ctx, code: Option<String>) -> Result<()> {
    let code = match code {
        Some(c) => c,
        None => {
            // A new key, kept on the server (not active) until a code confirms it.
            let e = ctx.client.totp_enroll().await?;
            if ctx.json {
                print_json(&e)?;
            } else {
                print_totp_secret(&e)?;
            }
            eprint!("Code from your authenticator app: ");
            let _ = std::io::stderr().flush();
            match prompt::stdin_line()? {
                Some(c) if !c.trim().is_empty() => c.trim().to_string(),
                _ => {
                    eprintln!(
                        "\nNot enabled yet: the key waits on the server until you confirm it with \
                         `drawbridge totp enable --code CODE` (a code from your app)."
                    );
                    return Ok(());
                }
            }
        }
    };
    let resp = match ctx.client.totp_confirm(&code).await {
        Err(e) if e.code() == Some(ErrorCode::Conflict) => {
            if ctx.client.me().await.is_ok_and(|me| me.user.totp_enabled) {
                fail!("a second factor is already active; an admin can reset it");
            }
            fail!(
                "no key is waiting for a code ({}): run `drawbridge totp enable` without --code first to get one",
                api_message(&e)
            )
        }
        Err(e) if e.code() == Some(ErrorCode::InvalidCode) => fail!(
            "the code does not match the key waiting on the server: use the newest key from \
             `drawbridge totp enable` and check the time on the device running the app"
        ),
        r => r?,
    };
    replace_stored_token(ctx, &resp)?;
    eprintln!("Second factor enabled: logins now ask for a code from your app.");
    Ok(())
}

/// The server's message of an API error (or the whole error).
fn api_message(e: &api::Error) -> String {
    match e {
        api::Error::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------ devices

async fn devices(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.devices().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["NAME", "ID", "STATUS", "SWITCH", "LAN", "LAST SEEN"]);
    for d in &all {
        let lan: Vec<String> = d.lan_subnets.iter().map(ToString::to_string).collect();
        t.row([
            d.name.to_string(),
            d.id.clone(),
            show::device_state(d).to_string(),
            show::switch(d).to_string(),
            if lan.is_empty() {
                "-".into()
            } else {
                lan.join(",")
            },
            show::opt_time(&d.status.last_seen),
        ]);
    }
    print_table(&t, "No devices.")
}

fn device_fields(d: &Device) -> String {
    let mut f = Fields::new();
    f.add("Name", d.name.as_str())
        .add("ID", &d.id)
        .add("Serial", d.serial.clone().unwrap_or_else(|| "-".into()))
        .add("Status", show::device_state(d))
        .add("Switch", show::switch(d))
        .add(
            "Agent",
            d.status.agent_version.clone().unwrap_or_else(|| "-".into()),
        )
        .add("Last seen", show::opt_time(&d.status.last_seen))
        .add(
            "Endpoint",
            d.status
                .public_endpoint
                .clone()
                .unwrap_or_else(|| "-".into()),
        )
        .lines("LAN subnets", d.lan_subnets.iter().map(ToString::to_string))
        .lines(
            "1:1 NAT",
            d.nat
                .iter()
                .map(|m| format!("{} = {}", m.real, m.virtual_subnet)),
        )
        .lines("Firewall", d.firewall.iter().map(show::target))
        .add("Created", show::time(&d.created_at));
    f.render()
}

fn activation_text(key: &ActivationKey) -> String {
    format!(
        "Activation key (single use, valid until {}; it is not shown again):\n  {}\n",
        show::time(&key.expires_at),
        key.key
    )
}

/// `disable`, `enable` or `archive`, then says what became of the device.
async fn device_service(ctx: &Ctx, device: &str, verb: &str, text: &str) -> Result<()> {
    let id = ctx.device_id(device).await?;
    let d = ctx.client.device_service(&id, verb).await?;
    emit(ctx, &d, || format!("Device {} ({}) {text}\n", d.name, d.id))
}

async fn device(ctx: &Ctx, cmd: DeviceCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        DeviceCmd::List => unreachable!("dispatched to devices()"),
        DeviceCmd::Show { device } => {
            let d = ctx.device(&device).await?;
            emit(ctx, &d, || device_fields(&d))
        }
        DeviceCmd::Create { name: n, spec } => {
            let req = CreateDevice {
                name: name(&n, "device name")?,
                serial: spec
                    .serial
                    .as_deref()
                    .map(|s| name(s, "serial"))
                    .transpose()?,
                lan_subnets: spec.lan_subnet,
                nat: spec.nat,
                firewall: spec.allow,
            };
            let created = c.create_device(&req).await?;
            emit(ctx, &created, || {
                format!(
                    "Created device {} ({}).\n{}",
                    created.device.name,
                    created.device.id,
                    activation_text(&created.activation)
                )
            })
        }
        DeviceCmd::Update {
            device,
            name: new_name,
            spec,
            clear_lan_subnets,
            clear_nat,
            clear_firewall,
            onsite_approval,
        } => {
            let id = ctx.device_id(&device).await?;
            fn list<T>(v: Vec<T>, clear: bool) -> Option<Vec<T>> {
                if clear {
                    Some(Vec::new())
                } else {
                    (!v.is_empty()).then_some(v)
                }
            }
            let req = UpdateDevice {
                name: new_name
                    .as_deref()
                    .map(|s| name(s, "device name"))
                    .transpose()?,
                serial: spec
                    .serial
                    .as_deref()
                    .map(|s| name(s, "serial"))
                    .transpose()?,
                lan_subnets: list(spec.lan_subnet, clear_lan_subnets),
                nat: list(spec.nat, clear_nat),
                firewall: list(spec.allow, clear_firewall),
                onsite_approval,
            };
            if req.name.is_none()
                && req.serial.is_none()
                && req.lan_subnets.is_none()
                && req.nat.is_none()
                && req.firewall.is_none()
                && req.onsite_approval.is_none()
            {
                fail!("nothing to change: see `drawbridge device update --help`");
            }
            let d = c.update_device(&id, &req).await?;
            emit(ctx, &d, || device_fields(&d))
        }
        DeviceCmd::Disable { device } => {
            let text = "is disabled: its edge is refused and its running sessions ended.";
            device_service(ctx, &device, "disable", text).await
        }
        DeviceCmd::Enable { device } => {
            device_service(ctx, &device, "enable", "is enabled again.").await
        }
        DeviceCmd::Archive { device } => {
            let text = "is archived: out of service for good, its history kept (`drawbridge device archived`).";
            device_service(ctx, &device, "archive", text).await
        }
        DeviceCmd::Replace { device } => {
            let id = ctx.device_id(&device).await?;
            let key = c.replace_device(&id).await?;
            emit(ctx, &key, || {
                format!(
                    "Enrol the replacement gateway with this key; the old gateway's key stops working when it does.\n\
                     (If the old gateway was stolen, disable the device now: `drawbridge device disable {device}`,\n\
                     then enable it once the replacement is enrolled.)\n{}",
                    activation_text(&key)
                )
            })
        }
        DeviceCmd::Archived => {
            let all = c.archived_devices().await?;
            if ctx.json {
                return print_json(&all);
            }
            let mut t = Table::new(["NAME", "ID", "CREATED"]);
            for d in &all {
                t.row([d.name.to_string(), d.id.clone(), show::time(&d.created_at)]);
            }
            print_table(&t, "No archived devices.")
        }
        DeviceCmd::Delete { device } => {
            let d = ctx.device(&device).await?;
            c.delete_device(&d.id).await?;
            done(ctx, &format!("Deleted device {} ({}).", d.name, d.id))
        }
        DeviceCmd::Approve { device } => {
            let id = ctx.device_id(&device).await?;
            let d = c.approve_device(&id).await?;
            emit(ctx, &d, || {
                format!(
                    "Approved device {} ({}); it receives its certificate.\n",
                    d.name, d.id
                )
            })
        }
        DeviceCmd::ActivationKey { device } => {
            let id = ctx.device_id(&device).await?;
            let key = c.new_activation_key(&id).await?;
            emit(ctx, &key, || {
                format!(
                    "Earlier activation keys of this device no longer work.\n{}",
                    activation_text(&key)
                )
            })
        }
        DeviceCmd::Log { device, text } => {
            let id = ctx.device_id(&device).await?;
            let text = if text == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|source| Error::Io {
                        context: "reading standard input".into(),
                        source,
                    })?;
                s.trim_end().to_string()
            } else {
                text
            };
            let text =
                LongText::try_from(text).map_err(|e| Error::user(format!("logbook note: {e}")))?;
            let entry = c.add_log(&id, &CreateLogEntry { text }).await?;
            emit(ctx, &entry, || "Note written to the logbook.\n".to_string())
        }
        DeviceCmd::Logbook { device } => {
            let id = ctx.device_id(&device).await?;
            let entries = c.logbook(&id).await?;
            if ctx.json {
                return print_json(&entries);
            }
            let mut t = Table::new(["TIME", "AUTHOR", "NOTE"]);
            for e in &entries {
                t.row([
                    show::time(&e.created_at),
                    e.author.clone(),
                    e.text.to_string(),
                ]);
            }
            print_table(&t, "The logbook is empty.")
        }
    }
}

/// A confirmation: a message, or with --json `{"ok": true}`.
fn done(ctx: &Ctx, msg: &str) -> Result<()> {
    if ctx.json {
        print_json(&serde_json::json!({ "ok": true }))
    } else {
        eprintln!("{msg}");
        Ok(())
    }
}

// ------------------------------------------------------------------ sessions

async fn sessions(ctx: &Ctx, state: Option<SessionState>) -> Result<()> {
    let all = ctx.client.sessions(state).await?;
    if ctx.json {
        return print_json(&all);
    }
    let devices = ctx.device_names().await;
    let users = ctx.user_names().await;
    let mut t = Table::new(["NAME", "ID", "STATE", "DEVICES", "USERS", "VALID UNTIL"]);
    for s in &all {
        t.row([
            s.name.to_string(),
            s.id.clone(),
            s.state.as_str().to_string(),
            s.devices
                .iter()
                .map(|d| name_of(&devices, &d.device_id))
                .collect::<Vec<_>>()
                .join(","),
            s.users
                .iter()
                .map(|u| name_of(&users, u))
                .collect::<Vec<_>>()
                .join(","),
            show::time(&s.valid_until),
        ]);
    }
    print_table(&t, "No sessions.")
}

async fn session_fields(ctx: &Ctx, s: &Session) -> String {
    let devices = ctx.device_names().await;
    let users = ctx.user_names().await;
    let actor = |a: &str| match a.strip_prefix("user:") {
        Some(id) => name_of(&users, id),
        None => a.to_string(),
    };
    let mut f = Fields::new();
    f.add("Name", s.name.as_str())
        .add("ID", &s.id)
        .add("State", s.state.as_str())
        .add("Ad hoc", show::yes_no(s.adhoc))
        .add(
            "Valid",
            format!(
                "{} to {}",
                show::time(&s.valid_from),
                show::time(&s.valid_until)
            ),
        )
        .lines(
            "Devices",
            s.devices.iter().map(|d| {
                let approval = s
                    .approvals
                    .iter()
                    .find(|a| a.device_id == d.device_id)
                    .filter(|a| a.state != drawbridge_proto::ApprovalState::Approved)
                    .map(|a| format!(" [{}]", a.state.as_str().replace('_', " ")))
                    .unwrap_or_default();
                format!(
                    "{}: {}{approval}",
                    name_of(&devices, &d.device_id),
                    show::targets(&d.targets)
                )
            }),
        )
        .lines("Users", s.users.iter().map(|u| name_of(&users, u)))
        .add(
            "Created",
            format!("{} by {}", show::time(&s.created_at), actor(&s.created_by)),
        );
    if let Some(t) = &s.started_at {
        f.add(
            "Started",
            format!(
                "{} by {}",
                show::time(t),
                actor(s.started_by.as_deref().unwrap_or("-"))
            ),
        );
    }
    if let Some(t) = &s.ended_at {
        f.add(
            "Ended",
            format!(
                "{} by {} ({})",
                show::time(t),
                actor(s.ended_by.as_deref().unwrap_or("-")),
                s.end_reason.map(|r| r.as_str()).unwrap_or("-")
            ),
        );
    }
    f.render()
}

/// `session approve|refuse`: an approver's decision on devices waiting for approval.
async fn decide(ctx: &Ctx, session: &str, device: Option<String>, approve: bool) -> Result<()> {
    let id = ctx.session_id(session).await?;
    let device_id = match device {
        Some(d) => Some(ctx.device_id(&d).await?),
        None => None,
    };
    let req = drawbridge_proto::api::Decision { approve, device_id };
    let s = ctx.client.decide_session(&id, &req).await?;
    let waiting = s
        .approvals
        .iter()
        .filter(|a| a.state == drawbridge_proto::ApprovalState::Pending)
        .count();
    emit(ctx, &s, || {
        format!(
            "{} for session {} ({}); it is {}{}.\n",
            if approve { "Approved" } else { "Refused" },
            s.name,
            s.id,
            s.state.as_str(),
            if waiting > 0 {
                format!(", {waiting} device(s) still waiting")
            } else {
                String::new()
            }
        )
    })
}

async fn session(ctx: &Ctx, cmd: SessionCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        SessionCmd::List { .. } => unreachable!("dispatched to sessions()"),
        SessionCmd::Show { session } => {
            let s = c.session(&ctx.session_id(&session).await?).await?;
            if ctx.json {
                return print_json(&s);
            }
            out(&session_fields(ctx, &s).await)
        }
        SessionCmd::Prepare {
            name: n,
            devices,
            users,
            from,
            until,
            duration,
        } => {
            let name = name(&n, "session name")?;
            let devices = ctx.session_devices(&devices).await?;
            let mut user_ids = Vec::new();
            for u in &users {
                user_ids.push(ctx.user_id(u).await?);
            }
            let valid_until = match (until, duration) {
                (Some(u), _) => Some(u),
                (None, Some(d)) => Some(from.unwrap_or_else(OffsetDateTime::now_utc) + d),
                (None, None) => None,
            };
            let req = PrepareSession {
                name,
                devices,
                users: user_ids,
                valid_from: from,
                valid_until,
            };
            let s = c.prepare_session(&req).await?;
            emit(ctx, &s, || {
                format!(
                    "Prepared session {} ({}), valid {} to {}.\n",
                    s.name,
                    s.id,
                    show::time(&s.valid_from),
                    show::time(&s.valid_until)
                )
            })
        }
        SessionCmd::Start { session } => {
            let s = c.start_session(&ctx.session_id(&session).await?).await?;
            emit(ctx, &s, || match s.state {
                SessionState::PendingApproval => format!(
                    "Session {} ({}) waits for approval on site.\n",
                    s.name, s.id
                ),
                _ => format!(
                    "Session {} ({}) is {}, until {}.\n",
                    s.name,
                    s.id,
                    s.state.as_str(),
                    show::time(&s.valid_until)
                ),
            })
        }
        SessionCmd::End { session } => {
            let s = c.end_session(&ctx.session_id(&session).await?).await?;
            emit(ctx, &s, || {
                format!("Session {} ({}) ended.\n", s.name, s.id)
            })
        }
        SessionCmd::Approve { session, device } => decide(ctx, &session, device, true).await,
        SessionCmd::Refuse { session, device } => decide(ctx, &session, device, false).await,
        SessionCmd::AddDevice { session, device } => {
            let id = ctx.session_id(&session).await?;
            let mut d = ctx.session_devices(std::slice::from_ref(&device)).await?;
            let s = c.add_session_device(&id, &d.remove(0)).await?;
            emit(ctx, &s, || {
                format!("Added the device to session {} ({}).\n", s.name, s.id)
            })
        }
        SessionCmd::ExportWireguard { session, output } => {
            crate::wgexport::run(ctx, &session, output.as_deref()).await
        }
        SessionCmd::Adhoc { device, target } => {
            let id = ctx.device_id(&device).await?;
            let req = AdhocSession {
                device_id: id,
                targets: (!target.is_empty()).then_some(target),
            };
            let s = c.adhoc_session(&req).await?;
            emit(ctx, &s, || {
                format!(
                    "Session {} ({}) is {}, until {}.\n",
                    s.name,
                    s.id,
                    s.state.as_str(),
                    show::time(&s.valid_until)
                )
            })
        }
    }
}

// ------------------------------------------------------------------ users

fn user_fields(u: &User) -> String {
    let mut f = Fields::new();
    f.add("User", u.username.as_str())
        .add("ID", &u.id)
        .add("Role", u.role.as_str())
        .add("Status", show::user_state(u))
        .add("2FA", if u.totp_enabled { "on" } else { "off" })
        .add("Password set", show::time(&u.password_changed_at))
        .add("Created", show::time(&u.created_at));
    f.render()
}

async fn users(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.users().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["USERNAME", "ID", "ROLE", "STATUS", "2FA", "CREATED"]);
    for u in &all {
        t.row([
            u.username.to_string(),
            u.id.clone(),
            u.role.to_string(),
            show::user_state(u),
            show::yes_no(u.totp_enabled).to_string(),
            show::time(&u.created_at),
        ]);
    }
    print_table(&t, "No users.")
}

fn password_from(src: &PasswordSource, interactive: bool) -> Result<Option<String>> {
    Ok(match (&src.password_file, src.password_stdin) {
        (Some(f), _) => Some(prompt::secret_from_file(f, "password")?),
        (None, true) => Some(prompt::secret_from_stdin("password")?),
        (None, false) if interactive => Some(prompt::new_password("password")?),
        (None, false) => None,
    })
}

async fn user(ctx: &Ctx, cmd: UserCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        UserCmd::List => unreachable!("dispatched to users()"),
        UserCmd::Show { user } => {
            let u = c.user(&ctx.user_id(&user).await?).await?;
            emit(ctx, &u, || user_fields(&u))
        }
        UserCmd::Create {
            username,
            role,
            password,
        } => {
            let username = Username::try_from(username.as_str())
                .map_err(|e| Error::user(format!("user name {username:?}: {e}")))?;
            let password = password_from(&password, true)?.expect("interactive");
            let u = c
                .create_user(&CreateUser {
                    username,
                    role,
                    password,
                })
                .await?;
            emit(ctx, &u, || {
                format!(
                    "Created user {} ({}) with role {}.\n",
                    u.username, u.id, u.role
                )
            })
        }
        UserCmd::Update {
            user,
            role,
            disable,
            enable,
            password,
            reset_password,
            unlock,
            reset_totp,
        } => {
            let id = ctx.user_id(&user).await?;
            let req = UpdateUser {
                role,
                disabled: if disable {
                    Some(true)
                } else if enable {
                    Some(false)
                } else {
                    None
                },
                password: password_from(&password, reset_password)?,
                unlock: unlock.then_some(true),
                reset_totp: reset_totp.then_some(true),
            };
            if req.role.is_none()
                && req.disabled.is_none()
                && req.password.is_none()
                && req.unlock.is_none()
                && req.reset_totp.is_none()
            {
                fail!("nothing to change: see `drawbridge user update --help`");
            }
            let u = c.update_user(&id, &req).await?;
            emit(ctx, &u, || user_fields(&u))
        }
    }
}

// ------------------------------------------------------------------ groups, pools, grants

async fn groups(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.groups().await?;
    if ctx.json {
        return print_json(&all);
    }
    let users = ctx.user_names().await;
    let mut t = Table::new(["NAME", "ID", "MEMBERS"]);
    for g in &all {
        let members: Vec<String> = g.members.iter().map(|m| name_of(&users, m)).collect();
        t.row([g.name.to_string(), g.id.clone(), members.join(",")]);
    }
    print_table(&t, "No groups.")
}

async fn group(ctx: &Ctx, cmd: GroupCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        GroupCmd::List => unreachable!("dispatched to groups()"),
        GroupCmd::Show { group } => {
            let g = c.group(&ctx.group_id(&group).await?).await?;
            if ctx.json {
                return print_json(&g);
            }
            let users = ctx.user_names().await;
            let mut f = Fields::new();
            f.add("Group", g.name.as_str())
                .add("ID", &g.id)
                .lines("Members", g.members.iter().map(|m| name_of(&users, m)));
            out(&f.render())
        }
        GroupCmd::Create { name: n } => {
            let g = c.create_group(name(&n, "group name")?).await?;
            emit(ctx, &g, || {
                format!("Created group {} ({}).\n", g.name, g.id)
            })
        }
        GroupCmd::Delete { group } => {
            let id = ctx.group_id(&group).await?;
            c.delete_group(&id).await?;
            done(ctx, &format!("Deleted group {group} and its grants."))
        }
        GroupCmd::AddMember { group, users } | GroupCmd::RemoveMember { group, users }
            if users.is_empty() =>
        {
            fail!("name at least one user to change in group {group}")
        }
        GroupCmd::AddMember { group, users } => {
            let id = ctx.group_id(&group).await?;
            for u in &users {
                c.add_member(&id, &ctx.user_id(u).await?).await?;
            }
            done(
                ctx,
                &format!("Added {} to group {group}.", users.join(", ")),
            )
        }
        GroupCmd::RemoveMember { group, users } => {
            let id = ctx.group_id(&group).await?;
            for u in &users {
                c.remove_member(&id, &ctx.user_id(u).await?).await?;
            }
            done(
                ctx,
                &format!("Removed {} from group {group}.", users.join(", ")),
            )
        }
    }
}

async fn pools(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.pools().await?;
    if ctx.json {
        return print_json(&all);
    }
    let devices = ctx.device_names().await;
    let mut t = Table::new(["NAME", "ID", "DEVICES"]);
    for p in &all {
        let ds: Vec<String> = p.devices.iter().map(|d| name_of(&devices, d)).collect();
        t.row([p.name.to_string(), p.id.clone(), ds.join(",")]);
    }
    print_table(&t, "No pools.")
}

async fn pool(ctx: &Ctx, cmd: PoolCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        PoolCmd::List => unreachable!("dispatched to pools()"),
        PoolCmd::Show { pool } => {
            let p = c.pool(&ctx.pool_id(&pool).await?).await?;
            if ctx.json {
                return print_json(&p);
            }
            let devices = ctx.device_names().await;
            let mut f = Fields::new();
            f.add("Pool", p.name.as_str())
                .add("ID", &p.id)
                .lines("Devices", p.devices.iter().map(|d| name_of(&devices, d)));
            out(&f.render())
        }
        PoolCmd::Create { name: n } => {
            let p = c.create_pool(name(&n, "pool name")?).await?;
            emit(ctx, &p, || format!("Created pool {} ({}).\n", p.name, p.id))
        }
        PoolCmd::Delete { pool } => {
            let id = ctx.pool_id(&pool).await?;
            c.delete_pool(&id).await?;
            done(ctx, &format!("Deleted pool {pool} and its grants."))
        }
        PoolCmd::AddDevice { pool, devices } => {
            let id = ctx.pool_id(&pool).await?;
            for d in &devices {
                c.add_pool_device(&id, &ctx.device_id(d).await?).await?;
            }
            done(
                ctx,
                &format!("Added {} to pool {pool}.", devices.join(", ")),
            )
        }
        PoolCmd::RemoveDevice { pool, devices } => {
            let id = ctx.pool_id(&pool).await?;
            for d in &devices {
                c.remove_pool_device(&id, &ctx.device_id(d).await?).await?;
            }
            done(
                ctx,
                &format!("Removed {} from pool {pool}.", devices.join(", ")),
            )
        }
    }
}

async fn grants(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.grants().await?;
    if ctx.json {
        return print_json(&all);
    }
    let groups: HashMap<String, String> = ctx
        .client
        .groups()
        .await
        .map(|v| v.into_iter().map(|g| (g.id, g.name.to_string())).collect())
        .unwrap_or_default();
    let pools: HashMap<String, String> = ctx
        .client
        .pools()
        .await
        .map(|v| v.into_iter().map(|p| (p.id, p.name.to_string())).collect())
        .unwrap_or_default();
    let mut t = Table::new(["ID", "GROUP", "POOL", "LEVEL", "TARGETS"]);
    for g in &all {
        t.row([
            g.id.clone(),
            name_of(&groups, &g.group_id),
            name_of(&pools, &g.pool_id),
            g.level.as_str().to_string(),
            show::targets(&g.targets),
        ]);
    }
    print_table(&t, "No grants.")
}

async fn grant(ctx: &Ctx, cmd: GrantCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        GrantCmd::List => unreachable!("dispatched to grants()"),
        GrantCmd::Create {
            group,
            pool,
            level,
            target,
        } => {
            let req = CreateGrant {
                group_id: ctx.group_id(&group).await?,
                pool_id: ctx.pool_id(&pool).await?,
                level,
                targets: target,
            };
            let g = c.create_grant(&req).await?;
            emit(ctx, &g, || {
                format!(
                    "Granted group {group} {} access to pool {pool} (grant {}).\n",
                    g.level.as_str(),
                    g.id
                )
            })
        }
        GrantCmd::Delete { grant, group, pool } => {
            let id = match (grant, group, pool) {
                (Some(id), _, _) => id,
                (None, Some(group), Some(pool)) => {
                    let (gid, pid) = (ctx.group_id(&group).await?, ctx.pool_id(&pool).await?);
                    match c
                        .grants()
                        .await?
                        .into_iter()
                        .find(|g| g.group_id == gid && g.pool_id == pid)
                    {
                        Some(g) => g.id,
                        None => fail!(
                            "group {group} has no grant on pool {pool} (see `drawbridge grants`)"
                        ),
                    }
                }
                _ => fail!("name the grant by id, or by --group and --pool"),
            };
            c.delete_grant(&id).await?;
            done(ctx, &format!("Deleted grant {id}."))
        }
    }
}

// ------------------------------------------------------------------ keys and tokens

async fn fleet_key(ctx: &Ctx, cmd: FleetKeyCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        FleetKeyCmd::List => {
            let all = c.fleet_keys().await?;
            if ctx.json {
                return print_json(&all);
            }
            let now = OffsetDateTime::now_utc();
            let mut t = Table::new(["NAME", "ID", "STATE", "EXPIRES"]);
            for k in &all {
                let state = if k.revoked {
                    "revoked"
                } else if k.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                t.row([
                    k.name.to_string(),
                    k.id.clone(),
                    state.into(),
                    show::time(&k.expires_at),
                ]);
            }
            print_table(&t, "No fleet keys.")
        }
        FleetKeyCmd::Create { name: n, days } => {
            let k = c
                .create_fleet_key(&CreateFleetKey {
                    name: name(&n, "fleet key name")?,
                    expires_in_days: days,
                })
                .await?;
            emit(ctx, &k, || {
                format!(
                    "Created fleet key {} ({}), valid until {}. Devices enrolling with it wait for approval.\n\
                     Key (it is not shown again):\n  {}\n",
                    k.info.name,
                    k.info.id,
                    show::time(&k.info.expires_at),
                    k.key
                )
            })
        }
        FleetKeyCmd::Revoke { key } => {
            let all = c.fleet_keys().await?;
            let live: Vec<FleetKey> = all.iter().filter(|k| !k.revoked).cloned().collect();
            let k = match pick(
                &live,
                &key,
                "active fleet key",
                "fleet-key list",
                |k| &k.id,
                |k| k.name.as_str(),
            ) {
                Ok(k) => k.clone(),
                Err(_) => pick(
                    &all,
                    &key,
                    "fleet key",
                    "fleet-key list",
                    |k| &k.id,
                    |k| k.name.as_str(),
                )?
                .clone(),
            };
            c.revoke_fleet_key(&k.id).await?;
            done(ctx, &format!("Revoked fleet key {} ({}).", k.name, k.id))
        }
    }
}

async fn token(ctx: &Ctx, cmd: TokenCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        TokenCmd::List => {
            let all = c.tokens().await?;
            if ctx.json {
                return print_json(&all);
            }
            let mut t = Table::new(["NAME", "ID", "ACCESS", "CREATED", "EXPIRES", "LAST USED"]);
            for k in &all {
                t.row([
                    k.name.to_string(),
                    k.id.clone(),
                    if k.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    }
                    .to_string(),
                    show::time(&k.created_at),
                    show::time(&k.expires_at),
                    show::opt_time(&k.last_used_at),
                ]);
            }
            print_table(&t, "No API tokens.")
        }
        TokenCmd::Create {
            name: n,
            days,
            read_only,
        } => {
            let k = c
                .create_token(&CreateApiToken {
                    name: name(&n, "token name")?,
                    expires_in_days: days,
                    read_only,
                })
                .await?;
            emit(ctx, &k, || {
                format!(
                    "Created API token {} ({}), {}, valid until {}.\n\
                     Token (it is not shown again; use it as {TOKEN_ENV}):\n  {}\n",
                    k.info.name,
                    k.info.id,
                    if k.info.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    show::time(&k.info.expires_at),
                    k.token
                )
            })
        }
        TokenCmd::Revoke { token } => {
            let all = c.tokens().await?;
            let k = pick(
                &all,
                &token,
                "API token",
                "token list",
                |k| &k.id,
                |k| k.name.as_str(),
            )?;
            c.revoke_token(&k.id).await?;
            done(ctx, &format!("Revoked API token {} ({}).", k.name, k.id))
        }
    }
}

// ------------------------------------------------------------------ account

/// `a.b.c = value` lines of a JSON object.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Applies `a.b=value` to settings; the key must exist.
pub fn apply_setting(settings: &AccountSettings, assignment: &str) -> Result<AccountSettings> {
    let Some((key, raw)) = assignment.split_once('=') else {
        fail!("{assignment:?}: expected SETTING=VALUE, e.g. require_totp=true");
    };
    let key = key.trim();
    let mut v = serde_json::to_value(settings).expect("settings serialise");
    let mut slot = &mut v;
    for part in key.split('.') {
        slot = match slot.get_mut(part) {
            Some(s) => s,
            None => fail!("unknown setting {key:?}; see `drawbridge account show`"),
        };
    }
    if slot.is_object() {
        fail!("{key:?} is a group of settings; set its parts, e.g. {key}.NAME=VALUE");
    }
    let raw = raw.trim();
    *slot = serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.into()));
    let new: AccountSettings =
        serde_json::from_value(v).map_err(|e| Error::user(format!("{key}={raw}: {e}")))?;
    new.check().map_err(Error::User)?;
    Ok(new)
}

async fn account(ctx: &Ctx, cmd: AccountCmd) -> Result<()> {
    let c = &ctx.client;
    let show_account = |a: &Account| {
        let mut f = Fields::new();
        f.add("Account", a.name.as_str())
            .add("ID", &a.id)
            .add("Created", show::time(&a.created_at));
        let mut lines = Vec::new();
        flatten(
            "",
            &serde_json::to_value(&a.settings).expect("settings serialise"),
            &mut lines,
        );
        let mut t = Table::new(["SETTING", "VALUE"]);
        for (k, v) in lines {
            t.row([k, v]);
        }
        format!("{}\n{}", f.render(), t.render())
    };
    match cmd {
        AccountCmd::Show => {
            let a = c.account().await?;
            emit(ctx, &a, || show_account(&a))
        }
        AccountCmd::Set {
            settings,
            name: new_name,
        } => {
            if settings.is_empty() && new_name.is_none() {
                fail!("nothing to change: give SETTING=VALUE pairs or --name");
            }
            let req = if settings.is_empty() {
                UpdateAccount {
                    name: new_name
                        .as_deref()
                        .map(|n| name(n, "account name"))
                        .transpose()?,
                    settings: None,
                }
            } else {
                let mut s = c.account().await?.settings;
                for a in &settings {
                    s = apply_setting(&s, a)?;
                }
                UpdateAccount {
                    name: new_name
                        .as_deref()
                        .map(|n| name(n, "account name"))
                        .transpose()?,
                    settings: Some(
                        serde_json::to_value(&s).map_err(|e| Error::user(e.to_string()))?,
                    ),
                }
            };
            let a = c.update_account(&req).await?;
            emit(ctx, &a, || show_account(&a))
        }
    }
}

async fn notifications(ctx: &Ctx) -> Result<()> {
    let all = ctx.client.notifications().await?;
    if ctx.json {
        return print_json(&all);
    }
    let mut t = Table::new(["TIME", "KIND", "MESSAGE"]);
    for n in &all {
        t.row([show::time(&n.created_at), n.kind.clone(), n.message.clone()]);
    }
    print_table(&t, "No notifications.")
}

// ------------------------------------------------------------------ audit

async fn audit(ctx: &Ctx, cmd: AuditCmd) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        AuditCmd::Export {
            format,
            from,
            to,
            actor,
            device,
            action,
            limit,
            page_size,
            output,
        } => {
            let actor = match actor {
                Some(a) if a.contains(':') || a == "system" || a == "anonymous" => Some(a),
                Some(name) => Some(format!("user:{}", ctx.user_id(&name).await?)),
                None => None,
            };
            let device = match device {
                Some(d) => Some(ctx.device_id(&d).await?),
                None => None,
            };
            let format = if ctx.json { "json".to_string() } else { format };
            let q = AuditQuery {
                from,
                to,
                actor,
                device,
                action,
                format: Some(format),
                limit,
                after_seq: None,
                order: None,
            };
            let body = c.audit_export(&q, page_size).await?;
            match output {
                Some(path) => write_file(&path, &body),
                None => {
                    let mut o = std::io::stdout().lock();
                    match o.write_all(&body).and_then(|_| o.flush()) {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
                            context: "writing standard output".into(),
                            source: e,
                        }),
                        _ => Ok(()),
                    }
                }
            }
        }
        AuditCmd::Verify => {
            let v = c.audit_verify().await?;
            if ctx.json {
                print_json(&v)?;
            }
            match (v.ok, v.first_broken_seq) {
                (true, _) => {
                    if !ctx.json {
                        out(&format!(
                            "Audit log intact: {} entries, hash chain verified.\n",
                            v.entries
                        ))?;
                    }
                    Ok(())
                }
                (false, Some(seq)) => fail!(
                    "the audit log's hash chain is BROKEN at sequence number {seq} ({} entries)",
                    v.entries
                ),
                (false, None) => fail!(
                    "the audit log's hash chain is BROKEN ({} entries)",
                    v.entries
                ),
            }
        }
    }
}

fn write_file(path: &Path, body: &[u8]) -> Result<()> {
    std::fs::write(path, body).map_err(|source| Error::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    eprintln!("Wrote {} bytes to {}.", body.len(), path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn device_specs_parse() {
        let (d, t) = parse_device_spec("press-3=tcp:192.168.1.10:502,icmp:192.168.1.10").unwrap();
        assert_eq!(d, "press-3");
        assert_eq!(t.unwrap().len(), 2);
        assert_eq!(
            parse_device_spec("press-3").unwrap(),
            ("press-3".into(), None)
        );
        assert!(parse_device_spec("press-3=").is_err());
        assert!(parse_device_spec("=tcp:1.2.3.4").is_err());
        assert!(parse_device_spec("x=tcp:1.2.3.4:0").is_err());
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(
            parse_duration("1h30m").unwrap(),
            time::Duration::minutes(90)
        );
        assert_eq!(parse_duration("2d").unwrap(), time::Duration::days(2));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_time("2026-11-22").is_ok());
        assert!(parse_time("2026-11-22T10:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_nat("192.168.1.0/24=10.77.1.0/24").is_ok());
        assert!(parse_nat("192.168.1.0/24=10.77.0.0/16").is_err());
    }

    #[test]
    fn settings_are_set_by_dotted_name_and_checked() {
        let s = AccountSettings::default();
        let s2 = apply_setting(&s, "password_policy.min_length=12").unwrap();
        assert_eq!(s2.password_policy.min_length, 12);
        assert!(apply_setting(&s, "require_totp=true").unwrap().require_totp);
        assert!(apply_setting(&s, "no_such=1").is_err());
        assert!(apply_setting(&s, "password_policy=1").is_err());
        assert!(apply_setting(&s, "password_policy.min_length=2").is_err());
        assert!(apply_setting(&s, "require_totp=maybe").is_err());
    }

    #[test]
    fn names_resolve_by_id_name_and_case() {
        let items = vec![("id1", "Press"), ("id2", "press"), ("id3", "Lathe")];
        let p = |s: &str| pick(&items, s, "device", "devices", |x| x.0, |x| x.1).map(|x| x.0);
        assert_eq!(p("id3").unwrap(), "id3");
        assert_eq!(p("Press").unwrap(), "id1");
        assert_eq!(p("lathe").unwrap(), "id3");
        assert!(p("PRESS").unwrap_err().to_string().contains("2 devices"));
        assert!(
            p("mill")
                .unwrap_err()
                .to_string()
                .contains("drawbridge devices")
        );
    }
}
