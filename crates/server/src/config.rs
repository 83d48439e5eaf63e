//! Server configuration: defaults, then a TOML file, then environment
//! variables and flags (flags and env win; clap handles both).

use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

/// The TOML file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub public_url: Option<String>,
    pub hostnames: Option<Vec<String>>,
    pub stun_listen: Option<OneOrMany>,
    pub bridge_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub auth_attempts_per_minute: Option<NonZeroU32>,
    pub secrets_key_file: Option<PathBuf>,
    pub header_read_timeout_secs: Option<NonZeroU64>,
    pub idle_timeout_secs: Option<NonZeroU64>,
    pub max_connections: Option<NonZeroUsize>,
    pub max_connections_per_address: Option<NonZeroUsize>,
    pub hsts_max_age_secs: Option<u64>,
    pub web_domain: Option<String>,
    pub novnc_dir: Option<PathBuf>,
    pub ironrdp_dir: Option<PathBuf>,
    #[serde(default)]
    pub syslog: Vec<String>,
    #[serde(default)]
    pub syslog_ca_file: Vec<PathBuf>,
    pub relay_name: Option<String>,
    pub relay_url: Option<String>,
    pub relay_region: Option<String>,
    pub relay_standby: Option<bool>,
    pub password_hashing_share: Option<f64>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_security: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    pub smtp_from: Option<String>,
    pub smtp_ca_file: Option<PathBuf>,
    pub webhook_allow_private: Option<bool>,
    pub webhook_failure_days: Option<u32>,
}

/// A TOML value that is one address or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<SocketAddr> {
        match self {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(v) => v,
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// The key that seals the database's secrets (made on first start; every replica
    /// needs the same one; keep it apart from database backups).
    pub secrets_key_file: PathBuf,
    /// Production certificate and key; when absent a self-signed CA and
    /// certificate are generated in the data directory.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub public_url: String,
    pub hostnames: Vec<String>,
    /// Device web pages are served on `LABEL.web_domain` (browser access).
    pub web_domain: String,
    /// noVNC for desktops in the browser, when configured.
    pub novnc_dir: Option<PathBuf>,
    /// IronRDP's web client for RDP desktops in the browser, when configured.
    pub ironrdp_dir: Option<PathBuf>,
    /// Syslog receivers of every account's audit entries (SIEM streaming).
    pub syslog: Vec<crate::syslog::Target>,
    /// CA files trusted for `tls://` syslog receivers, besides the system's roots.
    pub syslog_ca_file: Vec<PathBuf>,
    /// UDP addresses of the STUN service (empty: off). Two addresses (or ports)
    /// let peers tell an endpoint-independent NAT from a symmetric one.
    pub stun_listen: Vec<SocketAddr>,
    /// UDP address of the relay's bridge for standard WireGuard clients; None turns it off.
    pub bridge_listen: Option<SocketAddr>,
    /// Plain-HTTP address for Prometheus metrics (`/metrics`); off when None.
    pub metrics_listen: Option<SocketAddr>,
    /// Sustained attempts per minute and remote address at the unauthenticated
    /// routes (login, second factor, enrolment, setup); twice as many may come at once.
    pub auth_attempts_per_minute: NonZeroU32,
    /// Timeouts and connection caps of the HTTPS listener, and its HSTS max-age.
    pub listener: crate::serve::ListenerOptions,
    /// This replica's embedded relay in the relay tier.
    pub relay: crate::relays::Local,
    /// The share of a core each password-hashing slot may use under a stream
    /// of logins ([`crate::password::DEFAULT_HASHING_SHARE`]).
    pub password_hashing_share: f64,
    /// E-mail (SMTP) and webhooks of the outbox.
    pub notify: crate::outbox::NotifyConfig,
}

/// The default allowance at the unauthenticated routes, per minute and address.
pub const DEFAULT_AUTH_ATTEMPTS_PER_MINUTE: NonZeroU32 = NonZeroU32::new(30).expect("non-zero");

