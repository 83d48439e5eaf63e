//! `drawbridge-server relay` (a standalone relay, announced to the relay tier, draining
//! on stop) and `drawbridge-server relays` (the tier as the control plane sees it).

use super::{Overrides, advertised, open};
use crate::clock::Clock;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `drawbridge-server relay`.
#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// TCP address for the relay's WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: std::net::SocketAddr,
    /// UDP address of the STUN service.
    #[arg(long, default_value = "127.0.0.1:3478")]
    stun_listen: std::net::SocketAddr,
    /// UDP address of the bridge for standard WireGuard clients (off by default).
    #[arg(long)]
    bridge_listen: Option<std::net::SocketAddr>,
    /// The control plane's token verifying key (print it with `drawbridge-server relay-key`).
    #[arg(long, env = "DRAWBRIDGE_RELAY_VERIFYING_KEY")]
    verifying_key: String,
    /// PEM certificate chain (with --tls-key); without them the relay serves plain ws:// for a TLS proxy in front.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The control plane's URL (https://host:port), for its feed of revoked sessions:
    /// their connections here close and their tokens are refused within seconds.
    /// Without it a revoked session's tokens stay admitted until they expire.
    #[arg(long, requires = "credential_file")]
    control_url: Option<String>,
    /// File holding this relay's credential for the feed (`drawbridge-server relay-credential`).
    #[arg(long, requires = "control_url")]
    credential_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for --control-url besides the system's (the
    /// control plane's self-signed CA: its data directory's ca.pem).
    #[arg(long, requires = "control_url")]
    ca_file: Option<PathBuf>,
    /// The URL that reaches this relay instance (wss://relay-eu-1.example.com/relay/v1).
    /// With it the relay announces itself to the control plane with every feed poll
    /// and gets sessions; when it stops or drains they move to another relay.
    #[arg(long, requires = "control_url")]
    public_url: Option<String>,
    /// The relay's region (e.g. eu-central).
    #[arg(long, default_value = "", requires = "public_url")]
    region: String,
    /// STUN address peers use, repeatable (default: the STUN port on the public URL's host).
    #[arg(long = "stun-public", requires = "public_url")]
    stun_public: Vec<String>,
    /// Seconds a stopping relay (SIGTERM, Ctrl-C) drains: the control plane moves
    /// its sessions to other relays, then it stops (0: stop at once).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_secs: u64,
    /// Serve Prometheus metrics over plain HTTP at ADDR/metrics (connections,
    /// sessions, bytes and frames forwarded, drops by reason).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs a standalone relay until it is stopped (and has drained).
pub async fn run(args: RelayArgs) -> anyhow::Result<i32> {
    let RelayArgs {
        listen,
        stun_listen,
        bridge_listen,
        verifying_key,
        tls_cert,
        tls_key,
        control_url,
        credential_file,
        ca_file,
        public_url,
        region,
        stun_public,
        drain_secs,
        metrics_listen,
    } = args;
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        println!("  metrics: http://{}/metrics", listener.local_addr()?);
        crate::metrics::serve(listener)?;
    }
    let key = crate::keys::parse_verifying_key(&verifying_key)?;
    let tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some(Arc::new(crate::pki::server_config(&c, &k)?)),
        _ => None,
    };
    println!(
        "Drawbridge relay on {listen} (TLS: {}), STUN on udp {stun_listen}",
        tls.is_some()
    );
    let revocations = match (control_url, credential_file) {
        (Some(url), Some(file)) => {
            let feed = revocation_feed(&key, &url, &file, ca_file)?;
            match &public_url {
                Some(p) => {
                    let stun = if stun_public.is_empty() {
                        vec![advertised(
                            stun_listen,
                            &p.replacen("wss://", "https://", 1)
                                .replacen("ws://", "http://", 1),
                        )]
                    } else {
                        stun_public.clone()
                    };
                    let announce = drawbridge_relay::feed::announce::Announce {
                        url: p.clone(),
                        region: region.clone(),
                        stun,
                        bridge: bridge_listen.map(|b| {
                            advertised(
                                b,
                                &p.replacen("wss://", "https://", 1)
                                    .replacen("ws://", "http://", 1),
                            )
                        }),
                    };
                    println!(
                        "  relay tier: announced as {} (region {:?}, STUN {:?}); drains {drain_secs} s on stop",
                        announce.url, announce.region, announce.stun
                    );
                    Some(feed.with_announce(announce)?)
                }
                None => Some(feed),
            }
        }
        _ => {
            println!(
                "  revocation feed: off (no --control-url): a revoked session's tokens are admitted until they expire"
            );
            None
        }
    };
    let announced = revocations.as_ref().is_some_and(|f| f.announce().is_some());
    let relay = drawbridge_relay::Standalone::bind(drawbridge_relay::StandaloneConfig {
        relay_listen: listen,
        stun_listen,
        bridge_listen,
        relay: drawbridge_relay::RelayConfig::new(key),
        tls,
        revocations,
    })
    .await?;
    let state = relay.state();
    let stop = drawbridge_tunnel::shutdown_signal();
    let mut running = tokio::spawn(relay.run());
    tokio::select! {
        r = &mut running => { r??; return Ok(0); }
        _ = stop => {}
    }
    if announced && drain_secs > 0 {
        drain(&state, Duration::from_secs(drain_secs)).await;
    }
    running.abort();
    println!("Drawbridge relay stopped");
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum RelaysCommand {
    /// Every relay: URL, region, state, last heartbeat, connections, active sessions.
    List {
        #[command(flatten)]
        db: Overrides,
    },
    /// Move the relay's sessions to other relays and give it no new ones.
    Drain {
        #[command(flatten)]
        db: Overrides,
        name: String,
    },
    /// Let a drained relay take sessions again.
    Undrain {
        #[command(flatten)]
        db: Overrides,
        name: String,
    },
}

