//! `drawbridge-loadtest`: N simulated edges connect to one `drawbridge-server`
//! or to N replicas behind HAProxy; reports the servers' RSS and CPU, how long
//! connecting took, how long a session start takes to reach its edge (p50, p99,
//! max) and, with `--kill-replica`, how long the edges of a killed replica take
//! to come back on the others.
//!
//! A benchmark tool, not part of the test suite; see docs/loadtest.md.

mod cluster;
mod data;
mod dataplane;
mod desktop;
mod dos;
mod edges;
mod measure;
mod postgres;
mod procfs;
mod report;
mod server;
mod web;

use anyhow::{Context, bail};
use clap::Parser;
use drawbridge_proto::api::LoginRequest;
use report::Report;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "drawbridge-loadtest",
    version,
    about = "N simulated edges on one drawbridge-server or replicas behind HAProxy: RSS, CPU, connect time, session push latency, a replica's failover."
)]
pub struct Args {
    /// Simulated edges.
    #[arg(short = 'n', long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    edges: u32,
    /// Sessions started to measure the push latency, on devices spread over the edges (one at a time).
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Edges connecting (TCP, TLS, upgrade, authentication) at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Devices created and enrolled through the API at once.
    #[arg(long, default_value_t = 16)]
    provision_concurrency: usize,
    /// Seconds measured with every edge connected and idle (15 = one status period).
    #[arg(long, default_value = "15", value_parser = seconds)]
    idle_secs: Duration,
    /// Give up waiting for every edge to come online after this many seconds.
    #[arg(long, default_value_t = 600)]
    connect_timeout_secs: u64,
    /// Database of the server the tool starts (postgres://…); default SQLite in its data directory.
    #[arg(long)]
    database: Option<String>,
    /// Control-plane replicas behind HAProxy, on one data directory and the
    /// --database (postgres://…, needed for more than one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    replicas: u32,
    /// With --replicas: SIGKILL replica 1 after the pushes, time until every
    /// edge is online again, then push once more.
    #[arg(long)]
    kill_replica: bool,
    /// HAProxy, for --replicas above 1.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy_bin: PathBuf,
    /// Seconds HAProxy's health check may take (`timeout check`); default as
    /// docs/deployment.md: within the 500 ms check interval.
    #[arg(long, value_parser = seconds)]
    haproxy_timeout_check: Option<Duration>,
    /// Loopback addresses the edges connect from, round robin: one, or a range
    /// such as 127.0.0.2-127.0.0.41 (at most 256). Default: 127.0.0.1 only,
    /// which bounds N by the local port range.
    #[arg(long, value_parser = edges::parse_source_ips)]
    source_ips: Option<edges::SourceIps>,
    /// The server binary to start (default: drawbridge-server next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Data directory for the started server (default: a temporary one, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use this running server instead of starting one (its devices stay behind).
    #[arg(long, requires_all = ["ca_file", "account", "admin_user", "admin_password_file"])]
    server: Option<String>,
    /// The running server's CA certificate (with --server).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Account of the admin (with --server).
    #[arg(long)]
    account: Option<String>,
    /// The admin's user name (with --server).
    #[arg(long)]
    admin_user: Option<String>,
    /// File holding the admin's password, first line (with --server).
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// The running server's process id, for RSS and CPU figures (with --server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of N edges: one edge channel and the API, idle and under a login
    /// flood, then a login with many silent connections open (docs/loadtest.md).
    #[arg(long)]
    dos: bool,
    /// Wrong logins a second during `--dos`.
    #[arg(long, default_value_t = 200)]
    dos_logins_per_sec: u32,
    /// Silent TCP connections held open during `--dos`.
    #[arg(long, default_value_t = 2000)]
    dos_silent: usize,
    /// Idle and loaded phases during `--dos` (alternating; medians are reported).
    #[arg(long, default_value_t = 5)]
    dos_rounds: usize,
    /// Instead of N edges: browser access to a device web page behind a real
    /// edge: opening it, a download against `drawbridge connect -L`, many page
    /// loads at once (docs/loadtest.md).
    #[arg(long, conflicts_with = "dos")]
    web: bool,
    /// Megabytes of each `--web` download.
    #[arg(long, default_value_t = 100)]
    web_download_mb: u64,
    /// Instead of N edges: the data services' figures on PostgreSQL — edges
    /// pushing historian records as fast as they are acknowledged, the mailbox
    /// sync of every point, one real edge polling a simulated PLC
    /// (docs/loadtest.md). Without --database it starts a throwaway PostgreSQL.
    #[arg(long, conflicts_with_all = ["dos", "web", "replicas", "kill_replica"])]
    data: bool,
    /// Simulated edges pushing records during `--data`.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    data_edges: u32,
    /// Tags of each pushing edge (`--data`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    data_tags: u32,
    /// Records per message (`--data`; at most 1000, as the edge sends).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    data_batch: u32,
    /// Seconds of pushing before the measured window (`--data`).
    #[arg(long, default_value = "5", value_parser = seconds)]
    data_warmup_secs: Duration,
    /// Seconds of the measured ingestion window (`--data`).
    #[arg(long, default_value = "30", value_parser = seconds)]
    data_secs: Duration,
    /// Pushing goes on after the window until this many points are stored; the
    /// sync reports the time for the first this many (`--data`).
    #[arg(long, default_value_t = 1_000_000)]
    data_points: u64,
    /// About one pushed sample in this many has a bad quality (a timeout,
    /// no value), as PLCs sometimes do (`--data`; 0: none).
    #[arg(long, default_value_t = 997)]
    data_bad_every: u64,
    /// Points a sync page asks for (`--data`; the server allows 1-10000).
    #[arg(long, default_value_t = 10_000)]
    data_sync_limit: u32,
    /// Tags the real polling edge reads every second (`--data`).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=500))]
    data_edge_tags: u32,
    /// Seconds the polling edge is measured (`--data`; 0: no polling edge).
    #[arg(long, default_value = "60", value_parser = seconds)]
    data_edge_secs: Duration,
    /// Seconds the polling edge runs before it is measured (`--data`).
    #[arg(long, default_value = "10", value_parser = seconds)]
    data_edge_warmup_secs: Duration,
    /// Page loads at once during `--web`.
    #[arg(long, default_value_t = 200)]
    web_concurrent: usize,
    /// Openings of the device page with the server's peer running (`--web`; the median is reported).
    #[arg(long, default_value_t = 20)]
    web_openings: usize,
    /// Instead of N edges: a VNC desktop in the browser — a real Xvnc whose
    /// whole screen changes, behind a real edge, read through the server's
    /// bridge by a minimal RFB viewer, recording required and off
    /// (docs/loadtest.md).
    #[arg(long, conflicts_with_all = ["dos", "web", "data", "replicas", "kill_replica"])]
    desktop: bool,
    /// The VNC server's screen (`--desktop`).
    #[arg(long, default_value = "1920x1080", value_parser = geometry)]
    desktop_geometry: (u16, u16),
    /// Encodings the viewer asks for, one run pair each (`--desktop`; raw, zrle).
    #[arg(long, default_value = "raw,zrle", value_delimiter = ',')]
    desktop_encodings: Vec<desktop::rfb::Encoding>,
    /// Whole-screen colour changes a second (`--desktop`; 0: as fast as Xvnc takes them).
    #[arg(long, default_value_t = 30.0)]
    desktop_paint_hz: f64,
    /// Seconds of viewing before each measured window (`--desktop`).
    #[arg(long, default_value = "3", value_parser = seconds)]
    desktop_warmup_secs: Duration,
    /// Seconds of each measured window (`--desktop`). Raw windows are
    /// shortened to record at most 90 % of the account's largest recording
    /// (4 GiB) at the painter's rate (12 s at 1920×1080 and 30 a second), so
    /// the server does not end a `required` window at its limit.
    #[arg(long, default_value = "20", value_parser = seconds)]
    desktop_secs: Duration,
    /// Rounds of windows per encoding (`--desktop`): each a window with
    /// recording required, then one with it off; the goals take each mode's
    /// median, so a busy moment on a shared machine does not decide them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    desktop_rounds: u16,
}

