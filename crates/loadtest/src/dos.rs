//! `--dos`: what a login flood and a crowd of silent connections do to the
//! rest of the server. Figures, not assertions (docs/loadtest.md):
//!
//! - an edge channel's round trip (WebSocket ping → pong through the server's
//!   channel handler), an API round trip (`GET /me`) and the throughput of a
//!   tunnel relayed by the server (a real edge and client, [`crate::dataplane`]),
//!   idle and while `--dos-logins-per-sec` wrong logins a second are refused;
//!   idle and loaded phases alternate over `--dos-rounds` rounds (which comes
//!   first alternates too), so other load on the machine hits both alike, and
//!   the medians over the rounds are compared;
//! - with `--dos-silent` TCP connections open and silent (spread over several
//!   loopback addresses, so the per-address cap does not simply refuse them),
//!   whether a new login still succeeds, and how long it takes.

use crate::dataplane::Relayed;
use crate::procfs;
use crate::server::Target;
use anyhow::Context;
use drawbridge_edge::agent;
use drawbridge_edge::enroll::{self, Secret};
use drawbridge_proto::api::{CreatedDevice, LoginRequest};
use futures_util::{SinkExt, StreamExt};
use ring::signature::Ed25519KeyPair;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Round trips measured per phase.
const SAMPLES: usize = 50;
/// Seconds of relayed throughput measured per phase.
const PUMP_SECS: f64 = 3.0;

pub struct Options {
    pub logins_per_sec: u32,
    pub silent: usize,
    /// Idle and loaded phases, alternating.
    pub rounds: usize,
}

/// Median and 95th percentile, in milliseconds.
fn spread(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.95))
}

async fn ping_rtts(ws: &mut agent::Channel) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES as u64 {
        let t = Instant::now();
        ws.send(Message::Ping(i.to_be_bytes().to_vec().into()))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == i.to_be_bytes() => break,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => anyhow::bail!("the edge channel closed"),
                Err(_) => anyhow::bail!("no pong within 30 s"),
            }
        }
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

async fn api_rtts(admin: &drawbridge_api_client::Client) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        admin.me().await?;
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

/// Sends `rate` wrong logins a second until `stop`, on a thread and runtime of
/// its own (so the tool's flood does not delay its own measurements); counts
/// what came back.
/// What the flood's logins got back.
#[derive(Default)]
struct Counts {
    /// 401: checked and refused.
    unauthorized: AtomicU64,
    /// 429: refused as busy or over the per-address limit, nothing checked.
    busy: AtomicU64,
    /// Anything else (a success would be a bug; errors of the tool's own).
    other: AtomicU64,
}

fn flood(
    anon: drawbridge_api_client::Client,
    account: String,
    rate: u32,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        let (anon, account) = (anon.clone(), account.clone());
                        running.push(async move {
                            anon.login(&LoginRequest {
                                account,
                                username: format!("nobody-{n}"),
                                password: "Wrong-Password-1".into(),
                                totp: None,
                            })
                            .await
                        });
                    }
                    Some(r) = running.next(), if !running.is_empty() => {
                        let c = match r {
                            Err(drawbridge_api_client::Error::Api { status: 401, .. }) => &counts.unauthorized,
                            Err(drawbridge_api_client::Error::Api { status: 429, .. }) => &counts.busy,
                            _ => &counts.other,
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    })
}

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
pub(crate) fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle + iowait
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn cpu_secs(pids: &[String]) -> f64 {
    pids.iter()
        .filter_map(|p| procfs::sample(p, "dos").ok())
        .map(|s| s.cpu_secs)
        .sum()
}

/// CPU used over one phase: the server, everything of this test (server,
/// tool, edge, client), and the machine as a whole; in cores.
struct Meter {
    server: Option<String>,
    ours: Vec<String>,
    t: Instant,
    server0: f64,
    ours0: f64,
    machine0: (u64, u64),
}

#[derive(Clone, Copy, Default)]
struct Cores {
    server: f64,
    ours: f64,
    machine: f64,
}

impl Meter {
    fn start(server: Option<String>, ours: Vec<String>) -> Meter {
        Meter {
            server0: server
                .as_ref()
                .map_or(0.0, |p| cpu_secs(std::slice::from_ref(p))),
            ours0: cpu_secs(&ours),
            machine0: machine_ticks(),
            t: Instant::now(),
            server,
            ours,
        }
    }
    fn stop(self) -> Cores {
        let dt = self.t.elapsed().as_secs_f64().max(1e-3);
        let server = self
            .server
            .as_ref()
            .map_or(0.0, |p| cpu_secs(std::slice::from_ref(p)));
        let ours = cpu_secs(&self.ours);
        let (b1, t1) = machine_ticks();
        let (b0, t0) = self.machine0;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Cores {
            server: (server - self.server0) / dt,
            ours: (ours - self.ours0) / dt,
            machine: if t1 > t0 {
                (b1 - b0) as f64 / (t1 - t0) as f64 * cores
            } else {
                f64::NAN
            },
        }
    }
}

