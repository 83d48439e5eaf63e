//! Many peers on one edge: [`CLIENTS`] clients in one session, and the office host
//! in [`SESSIONS`] sessions at once. Each client is a `drawbridge connect -L` of its
//! own with one iperf3 stream to an `iperf3 -s` of its own on the machine LAN, all
//! streams at the same time; the figure is their sum (receivers' figures). Also
//! the edge's memory before the clients and with them connected and idle: what
//! its allocator has handed out (from `status --json`), and its resident set,
//! which also counts memory freed by earlier rows and kept for reuse.

use crate::drawbridge::{connect, end_session, start_session};
use crate::exec::until;
use crate::load::cpu_ticks;
use crate::measure::{iperf, iperf_warm_up};
use anyhow::{Context, Result, bail};
use drawbridge_lab::topology::{Lab, PLC_IP};
use drawbridge_lab::{Client, Proc};
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

/// Clients in the one-session figure.
pub(crate) const CLIENTS: usize = 50;
/// Sessions (one client each) in the many-sessions figure.
pub(crate) const SESSIONS: usize = 20;
/// The LAN's iperf3 servers listen on `IPERF_BASE + i`, client `i` forwards
/// `127.0.0.1:LOCAL_BASE + i` to it.
const IPERF_BASE: u16 = 5301;
const LOCAL_BASE: u16 = 16001;

#[derive(Debug, Default)]
pub(crate) struct Crowd {
    pub(crate) what: String,
    pub(crate) peers: usize,
    /// Sum of the streams' receiver figures.
    pub(crate) mbps: Option<f64>,
    /// The slowest and the fastest stream.
    pub(crate) spread: Option<(f64, f64)>,
    /// The growth per connected idle peer of what the edge's allocator has
    /// handed out.
    pub(crate) heap_per_peer_kib: Option<f64>,
    /// The edge's resident memory growth per connected idle peer.
    pub(crate) rss_per_peer_kib: Option<f64>,
    /// The edge's CPU during the streams, in cores.
    pub(crate) edge_cores: Option<f64>,
    /// The clients' (`drawbridge connect`) CPU during the streams, in cores.
    pub(crate) clients_cores: Option<f64>,
    /// The whole machine's busy CPU during the streams, in cores.
    pub(crate) machine_cores: Option<f64>,
    pub(crate) error: Option<String>,
}

/// The edge's CPU time so far (user + system, in clock ticks), from /proc.
fn edge_cpu_ticks(lab: &Lab) -> Option<u64> {
    cpu_ticks(lab.edge.proc.as_ref()?.0.id())
}

/// The clients' CPU time so far (clock ticks).
fn clients_cpu_ticks(clients: &[Proc]) -> Option<u64> {
    clients.iter().map(|p| cpu_ticks(p.0.id())).sum()
}

/// Peers of the edge's sessions that have completed a handshake.
fn edge_peers_up(lab: &Lab) -> usize {
    let status = lab.edge.status();
    status["sessions"].as_array().map_or(0, |s| {
        s.iter()
            .flat_map(|s| s["peers"].as_array().into_iter().flatten())
            .filter(|p| p["handshake_secs_ago"].is_u64())
            .count()
    })
}

/// What the edge's allocator has handed out (bytes), from its status.
fn edge_heap_bytes(lab: &Lab) -> Option<u64> {
    lab.edge.status()["heap_bytes"].as_u64()
}