/// `WIDTHxHEIGHT`.
fn geometry(s: &str) -> Result<(u16, u16), String> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h)| w >= 16 && h >= 16)
        .ok_or_else(|| format!("{s:?} is not a screen size such as 1920x1080"))
}

/// A number of seconds, fractions allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds ≥ 0"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Before any child starts: the server inherits the raised limit.
    let (nofile, hard) = procfs::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let Some((report, complete)) = rt.block_on(run(&args, nofile, hard))? else {
        // --dos, --web, --data or --desktop printed its figures.
        rt.shutdown_timeout(Duration::from_secs(1));
        return Ok(());
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    if !complete {
        eprintln!("incomplete: not every edge came online or not every push arrived");
        std::process::exit(2);
    }
    Ok(())
}

pub fn target_device(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "lan_subnets": ["192.168.1.0/24"],
        "firewall": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}],
    })
}

/// Refuses what cannot work, with a message saying why: cluster-mode options
/// without a cluster, too few descriptors or local ports for N edges.
fn check(args: &Args, nofile: u64, hard: u64) -> anyhow::Result<()> {
    let n = if args.data {
        args.data_edges as usize
    } else if args.desktop {
        1
    } else {
        args.edges as usize
    };
    let replicas = args.replicas as usize;
    if replicas > 1 {
        let pg = args
            .database
            .as_deref()
            .is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"));
        if !pg {
            bail!(
                "--replicas {replicas} needs --database postgres://…: the replicas share one PostgreSQL database (docs/loadtest.md shows how to make one)"
            );
        }
        if args.server.is_some() || args.dos || args.web {
            bail!("--replicas starts its own cluster: not with --server, --dos or --web");
        }
    }
    if args.kill_replica && replicas < 2 {
        bail!("--kill-replica needs --replicas 2 or more");
    }
    let need = n as u64 + 256;
    if nofile < need {
        bail!(
            "the open-file limit is {nofile} (hard {hard}); {n} edges need about {need} here and as many in the server: raise the hard limit (ulimit -Hn, systemd LimitNOFILE; as root with CAP_SYS_RESOURCE the tool raises it itself) or lower --edges"
        );
    }
    if replicas > 1 && nofile < cluster::haproxy_nofile(n) {
        bail!(
            "the open-file limit is {nofile} (hard {hard}); HAProxy needs about {} for {n} edges: raise the hard limit (as root with CAP_SYS_RESOURCE the tool raises it itself) or lower --edges",
            cluster::haproxy_nofile(n)
        );
    }
    let sources = args.source_ips.as_ref().map_or(1, |s| s.0.len());
    let per_source = n.div_ceil(sources) as u64;
    if let Some(ports) = procfs::ephemeral_ports()
        && per_source > ports
    {
        bail!(
            "{n} edges from {sources} address(es) need {per_source} local ports each, but net.ipv4.ip_local_port_range has {ports}: give more --source-ips (e.g. 127.0.0.2-127.0.0.41)"
        );
    }
    if replicas > 1 {
        // After a kill the others take the killed one's edges too.
        let left = if args.kill_replica {
            replicas - 1
        } else {
            replicas
        };
        let per_replica = n.div_ceil(left) as u64;
        if per_replica > cluster::ports_per_replica() {
            bail!(
                "{per_replica} edges per replica need as many HAProxy source ports towards it, more than the {} it has: more --replicas or fewer edges",
                cluster::ports_per_replica()
            );
        }
    }
    Ok(())
}

