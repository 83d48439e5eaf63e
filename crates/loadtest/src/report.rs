//! The figures of one run, as a text table or JSON.

use crate::procfs::Sample;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// p50 / p99 / max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile of a sorted slice (`q` in 0..=1).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Spread {
    pub fn of(mut v: Vec<Duration>) -> Spread {
        v.sort();
        let sum: Duration = v.iter().sum();
        Spread {
            count: v.len(),
            p50_ms: ms(percentile(&v, 0.50)),
            p99_ms: ms(percentile(&v, 0.99)),
            max_ms: ms(v.last().copied().unwrap_or_default()),
            mean_ms: if v.is_empty() {
                0.0
            } else {
                ms(sum / v.len() as u32)
            },
        }
    }
}

/// CPU used between two samples, per process.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    pub phase: &'static str,
    pub wall_secs: f64,
    /// The server, or in cluster mode the replicas together (those alive at
    /// both ends of the phase).
    pub server_cpu_secs: Option<f64>,
    /// Of one core (100 % = one core busy all the time).
    pub server_cpu_percent: Option<f64>,
    /// Cluster mode: each replica (None: not running at both ends).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_cpu_percent: Vec<Option<f64>>,
    pub haproxy_cpu_percent: Option<f64>,
    /// Every `postgres` process on the machine (`procfs::postgres_cpu_secs`).
    pub postgres_cpu_percent: Option<f64>,
    pub tool_cpu_secs: f64,
}

/// One process the tool started and watched (a replica, HAProxy).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
    /// A replica's `edges_connected` gauge with every edge connected.
    pub edges_connected: Option<u64>,
    /// (RSS with every edge connected − RSS before any connected) / its edges
    /// (a replica: its `edges_connected`; HAProxy: every online edge), KiB.
    pub rss_per_edge_kib: Option<f64>,
    /// A replica's `edges_connected` once the killed replica's edges are back.
    pub edges_connected_after_kill: Option<u64>,
}

/// Cluster mode: the replicas and HAProxy.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterFigures {
    pub replicas: Vec<ProcessFigures>,
    pub haproxy: ProcessFigures,
    /// Times HAProxy marked a replica down (failed health checks) until after
    /// the first pushes: 0 in a healthy run.
    pub haproxy_down_events: u64,
}

/// `--kill-replica`: one replica SIGKILLed after the pushes.
#[derive(Debug, Clone, Serialize)]
pub struct KillFigures {
    pub replica: String,
    /// Its `edges_connected` gauge just before the kill.
    pub edges_on_it: Option<u64>,
    /// Channels the simulated edges saw end during the phase.
    pub dropped: u64,
    /// From the SIGKILL until every edge that was online is online again.
    pub all_back_online_secs: Option<f64>,
    /// Connection attempts that failed during the phase.
    pub reconnect_failures: u64,
    /// Times HAProxy marked a replica down during the phase (the killed one: 1).
    pub haproxy_down_events: u64,
    /// A second round of session pushes, after the edges are back.
    pub push: Spread,
    pub push_timeouts: usize,
    pub start_call: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edges: usize,
    pub database: String,
    pub server_url: String,
    pub cores: usize,
    pub nofile_limit: u64,
    /// Control-plane replicas (1: a single server, no load balancer).
    pub replicas: usize,
    /// Local addresses the edges connect from (0: the system's choice).
    pub source_ips: usize,
    /// Devices created and enrolled through the API.
    pub provision_secs: f64,
    pub connect_concurrency: usize,
    /// Edges online at the end of the connect phase.
    pub online: usize,
    /// From the first connect to the last edge online (None: not all came online).
    pub all_online_secs: Option<f64>,
    /// Until the server listed every device online with its switch on.
    pub all_switched_on_secs: Option<f64>,
    /// One edge: TCP + TLS + upgrade + challenge/auth + status until its first session list.
    pub edge_handshake: Spread,
    pub connect_failures: u64,
    pub drops: u64,
    pub idle_secs: f64,
    /// Edge → server messages per second in the idle window (statuses).
    pub idle_messages_per_sec: f64,
    /// From sending `POST /sessions/{id}/start` to the edge receiving a session list with it active.
    pub push: Spread,
    pub push_timeouts: usize,
    /// The start call alone (request sent → response read).
    pub start_call: Spread,
    pub phases: Vec<PhaseCpu>,
    /// The single server (empty in cluster mode: see `cluster`).
    pub server_samples: Vec<Sample>,
    pub tool_samples: Vec<Sample>,
    /// Server RSS growth per connected edge (connected − before connecting) /
    /// online, KiB; in cluster mode the replicas together.
    pub server_rss_per_edge_kib: Option<f64>,
    /// The server's (replicas' together) CPU in the idle window, % of one
    /// core per 10,000 connected edges.
    pub idle_server_cpu_percent_per_10k_edges: Option<f64>,
    /// This tool's RSS growth per connected simulated edge, KiB.
    pub tool_rss_per_edge_kib: Option<f64>,
    pub cluster: Option<ClusterFigures>,
    pub kill: Option<KillFigures>,
    pub errors: Vec<(String, u64)>,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.2}{unit}"))
        .unwrap_or_else(|| "n/a".into())
}