pub const DEFAULT_STUN_LISTEN: [&str; 2] = ["127.0.0.1:3478", "127.0.0.1:3479"];
pub const DEFAULT_BRIDGE_LISTEN: &str = "127.0.0.1:51820";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "drawbridge-data";

/// Values given on the command line or in the environment.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "DRAWBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port for HTTPS (API, relay).
    #[arg(long, env = "DRAWBRIDGE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database, certificates and keys.
    #[arg(long, env = "DRAWBRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data dir).
    #[arg(long = "database", env = "DRAWBRIDGE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PEM certificate chain for production (with --tls-key).
    #[arg(long, env = "DRAWBRIDGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for production (with --tls-cert).
    #[arg(long, env = "DRAWBRIDGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The URL users reach the server at (default: https://LISTEN).
    #[arg(long, env = "DRAWBRIDGE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Extra DNS names or IPs for the self-signed certificate (repeatable).
    #[arg(long = "hostname")]
    pub hostnames: Vec<String>,
    /// The domain device web pages are served under, one origin each
    /// (`LABEL.DOMAIN`; default web.localhost). In production a domain of its
    /// own, with a wildcard DNS record and certificate (docs/deployment.md).
    #[arg(long, env = "DRAWBRIDGE_WEB_DOMAIN")]
    pub web_domain: Option<String>,
    /// Where noVNC is installed (the directory holding `core/rfb.js`), for
    /// desktops in the browser. Default: the first of /usr/share/novnc
    /// (Debian's `novnc`), /usr/local/share/novnc, node_modules/@novnc/novnc.
    #[arg(long, env = "DRAWBRIDGE_NOVNC_DIR")]
    pub novnc_dir: Option<PathBuf>,
    /// Where Devolutions' IronRDP web client is installed, for RDP desktops in
    /// the browser: an npm install's `node_modules` (with
    /// `@devolutions/iron-remote-desktop` and `-rdp`), or a directory holding
    /// `iron-remote-desktop.js` and `iron-remote-desktop-rdp.js`. Default: the
    /// first of `node_modules` here and next to the server's binary, then
    /// /usr/local/share/ironrdp.
    #[arg(long, env = "DRAWBRIDGE_IRONRDP_DIR")]
    pub ironrdp_dir: Option<PathBuf>,
    /// A syslog receiver of every account's audit entries, `tcp://HOST:PORT` or
    /// `tls://HOST:PORT` (RFC 5424, octet counting; TLS per RFC 5425); repeatable.
    #[arg(long = "syslog", value_name = "URL")]
    pub syslog: Vec<String>,
    /// A CA file trusted for `tls://` syslog receivers (besides the system's
    /// roots); repeatable.
    #[arg(long = "syslog-ca-file", value_name = "FILE")]
    pub syslog_ca_file: Vec<PathBuf>,
    /// UDP address of the STUN service, repeatable or comma-separated (default
    /// 127.0.0.1:3478 and :3479; two let peers recognise symmetric NAT).
    #[arg(long, env = "DRAWBRIDGE_STUN_LISTEN", value_delimiter = ',')]
    pub stun_listen: Vec<SocketAddr>,
    /// Do not run the STUN service.
    #[arg(long)]
    pub no_stun: bool,
    /// UDP address of the relay's bridge for standard WireGuard clients
    /// (`drawbridge session export-wireguard`; default 127.0.0.1:51820).
    #[arg(long, env = "DRAWBRIDGE_BRIDGE_LISTEN")]
    pub bridge_listen: Option<SocketAddr>,
    /// Do not run the relay's UDP bridge for standard WireGuard clients.
    #[arg(long)]
    pub no_bridge: bool,
    /// Serve Prometheus metrics over plain HTTP at ADDR/metrics (keep it on a private address).
    #[arg(long, env = "DRAWBRIDGE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Attempts per minute and remote address at login, second factor, enrolment
    /// and setup (default 30, bursts of twice that). Raise it only for many
    /// devices enrolling at once from one address (one NAT, a load test).
    #[arg(long, env = "DRAWBRIDGE_AUTH_ATTEMPTS_PER_MINUTE")]
    pub auth_attempts_per_minute: Option<NonZeroU32>,
    /// Key file that seals the secrets in the database (default: secrets.key in the
    /// data dir, made on first start; every replica needs the same one).
    #[arg(long, env = "DRAWBRIDGE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Seconds a connection gets for its TLS handshake and each request head (default 10).
    #[arg(long, env = "DRAWBRIDGE_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<NonZeroU64>,
    /// Seconds without a byte after which a connection is closed (default 120;
    /// WebSockets are kept alive by their own pings).
    #[arg(long, env = "DRAWBRIDGE_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<NonZeroU64>,
    /// Open HTTPS connections in all (default 10000); more are closed at once.
    #[arg(long, env = "DRAWBRIDGE_MAX_CONNECTIONS")]
    pub max_connections: Option<NonZeroUsize>,
    /// Open HTTPS connections per remote address, IPv6 per /64 (default 256;
    /// raise it when many edges share one NAT address).
    #[arg(long, env = "DRAWBRIDGE_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<NonZeroUsize>,
    /// Strict-Transport-Security max-age in seconds on every HTTPS response
    /// (default one year; 0 tells browsers to forget it).
    #[arg(long, env = "DRAWBRIDGE_HSTS_MAX_AGE_SECS")]
    pub hsts_max_age_secs: Option<u64>,
    /// This replica's embedded relay's name in the relay tier (default "local";
    /// behind a load balancer each replica needs its own).
    #[arg(long, env = "DRAWBRIDGE_RELAY_NAME")]
    pub relay_name: Option<String>,
    /// The URL that reaches this replica's embedded relay itself, not the load
    /// balancer (wss://replica-1.example.com:8443/relay/v1; default: from the
    /// public URL, right for a single server).
    #[arg(long, env = "DRAWBRIDGE_RELAY_URL")]
    pub relay_url: Option<String>,
    /// The embedded relay's region (e.g. eu-central).
    #[arg(long, env = "DRAWBRIDGE_RELAY_REGION")]
    pub relay_region: Option<String>,
    /// The embedded relay takes sessions only while no other relay is alive.
    #[arg(long)]
    pub relay_standby: bool,
    /// The share of a core (0.05 to 1) each password-hashing slot may use while
    /// logins keep it busy (default 0.25): the rest of the CPU stays with tunnels,
    /// channels and the API during a login flood. 1 hashes as fast as it can.
    #[arg(long, env = "DRAWBRIDGE_PASSWORD_HASHING_SHARE", value_parser = hashing_share)]
    pub password_hashing_share: Option<f64>,
    /// SMTP server for notification e-mails (without it no e-mail is sent).
    #[arg(long, env = "DRAWBRIDGE_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port (default 587 for starttls, 465 for tls, 25 for none).
    #[arg(long, env = "DRAWBRIDGE_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// starttls (default; required, not opportunistic), tls (implicit TLS), or
    /// none (only to a server on loopback).
    #[arg(long, env = "DRAWBRIDGE_SMTP_SECURITY")]
    pub smtp_security: Option<String>,
    /// SMTP user name (with --smtp-password-file).
    #[arg(long, env = "DRAWBRIDGE_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// File holding the SMTP password (first line).
    #[arg(long, env = "DRAWBRIDGE_SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,
    /// The notifications' sender, e.g. "Drawbridge <noreply@example.com>" (needed with --smtp-host).
    #[arg(long, env = "DRAWBRIDGE_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// PEM file of a private CA that signed the SMTP server's certificate
    /// (instead of the system's roots).
    #[arg(long, env = "DRAWBRIDGE_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// Let webhooks go to loopback and private addresses (and http there); by
    /// default only https to public addresses.
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// Days a webhook may fail without a success before it is disabled and the
    /// admins are told (default 5).
    #[arg(long, env = "DRAWBRIDGE_WEBHOOK_FAILURE_DAYS", value_parser = clap::value_parser!(u32).range(1..=365))]
    pub webhook_failure_days: Option<u32>,
}