/// What the tool runs against.
enum Under {
    Server(server::Started),
    Cluster(cluster::Cluster),
    Running,
}

async fn run(args: &Args, nofile: u64, hard: u64) -> anyhow::Result<Option<(Report, bool)>> {
    check(args, nofile, hard)?;
    let proxy = drawbridge_tunnel::proxy::Proxy::from_env()
        .map_err(|e| anyhow::anyhow!("proxy variable: {e}"))?;
    if proxy.is_some() {
        tracing::warn!(
            "a proxy is configured (DRAWBRIDGE_PROXY / HTTPS_PROXY): the edges connect through it, as real ones would"
        );
    }

    // ------------------------------------------------------------ the server(s)
    let server_bin = || match &args.server_bin {
        Some(b) => Ok(b.clone()),
        None => server::default_binary(),
    };
    // --data on a server of its own: PostgreSQL, a throwaway one unless given.
    let throwaway = if args.data && args.server.is_none() && args.database.is_none() {
        let pg = tokio::task::spawn_blocking(postgres::Postgres::start).await??;
        Some(pg)
    } else {
        None
    };
    let database_url = throwaway
        .as_ref()
        .map(|p| p.url.clone())
        .or_else(|| args.database.clone());
    let db = if database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let (mut under, target, database) = match (&args.server, args.replicas) {
        (None, 1) => {
            let s = server::start(
                &server_bin()?,
                database_url.as_deref(),
                args.data_dir.clone(),
            )
            .await?;
            let t = s.target.clone();
            (Under::Server(s), t, db.to_string())
        }
        (None, replicas) => {
            let bin = server_bin()?;
            let c = cluster::start(&cluster::Options {
                server_bin: &bin,
                haproxy_bin: &args.haproxy_bin,
                database: args.database.as_deref().unwrap_or_default(),
                data_dir: args.data_dir.clone(),
                replicas: replicas as usize,
                edges: args.edges as usize,
                check_timeout: args.haproxy_timeout_check,
            })
            .await?;
            let t = c.target.clone();
            (Under::Cluster(c), t, db.to_string())
        }
        (Some(url), _) => {
            let pw_file = args.admin_password_file.clone().unwrap_or_default();
            let pw = std::fs::read_to_string(&pw_file)
                .with_context(|| format!("reading {}", pw_file.display()))?;
            let t = server::Target {
                url: url.clone(),
                ca_file: args.ca_file.clone().unwrap_or_default(),
                account: args.account.clone().unwrap_or_default(),
                admin_user: args.admin_user.clone().unwrap_or_default(),
                password: pw.lines().next().unwrap_or("").to_string(),
                pid: args.server_pid,
            };
            (Under::Running, t, "running server".to_string())
        }
    };
    let result = if args.data {
        let db = data::Database {
            name: match (&throwaway, &args.server) {
                (Some(p), _) => format!(
                    "{} (a throwaway cluster with PostgreSQL's default, durable settings)",
                    p.version
                ),
                (None, Some(_)) => "the running server's database".into(),
                (None, None) => format!("{db} given with --database"),
            },
            postmaster: throwaway.as_ref().map(|p| p.pid),
        };
        data_mode(args, &target, &db).await.map(|_| None)
    } else if args.desktop {
        desktop_mode(args, &target, &database).await.map(|_| None)
    } else if args.dos || args.web {
        dos_mode(args, &target).await.map(|text| {
            print!("{text}");
            None
        })
    } else {
        let c = match &mut under {
            Under::Cluster(c) => Some(c),
            _ => None,
        };
        measure::measure(args, &target, proxy, nofile, database, c)
            .await
            .map(Some)
    };
    match under {
        Under::Server(s) => {
            if result.is_err() {
                eprintln!("server log (last lines):\n{}", s.log_tail());
            }
            if args.data_dir.is_some() {
                eprintln!("server data directory kept: {}", s.data.display());
            }
            s.stop().await;
        }
        Under::Cluster(c) => {
            if result.is_err() {
                eprintln!("logs (last lines):\n{}", c.log_tail());
            }
            if args.data_dir.is_some() {
                eprintln!(
                    "data directory kept (replica-N.log, haproxy.cfg, haproxy.log): {}",
                    c.data.display()
                );
            }
            c.stop().await;
        }
        Under::Running => {}
    }
    result
}