fn spread(s: &Spread) -> String {
    if s.count == 0 {
        return "n/a".into();
    }
    format!(
        "p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (n={})",
        s.p50_ms, s.p99_ms, s.max_ms, s.count
    )
}

fn opt_pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} %"))
        .unwrap_or_else(|| "n/a".into())
}

impl Report {
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "drawbridge-loadtest: {} edges, {}{}",
            self.edges,
            self.database,
            if self.replicas > 1 {
                format!(", {} replicas behind HAProxy", self.replicas)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "  server {}   cores {}   fd limit {}   edges from {}",
            self.server_url,
            self.cores,
            self.nofile_limit,
            match self.source_ips {
                0 => "127.0.0.1".to_string(),
                k => format!("{k} loopback addresses"),
            }
        );
        let _ = writeln!(o);
        self.connect_lines(&mut o);
        let _ = writeln!(o);
        if self.cluster.is_none() {
            self.server_lines(&mut o);
        }
        if let Some(c) = &self.cluster {
            cluster_lines(&mut o, c);
        }
        if let Some(k) = self.server_rss_per_edge_kib {
            let _ = writeln!(o, "server RSS per connected edge: {k:.1} KiB");
        }
        if let Some(c) = self.idle_server_cpu_percent_per_10k_edges {
            let _ = writeln!(o, "server CPU idle, per 10,000 edges: {c:.1} % of a core");
        }
        let _ = writeln!(o);
        self.phase_lines(&mut o);
        let tool_peak = self.tool_samples.iter().map(|s| s.peak_rss_kib).max();
        if let Some(k) = tool_peak {
            let _ = writeln!(o, "tool (the simulated edges) peak RSS: {}", mib(k));
        }
        if let Some(k) = self.tool_rss_per_edge_kib {
            let _ = writeln!(o, "tool RSS per connected simulated edge: {k:.1} KiB");
        }
        if let Some(k) = &self.kill {
            let _ = writeln!(o);
            kill_lines(&mut o, k);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "errors seen by the edges:");
            for (e, n) in &self.errors {
                let _ = writeln!(o, "  {n:>7}  {e}");
            }
        }
        o
    }

    fn connect_lines(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "provision (create + enrol via API)  {:.1} s",
            self.provision_secs
        );
        let _ = writeln!(
            o,
            "connect ({} at a time)             {}/{} online, all online after {}",
            self.connect_concurrency,
            self.online,
            self.edges,
            opt(self.all_online_secs, " s")
        );
        let _ = writeln!(
            o,
            "  server sees all switched on after {}",
            opt(self.all_switched_on_secs, " s")
        );
        let _ = writeln!(
            o,
            "  edge handshake                   {}",
            spread(&self.edge_handshake)
        );
        let _ = writeln!(
            o,
            "  connect failures {}   channel drops {}",
            self.connect_failures, self.drops
        );
        let _ = writeln!(
            o,
            "idle window                        {:.1} s, {:.0} edge messages/s",
            self.idle_secs, self.idle_messages_per_sec
        );
        let _ = writeln!(
            o,
            "session push (start → edge)        {}",
            spread(&self.push)
        );
        if self.push_timeouts > 0 {
            let _ = writeln!(o, "  not received within 10 s: {}", self.push_timeouts);
        }
        let _ = writeln!(
            o,
            "  start call alone                 {}",
            spread(&self.start_call)
        );
    }

    fn server_lines(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "{:<22} {:>12} {:>12} {:>10} {:>8} {:>8}",
            "server at", "RSS", "peak RSS", "CPU s", "threads", "fds"
        );
        for s in &self.server_samples {
            let _ = writeln!(
                o,
                "{:<22} {:>12} {:>12} {:>10.2} {:>8} {:>8}",
                s.phase,
                mib(s.rss_kib),
                mib(s.peak_rss_kib),
                s.cpu_secs,
                s.threads,
                s.open_fds
            );
        }
        if self.server_samples.is_empty() {
            let _ = writeln!(o, "  (no server PID: pass --server-pid for RSS and CPU)");
        }
    }

    fn phase_lines(&self, o: &mut String) {
        let cluster = self.cluster.is_some();
        let _ = write!(
            o,
            "{:<26} {:>8} {:>12} {:>12}",
            "phase", "wall s", "server CPU s", "server CPU %"
        );
        if cluster {
            let _ = write!(
                o,
                " {:>20} {:>9} {:>10}",
                "per replica %", "HAProxy", "postgres"
            );
        }
        let _ = writeln!(o, " {:>10}", "tool CPU s");
        for p in &self.phases {
            let _ = write!(
                o,
                "{:<26} {:>8.1} {:>12} {:>12}",
                p.phase,
                p.wall_secs,
                opt(p.server_cpu_secs, ""),
                opt(p.server_cpu_percent, " %"),
            );
            if cluster {
                let each: Vec<String> = p
                    .replica_cpu_percent
                    .iter()
                    .map(|c| c.map_or("-".into(), |c| format!("{c:.0}")))
                    .collect();
                let _ = write!(
                    o,
                    " {:>20} {:>9} {:>10}",
                    each.join("/"),
                    opt_pct(p.haproxy_cpu_percent),
                    opt_pct(p.postgres_cpu_percent)
                );
            }
            let _ = writeln!(o, " {:>10.2}", p.tool_cpu_secs);
        }
        if cluster {
            let _ = writeln!(
                o,
                "  (postgres: every PostgreSQL process on the machine, % of one core)"
            );
        }
    }
}

