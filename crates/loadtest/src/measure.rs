//! The N-edges run: provision, connect, idle, session pushes and, in cluster
//! mode with `--kill-replica`, one replica killed, the time until its edges are
//! back on the others and the pushes once more; RSS and CPU of every process
//! the tool watches at each step.

use crate::cluster::Cluster;
use crate::report::{
    ClusterFigures, KillFigures, Pair, PhaseCpu, ProcessFigures, Report, Spread, phase_cpu,
};
use crate::{Args, edges, procfs, server, target_device};
use anyhow::{Context, bail};
use drawbridge_api_client::{Client, Error as ApiError};
use drawbridge_edge::enroll::{self, EnrollError, Secret};
use drawbridge_proto::api::{CreatedDevice, LoginRequest, LoginStage, Session};
use drawbridge_proto::{ErrorCode, SessionState};
use futures_util::StreamExt;
use ring::signature::Ed25519KeyPair;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Sample names, in the order they are taken.
const IDLE: &str = "idle, no devices";
const PROVISIONED: &str = "provisioned";
const CONNECTED: &str = "all connected";
const AFTER_IDLE: &str = "after idle window";
const AFTER_PUSHES: &str = "after pushes";
const BACK: &str = "edges back after kill";
const AFTER_PUSHES_2: &str = "after pushes after kill";

/// A process whose RSS and CPU the tool samples.
struct Watched {
    name: String,
    pid: u32,
    samples: Vec<procfs::Sample>,
    /// Killed by the tool: no more samples.
    gone: bool,
}

impl Watched {
    fn new(name: &str, pid: u32) -> Watched {
        Watched {
            name: name.to_string(),
            pid,
            samples: Vec::new(),
            gone: false,
        }
    }

    fn at(&self, phase: &str) -> Option<&procfs::Sample> {
        self.samples.iter().find(|s| s.phase == phase)
    }

    fn pair(&self, from: &str, to: &str) -> Pair<'_> {
        Some((self.at(from)?, self.at(to)?))
    }

    /// RSS growth from provisioned to all connected, per edge, KiB.
    fn rss_per_edge(&self, edges: Option<u64>) -> Option<f64> {
        let (a, b) = self.pair(PROVISIONED, CONNECTED)?;
        let n = edges.filter(|&n| n > 0)?;
        Some(((b.rss_kib as f64 - a.rss_kib as f64) / n as f64 * 10.0).round() / 10.0)
    }

    fn figures(&self, edges_connected: Option<u64>, rss_edges: Option<u64>) -> ProcessFigures {
        ProcessFigures {
            name: self.name.clone(),
            pid: self.pid,
            samples: self.samples.clone(),
            edges_connected,
            rss_per_edge_kib: self.rss_per_edge(rss_edges),
            edges_connected_after_kill: None,
        }
    }
}

/// RSS and CPU samples of the server or the replicas, HAProxy, this process
/// and the machine's PostgreSQL.
struct Samples {
    servers: Vec<Watched>,
    haproxy: Option<Watched>,
    tool: Vec<procfs::Sample>,
    postgres: Vec<Option<f64>>,
    with_postgres: bool,
}

impl Samples {
    fn take(&mut self, phase: &'static str) -> anyhow::Result<()> {
        for w in self.servers.iter_mut().chain(self.haproxy.iter_mut()) {
            if !w.gone {
                let s = procfs::sample(&w.pid.to_string(), phase)
                    .with_context(|| format!("sampling {} (did it exit?)", w.name))?;
                w.samples.push(s);
            }
        }
        self.tool.push(procfs::sample("self", phase)?);
        self.postgres.push(if self.with_postgres {
            procfs::postgres_cpu_secs()
        } else {
            None
        });
        Ok(())
    }

    fn phase(&self, name: &'static str, from: usize, to: usize) -> PhaseCpu {
        let (a, b) = (self.tool[from].phase, self.tool[to].phase);
        let servers: Vec<Pair> = self.servers.iter().map(|w| w.pair(a, b)).collect();
        let haproxy = self.haproxy.as_ref().and_then(|w| w.pair(a, b));
        let postgres = self.postgres[from].zip(self.postgres[to]);
        phase_cpu(
            name,
            (&self.tool[from], &self.tool[to]),
            &servers,
            haproxy,
            postgres,
        )
    }