/// `--data`: logs in as the admin, runs [`data::run`] and prints its figures;
/// an error when they are incomplete (a point lost, doubled or changed, an
/// edge's error).
async fn data_mode(
    args: &Args,
    target: &server::Target,
    db: &data::Database,
) -> anyhow::Result<()> {
    let anon = drawbridge_api_client::Client::new(&target.url, Some(&target.ca_file))?;
    let login = anon
        .login(&LoginRequest {
            account: target.account.clone(),
            username: target.admin_user.clone(),
            password: target.password.clone(),
            totp: None,
        })
        .await
        .context("logging in as the admin")?;
    let admin = anon.clone().with_token(login.token);
    let opts = data::Options {
        edges: args.data_edges as usize,
        tags: args.data_tags as usize,
        batch: args.data_batch as usize,
        warmup: args.data_warmup_secs,
        window: args.data_secs,
        points: args.data_points,
        bad_every: args.data_bad_every,
        sync_limit: args.data_sync_limit,
        provision_concurrency: args.provision_concurrency,
        edge: (!args.data_edge_secs.is_zero()).then_some(data::edge::Options {
            tags: args.data_edge_tags as usize,
            warmup: args.data_edge_warmup_secs,
            secs: args.data_edge_secs,
        }),
        quiet: args.json,
    };
    let report = data::run(&opts, target, &anon, &admin, db).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.complete {
        bail!("incomplete: {}", report.errors.join("; "));
    }
    Ok(())
}

