//! `--data`: the data services' figures (issue 15, docs/loadtest.md).
//!
//! 1. **Ingestion.** `edges` enrolled devices, each a simulated edge
//!    ([`ingest`]) pushing historian records as fast as the server
//!    acknowledges them; after a warm-up, a window whose acknowledged points
//!    a second are the sustained rate, with the server's CPU and RSS and
//!    PostgreSQL's CPU over it; then on until at least `points` are stored.
//!    The stored count is checked against the database (each device's data
//!    status) and the acknowledgements.
//! 2. **Sync.** Every point pulled as a client would ([`sync`]), checked
//!    point by point; the time for the first `points` and for all.
//! 3. **One polling edge** ([`edge`]): a real `drawbridge-edge` polling
//!    `edge_tags` tags every second from a simulated PLC: its CPU and RSS.
//!
//! Figures, never assertions: a missed goal is reported, not failed.

pub mod edge;
pub mod ingest;
pub mod plan;
pub mod plc;
pub mod sync;

use crate::procfs;
use crate::server::Target;
use anyhow::Context;
use drawbridge_api_client::Client;
use drawbridge_proto::api::CreateApiToken;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// The goals.
pub const GOAL_POINTS_PER_SEC: f64 = 50_000.0;
pub const GOAL_SYNC_SECS: f64 = 10.0;
pub const GOAL_EDGE_CPU_PERCENT: f64 = 5.0;
pub const GOAL_EDGE_RSS_MIB: f64 = 50.0;

pub struct Options {
    pub edges: usize,
    pub tags: usize,
    pub batch: usize,
    pub warmup: Duration,
    pub window: Duration,
    pub points: u64,
    /// About one sample in this many is bad (no value); 0: none.
    pub bad_every: u64,
    pub sync_limit: u32,
    pub provision_concurrency: usize,
    /// None: no edge figure.
    pub edge: Option<edge::Options>,
    pub quiet: bool,
}

/// The database under the server, as the report names it, and how its CPU is counted.
pub struct Database {
    pub name: String,
    /// The throwaway cluster's postmaster (its CPU alone is counted); None:
    /// every `postgres` process on the machine.
    pub postmaster: Option<u32>,
}

