//! `drawbridge-loadtest`: N simulated edges connect to one `drawbridge-server`;
//! reports the server's RSS and CPU, how long connecting took, and how long a
//! session start takes to reach its edge (p50, p99, max).
//!
//! A benchmark tool, not part of the test suite; see docs/loadtest.md.

mod dataplane;
mod dos;
mod edges;
mod procfs;
mod report;
mod server;
mod web;

use anyhow::{Context, bail};
use clap::Parser;
use drawbridge_api_client::Error as ApiError;
use drawbridge_edge::enroll::{self, EnrollError, Secret};
use drawbridge_proto::api::{CreatedDevice, LoginRequest, LoginStage, Session};
use drawbridge_proto::{ErrorCode, SessionState};
use futures_util::StreamExt;
use report::{PhaseCpu, Report, Spread, phase_cpu};
use ring::signature::Ed25519KeyPair;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "drawbridge-loadtest",
    version,
    about = "N simulated edges on one drawbridge-server: RSS, CPU, connect time and session push latency."
)]
struct Args {
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
    /// Page loads at once during `--web`.
    #[arg(long, default_value_t = 200)]
    web_concurrent: usize,
    /// Openings of the device page with the server's peer running (`--web`; the median is reported).
    #[arg(long, default_value_t = 20)]
    web_openings: usize,
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
        // --dos or --web printed its figures.
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

/// RSS and CPU samples of the server (when its PID is known) and of this process.
struct Samples {
    pid: Option<String>,
    server: Vec<procfs::Sample>,
    tool: Vec<procfs::Sample>,
}

impl Samples {
    fn take(&mut self, phase: &'static str) -> anyhow::Result<()> {
        if let Some(pid) = &self.pid {
            self.server
                .push(procfs::sample(pid, phase).context("sampling the server (did it exit?)")?);
        }
        self.tool.push(procfs::sample("self", phase)?);
        Ok(())
    }

    fn phase(&self, name: &'static str, from: usize, to: usize) -> PhaseCpu {
        let server = self
            .pid
            .as_ref()
            .map(|_| (&self.server[from], &self.server[to]));
        phase_cpu(name, server, (&self.tool[from], &self.tool[to]))
    }
}

/// Prints `label: done/total` to stderr every few seconds until aborted.
fn progress(
    label: &'static str,
    total: usize,
    done: Arc<AtomicUsize>,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("{label}: {}/{total}", done.load(Ordering::Relaxed));
        }
    })
}

fn target_device(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "lan_subnets": ["192.168.1.0/24"],
        "firewall": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}],
    })
}

async fn run(args: &Args, nofile: u64, hard: u64) -> anyhow::Result<Option<(Report, bool)>> {
    let n = args.edges as usize;
    let need = n as u64 + 256;
    if nofile < need {
        bail!(
            "the open-file limit is {nofile} (hard {hard}); {n} edges need about {need} here and as many in the server: raise the hard limit (ulimit -Hn, systemd LimitNOFILE) or lower --edges"
        );
    }
    if let Some(ports) = procfs::ephemeral_ports()
        && n as u64 > ports
    {
        bail!(
            "{n} edges need {n} local ports towards one server address, but net.ipv4.ip_local_port_range has {ports}"
        );
    }
    let proxy = drawbridge_tunnel::proxy::Proxy::from_env()
        .map_err(|e| anyhow::anyhow!("proxy variable: {e}"))?;
    if proxy.is_some() {
        tracing::warn!(
            "a proxy is configured (DRAWBRIDGE_PROXY / HTTPS_PROXY): the edges connect through it, as real ones would"
        );
    }

    // ------------------------------------------------------------ the server
    let (started, target, database) = match &args.server {
        None => {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => server::default_binary()?,
            };
            let s = server::start(&bin, args.database.as_deref(), args.data_dir.clone()).await?;
            let db = if args.database.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            };
            let t = server::Target {
                url: s.target.url.clone(),
                ca_file: s.target.ca_file.clone(),
                account: s.target.account.clone(),
                admin_user: s.target.admin_user.clone(),
                password: s.target.password.clone(),
                pid: s.target.pid,
            };
            (Some(s), t, db.to_string())
        }
        Some(url) => {
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
            (None, t, "running server".to_string())
        }
    };
    let result = if args.dos || args.web {
        dos_mode(args, &target).await.map(|text| {
            print!("{text}");
            None
        })
    } else {
        measure(args, &target, proxy, nofile, database)
            .await
            .map(Some)
    };
    if let Some(s) = started {
        if result.is_err() {
            eprintln!("server log (last lines):\n{}", s.log_tail());
        }
        if args.data_dir.is_some() {
            eprintln!("server data directory kept: {}", s.data.display());
        }
        s.stop().await;
    }
    result
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