/// `--desktop`: logs in as the admin, runs [`desktop::run`] and prints its
/// figures; an error when a run failed (printed after the figures).
async fn desktop_mode(args: &Args, target: &server::Target, database: &str) -> anyhow::Result<()> {
    let anon = drawbridge_api_client::Client::new(&target.url, Some(&target.ca_file))?;
    let login = anon
        .login(&LoginRequest {
            account: target.account.clone(),
            username: target.admin_user.clone(),
            password: target.password.clone(),
            totp: None,
        })
        .await
        .context("logging in as the admin")?;
    let admin = anon.clone().with_token(login.token);
    let opts = desktop::Options {
        width: args.desktop_geometry.0,
        height: args.desktop_geometry.1,
        encodings: args.desktop_encodings.clone(),
        paint_hz: args.desktop_paint_hz,
        warmup: args.desktop_warmup_secs,
        window: args.desktop_secs,
        rounds: args.desktop_rounds,
        quiet: args.json,
    };
    let report = desktop::run(&opts, target, &admin, database).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.errors.is_empty() {
        bail!("incomplete: a run failed (above)");
    }
    Ok(())
}

/// `--dos` and `--web`: logs in as the admin and runs [`dos::run`] or [`web::run`].
async fn dos_mode(args: &Args, target: &server::Target) -> anyhow::Result<String> {
    let anon = drawbridge_api_client::Client::new(&target.url, Some(&target.ca_file))?;
    let login = anon
        .login(&LoginRequest {
            account: target.account.clone(),
            username: target.admin_user.clone(),
            password: target.password.clone(),
            totp: None,
        })
        .await
        .context("logging in as the admin")?;
    let admin = anon.clone().with_token(login.token);
    if args.web {
        let opts = web::Options {
            download_bytes: args.web_download_mb * 1_000_000,
            concurrent: args.web_concurrent,
            openings: args.web_openings,
        };
        return web::run(&opts, target, &admin).await;
    }
    let opts = dos::Options {
        logins_per_sec: args.dos_logins_per_sec,
        silent: args.dos_silent,
        rounds: args.dos_rounds,
    };
    dos::run(&opts, target, &anon, &admin).await
}
