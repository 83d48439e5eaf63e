//! The command line's clap types and the value parsers they use.

use clap::{Args, Parser, Subcommand};
use drawbridge_proto::{GrantLevel, NatMapping, Role, SessionState, Target};
use std::path::PathBuf;
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
    /// A device's PLC tags: what its edge reads over Modbus (admins change them).
    #[command(subcommand)]
    Tag(super::data_args::TagCmd),
    /// The historian: a device's logged points, and the account's mailbox sync.
    #[command(subcommand)]
    Data(super::data_args::DataCmd),
    /// A device's live KPI values: one read, or follow them with --watch.
    Kpi(super::data_args::KpiArgs),
    /// Alarms: list, history, acknowledge.
    #[command(subcommand)]
    Alarm(super::data_args::AlarmCmd),
    /// Who is told by e-mail of alarms, lockouts, offline devices… (admins).
    #[command(subcommand)]
    Notify(super::data_args::NotifyCmd),
    /// Webhooks: signed HTTPS calls on events (admins).
    #[command(subcommand)]
    Webhook(super::data_args::WebhookCmd),
    /// Export and verify the audit log (admins and auditors).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Signed edge releases stored on the server (admins).
    #[command(subcommand)]
    Release(super::rollout_args::ReleaseCmd),
    /// Update edges: staged rollouts of a release to devices and pools (admins).
    #[command(subcommand)]
    Rollout(super::rollout_args::RolloutCmd),
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
    /// Sign in through the account's identity provider (single sign-on): open
    /// the page this prints, enter its code there and sign in; this command
    /// waits until you did (Ctrl-C stops it).
    #[arg(long, conflicts_with_all = ["user", "password_stdin", "new_password_file"])]
    pub sso: bool,
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
        /// A web UI on a released TCP port, opened in the browser from the portal
        /// (repeatable; replaces the list): `http://192.168.1.10:80/hmi`, `https://…`,
        /// a VNC desktop `vnc://192.168.1.20:5900` or an RDP desktop `rdp://192.168.1.30:3389`.
        #[arg(long = "web", value_name = "URL", value_parser = parse_web_service)]
        web: Vec<drawbridge_proto::api::WebService>,
        /// Remove every web service.
        #[arg(long, conflicts_with = "web")]
        clear_web: bool,
        /// Where the machine is (e.g. eu-central): new sessions prefer relays of
        /// that region while the edge has measured none.
        #[arg(long, value_parser = parse_region)]
        region: Option<drawbridge_proto::Region>,
        /// Forget the machine's region.
        #[arg(long, conflicts_with = "region")]
        clear_region: bool,
    },
    /// Remove a device that was never used in a session (admins).
    Delete { device: String },
    /// Approve a device that enrolled with a fleet key (admins).
    Approve { device: String },
    /// Issue a new activation key for a device not enrolled yet (admins).
    ActivationKey { device: String },
    /// Write an enrolment file for USB/SD deployment (admins): the server's URL,
    /// a new activation key and the server's CA, for
    /// `drawbridge-edge enroll --config FILE`. Earlier keys of the device stop working.
    ConfigFile {
        device: String,
        /// Write it to this new file (mode 0600).
        #[arg(long, short = 'o', default_value = "drawbridge-edge.toml")]
        out: std::path::PathBuf,
    },
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
    /// Show, set or clear a user's e-mail address (admins): where the user's
    /// role's notifications go (admins: lockouts, reports; approvers: sessions waiting).
    Email {
        user: String,
        /// The new address (without it and without --clear: show the current one).
        email: Option<String>,
        /// Remove the address.
        #[arg(long, conflicts_with = "email")]
        clear: bool,
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
        /// The token may only read data: the device list, tags, historian
        /// points and sync, KPIs and alarms (implies --read-only).
        #[arg(long)]
        data_only: bool,
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

/// `http://ADDR:PORT[/PATH]`, `https://…`, `vnc://ADDR:PORT` or `rdp://ADDR:PORT` → a device web service.
fn parse_web_service(s: &str) -> std::result::Result<drawbridge_proto::api::WebService, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: write http://ADDR:PORT[/PATH] or https://…"))?;
    let (target, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(drawbridge_proto::api::WebService {
        scheme: scheme.parse()?,
        target: target
            .parse()
            .map_err(|_| format!("{target:?} is not ADDR:PORT (IPv4)"))?,
        path: drawbridge_proto::web::WebPath::try_from(path.to_string())?,
    })
}

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

fn parse_region(s: &str) -> Result<drawbridge_proto::Region, String> {
    drawbridge_proto::Region::try_from(s).map_err(|e| format!("a region {e} (e.g. eu-central)"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