/// The edge's resident set (KiB), from /proc.
fn edge_rss_kib(lab: &Lab) -> Option<u64> {
    let pid = lab.edge.proc.as_ref()?.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn iperf_servers(lab: &Lab, n: usize) -> Result<Vec<Proc>> {
    let servers: Vec<Proc> = (0..n)
        .map(|i| {
            Proc::spawn(
                lab.lan
                    .command("iperf3")
                    .args(["-s", "-B", PLC_IP, "--idle-timeout", "120", "-p"])
                    .arg((IPERF_BASE + i as u16).to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    let ports: Vec<u16> = (0..n).map(|i| IPERF_BASE + i as u16).collect();
    let all_listen = lab.lan_rt.run(async move {
        for _ in 0..100 {
            let mut ok = true;
            for p in &ports {
                let addr = std::net::SocketAddr::new(PLC_IP.parse().expect("ip"), *p);
                ok &= tokio::net::TcpStream::connect(addr).await.is_ok();
            }
            if ok {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    if !all_listen {
        bail!("the {n} iperf3 servers did not all listen within 10 s");
    }
    Ok(servers)
}

/// Runs `f(i)` for `0..n` on threads of their own, all at once.
fn all_at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn({
                    let f = &f;
                    move || f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a measuring thread panicked"))
            .collect()
    })
}

/// `peers` clients spread over `sessions` sessions (client `i` in session
/// `i % sessions`), each with one stream, `secs` seconds, all at once.
pub(crate) fn measure(
    lab: &Lab,
    client: &Client,
    sessions: usize,
    peers: usize,
    secs: u32,
) -> Crowd {
    let what = if sessions == 1 {
        format!("one edge, {peers} clients in one session (`-L` each), one stream per client")
    } else {
        format!(
            "one edge, the office host in {sessions} sessions (a `-L` client each), one stream per session"
        )
    };
    let mut c = Crowd {
        what,
        peers,
        ..Crowd::default()
    };
    if let Err(e) = run(lab, client, sessions, secs, &mut c) {
        c.error = Some(format!("{e:#}"));
    }
    eprintln!("   {c:?}");
    c
}

fn run(lab: &Lab, client: &Client, sessions: usize, secs: u32, c: &mut Crowd) -> Result<()> {
    let n = c.peers;
    let _servers = iperf_servers(lab, n)?;
    // The rows before have let go of their sessions (their buffers freed),
    // and the status the edge rewrites every second says so.
    let _ = until(
        "the edge without sessions",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            lab.edge.status()["sessions"]
                .as_array()
                .is_some_and(|s| s.is_empty())
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    let before = (edge_heap_bytes(lab), edge_rss_kib(lab));
    let sids: Vec<String> = (0..sessions)
        .map(|s| {
            // Each session releases the ports of its own clients.
            let ports: Vec<String> = (0..n)
                .filter(|i| i % sessions == s)
                .map(|i| (IPERF_BASE + i as u16).to_string())
                .collect();
            let first = ports.first().cloned().unwrap_or_default();
            let last = ports.last().cloned().unwrap_or_default();
            let ports = if sessions == 1 {
                format!("{first}-{last}")
            } else {
                first
            };
            lab.session_with(
                &format!("crowd-{sessions}-{s}"),
                json!([{"address": PLC_IP, "protocol": "tcp", "ports": ports}]),
            )
        })
        .collect();
    let result = (|| {
        for sid in &sids {
            start_session(lab, sid)?;
        }
        let mut clients: Vec<Proc> = (0..n)
            .map(|i| {
                let fwd = format!(
                    "127.0.0.1:{}:{PLC_IP}:{}",
                    LOCAL_BASE + i as u16,
                    IPERF_BASE + i as u16
                );
                connect(
                    lab,
                    client,
                    &sids[i % sessions],
                    &["-L", &fwd],
                    &format!("crowd-{sessions}-{i}.log"),
                )
            })
            .collect();
        // Connected and idle (handshakes done, no TCP flow yet): the edge's
        // memory per peer.
        let all_up = until(
            "every client's handshake with the edge",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || edge_peers_up(lab) >= n,
        );
        if let Err(e) = &all_up {
            eprintln!("   {e:#}: no idle memory figure");
        }
        std::thread::sleep(Duration::from_secs(2));
        if all_up.is_ok() {
            let per_peer =
                |b: Option<u64>, a: Option<u64>| Some((a? as f64 - b? as f64) / n as f64);
            c.heap_per_peer_kib = per_peer(before.0, edge_heap_bytes(lab)).map(|b| b / 1024.0);
            c.rss_per_peer_kib = per_peer(before.1, edge_rss_kib(lab));
        }
        let warm = all_at_once(n, |i| {
            iperf_warm_up(&lab.office.host, "127.0.0.1", LOCAL_BASE + i as u16)
        });
        if let Some((i, e)) = warm
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        {
            bail!("client {i}: {e:#}");
        }
        let ticks0 = (
            edge_cpu_ticks(lab),
            clients_cpu_ticks(&clients),
            crate::load::machine_busy_secs(),
        );
        let t0 = std::time::Instant::now();
        let runs = all_at_once(n, |i| {
            iperf(&lab.office.host, "127.0.0.1", LOCAL_BASE + i as u16, secs)
        });
        let mut figures = Vec::with_capacity(n);
        for (i, r) in runs.into_iter().enumerate() {
            let (mbps, _) = r.with_context(|| format!("client {i}'s stream"))?;
            figures.push(mbps);
        }
        // Clock ticks are 1/100 s on Linux.
        let secs = t0.elapsed().as_secs_f64();
        let cores =
            |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / 100.0 / secs);
        c.edge_cores = cores(ticks0.0, edge_cpu_ticks(lab));
        c.clients_cores = cores(ticks0.1, clients_cpu_ticks(&clients));
        c.machine_cores = crate::load::machine_busy_secs()
            .zip(ticks0.2)
            .map(|(b, a)| (b - a) / secs);
        c.mbps = Some(figures.iter().sum());
        let min = figures.iter().copied().fold(f64::INFINITY, f64::min);
        let max = figures.iter().copied().fold(0.0, f64::max);
        c.spread = Some((min, max));
        for p in &mut clients {
            p.interrupt();
        }
        Ok(())
    })();
    for sid in &sids {
        end_session(lab, sid);
    }
    result
}

/// The many-peers table; `single` is the single-stream `-L` figure of the same run.
pub(crate) fn markdown(crowds: &[Crowd], single: Option<f64>) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "| many peers (iperf3, all streams at once) | aggregate TCP throughput | × the single `-L` stream | slowest / fastest stream | edge CPU during the streams | clients' CPU | machine busy | edge memory per idle peer |\n|---|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for c in crowds {
        let (agg, ratio) = match (c.mbps, &c.error) {
            (Some(m), _) => (
                format!("{m:.0} Mbit/s"),
                single
                    .filter(|s| *s > 0.0)
                    .map_or_else(|| "n/a".into(), |s| format!("{:.2}", m / s)),
            ),
            (None, Some(e)) => (format!("failed: {}", e.replace('|', "/")), String::new()),
            (None, None) => ("not measured".into(), String::new()),
        };
        let spread = c
            .spread
            .map_or_else(String::new, |(lo, hi)| format!("{lo:.0} / {hi:.0} Mbit/s"));
        let rss = match (c.heap_per_peer_kib, c.rss_per_peer_kib) {
            (Some(h), Some(r)) => format!("{h:.1} KiB (resident set {r:+.0} KiB)"),
            (Some(h), None) => format!("{h:.1} KiB"),
            (None, Some(r)) => format!("n/a (resident set {r:+.0} KiB)"),
            (None, None) => "n/a".into(),
        };
        let cores = |x: Option<f64>| x.map_or_else(String::new, |x| format!("{x:.2} cores"));
        let _ = writeln!(
            s,
            "| {} | {agg} | {ratio} | {spread} | {} | {} | {} | {rss} |",
            c.what,
            cores(c.edge_cores),
            cores(c.clients_cores),
            cores(c.machine_cores),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crowd_table_compares_the_sum_with_the_single_stream() {
        let ok = Crowd {
            what: "50 clients".into(),
            peers: 50,
            mbps: Some(1500.0),
            spread: Some((20.0, 45.0)),
            heap_per_peer_kib: Some(38.25),
            rss_per_peer_kib: Some(61.4),
            edge_cores: Some(0.81),
            clients_cores: Some(0.62),
            machine_cores: Some(1.99),
            error: None,
        };
        let failed = Crowd {
            what: "20 sessions".into(),
            error: Some("client 3: iperf3 | warm-up".into()),
            ..Crowd::default()
        };
        let md = markdown(&[ok, failed], Some(2000.0));
        assert!(
            md.contains(
                "| 50 clients | 1500 Mbit/s | 0.75 | 20 / 45 Mbit/s | 0.81 cores | 0.62 cores | 1.99 cores | 38.2 KiB (resident set +61 KiB) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 20 sessions | failed: client 3: iperf3 / warm-up |  |  |  |  |  | n/a |"
            ),
            "{md}"
        );
    }
}