/// RSS of each replica and of HAProxy per sample, their edges and RSS per edge.
fn cluster_lines(o: &mut String, c: &ClusterFigures) {
    let procs: Vec<&ProcessFigures> = c.replicas.iter().chain([&c.haproxy]).collect();
    let _ = write!(o, "{:<26}", "RSS at");
    for p in &procs {
        let _ = write!(o, " {:>12}", p.name);
    }
    let _ = writeln!(o);
    for s in &c.haproxy.samples {
        let _ = write!(o, "{:<26}", s.phase);
        for p in &procs {
            let v = p
                .samples
                .iter()
                .find(|x| x.phase == s.phase)
                .map_or("-".into(), |x| mib(x.rss_kib));
            let _ = write!(o, " {v:>12}");
        }
        let _ = writeln!(o);
    }
    let _ = write!(o, "{:<26}", "edges connected");
    for p in &procs {
        let v = p.edges_connected.map_or("-".into(), |v| v.to_string());
        let _ = write!(o, " {v:>12}");
    }
    let _ = writeln!(o);
    let _ = write!(o, "{:<26}", "RSS per connected edge");
    for p in &procs {
        let v = p
            .rss_per_edge_kib
            .map_or("n/a".into(), |v| format!("{v:.1} KiB"));
        let _ = write!(o, " {v:>12}");
    }
    let _ = writeln!(o);
    if c.replicas
        .iter()
        .any(|r| r.edges_connected_after_kill.is_some())
    {
        let _ = write!(o, "{:<26}", "edges after the kill");
        for p in &c.replicas {
            let v = p
                .edges_connected_after_kill
                .map_or("-".into(), |v| v.to_string());
            let _ = write!(o, " {v:>12}");
        }
        let _ = writeln!(o);
    }
}