impl Overrides {
    /// The outbox's settings: SMTP (when a host is given) and webhooks.
    fn notify(&self, file: &FileConfig) -> anyhow::Result<crate::outbox::NotifyConfig> {
        use crate::outbox::mail::{Security, SmtpConfig};
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        let smtp = match pick(&self.smtp_host, &file.smtp_host) {
            None => None,
            Some(host) => {
                let security: Security = pick(&self.smtp_security, &file.smtp_security)
                    .as_deref()
                    .unwrap_or("starttls")
                    .parse()
                    .map_err(|e| anyhow::anyhow!("smtp_security: {e}"))?;
                let from = pick(&self.smtp_from, &file.smtp_from)
                    .ok_or_else(|| anyhow::anyhow!("smtp_from is needed with smtp_host"))?;
                let cfg = SmtpConfig {
                    port: self
                        .smtp_port
                        .or(file.smtp_port)
                        .unwrap_or(security.default_port()),
                    host,
                    security,
                    username: pick(&self.smtp_username, &file.smtp_username),
                    password_file: self
                        .smtp_password_file
                        .clone()
                        .or_else(|| file.smtp_password_file.clone()),
                    from,
                    ca_file: self
                        .smtp_ca_file
                        .clone()
                        .or_else(|| file.smtp_ca_file.clone()),
                };
                cfg.check()?;
                Some(cfg)
            }
        };
        let webhook_failure_days = match self.webhook_failure_days.or(file.webhook_failure_days) {
            None => crate::outbox::runtime::DEFAULT_WEBHOOK_FAILURE_DAYS,
            Some(d) if (1..=365).contains(&d) => d,
            Some(d) => anyhow::bail!("webhook_failure_days must be 1 to 365, not {d}"),
        };
        Ok(crate::outbox::NotifyConfig {
            smtp,
            webhook_allow_private: self.webhook_allow_private
                || file.webhook_allow_private.unwrap_or(false),
            webhook_failure_days,
        })
    }
}

