//! The `drawbridge-server` command line.

mod relay;
mod release;

use crate::audit;
use crate::clock::Clock;
use crate::config::{Config, Overrides};
use crate::db::Store;
use crate::state::AppState;
use anyhow::Context;
use clap::{Parser, Subcommand};
use drawbridge_proto::api::AuditQuery;
use drawbridge_proto::{Name, Username};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "drawbridge-server",
    version,
    about = "Drawbridge control plane (API, relay, STUN)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Overrides,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the server (the default).
    Run(Overrides),
    /// Create the first account and its admin without the browser.
    Init {
        #[command(flatten)]
        db: Overrides,
        /// Account name.
        #[arg(long)]
        account: String,
        /// The admin's user name.
        #[arg(long)]
        admin_user: String,
        /// File holding the admin's password (first line).
        #[arg(long)]
        admin_password_file: PathBuf,
    },
    /// Print a new one-time setup link: for the first account while none
    /// exists, else for another account (valid 1 h).
    SetupLink {
        #[command(flatten)]
        db: Overrides,
    },
    /// Run only the relay and STUN services (no database), e.g. in another region.
    Relay(relay::RelayArgs),
    /// The relay tier as the control plane sees it; drain a relay before maintenance.
    Relays {
        #[command(subcommand)]
        command: relay::RelaysCommand,
    },
    /// Print a credential with which a standalone relay reads the feed of revoked
    /// sessions (`relay --credential-file`).
    RelayCredential {
        #[command(flatten)]
        db: Overrides,
        /// A name for the relay (shown in the control plane's log).
        #[arg(long)]
        name: String,
        /// Days until it expires.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Print the control plane's relay-token verifying key (for standalone relays).
    RelayKey {
        #[command(flatten)]
        db: Overrides,
    },
    /// Signed edge releases: trust a root, rotate it, add and list releases.
    Release {
        #[command(subcommand)]
        command: release::ReleaseCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Seal the database's secrets with a new key (after the key file may have leaked).
    /// Stop every server first; start them again with the new key file.
    RotateSecretsKey {
        #[command(flatten)]
        db: Overrides,
        /// Where to write the new key (must not exist yet).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check every account's hash chain (accounts by name); exit 1 if any is broken.
    Verify {
        #[command(flatten)]
        db: Overrides,
    },
    /// Print one account's entries as JSON lines or CSV.
    Export {
        #[command(flatten)]
        db: Overrides,
        /// Account name.
        #[arg(long)]
        account: String,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Entries at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Entries before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        action: Option<String>,
    },
}

fn parse_time(s: &Option<String>) -> anyhow::Result<Option<time::OffsetDateTime>> {
    s.as_ref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("{s:?} is not an RFC 3339 time"))
        })
        .transpose()
}

async fn open(db: &Overrides) -> anyhow::Result<(Config, Store)> {
    let cfg = db.resolve()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = open_store(&cfg).await?;
    Ok((cfg, store))
}

/// The database for tools that read no secret (the audit commands): no secrets key
/// needed, none made, nothing sealed, so running them elsewhere (a backup host) can
/// never seal the database with a stray key.
async fn open_unsealed(db: &Overrides) -> anyhow::Result<Store> {
    let cfg = db.resolve()?;
    Store::open(&cfg.database_url)
        .await
        .with_context(|| format!("opening {}", crate::db::redact(&cfg.database_url)))
}

/// The database, its secrets sealed with the configured key.
async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let key = crate::sealed::SecretsKey::load_or_create(&cfg.secrets_key_file)?;
    Store::open_sealed(&cfg.database_url, key)
        .await
        .with_context(|| format!("opening {}", crate::db::redact(&cfg.database_url)))
}