async fn measure(
    args: &Args,
    target: &server::Target,
    proxy: Option<drawbridge_tunnel::proxy::Proxy>,
    nofile: u64,
    database: String,
) -> anyhow::Result<(Report, bool)> {
    let n = args.edges as usize;
    let quiet = args.json;
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
    if login.stage != LoginStage::Complete {
        bail!(
            "the admin's login is not complete ({:?}): use an admin without a pending second factor or password change",
            login.stage
        );
    }
    let admin = anon.clone().with_token(login.token);
    let me = admin.me().await?.user.id;
    let mut samples = Samples {
        pid: target.pid.map(|p| p.to_string()),
        server: Vec::new(),
        tool: Vec::new(),
    };
    samples.take("idle, no devices")?;

    // ------------------------------------------------------------ provision
    let tag: u32 = rand::random();
    let t = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let bar = progress("provisioned", n, done.clone(), quiet);
    let mut devices: Vec<edges::Device> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (admin, anon, done) = (admin.clone(), anon.clone(), done.clone());
            async move {
                let name = format!("lt-{tag:08x}-{i:05}");
                let created: CreatedDevice = admin
                    .post("/devices", &target_device(&name))
                    .await
                    .with_context(|| format!("creating device {name}"))?;
                let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating an identity key failed"))?;
                let key = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                    .map_err(|_| anyhow::anyhow!("identity key"))?;
                let r = enroll::request(&anon, &key, Secret::Activation(created.activation.key))
                    .await
                    .map_err(|e| match e {
                        EnrollError::Api(ApiError::Api { code: ErrorCode::RateLimited, .. }) => anyhow::anyhow!(
                            "the server rate-limits enrolment from this address: run it with --auth-attempts-per-minute {} (or DRAWBRIDGE_AUTH_ATTEMPTS_PER_MINUTE) for the test",
                            server::LOADTEST_AUTH_ATTEMPTS_PER_MINUTE
                        ),
                        e => anyhow::Error::new(e).context(format!("enrolling {name}")),
                    })?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(edges::Device {
                    index: i,
                    device_id: r.device_id,
                    key,
                })
            }
        })
        .buffer_unordered(args.provision_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.abort();
    devices.sort_by_key(|d| d.index);
    let provision_secs = t.elapsed().as_secs_f64();
    samples.take("provisioned")?;

    // ------------------------------------------------------------ connect
    let fleet = Arc::new(edges::Fleet::new(
        admin.server().to_string(),
        admin.ws_tls(),
        proxy,
        args.concurrency,
    ));
    let ids: Vec<String> = devices.iter().map(|d| d.device_id.clone()).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for d in devices {
        tasks.spawn(edges::run(fleet.clone(), d, tx.clone()));
    }
    drop(tx);
    let online_count = Arc::new(AtomicUsize::new(0));
    let bar = progress("online", n, online_count.clone(), quiet);
    let deadline = t + Duration::from_secs(args.connect_timeout_secs);
    let mut handshakes = Vec::with_capacity(n);
    let mut online = vec![false; n];
    while handshakes.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, took))) => {
                online[i] = true;
                handshakes.push(took);
                online_count.store(handshakes.len(), Ordering::Relaxed);
            }
            _ => break,
        }
    }
    bar.abort();
    let all_online_secs = (handshakes.len() == n).then(|| t.elapsed().as_secs_f64());
    // The statuses are handled after the session list went out: wait until the
    // server lists every online device as online with its switch on.
    let prefix = format!("lt-{tag:08x}-");
    let mut all_switched_on_secs = None;
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let list: Vec<drawbridge_proto::api::Device> = admin.get("/devices").await?;
        let on = list
            .iter()
            .filter(|d| {
                d.name.as_str().starts_with(&prefix) && d.status.online && d.status.switch_on
            })
            .count();
        if on >= handshakes.len() {
            all_switched_on_secs = Some(t.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.take("all connected")?;

    // ------------------------------------------------------------ idle
    let out0 = fleet.messages_out.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(args.idle_secs).await;
    let idle_secs = t.elapsed().as_secs_f64();
    let idle_messages_per_sec =
        (fleet.messages_out.load(Ordering::Relaxed) - out0) as f64 / idle_secs.max(1e-9);
    samples.take("after idle window")?;

    // ------------------------------------------------------------ push
    let up: Vec<&String> = ids
        .iter()
        .zip(&online)
        .filter_map(|(id, on)| on.then_some(id))
        .collect();
    let m = args.sessions.min(up.len());
    let mut push = Vec::with_capacity(m);
    let mut calls = Vec::with_capacity(m);
    let mut push_timeouts = 0;
    let mut sessions = Vec::with_capacity(m);
    for k in 0..m {
        let device = up[k * up.len() / m];
        let body = json!({
            "name": format!("lt-{tag:08x}-s{k}"),
            "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
            "users": [me],
        });
        let s: Session = admin
            .post("/sessions", &body)
            .await
            .context("preparing a session")?;
        let arrived = fleet.expect_active(&s.id);
        let t = Instant::now();
        let r: Result<Session, _> = admin
            .post(&format!("/sessions/{}/start", s.id), &json!({}))
            .await;
        calls.push(t.elapsed());
        sessions.push(s.id.clone());
        match r {
            Ok(st) if st.state == SessionState::Active => {}
            Ok(st) => bail!(
                "session {} is {:?} after start, not active (dual control on?)",
                s.id,
                st.state
            ),
            Err(e) => {
                fleet.forget(&s.id);
                return Err(anyhow::Error::new(e).context("starting a session"));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), arrived).await {
            Ok(Ok(at)) => push.push(at.duration_since(t)),
            _ => {
                fleet.forget(&s.id);
                push_timeouts += 1;
            }
        }
    }
    samples.take("after pushes")?;
    for id in &sessions {
        let _: Result<Session, _> = admin.post(&format!("/sessions/{id}/end"), &json!({})).await;
    }
    tasks.abort_all();

    // ------------------------------------------------------------ figures
    let phases = vec![
        samples.phase("provision", 0, 1),
        samples.phase("connect", 1, 2),
        samples.phase("idle (all connected)", 2, 3),
        samples.phase("session pushes", 3, 4),
    ];
    let server_rss_per_edge_kib = match (samples.server.get(1), samples.server.get(2)) {
        (Some(a), Some(b)) if !handshakes.is_empty() => {
            Some((b.rss_kib as f64 - a.rss_kib as f64) / handshakes.len() as f64)
        }
        _ => None,
    };
    let complete = all_online_secs.is_some() && push_timeouts == 0;
    let report = Report {
        edges: n,
        database,
        server_url: target.url.clone(),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        nofile_limit: nofile,
        provision_secs,
        connect_concurrency: args.concurrency,
        online: handshakes.len(),
        all_online_secs,
        all_switched_on_secs,
        edge_handshake: Spread::of(handshakes),
        connect_failures: fleet.connect_failures.load(Ordering::Relaxed),
        drops: fleet.drops.load(Ordering::Relaxed),
        idle_secs,
        idle_messages_per_sec,
        push: Spread::of(push),
        push_timeouts,
        start_call: Spread::of(calls),
        phases,
        server_samples: samples.server,
        tool_samples: samples.tool,
        server_rss_per_edge_kib,
        errors: fleet.errors(),
    };
    Ok((report, complete))
}