/// Drains a stopping relay: the control plane hears it with the next heartbeat
/// (sent at once) and moves its sessions; it stops when its last peer has left,
/// or after `limit`.
async fn drain(state: &drawbridge_relay::RelayState, limit: Duration) {
    state.start_draining();
    println!(
        "draining: {} connections; stopping when they have moved (at most {} s)",
        state.connections(),
        limit.as_secs()
    );
    let deadline = tokio::time::Instant::now() + limit;
    while state.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("drained ({} connections left)", state.connections());
}

pub async fn relays_command(command: RelaysCommand) -> anyhow::Result<i32> {
    let fail = |e: crate::error::AppError| anyhow::anyhow!("{}", e.message);
    match command {
        RelaysCommand::List { db } => {
            let (_, store) = open(&db).await?;
            let now = Clock::default().unix();
            println!(
                "{:<20} {:<10} {:<9} {:>9} {:>11} {:>8}  URL",
                "NAME", "REGION", "STATE", "HEARTBEAT", "CONNECTIONS", "SESSIONS"
            );
            for (r, sessions) in crate::relays::list(&store).await.map_err(fail)? {
                let state = if !r.live(now) {
                    "down"
                } else if r.draining || r.drain_requested {
                    "draining"
                } else if r.standby {
                    "standby"
                } else {
                    "up"
                };
                println!(
                    "{:<20} {:<10} {:<9} {:>8}s {:>11} {:>8}  {}",
                    r.name,
                    if r.region.is_empty() { "-" } else { &r.region },
                    state,
                    now - r.heartbeat_at,
                    r.connections,
                    sessions,
                    r.url
                );
            }
            Ok(0)
        }
        RelaysCommand::Drain { db, name } => set_drain(&db, &name, true).await,
        RelaysCommand::Undrain { db, name } => set_drain(&db, &name, false).await,
    }
}

async fn set_drain(db: &Overrides, name: &str, drain: bool) -> anyhow::Result<i32> {
    let (_, store) = open(db).await?;
    let known = crate::relays::set_drain(&store, name, drain)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if !known {
        eprintln!("no relay named {name:?} (drawbridge-server relays list)");
        return Ok(1);
    }
    if drain {
        println!("relay {name:?} drains: its sessions move to other relays within seconds");
    } else {
        println!("relay {name:?} takes sessions again");
    }
    Ok(0)
}

/// The standalone relay's revocation feed, its credential checked against the
/// relay's verifying key first (one from another control plane, or expired, is an
/// error at start, not a stream of refusals later).
fn revocation_feed(
    key: &drawbridge_relay::VerifyingKey,
    url: &str,
    credential_file: &std::path::Path,
    ca_file: Option<PathBuf>,
) -> anyhow::Result<drawbridge_relay::feed::poll::RevocationFeed> {
    let credential = std::fs::read_to_string(credential_file)
        .with_context(|| format!("reading {}", credential_file.display()))?;
    let now = u64::try_from(Clock::default().unix()).unwrap_or(0);
    let cred =
        drawbridge_relay::feed::verify_credential(key, credential.trim(), now).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a relay credential of this control plane ({e}); make one with \
                 `drawbridge-server relay-credential`",
                credential_file.display()
            )
        })?;
    let ca = match &ca_file {
        Some(f) => Some(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?),
        None => None,
    };
    let feed = drawbridge_relay::feed::poll::RevocationFeed::new(url, &credential, ca.as_deref())?;
    let until = crate::clock::from_unix(i64::try_from(cred.expires_at).unwrap_or(i64::MAX))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "  revocation feed: {} every {} s (relay {:?}, credential valid until {until})",
        feed.url(),
        drawbridge_relay::feed::POLL_EVERY.as_secs(),
        cred.relay
    );
    Ok(feed)
}