/// One phase's figures.
#[derive(Default)]
struct Phase {
    ping: Vec<Duration>,
    api: Vec<Duration>,
    mbit: f64,
    cpu: Cores,
    /// Refused logins a second while it was measured (loaded phases).
    refused_per_sec: f64,
}

async fn phase(
    ws: &mut agent::Channel,
    admin: &drawbridge_api_client::Client,
    relayed: &Relayed,
    meter: Meter,
) -> anyhow::Result<Phase> {
    let ping = ping_rtts(ws).await?;
    let api = api_rtts(admin).await?;
    let mbit = relayed.throughput(PUMP_SECS).await?;
    Ok(Phase {
        ping,
        api,
        mbit,
        cpu: meter.stop(),
        refused_per_sec: 0.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Compiler processes running now (other builds sharing the machine).
pub(crate) fn compilers() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| {
                let c = c.trim();
                c == "rustc"
                    || c == "cargo"
                    || c.starts_with("cc")
                    || c == "ld"
                    || c == "clippy-driver"
            })
        })
        .count()
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub async fn run(
    opts: &Options,
    target: &Target,
    anon: &drawbridge_api_client::Client,
    admin: &drawbridge_api_client::Client,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let load_start = (loadavg(), compilers());
    // One enrolled device with its edge channel open.
    let name = format!("lt-dos-{:08x}", rand::random::<u32>());
    let created: CreatedDevice = admin
        .post("/devices", &crate::target_device(&name))
        .await
        .context("creating the device")?;
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("generating an identity key failed"))?;
    let key =
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("identity key"))?;
    let r = enroll::request(anon, &key, Secret::Activation(created.activation.key))
        .await
        .context("enrolling")?;
    let mut ws = agent::connect(admin.server(), admin.ws_tls(), None, None).await?;
    agent::authenticate(&mut ws, &r.device_id, &key).await?;
    // A real edge and client with a tunnel through the server's relay.
    let relayed = Relayed::start(target, admin)
        .await
        .context("setting up the relayed tunnel")?;
    let path_before = relayed.path().await;

    let server_pid = target.pid.map(|p| p.to_string());
    let mut ours: Vec<String> = vec!["self".into()];
    ours.extend(server_pid.clone());
    ours.extend(relayed.pids().into_iter().map(|p| p.to_string()));

    let counts = Arc::new(Counts::default());
    let mut idle = Vec::new();
    let mut loaded = Vec::new();
    let t_all = Instant::now();
    for round in 0..opts.rounds.max(1) {
        for busy in [round % 2 == 1, round % 2 == 0] {
            if !busy {
                let m = Meter::start(server_pid.clone(), ours.clone());
                idle.push(phase(&mut ws, admin, &relayed, m).await?);
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let f = flood(
                anon.clone(),
                target.account.clone(),
                opts.logins_per_sec,
                counts.clone(),
                stop.clone(),
            );
            // Let the flood reach its rate and the server's queue fill.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let refused = || {
                counts.unauthorized.load(Ordering::Relaxed) + counts.busy.load(Ordering::Relaxed)
            };
            let (r0, t0) = (refused(), Instant::now());
            let m = Meter::start(server_pid.clone(), ours.clone());
            let mut p = phase(&mut ws, admin, &relayed, m).await?;
            p.refused_per_sec = (refused() - r0) as f64 / t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || f.join()).await;
            loaded.push(p);
            // Logins still queued from the flood drain (each waits at most 5 s).
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
    }
    let total_secs = t_all.elapsed().as_secs_f64();
    let path_after = relayed.path().await;
    relayed.stop().await;

    // Silent connections from 127.0.0.10 on, 200 per address.
    let addr: std::net::SocketAddr = target
        .url
        .trim_start_matches("https://")
        .parse()
        .context("the server URL is not https://IP:PORT")?;
    let mut silent = Vec::with_capacity(opts.silent);
    let mut failed = 0usize;
    for i in 0..opts.silent {
        let local = std::net::Ipv4Addr::new(127, 0, 0, 10 + (i / 200) as u8);
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind((local, 0).into())?;
        match sock.connect(addr).await {
            Ok(s) => silent.push(s),
            Err(_) => failed += 1,
        }
    }
    let t = Instant::now();
    let fresh = drawbridge_api_client::Client::new(&target.url, Some(&target.ca_file))?;
    let login = fresh
        .login(&LoginRequest {
            account: target.account.clone(),
            username: target.admin_user.clone(),
            password: target.password.clone(),
            totp: None,
        })
        .await;
    let login_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(silent);
    let load_end = (loadavg(), compilers());

    // Figures: per phase the p50 of its round trips; across rounds the median.
    let p50s = |v: &[Phase], f: fn(&Phase) -> &Vec<Duration>| {
        median(v.iter().map(|p| ms(median_d(f(p)))).collect())
    };
    let p95 = |v: &[Phase], f: fn(&Phase) -> &Vec<Duration>| {
        spread(v.iter().flat_map(|p| f(p).clone()).collect()).1
    };
    let pct = |busy: f64, idle: f64| (busy / idle - 1.0) * 100.0;
    fn ping(p: &Phase) -> &Vec<Duration> {
        &p.ping
    }
    fn api(p: &Phase) -> &Vec<Duration> {
        &p.api
    }
    let (ip, lp) = (p50s(&idle, ping), p50s(&loaded, ping));
    let (ia, la) = (p50s(&idle, api), p50s(&loaded, api));
    let it = median(idle.iter().map(|p| p.mbit).collect());
    let lt = median(loaded.iter().map(|p| p.mbit).collect());
    // The goal: no more than 20 % worse than idle (a round trip no longer, a
    // throughput no smaller); better is within it.
    let within_longer = |change: f64| if change <= 20.0 { "yes" } else { "NO" };
    let within_smaller = |change: f64| if change >= -20.0 { "yes" } else { "NO" };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "drawbridge-loadtest --dos: {} rounds of an idle and a loaded phase ({} logins/s asked), {total_secs:.0} s",
        opts.rounds.max(1),
        opts.logins_per_sec
    );
    let _ = writeln!(
        o,
        "| figure | idle | under the flood | change | at most 20 % worse |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---|");
    let _ = writeln!(
        o,
        "| edge channel ping round trip, median of the phases' p50 (ms) | {ip:.3} | {lp:.3} | {:+.0} % | {} |",
        pct(lp, ip),
        within_longer(pct(lp, ip))
    );
    let _ = writeln!(
        o,
        "| edge channel ping round trip, p95 of all samples (ms) | {:.3} | {:.3} | {:+.0} % | |",
        p95(&idle, ping),
        p95(&loaded, ping),
        pct(p95(&loaded, ping), p95(&idle, ping))
    );
    let _ = writeln!(
        o,
        "| relayed tunnel throughput, median of the phases (Mbit/s) | {it:.0} | {lt:.0} | {:+.0} % | {} |",
        pct(lt, it),
        within_smaller(pct(lt, it))
    );
    let _ = writeln!(
        o,
        "| API round trip (GET /me), median of the phases' p50 (ms) | {ia:.2} | {la:.2} | {:+.0} % | |",
        pct(la, ia)
    );
    let _ = writeln!(
        o,
        "| API round trip (GET /me), p95 of all samples (ms) | {:.2} | {:.2} | {:+.0} % | |",
        p95(&idle, api),
        p95(&loaded, api),
        pct(p95(&loaded, api), p95(&idle, api))
    );
    let cpu = |v: &[Phase], f: fn(&Cores) -> f64| median(v.iter().map(|p| f(&p.cpu)).collect());
    let _ = writeln!(
        o,
        "| CPU (cores of {}): server / this test's processes / whole machine / others | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | | |",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu(&idle, |c| c.server),
        cpu(&idle, |c| c.ours),
        cpu(&idle, |c| c.machine),
        cpu(&idle, |c| (c.machine - c.ours).max(0.0)),
        cpu(&loaded, |c| c.server),
        cpu(&loaded, |c| c.ours),
        cpu(&loaded, |c| c.machine),
        cpu(&loaded, |c| (c.machine - c.ours).max(0.0)),
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "per round (idle → loaded): ping p50 ms, throughput Mbit/s, refused logins/s"
    );
    for (i, (a, b)) in idle.iter().zip(&loaded).enumerate() {
        let _ = writeln!(
            o,
            "  round {}: ping {:.3} → {:.3}; throughput {:.0} → {:.0}; {:.0} refused/s",
            i + 1,
            ms(median_d(&a.ping)),
            ms(median_d(&b.ping)),
            a.mbit,
            b.mbit,
            b.refused_per_sec
        );
    }
    let _ = writeln!(
        o,
        "flood answers: {} × 401 (checked), {} × 429 (busy, not checked), {} other; refused during the measurements: median {:.0}/s (asked {}/s)",
        counts.unauthorized.load(Ordering::Relaxed),
        counts.busy.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
        median(loaded.iter().map(|p| p.refused_per_sec).collect()),
        opts.logins_per_sec
    );
    let _ = writeln!(
        o,
        "tunnel path (drawbridge status): {path_before} before, {path_after} after"
    );
    let _ = writeln!(
        o,
        "{} silent TCP connections opened ({} failed to connect); a new login then: {} in {login_ms:.0} ms",
        opts.silent - failed,
        failed,
        match &login {
            Ok(_) => "succeeded".to_string(),
            Err(e) => format!("FAILED ({e})"),
        }
    );
    let _ = writeln!(
        o,
        "machine: load average {} with {} compiler processes at the start, {} with {} at the end",
        load_start.0, load_start.1, load_end.0, load_end.1
    );
    Ok(o)
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