/// A share of a core for password hashing: 0.05 to 1.
fn hashing_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0.05 and 1")),
    }
}

impl Overrides {
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let notify = self.notify(&file)?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("static address"));
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = self
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("drawbridge.db").display()));
        let tls = match (
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        let public_url = self
            .public_url
            .clone()
            .or(file.public_url)
            .unwrap_or_else(|| format!("https://{listen}"));
        let mut hostnames = file.hostnames.unwrap_or_default();
        hostnames.extend(self.hostnames.iter().cloned());
        let web_domain = self
            .web_domain
            .clone()
            .or(file.web_domain)
            .unwrap_or_else(|| crate::web::DEFAULT_WEB_DOMAIN.to_string())
            .trim_matches('.')
            .to_ascii_lowercase();
        if web_domain.is_empty()
            || web_domain.len() > 200
            || !web_domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            anyhow::bail!("web_domain must be a DNS name such as web.example.com");
        }
        // The self-signed certificate covers every device origin.
        let wildcard = format!("*.{web_domain}");
        if !hostnames.contains(&wildcard) {
            hostnames.push(wildcard);
        }
        let stun_listen = if self.no_stun {
            Vec::new()
        } else if !self.stun_listen.is_empty() {
            self.stun_listen.clone()
        } else if let Some(f) = file.stun_listen {
            f.into_vec()
        } else {
            DEFAULT_STUN_LISTEN
                .iter()
                .map(|a| a.parse().expect("static address"))
                .collect()
        };
        let bridge_listen = if self.no_bridge {
            None
        } else {
            Some(
                self.bridge_listen
                    .or(file.bridge_listen)
                    .unwrap_or_else(|| DEFAULT_BRIDGE_LISTEN.parse().expect("static address")),
            )
        };
        let secrets_key_file = self
            .secrets_key_file
            .clone()
            .or(file.secrets_key_file)
            .unwrap_or_else(|| data_dir.join("secrets.key"));
        let d = crate::serve::ListenerOptions::default();
        let secs = std::time::Duration::from_secs;
        let listener = crate::serve::ListenerOptions {
            header_read_timeout: self
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .map_or(d.header_read_timeout, |v| secs(v.get())),
            idle_timeout: self
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .map_or(d.idle_timeout, |v| secs(v.get())),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .map_or(d.max_connections, NonZeroUsize::get),
            max_connections_per_address: self
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .map_or(d.max_connections_per_address, NonZeroUsize::get),
            hsts_max_age: self
                .hsts_max_age_secs
                .or(file.hsts_max_age_secs)
                .map_or(d.hsts_max_age, secs),
        };
        let relay = crate::relays::Local {
            name: self
                .relay_name
                .clone()
                .or(file.relay_name)
                .unwrap_or_else(|| crate::relays::DEFAULT_LOCAL_NAME.into()),
            url: self.relay_url.clone().or(file.relay_url),
            region: self
                .relay_region
                .clone()
                .or(file.relay_region)
                .unwrap_or_default(),
            standby: self.relay_standby || file.relay_standby.unwrap_or(false),
        };
        let check = drawbridge_relay::feed::announce::Announce {
            url: relay
                .url
                .clone()
                .unwrap_or_else(|| "wss://localhost/relay/v1".into()),
            region: relay.region.clone(),
            stun: vec![],
            bridge: None,
        };
        check
            .check()
            .map_err(|e| anyhow::anyhow!("relay_url / relay_region: {e}"))?;
        if relay.name.is_empty()
            || relay.name.len() > drawbridge_relay::feed::MAX_RELAY_NAME_LEN
            || !relay
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            anyhow::bail!("relay_name must be 1 to 64 letters, digits, '-', '_' or '.'");
        }
        let password_hashing_share = match self
            .password_hashing_share
            .or(file.password_hashing_share)
        {
            None => crate::password::DEFAULT_HASHING_SHARE,
            Some(v) if (0.05..=1.0).contains(&v) => v,
            Some(v) => anyhow::bail!("password_hashing_share must be between 0.05 and 1, not {v}"),
        };
        Ok(Config {
            notify,
            relay,
            password_hashing_share,
            listener,
            secrets_key_file,
            bridge_listen,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            auth_attempts_per_minute: self
                .auth_attempts_per_minute
                .or(file.auth_attempts_per_minute)
                .unwrap_or(DEFAULT_AUTH_ATTEMPTS_PER_MINUTE),
            stun_listen,
            listen,
            data_dir,
            database_url,
            tls,
            public_url,
            hostnames,
            web_domain,
            novnc_dir: self.novnc_dir.clone().or(file.novnc_dir),
            ironrdp_dir: self.ironrdp_dir.clone().or(file.ironrdp_dir),
            syslog: if self.syslog.is_empty() {
                file.syslog.clone()
            } else {
                self.syslog.clone()
            }
            .iter()
            .map(|u| crate::syslog::Target::parse(u, None))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("syslog: {e}"))?,
            syslog_ca_file: if self.syslog_ca_file.is_empty() {
                file.syslog_ca_file.clone()
            } else {
                self.syslog_ca_file.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_attempts_default_file_and_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Overrides::default();
        assert_eq!(
            o.resolve().expect("resolve").auth_attempts_per_minute.get(),
            30
        );
        let file = dir.path().join("drawbridge.toml");
        std::fs::write(&file, "auth_attempts_per_minute = 600\n").expect("write");
        let mut o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        assert_eq!(
            o.resolve().expect("resolve").auth_attempts_per_minute.get(),
            600
        );
        o.auth_attempts_per_minute = NonZeroU32::new(5000);
        assert_eq!(
            o.resolve().expect("resolve").auth_attempts_per_minute.get(),
            5000
        );
        std::fs::write(&file, "auth_attempts_per_minute = 0\n").expect("write");
        o.auth_attempts_per_minute = None;
        assert!(o.resolve().is_err(), "zero is refused");
    }

    #[test]
    fn password_hashing_share_default_file_and_flag_within_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = |o: &Overrides| o.resolve().map(|c| c.password_hashing_share);
        assert_eq!(
            share(&Overrides::default()).expect("resolve"),
            crate::password::DEFAULT_HASHING_SHARE
        );
        let file = dir.path().join("drawbridge.toml");
        std::fs::write(&file, "password_hashing_share = 0.25\n").expect("write");
        let mut o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        assert_eq!(share(&o).expect("resolve"), 0.25);
        o.password_hashing_share = Some(1.0);
        assert_eq!(share(&o).expect("resolve"), 1.0);
        o.password_hashing_share = None;
        for bad in ["0", "0.01", "1.5", "-1", "nan"] {
            std::fs::write(&file, format!("password_hashing_share = {bad}\n")).expect("write");
            assert!(share(&o).is_err(), "{bad} is refused in the file");
            assert!(hashing_share(bad).is_err(), "{bad} is refused as a flag");
        }
        assert_eq!(hashing_share("0.05"), Ok(0.05));
    }

    #[test]
    fn notification_settings_default_file_and_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = Overrides::default().resolve().expect("resolve").notify;
        assert!(n.smtp.is_none() && !n.webhook_allow_private);
        assert_eq!(n.webhook_failure_days, 5);
        let file = dir.path().join("drawbridge.toml");
        std::fs::write(
            &file,
            "smtp_host = \"smtp.example.com\"\nsmtp_from = \"Drawbridge <noreply@example.com>\"\nwebhook_failure_days = 2\nwebhook_allow_private = true\n",
        )
        .expect("write");
        let mut o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        let n = o.resolve().expect("resolve").notify;
        let smtp = n.smtp.expect("smtp");
        assert_eq!((smtp.port, smtp.security.as_str()), (587, "starttls"));
        assert_eq!((n.webhook_failure_days, n.webhook_allow_private), (2, true));
        o.smtp_security = Some("tls".into());
        assert_eq!(
            o.resolve()
                .expect("resolve")
                .notify
                .smtp
                .expect("smtp")
                .port,
            465
        );
        o.smtp_security = Some("none".into());
        assert!(o.resolve().is_err(), "no TLS to a remote server");
        o.smtp_host = Some("127.0.0.1".into());
        o.smtp_port = Some(2525);
        let smtp = o.resolve().expect("resolve").notify.smtp.expect("smtp");
        assert_eq!((smtp.host.as_str(), smtp.port), ("127.0.0.1", 2525));
        o.smtp_security = Some("ssl".into());
        assert!(o.resolve().is_err(), "unknown security");
        o.smtp_security = None;
        std::fs::write(&file, "smtp_host = \"smtp.example.com\"\n").expect("write");
        o.smtp_host = None;
        assert!(o.resolve().is_err(), "a sender is needed");
        std::fs::write(&file, "webhook_failure_days = 0\n").expect("write");
        assert!(o.resolve().is_err(), "zero days");
    }

    #[test]
    fn listener_limits_default_file_and_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Overrides::default().resolve().expect("resolve").listener;
        assert_eq!(l.header_read_timeout.as_secs(), 10);
        assert_eq!(l.idle_timeout.as_secs(), 120);
        assert_eq!(l.max_connections, 10_000);
        assert_eq!(l.max_connections_per_address, 256);
        assert_eq!(l.hsts_max_age.as_secs(), 31_536_000);
        let file = dir.path().join("drawbridge.toml");
        std::fs::write(
            &file,
            "header_read_timeout_secs = 3\nidle_timeout_secs = 30\nmax_connections = 50\nmax_connections_per_address = 5\nhsts_max_age_secs = 0\n",
        )
        .expect("write");
        let mut o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        let l = o.resolve().expect("resolve").listener;
        assert_eq!(
            (
                l.header_read_timeout.as_secs(),
                l.idle_timeout.as_secs(),
                l.max_connections,
                l.max_connections_per_address,
                l.hsts_max_age.as_secs()
            ),
            (3, 30, 50, 5, 0)
        );
        o.max_connections_per_address = NonZeroUsize::new(7);
        o.hsts_max_age_secs = Some(60);
        let l = o.resolve().expect("resolve").listener;
        assert_eq!(
            (l.max_connections_per_address, l.hsts_max_age.as_secs()),
            (7, 60)
        );
        std::fs::write(&file, "idle_timeout_secs = 0\n").expect("write");
        assert!(o.resolve().is_err(), "a zero timeout is refused");
    }
}