impl Database {
    fn cpu_secs(&self) -> Option<f64> {
        match self.postmaster {
            Some(pid) => procfs::tree_cpu_secs(pid),
            None => procfs::postgres_cpu_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub load_start: String,
    pub load_end: String,
    pub compilers_start: usize,
    pub compilers_end: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ingest {
    pub edges: usize,
    pub tags_per_edge: usize,
    pub batch: usize,
    pub warmup_secs: f64,
    pub window_secs: f64,
    pub window_points: u64,
    /// Acknowledged (= stored) points a second over the window.
    pub points_per_sec: f64,
    pub total_points: u64,
    pub total_secs: f64,
    /// Points the database holds after the run (sum of the devices' data status).
    pub stored_points: i64,
    pub round_trip_p50_ms: f64,
    pub round_trip_p99_ms: f64,
    pub round_trip_max_ms: f64,
    /// Over the window, % of one core.
    pub server_cpu_percent: Option<f64>,
    pub postgres_cpu_percent: Option<f64>,
    pub tool_cpu_percent: f64,
    /// Busy cores of the whole machine over the window.
    pub machine_busy_cores: f64,
    pub server_rss_mib_mean: Option<f64>,
    pub server_rss_mib_max: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncFigures {
    #[serde(flatten)]
    pub synced: sync::Synced,
    pub server_cpu_percent: Option<f64>,
    pub postgres_cpu_percent: Option<f64>,
    pub tool_cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    pub database: String,
    pub machine: Machine,
    pub ingest: Ingest,
    pub sync: Option<SyncFigures>,
    pub edge: Option<edge::EdgeFigures>,
    pub errors: Vec<String>,
    /// Every acknowledged point stored and synced exactly once, no error.
    pub complete: bool,
}

/// CPU seconds of the server, PostgreSQL and this tool, and the machine's ticks, at one moment.
struct Cpu {
    at: Instant,
    server: Option<f64>,
    postgres: Option<f64>,
    tool: f64,
    machine: (u64, u64),
}

impl Cpu {
    fn now(server: Option<&str>, db: &Database) -> Cpu {
        Cpu {
            at: Instant::now(),
            server: server.and_then(|p| procfs::sample(p, "data").ok().map(|s| s.cpu_secs)),
            postgres: db.cpu_secs(),
            tool: procfs::sample("self", "data").map_or(0.0, |s| s.cpu_secs),
            machine: crate::dos::machine_ticks(),
        }
    }

    /// % of one core used by (server, PostgreSQL, tool) since `self`, and the machine's busy cores.
    fn since(&self, later: &Cpu) -> (Option<f64>, Option<f64>, f64, f64) {
        let dt = (later.at - self.at).as_secs_f64().max(1e-3);
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / dt * 100.0);
        let ((b0, t0), (b1, t1)) = (self.machine, later.machine);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = if t1 > t0 {
            (b1 - b0) as f64 / (t1 - t0) as f64 * cores
        } else {
            f64::NAN
        };
        (
            pct(self.server, later.server),
            pct(self.postgres, later.postgres),
            (later.tool - self.tool) / dt * 100.0,
            busy,
        )
    }
}

fn percentile(v: &mut [f32], p: f64) -> f64 {
    v.sort_by(f32::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    f64::from(v[((v.len() - 1) as f64 * p).round() as usize])
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the three parts against `target` with `admin` logged in.
pub async fn run(
    o: &Options,
    target: &Target,
    anon: &Client,
    admin: &Client,
    db: &Database,
) -> anyhow::Result<DataReport> {
    let (load_start, compilers_start) = (crate::dos::loadavg(), crate::dos::compilers());
    let server_pid = target.pid.map(|p| p.to_string());
    let spid = server_pid.as_deref();
    let mut errors = Vec::new();

    // ------------------------------------------------------------ ingestion
    let tag: u32 = rand::random();
    let devices =
        crate::measure::provision(admin, anon, o.edges, o.provision_concurrency, tag, o.quiet)
            .await?;
    let ids: Vec<(String, usize)> = devices
        .iter()
        .map(|d| (d.device_id.clone(), d.index))
        .collect();
    // Samples start a day ago, one round a second: far from now and from the retention.
    let plan = Arc::new(plan::Plan::new(o.tags, now_ms() - 86_400_000, o.bad_every));
    let push = Arc::new(ingest::Push {
        server: admin.server().to_string(),
        tls: admin.ws_tls(),
        plan: plan.clone(),
        stream_prefix: format!("lt-{tag:08x}"),
        batch: o.batch,
        stop: Arc::default(),
    });
    let c = Arc::new(ingest::Counters::default());
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| tokio::spawn(ingest::edge(push.clone(), d, c.clone())))
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    while c.connected.load(Ordering::Relaxed) < o.edges
        && c.errors.lock().map_or(0, |e| e.len()) == 0
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(o.warmup).await;
    let acked0 = c.acked.load(Ordering::Relaxed);
    let cpu0 = Cpu::now(spid, db);
    c.measuring.store(true, Ordering::Relaxed);
    let mut rss = Vec::new();
    let end = cpu0.at + o.window;
    while Instant::now() < end {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(end)).await;
        if let Some(s) = spid.and_then(|p| procfs::sample(p, "data").ok()) {
            rss.push(s.rss_kib as f64 / 1024.0);
        }
        if !o.quiet {
            eprintln!(
                "ingest: {} points acknowledged",
                c.acked.load(Ordering::Relaxed)
            );
        }
    }
    let acked1 = c.acked.load(Ordering::Relaxed);
    let cpu1 = Cpu::now(spid, db);
    c.measuring.store(false, Ordering::Relaxed);
    while c.acked.load(Ordering::Relaxed) < o.points && c.errors.lock().map_or(0, |e| e.len()) == 0
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    push.stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    for ((id, index), t) in ids.iter().zip(tasks) {
        let last = t.await.context("a pushing edge panicked")?;
        expected.insert(id.clone(), sync::Expected { edge: *index, last });
    }
    let total_secs = started.elapsed().as_secs_f64();
    errors.extend(c.errors.lock().map(|e| e.clone()).unwrap_or_default());
    let total_points: u64 = expected.values().map(|e| e.last).sum();
    let mut stored_points = 0i64;
    for (id, _) in &ids {
        let s: drawbridge_proto::mailbox::DataStatus = admin
            .get(&format!("/devices/{id}/data/status"))
            .await
            .context("a device's data status")?;
        stored_points += s.points;
    }
    if stored_points != total_points as i64 {
        errors.push(format!(
            "the database holds {stored_points} points, the edges had {total_points} acknowledged"
        ));
    }
    let (server_cpu, pg_cpu, tool_cpu, busy) = cpu0.since(&cpu1);
    let window_secs = (cpu1.at - cpu0.at).as_secs_f64();
    let mut rt = c.round_trips.lock().map(|v| v.clone()).unwrap_or_default();
    let ingest = Ingest {
        edges: o.edges,
        tags_per_edge: plan.tags(),
        batch: push.batch,
        warmup_secs: o.warmup.as_secs_f64(),
        window_secs,
        window_points: acked1 - acked0,
        points_per_sec: (acked1 - acked0) as f64 / window_secs.max(1e-3),
        total_points,
        total_secs,
        stored_points,
        round_trip_p50_ms: percentile(&mut rt, 0.5),
        round_trip_p99_ms: percentile(&mut rt, 0.99),
        round_trip_max_ms: percentile(&mut rt, 1.0),
        server_cpu_percent: server_cpu,
        postgres_cpu_percent: pg_cpu,
        tool_cpu_percent: tool_cpu,
        machine_busy_cores: busy,
        server_rss_mib_mean: (!rss.is_empty()).then(|| rss.iter().sum::<f64>() / rss.len() as f64),
        server_rss_mib_max: (!rss.is_empty()).then(|| rss.iter().copied().fold(0.0, f64::max)),
    };

    // ------------------------------------------------------------ sync
    let ca = std::fs::read(&target.ca_file).context("reading the CA certificate")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(120))
        .build()?;
    let token = admin
        .create_token(&CreateApiToken {
            name: drawbridge_proto::Name::try_from(format!("loadtest-sync-{tag:08x}"))
                .map_err(|e| anyhow::anyhow!("token name: {e}"))?,
            expires_in_days: 1,
            read_only: true,
            data_only: true,
        })
        .await
        .context("creating a data-only API token for the sync")?
        .token;
    let s0 = Cpu::now(spid, db);
    let synced = sync::run(
        &http,
        &target.url,
        &token,
        o.sync_limit,
        &plan,
        &expected,
        o.points,
    )
    .await;
    let s1 = Cpu::now(spid, db);
    let sync = match synced {
        Ok(s) => {
            if s.problems.total() > 0 {
                errors.push(format!(
                    "the sync's points were not as sent: {:?}",
                    s.problems
                ));
            }
            let (server, pg, tool, _) = s0.since(&s1);
            Some(SyncFigures {
                synced: s,
                server_cpu_percent: server,
                postgres_cpu_percent: pg,
                tool_cpu_percent: tool,
            })
        }
        Err(e) => {
            errors.push(format!("sync: {e:#}"));
            None
        }
    };

    // ------------------------------------------------------------ one polling edge
    let edge = match &o.edge {
        Some(eo) => match edge::run(eo, target, admin, &http).await {
            Ok(f) => Some(f),
            Err(e) => {
                errors.push(format!("polling edge: {e:#}"));
                None
            }
        },
        None => None,
    };
    Ok(DataReport {
        database: db.name.clone(),
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpu_model(),
            load_start,
            load_end: crate::dos::loadavg(),
            compilers_start,
            compilers_end: crate::dos::compilers(),
        },
        ingest,
        complete: errors.is_empty() && sync.is_some(),
        sync,
        edge,
        errors,
    })
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}{unit}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl DataReport {
    /// The figures as Markdown.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let i = &self.ingest;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "drawbridge-loadtest --data on {}; {} cores ({}); load average {} ({} compiler processes) at the start, {} ({}) at the end\n",
            self.database,
            self.machine.cores,
            self.machine.cpu,
            self.machine.load_start,
            self.machine.compilers_start,
            self.machine.load_end,
            self.machine.compilers_end
        );
        let _ = writeln!(o, "| figure | value | goal | |\n|---|---:|---|---|");
        let _ = writeln!(
            o,
            "| ingestion, sustained over {:.0} s after {:.0} s warm-up ({} edges × {} tags, {} records per message, one in flight per edge) | {:.0} points/s | ≥ 50,000 points/s | {} |",
            i.window_secs,
            i.warmup_secs,
            i.edges,
            i.tags_per_edge,
            i.batch,
            i.points_per_sec,
            verdict(i.points_per_sec >= GOAL_POINTS_PER_SEC)
        );
        if let Some(s) = &self.sync {
            let s = &s.synced;
            match s.target_secs {
                Some(t) => {
                    let _ = writeln!(
                        o,
                        "| sync of the first {} points (limit {} a page) | {t:.2} s | ≤ 10 s | {} |",
                        s.target,
                        s.points.div_ceil(s.pages.max(1)),
                        verdict(t <= GOAL_SYNC_SECS)
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "| sync of {} points | fewer were stored | ≤ 10 s | |",
                        s.target
                    );
                }
            }
        }
        if let Some(e) = &self.edge {
            let _ = writeln!(
                o,
                "| one edge polling {} tags every {} ms: CPU over {:.0} s | {:.2} % of a core | < 5 % | {} |",
                e.tags,
                e.poll_ms,
                e.secs,
                e.cpu_percent,
                verdict(e.cpu_percent < GOAL_EDGE_CPU_PERCENT)
            );
            let _ = writeln!(
                o,
                "| the same edge: RSS mean / max (peak VmHWM) | {:.1} / {:.1} MiB ({:.1}) | < 50 MiB | {} |",
                e.rss_mib_mean,
                e.rss_mib_max,
                e.peak_rss_mib,
                verdict(e.rss_mib_max < GOAL_EDGE_RSS_MIB)
            );
        }
        let _ = writeln!(o, "\ningestion:");
        let _ = writeln!(
            o,
            "  window: {} points in {:.1} s; all: {} points acknowledged in {:.1} s, {} in the database",
            i.window_points, i.window_secs, i.total_points, i.total_secs, i.stored_points
        );
        let _ = writeln!(
            o,
            "  acknowledgement round trip (1 message): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            i.round_trip_p50_ms, i.round_trip_p99_ms, i.round_trip_max_ms
        );
        let _ = writeln!(
            o,
            "  CPU (% of one core): server {}, PostgreSQL {}, this tool {:.0}; machine busy {:.2} of {} cores",
            opt(i.server_cpu_percent, " %"),
            opt(i.postgres_cpu_percent, " %"),
            i.tool_cpu_percent,
            i.machine_busy_cores,
            self.machine.cores
        );
        let _ = writeln!(
            o,
            "  server RSS: mean {}, max {}",
            opt(i.server_rss_mib_mean, " MiB"),
            opt(i.server_rss_mib_max, " MiB")
        );
        if let Some(f) = &self.sync {
            let s = &f.synced;
            let _ = writeln!(o, "sync:");
            let _ = writeln!(
                o,
                "  all {} points in {:.2} s ({:.0} points/s), {} pages, {:.0} MB of JSON; waiting for pages {:.2} s, parsing and checking {:.2} s",
                s.points,
                s.secs,
                s.points_per_sec,
                s.pages,
                s.megabytes,
                s.fetch_secs,
                s.parse_secs
            );
            let _ = writeln!(
                o,
                "  one page (request → body read): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                s.page_p50_ms, s.page_p99_ms, s.page_max_ms
            );
            let _ = writeln!(
                o,
                "  CPU (% of one core): server {}, PostgreSQL {}, this tool {:.0}",
                opt(f.server_cpu_percent, " %"),
                opt(f.postgres_cpu_percent, " %"),
                f.tool_cpu_percent
            );
            let _ = writeln!(
                o,
                "  checked: {} unknown, {} twice, {} changed, {} missing, {} out of order",
                s.problems.unknown,
                s.problems.duplicates,
                s.problems.changed,
                s.problems.missing,
                s.problems.out_of_order
            );
        }
        if let Some(e) = &self.edge {
            let _ = writeln!(o, "polling edge:");
            let _ = writeln!(o, "  tags: {}", e.logging);
            let _ = writeln!(
                o,
                "  PLC reads answered {:.1}/s, points stored {:.1}/s; the edge: {} tags polled, qualities {}, {} records waiting at the end, {} threads",
                e.reads_per_sec,
                e.points_per_sec,
                e.polled,
                e.qualities,
                e.pending_at_end,
                e.threads
            );
        }
        for e in &self.errors {
            let _ = writeln!(o, "ERROR: {e}");
        }
        o
    }
}