/// Runs the command line; returns the process exit code.
pub async fn main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run.resolve()?).await.map(|_| 0),
        Some(Command::Run(o)) => run(o.resolve()?).await.map(|_| 0),
        Some(Command::Init {
            db,
            account,
            admin_user,
            admin_password_file,
        }) => {
            let (cfg, store) = open(&db).await?;
            let password = std::fs::read_to_string(&admin_password_file)
                .with_context(|| format!("reading {}", admin_password_file.display()))?;
            let password = password.lines().next().unwrap_or("").to_string();
            let account =
                Name::try_from(account).map_err(|e| anyhow::anyhow!("account name: {e}"))?;
            let user =
                Username::try_from(admin_user).map_err(|e| anyhow::anyhow!("admin user: {e}"))?;
            let state = AppState::new(store, Clock::default(), cfg.public_url).await?;
            // Checked and hashed before the write transaction.
            let password = crate::bootstrap::new_password(
                &drawbridge_proto::AccountSettings::default().password_policy,
                &user,
                &password,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let mut tx = state.store.begin().await?;
            let r = crate::bootstrap::create_account(
                &mut tx,
                state.now(),
                &account,
                &user,
                &password,
                "local",
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            tx.commit().await?;
            println!(
                "created account {} ({}) with admin {}",
                r.account.name, r.account.id, r.admin.username
            );
            Ok(0)
        }
        Some(Command::Relay(args)) => relay::run(args).await,
        Some(Command::Relays { command }) => relay::relays_command(command).await,
        Some(Command::Release { command }) => release::release_command(command).await,
        Some(Command::RelayCredential { db, name, days }) => {
            let (_, store) = open(&db).await?;
            let now = Clock::default().unix();
            let key = crate::keys::relay_signing_key(&store, now).await?;
            println!("{}", crate::relay_feed::credential(&key, &name, now, days)?);
            Ok(0)
        }
        Some(Command::RotateSecretsKey { db, new_key_file }) => {
            if new_key_file.exists() {
                anyhow::bail!(
                    "{} exists already: name a new file for the new key",
                    new_key_file.display()
                );
            }
            let (cfg, store) = open(&db).await?;
            let new = crate::sealed::SecretsKey::load_or_create(&new_key_file)?;
            let n = store.reseal(&new).await?;
            println!(
                "{n} secrets sealed with the new key {}.\nPut it in place of {} (or set \
                 secrets_key_file) on every server before starting them; the old key opens \
                 nothing any more.",
                new_key_file.display(),
                cfg.secrets_key_file.display()
            );
            Ok(0)
        }
        Some(Command::RelayKey { db }) => {
            let (_, store) = open(&db).await?;
            let key = crate::keys::relay_signing_key(&store, Clock::default().unix()).await?;
            println!("{}", crate::keys::verifying_key_b64(&key));
            Ok(0)
        }
        Some(Command::SetupLink { db }) => {
            let (cfg, store) = open(&db).await?;
            let explicit = cfg.public_url != format!("https://{}", cfg.listen);
            let state = AppState::new(store, Clock::default(), cfg.public_url).await?;
            let err = |e: crate::error::AppError| anyhow::anyhow!("{}", e.message);
            // The address the running server noted at its start, unless one is given here.
            let url = match crate::bootstrap::recorded_public_url(&state)
                .await
                .map_err(err)?
            {
                Some(u) if !explicit => u,
                _ => state.public_url.clone(),
            };
            let link = crate::bootstrap::new_setup_link(&state)
                .await
                .map_err(err)?;
            let until = crate::clock::from_unix(link.expires_at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            match link.kind {
                crate::bootstrap::SetupKind::FirstAccount => println!(
                    "No account exists yet. This one-time link creates the first account and its admin (valid until {until}):"
                ),
                crate::bootstrap::SetupKind::AnotherAccount => println!(
                    "Accounts exist already. This one-time link creates ANOTHER account with its own admin\n\
                     (users of an existing account are added by its admins instead). Anyone holding it can\n\
                     create an account: hand it over privately. It expires in {} minutes, at {until}:",
                    crate::bootstrap::MORE_SETUP_TTL / 60
                ),
            }
            println!("  {url}/portal/setup?token={}", link.token);
            Ok(0)
        }
        Some(Command::Audit {
            command: AuditCommand::Verify { db },
        }) => {
            let store = open_unsealed(&db).await?;
            let mut bad = false;
            // Accounts by name, as `audit export --account` takes them.
            let names: std::collections::HashMap<String, String> =
                sqlx::query_as::<_, (String, String)>("SELECT id, name FROM accounts")
                    .fetch_all(&store.pool)
                    .await?
                    .into_iter()
                    .collect();
            for (id, v) in audit::verify_all(&store).await? {
                let account = match names.get(&id) {
                    Some(name) => name.clone(),
                    None if id == audit::SYSTEM_ACCOUNT => "(no account)".to_string(),
                    None => format!("(account id {id})"),
                };
                match v.first_broken_seq {
                    None => println!("{account}: ok ({} entries)", v.entries),
                    Some(seq) => {
                        bad = true;
                        println!(
                            "{account}: BROKEN at sequence number {seq} ({} entries)",
                            v.entries
                        );
                    }
                }
            }
            Ok(if bad { 1 } else { 0 })
        }
        Some(Command::Audit {
            command:
                AuditCommand::Export {
                    db,
                    account,
                    format,
                    from,
                    to,
                    actor,
                    device,
                    action,
                },
        }) => {
            let store = open_unsealed(&db).await?;
            let id: String = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
                .bind(&account)
                .fetch_optional(&store.pool)
                .await?
                .with_context(|| format!("no account named {account:?}"))?;
            let q = AuditQuery {
                from: parse_time(&from)?,
                to: parse_time(&to)?,
                actor,
                device,
                action,
                format: None,
                limit: None,
                after_seq: None,
                order: None,
            };
            // Every page: an export is complete, however long the log.
            let entries = audit::query_all(&store, &id, &q).await?;
            match format.as_str() {
                "jsonl" => print!("{}", audit::to_jsonl(&entries)),
                "csv" => print!("{}", audit::to_csv(&entries)),
                other => anyhow::bail!("unknown format {other:?}: use jsonl or csv"),
            }
            Ok(0)
        }
    }
}

/// Starts the server and runs until Ctrl-C / SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    crate::password::set_global_share(cfg.password_hashing_share);
    let store = open_store(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let public_url = if cfg.public_url == format!("https://{}", cfg.listen) {
        format!("https://{bound}")
    } else {
        cfg.public_url.clone()
    };
    let state = AppState::with_auth_attempts(
        store,
        Clock::default(),
        public_url.clone(),
        cfg.auth_attempts_per_minute,
    )
    .await?;
    state
        .notify
        .configure(&cfg.notify)
        .context("notification settings (smtp_*, webhook_*)")?;
    crate::bootstrap::record_public_url(&state, &public_url)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let (cert, key, ca) = match &cfg.tls {
        Some((c, k)) => (c.clone(), k.clone(), None),
        None => {
            let files = crate::pki::ensure_self_signed(&cfg.data_dir, &cfg.hostnames)?;
            (files.cert, files.key, Some(files.ca_cert))
        }
    };
    let tls = Arc::new(crate::pki::server_config(&cert, &key)?);
    // Browser access: this replica's own peers reach the relay at the public
    // URL, trusting the system roots and this server's CA or chain.
    state.web.set_domain(&cfg.web_domain);
    if let Some(dir) = &cfg.novnc_dir {
        if crate::desktop::viewer::is_novnc(dir) {
            state.web.set_novnc(Some(dir.clone()));
        } else {
            tracing::warn!(dir = %dir.display(), "novnc_dir holds no noVNC (core/rfb.js); desktops in the browser say how to install it");
            state.web.set_novnc(None);
        }
    }
    if let Some(dir) = &cfg.ironrdp_dir {
        let found = crate::desktop::rdp::ironrdp_in(dir);
        if found.is_none() {
            tracing::warn!(dir = %dir.display(), "ironrdp_dir holds no IronRDP web client; RDP desktops in the browser say how to install it");
        }
        state.web.set_ironrdp(found);
    }
    if let Some(ca) = &ca
        && let Ok(pem) = std::fs::read_to_string(ca)
        && let Ok(mut t) = state.tls_ca.write()
    {
        *t = Some(pem);
    }
    let own = std::fs::read(ca.as_ref().unwrap_or(&cert))
        .with_context(|| format!("reading {}", ca.as_ref().unwrap_or(&cert).display()))?;
    match drawbridge_relay::feed::poll::tls_config(Some(&own)) {
        Ok(mut peer_tls) => {
            peer_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            state.web.set_tls(Arc::new(peer_tls));
        }
        Err(e) => println!("  browser access: off, no TLS trust for this server's own relay ({e})"),
    }
    println!("Drawbridge server listening on {public_url}");
    if let Some(ca) = &ca {
        println!("  CA certificate: {}", ca.display());
        println!(
            "  CA fingerprint (SHA-256): {}",
            crate::pki::fingerprint(ca)?
        );
    }
    println!("  device web pages: https://LABEL.{}", cfg.web_domain);
    match state.web.novnc() {
        Some(d) => println!("  desktops (noVNC): {}", d.display()),
        None => println!("  desktops: noVNC not found (apt-get install novnc, or --novnc-dir)"),
    }
    match state.web.ironrdp() {
        Some(i) => println!(
            "  RDP desktops (IronRDP): {} ({})",
            i.rdp.parent().unwrap_or(&i.rdp).display(),
            i.versions
        ),
        None => println!(
            "  RDP desktops: IronRDP not found (npm install {}, or --ironrdp-dir)",
            crate::desktop::rdp::PINNED
        ),
    }
    println!("  database: {}", crate::db::redact(&cfg.database_url));
    println!(
        "  secrets key: {} (seals the database's secrets; back it up apart from the database)",
        cfg.secrets_key_file.display()
    );
    if cfg.auth_attempts_per_minute != crate::config::DEFAULT_AUTH_ATTEMPTS_PER_MINUTE {
        println!(
            "  login/enrolment attempts: {} per minute and address (default {})",
            cfg.auth_attempts_per_minute,
            crate::config::DEFAULT_AUTH_ATTEMPTS_PER_MINUTE
        );
    }
    match &cfg.notify.smtp {
        Some(smtp) => println!(
            "  e-mail: smtp {}:{} ({}), from {}",
            smtp.host,
            smtp.port,
            smtp.security.as_str(),
            smtp.from
        ),
        None => println!("  e-mail: off (no smtp_host); webhooks only"),
    }
    if cfg.notify.webhook_allow_private {
        println!("  webhooks: loopback and private addresses allowed (webhook_allow_private)");
    }
    if !crate::bootstrap::has_accounts(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?
    {
        let token = crate::bootstrap::new_setup_token(&state)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        println!(
            "  No account exists yet. Open this one-time setup link (valid 24 h, dead once any account exists) to create the first account and admin:"
        );
        println!("    {public_url}/portal/setup?token={token}");
        println!(
            "  or: drawbridge-server init --account NAME --admin-user USER --admin-password-file FILE"
        );
    }
    let mut stun = Vec::new();
    for addr in cfg.stun_listen.iter().take(4) {
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(sock) => {
                let local = sock.local_addr()?;
                println!("  STUN: udp {local}");
                stun.push(advertised(local, &public_url));
                tokio::spawn(async move {
                    if let Err(e) = drawbridge_relay::stun::serve(sock).await {
                        tracing::error!(error = %e, "STUN service stopped");
                    }
                });
            }
            Err(e) => println!(
                "  STUN: not started on udp {addr}, it is unavailable ({e}); clients fall back to the relay"
            ),
        }
    }
    if cfg.stun_listen.is_empty() {
        println!("  STUN: off");
    }
    state.set_stun_servers(stun);
    match cfg.bridge_listen {
        Some(addr) => match tokio::net::UdpSocket::bind(addr).await {
            Ok(sock) => {
                let local = sock.local_addr()?;
                let endpoint = advertised(local, &public_url);
                println!("  WireGuard bridge (standard clients): udp {local}, endpoint {endpoint}");
                state.set_bridge_endpoint(Some(endpoint));
                let relay = state.relay.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay.serve_bridge(sock).await {
                        tracing::error!(error = %e, "WireGuard bridge stopped");
                    }
                });
            }
            Err(e) => {
                println!(
                    "  WireGuard bridge: not started, udp {addr} is unavailable ({e}); session export-wireguard is off"
                );
            }
        },
        None => println!("  WireGuard bridge: off"),
    }
    state.relays.set_local(cfg.relay.clone());
    println!(
        "  relay {:?}: {}{}{}",
        cfg.relay.name,
        cfg.relay.url.clone().unwrap_or_else(|| format!(
            "{}/relay/v1",
            public_url.replacen("https://", "wss://", 1)
        )),
        if cfg.relay.region.is_empty() {
            String::new()
        } else {
            format!(", region {}", cfg.relay.region)
        },
        if cfg.relay.standby {
            " (standby: sessions only while no other relay is alive)"
        } else {
            ""
        }
    );
    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        println!("  metrics: http://{}/metrics", listener.local_addr()?);
        crate::metrics::serve(listener)?;
    }
    crate::background::spawn(state.clone());
    crate::relays::spawn(state.clone());
    crate::outbox::worker::spawn(state.clone());
    crate::data::spawn_retention(state.clone());
    crate::desktop::recording::spawn_housekeeping(state.clone());
    crate::syslog::worker::set_server_targets(&state, &cfg.syslog)
        .await
        .map_err(|e| anyhow::anyhow!("syslog targets: {}", e.message))?;
    crate::syslog::worker::spawn(
        state.clone(),
        crate::syslog::worker::tls_config(&cfg.syslog_ca_file).context("syslog CA files")?,
    );
    crate::health::spawn(state.clone());
    crate::updates::spawn(state.clone());
    crate::sso::refresh::spawn(state.clone());
    let app = crate::app(state);
    let stop = drawbridge_tunnel::shutdown_signal();
    println!("Ready.");
    crate::serve::serve_tls_with(listener, tls, app, cfg.listener.clone(), stop).await;
    println!("Drawbridge server stopped");
    Ok(())
}

/// The `host:port` peers are told to use for a UDP service bound at `local`: the
/// public URL's host when bound to all interfaces.
pub(crate) fn advertised(local: std::net::SocketAddr, public_url: &str) -> String {
    if local.ip().is_unspecified() {
        let host = url::Url::parse(public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        format!(
            "{}:{}",
            host.unwrap_or_else(|| "127.0.0.1".into()),
            local.port()
        )
    } else {
        local.to_string()
    }
}