fn kill_lines(o: &mut String, k: &KillFigures) {
    let _ = writeln!(
        o,
        "{} killed (SIGKILL) with {} edges on it: {} channels dropped, all back online after {}",
        k.replica,
        k.edges_on_it.map_or("?".into(), |v| v.to_string()),
        k.dropped,
        opt(k.all_back_online_secs, " s")
    );
    let _ = writeln!(
        o,
        "  failed reconnection attempts     {}   replicas marked down by HAProxy {}",
        k.reconnect_failures, k.haproxy_down_events
    );
    let _ = writeln!(o, "  session push after the kill      {}", spread(&k.push));
    if k.push_timeouts > 0 {
        let _ = writeln!(o, "  not received within 10 s: {}", k.push_timeouts);
    }
    let _ = writeln!(
        o,
        "  start call alone                 {}",
        spread(&k.start_call)
    );
}

/// A process's samples at the start and the end of a phase.
pub type Pair<'a> = Option<(&'a Sample, &'a Sample)>;

/// CPU of each process over one phase: the tool's samples give the wall time;
/// `servers` is the server or each replica, `postgres` the machine's
/// PostgreSQL CPU seconds at both ends.
pub fn phase_cpu(
    phase: &'static str,
    tool: (&Sample, &Sample),
    servers: &[Pair],
    haproxy: Pair,
    postgres: Option<(f64, f64)>,
) -> PhaseCpu {
    let wall = match (tool.0.at, tool.1.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let percent = |cpu: f64| (wall > 0.0).then(|| (cpu / wall * 1000.0).round() / 10.0);
    let used = |p: &Pair| p.map(|(a, b)| b.cpu_secs - a.cpu_secs);
    let each: Vec<Option<f64>> = servers.iter().map(used).collect();
    let server_cpu = each
        .iter()
        .any(Option::is_some)
        .then(|| each.iter().flatten().sum::<f64>());
    PhaseCpu {
        phase,
        wall_secs: round2(wall),
        server_cpu_secs: server_cpu.map(round2),
        server_cpu_percent: server_cpu.and_then(percent),
        replica_cpu_percent: if servers.len() > 1 {
            each.iter().map(|c| c.and_then(percent)).collect()
        } else {
            Vec::new()
        },
        haproxy_cpu_percent: used(&haproxy).and_then(percent),
        postgres_cpu_percent: postgres.and_then(|(a, b)| percent(b - a)),
        tool_cpu_secs: round2(tool.1.cpu_secs - tool.0.cpu_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Spread::of(v);
        assert_eq!(
            (s.p50_ms, s.p99_ms, s.max_ms, s.count),
            (50.0, 99.0, 100.0, 100)
        );
        assert_eq!(s.mean_ms, 50.5);
        let one = Spread::of(vec![Duration::from_micros(1500)]);
        assert_eq!((one.p50_ms, one.p99_ms), (1.5, 1.5));
        assert_eq!(Spread::of(vec![]), Spread::default());
    }
}
