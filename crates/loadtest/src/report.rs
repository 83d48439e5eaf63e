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

/// CPU used by a process between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    pub phase: &'static str,
    pub wall_secs: f64,
    pub server_cpu_secs: Option<f64>,
    /// Of one core (100 % = one core busy all the time).
    pub server_cpu_percent: Option<f64>,
    pub tool_cpu_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub edges: usize,
    pub database: String,
    pub server_url: String,
    pub cores: usize,
    pub nofile_limit: u64,
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
    pub server_samples: Vec<Sample>,
    pub tool_samples: Vec<Sample>,
    /// Server RSS growth per connected edge (connected − before connecting) / online, KiB.
    pub server_rss_per_edge_kib: Option<f64>,
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

impl Report {
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "drawbridge-loadtest: {} edges, {}",
            self.edges, self.database
        );
        let _ = writeln!(
            o,
            "  server {}   cores {}   fd limit {}",
            self.server_url, self.cores, self.nofile_limit
        );
        let _ = writeln!(o);
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
        let _ = writeln!(o);
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
        if let Some(k) = self.server_rss_per_edge_kib {
            let _ = writeln!(o, "server RSS per connected edge: {k:.1} KiB");
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<22} {:>8} {:>12} {:>12} {:>12}",
            "phase", "wall s", "server CPU s", "server CPU %", "tool CPU s"
        );
        for p in &self.phases {
            let _ = writeln!(
                o,
                "{:<22} {:>8.1} {:>12} {:>12} {:>12.2}",
                p.phase,
                p.wall_secs,
                opt(p.server_cpu_secs, ""),
                opt(p.server_cpu_percent, " %"),
                p.tool_cpu_secs
            );
        }
        let tool_peak = self.tool_samples.iter().map(|s| s.peak_rss_kib).max();
        if let Some(k) = tool_peak {
            let _ = writeln!(o, "tool (the simulated edges) peak RSS: {}", mib(k));
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
}

/// CPU between consecutive samples of the same phase names.
pub fn phase_cpu(
    phase: &'static str,
    server: Option<(&Sample, &Sample)>,
    tool: (&Sample, &Sample),
) -> PhaseCpu {
    let wall = match (tool.0.at, tool.1.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let server_cpu = server.map(|(a, b)| b.cpu_secs - a.cpu_secs);
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    PhaseCpu {
        phase,
        wall_secs: round2(wall),
        server_cpu_secs: server_cpu.map(round2),
        server_cpu_percent: server_cpu
            .filter(|_| wall > 0.0)
            .map(|c| (c / wall * 1000.0).round() / 10.0),
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