    fn tool_rss_per_edge(&self, online: usize) -> Option<f64> {
        let at = |p: &str| self.tool.iter().find(|s| s.phase == p);
        let (a, b) = (at(PROVISIONED)?, at(CONNECTED)?);
        (online > 0)
            .then(|| ((b.rss_kib as f64 - a.rss_kib as f64) / online as f64 * 10.0).round() / 10.0)
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

/// One round of session pushes.
#[derive(Default)]
struct PushRound {
    push: Vec<Duration>,
    calls: Vec<Duration>,
    timeouts: usize,
    sessions: Vec<String>,
}

/// For `m` devices spread evenly over `up`, one at a time: prepare a session,
/// start it, and time until the device's simulated edge has it active.
async fn push_round(
    admin: &Client,
    fleet: &edges::Fleet,
    up: &[&String],
    m: usize,
    name: &str,
    me: &str,
) -> anyhow::Result<PushRound> {
    let mut r = PushRound::default();
    for k in 0..m {
        let device = up[k * up.len() / m];
        let body = json!({
            "name": format!("{name}{k}"),
            "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}],
            "users": [me],
        });
        // After a kill the first call may meet a connection to the dead replica.
        let mut tries = 0;
        let s: Session = loop {
            match admin.post("/sessions", &body).await {
                Ok(s) => break s,
                Err(e @ ApiError::Api { .. }) => {
                    return Err(anyhow::Error::new(e).context("preparing a session"));
                }
                Err(e) if tries >= 3 => {
                    return Err(anyhow::Error::new(e).context("preparing a session"));
                }
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let arrived = fleet.expect_active(&s.id);
        let t = Instant::now();
        let res: Result<Session, _> = admin
            .post(&format!("/sessions/{}/start", s.id), &json!({}))
            .await;
        r.calls.push(t.elapsed());
        r.sessions.push(s.id.clone());
        match res {
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
            Ok(Ok(at)) => r.push.push(at.duration_since(t)),
            _ => {
                fleet.forget(&s.id);
                r.timeouts += 1;
            }
        }
    }
    Ok(r)
}

/// Creates and enrols `n` devices, `concurrency` at once.
pub(crate) async fn provision(
    admin: &Client,
    anon: &Client,
    n: usize,
    concurrency: usize,
    tag: u32,
    quiet: bool,
) -> anyhow::Result<Vec<edges::Device>> {
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
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.abort();
    devices.sort_by_key(|d| d.index);
    Ok(devices)
}

/// The whole run against `target` (a server, or HAProxy in front of `cluster`).
pub async fn measure(
    args: &Args,
    target: &server::Target,
    proxy: Option<drawbridge_tunnel::proxy::Proxy>,
    nofile: u64,
    database: String,
    cluster: Option<&mut Cluster>,
) -> anyhow::Result<(Report, bool)> {
    let n = args.edges as usize;
    let quiet = args.json;
    let anon = Client::new(&target.url, Some(&target.ca_file))?;
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
        servers: match (&cluster, target.pid) {
            (Some(c), _) => c
                .replicas
                .iter()
                .map(|r| Watched::new(&r.name, r.pid))
                .collect(),
            (None, Some(pid)) => vec![Watched::new("server", pid)],
            (None, None) => Vec::new(),
        },
        haproxy: cluster
            .as_ref()
            .map(|c| Watched::new("haproxy", c.haproxy_pid)),
        tool: Vec::new(),
        postgres: Vec::new(),
        with_postgres: cluster.is_some(),
    };
    samples.take(IDLE)?;

    // ------------------------------------------------------------ provision
    let tag: u32 = rand::random();
    let t = Instant::now();
    let devices = provision(&admin, &anon, n, args.provision_concurrency, tag, quiet).await?;
    let provision_secs = t.elapsed().as_secs_f64();
    samples.take(PROVISIONED)?;

    // ------------------------------------------------------------ connect
    let sources = args.source_ips.clone().map(|s| s.0).unwrap_or_default();
    let source_ips = sources.len();
    let fleet = Arc::new(edges::Fleet::new(
        admin.server().to_string(),
        admin.ws_tls(),
        proxy,
        sources,
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
    samples.take(CONNECTED)?;
    let spread = match &cluster {
        Some(c) => c.edges_connected().await,
        None => Vec::new(),
    };

    // ------------------------------------------------------------ idle
    let out0 = fleet.messages_out.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(args.idle_secs).await;
    let idle_secs = t.elapsed().as_secs_f64();
    let idle_messages_per_sec =
        (fleet.messages_out.load(Ordering::Relaxed) - out0) as f64 / idle_secs.max(1e-9);
    samples.take(AFTER_IDLE)?;

    // ------------------------------------------------------------ push
    let up: Vec<&String> = ids
        .iter()
        .zip(&online)
        .filter_map(|(id, on)| on.then_some(id))
        .collect();
    let m = args.sessions.min(up.len());
    let first = push_round(&admin, &fleet, &up, m, &format!("{prefix}s"), &me).await?;
    samples.take(AFTER_PUSHES)?;
    let mut sessions = first.sessions.clone();
    let down_before_kill = cluster.as_ref().map(|c| c.down_events());

    // ------------------------------------------------------------ kill
    let mut kill = None;
    let mut spread_after = Vec::new();
    if let Some(c) = cluster.filter(|_| args.kill_replica) {
        let on_it = c.edges_connected().await.first().copied().flatten();
        let online_before = fleet.online.load(Ordering::Relaxed);
        let drops0 = fleet.drops.load(Ordering::Relaxed);
        let failures0 = fleet.connect_failures.load(Ordering::Relaxed);
        let name = c.replicas[0].name.clone();
        if !quiet {
            let on = on_it.map_or("?".into(), |v| v.to_string());
            eprintln!("killing {name} ({on} edges on it)");
        }
        let t = Instant::now();
        c.kill(0).await?;
        samples.servers[0].gone = true;
        // Back: every channel the kill cut has ended, and as many edges are
        // online as before.
        let expected = on_it.unwrap_or(1);
        let deadline = t + Duration::from_secs(args.connect_timeout_secs);
        let mut back = None;
        while Instant::now() < deadline {
            let dropped = fleet.drops.load(Ordering::Relaxed) - drops0;
            if dropped >= expected && fleet.online.load(Ordering::Relaxed) >= online_before {
                back = Some(t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dropped = fleet.drops.load(Ordering::Relaxed) - drops0;
        let reconnect_failures = fleet.connect_failures.load(Ordering::Relaxed) - failures0;
        let down_events = c.down_events() - down_before_kill.unwrap_or(0);
        samples.take(BACK)?;
        spread_after = c.edges_connected().await;
        let second = push_round(&admin, &fleet, &up, m, &format!("{prefix}k"), &me).await?;
        samples.take(AFTER_PUSHES_2)?;
        sessions.extend(second.sessions.iter().cloned());
        kill = Some(KillFigures {
            replica: name,
            edges_on_it: on_it,
            dropped,
            all_back_online_secs: back,
            reconnect_failures,
            haproxy_down_events: down_events,
            push: Spread::of(second.push),
            push_timeouts: second.timeouts,
            start_call: Spread::of(second.calls),
        });
    }
    for id in &sessions {
        let _: Result<Session, _> = admin.post(&format!("/sessions/{id}/end"), &json!({})).await;
    }
    tasks.abort_all();

    // ------------------------------------------------------------ figures
    let mut phases = vec![
        samples.phase("provision", 0, 1),
        samples.phase("connect", 1, 2),
        samples.phase("idle (all connected)", 2, 3),
        samples.phase("session pushes", 3, 4),
    ];
    if kill.is_some() {
        phases.push(samples.phase("kill → all back online", 4, 5));
        phases.push(samples.phase("session pushes after kill", 5, 6));
    }
    let online_n = handshakes.len();
    let growth: Vec<f64> = samples
        .servers
        .iter()
        .filter_map(|w| w.pair(PROVISIONED, CONNECTED))
        .map(|(a, b)| b.rss_kib as f64 - a.rss_kib as f64)
        .collect();
    let server_rss_per_edge_kib =
        (!growth.is_empty() && online_n > 0).then(|| growth.iter().sum::<f64>() / online_n as f64);
    let idle_server_cpu_percent_per_10k_edges = phases[2]
        .server_cpu_percent
        .filter(|_| online_n > 0)
        .map(|c| (c / online_n as f64 * 10_000.0 * 10.0).round() / 10.0);
    let cluster_figures = samples.haproxy.as_ref().map(|h| {
        let replicas = samples
            .servers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let e = spread.get(i).copied().flatten();
                let mut f = w.figures(e, e);
                f.edges_connected_after_kill = spread_after.get(i).copied().flatten();
                f
            })
            .collect();
        ClusterFigures {
            replicas,
            haproxy: h.figures(None, Some(online_n as u64)),
            haproxy_down_events: down_before_kill.unwrap_or(0),
        }
    });
    let push_complete = first.timeouts == 0
        && kill
            .as_ref()
            .is_none_or(|k| k.push_timeouts == 0 && k.all_back_online_secs.is_some());
    let complete = all_online_secs.is_some() && push_complete;
    let report = Report {
        edges: n,
        database,
        server_url: target.url.clone(),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        nofile_limit: nofile,
        replicas: args.replicas as usize,
        source_ips,
        provision_secs,
        connect_concurrency: args.concurrency,
        online: online_n,
        all_online_secs,
        all_switched_on_secs,
        edge_handshake: Spread::of(handshakes),
        connect_failures: fleet.connect_failures.load(Ordering::Relaxed),
        drops: fleet.drops.load(Ordering::Relaxed),
        idle_secs,
        idle_messages_per_sec,
        push: Spread::of(first.push),
        push_timeouts: first.timeouts,
        start_call: Spread::of(first.calls),
        phases,
        server_samples: if cluster_figures.is_none() {
            samples
                .servers
                .first()
                .map(|w| w.samples.clone())
                .unwrap_or_default()
        } else {
            Vec::new()
        },
        tool_rss_per_edge_kib: samples.tool_rss_per_edge(online_n),
        tool_samples: samples.tool,
        server_rss_per_edge_kib,
        idle_server_cpu_percent_per_10k_edges,
        cluster: cluster_figures,
        kill,
        errors: fleet.errors(),
    };
    Ok((report, complete))
}
