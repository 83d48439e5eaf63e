//! `lab-bench`: Drawbridge side by side with wireguard-go, boringtun-cli, OpenVPN
//! and onetun, between the same lab namespaces, in one run. Started by `bench/run`
//! (root only); prints a markdown table and writes it to BENCHMARKS.md.
//!
//! ```text
//! lab-bench [--out FILE] [--seconds N] [--only ROW,ROW]
//! ```
//!
//! `--seconds` shortens the iperf3 runs and `--only` picks rows (direct, relay,
//! userspace, wireguard-go, boringtun, openvpn, onetun) for trying things out;
//! BENCHMARKS.md holds a full run with the defaults.
//!
//! Every row is one TCP stream of iperf3 (`-t N`, default 10 s) from the office
//! host to `iperf3 -s` on the machine LAN (192.168.1.10:5201), and `ping -c 20 -i 0.2`
//! to the same address. Drawbridge runs in the lab's own topology (cone NAT on
//! both sides for the direct path, symmetric NAT on both sides for the relay); the
//! baselines run between the same office and plant hosts, over the same NAT
//! routers, the plant host routing (and masquerading) to the LAN.

use anyhow::{Context, Result, anyhow, bail};
use drawbridge_lab::netns::{NsRuntime, unique};
use drawbridge_lab::topology::{Lab, Nat, PLC, PLC_IP};
use drawbridge_lab::{Client, Netns, Proc, plc};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const IPERF_PORT: u16 = 5201;
/// `-L` forward of `drawbridge connect` (userspace row).
const DB_LOCAL_PORT: u16 = 15201;
/// onetun's local forward.
const ONETUN_LOCAL_PORT: u16 = 15202;
const PING_COUNT: u32 = 20;
/// The office router's and the plant router's WAN addresses (full cone: UDP
/// arriving there goes to the host behind).
const OFFICE_WAN: &str = "10.0.1.2";
const PLANT_WAN: &str = "10.0.2.2";
const WG_PORT_OFFICE: u16 = 51900;
const WG_PORT_PLANT: u16 = 51901;
const OVPN_PORT: u16 = 1194;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("lab-bench: {e:#}");
        std::process::exit(1);
    }
}

struct Opts {
    out: PathBuf,
    seconds: u32,
    /// Only these rows (`--only direct,onetun`); all when empty.
    only: Vec<RowKind>,
}

impl Opts {
    fn wants(&self, k: RowKind) -> bool {
        self.only.is_empty() || self.only.contains(&k)
    }
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("BENCHMARKS.md"),
        seconds: 10,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => o.out = args.next().context("--out FILE")?.into(),
            "--seconds" => {
                o.seconds = args
                    .next()
                    .context("--seconds N")?
                    .parse()
                    .context("--seconds N")?
            }
            "--only" => {
                for name in args.next().context("--only ROW,ROW")?.split(',') {
                    o.only.push(
                        RowKind::ALL
                            .into_iter()
                            .find(|k| k.key() == name)
                            .with_context(|| {
                                format!(
                                    "--only: {name:?} is none of {}",
                                    RowKind::ALL.map(RowKind::key).join(", ")
                                )
                            })?,
                    );
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: lab-bench [--out FILE] [--seconds N] [--only ROW,ROW]   (root; see bench/run)\nrows: {}",
                    RowKind::ALL.map(RowKind::key).join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

fn real_main() -> Result<()> {
    let opts = opts()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "must run as root: it creates network namespaces, veth links, nftables rules and TUN interfaces (run bench/run as root)"
        );
    }
    // The binaries' logs carry the timestamps the direct-path figure is read from.
    if std::env::var_os("DRAWBRIDGE_LAB_LOG").is_none() {
        // SAFETY: nothing else runs yet (no threads have been started).
        unsafe {
            std::env::set_var(
                "DRAWBRIDGE_LAB_LOG",
                "warn,drawbridge_tunnel=debug,drawbridge_relay=debug",
            );
            std::env::set_var("NO_COLOR", "1");
        }
    }
    let tools = Tools::find()?;
    let mut report = Report {
        seconds: opts.seconds,
        machine: Machine::read(&tools),
        ..Report::default()
    };
    start_cpu_sampler();
    report.contention.push(contention("start"));

    if RowKind::ALL
        .into_iter()
        .any(|k| k != RowKind::Relay && opts.wants(k))
    {
        eprintln!("== lab with cone NAT on both sides (direct path, baselines)");
        cone_lab(&tools, &opts, &mut report)?;
        report.contention.push(contention("after the cone lab"));
    }
    if opts.wants(RowKind::Relay) {
        eprintln!("== lab with symmetric NAT on both sides (relay)");
        relay_lab(&opts, &mut report)?;
    }
    report.contention.push(contention("end"));

    let text = report.markdown();
    println!("{text}");
    std::fs::write(&opts.out, &text).with_context(|| format!("writing {}", opts.out.display()))?;
    eprintln!("written to {}", opts.out.display());
    if opts.only.is_empty() && report.ratios().contains("n/a") {
        bail!("some figures are missing (see the table)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The tools

struct Tools {
    boringtun: PathBuf,
    onetun: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        for t in [
            "iperf3",
            "ping",
            "wireguard-go",
            "wg",
            "openvpn",
            "nft",
            "ip",
        ] {
            which(t).with_context(|| format!("{t} is not installed (bench/run installs it)"))?;
        }
        Ok(Tools {
            boringtun: which("boringtun-cli")
                .context("boringtun-cli is not installed (bench/run installs it)")?,
            onetun: which("onetun").context("onetun is not installed (bench/run installs it)")?,
        })
    }
}

/// A program in `DRAWBRIDGE_BENCH_TOOLS` (bench/run's `cargo install` root) or on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("DRAWBRIDGE_BENCH_TOOLS") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn version(prog: &Path, arg: &str) -> String {
    Command::new(prog)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// Running things

/// Runs a command to completion (killed after `timeout`); its output.
fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let ro = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let re = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: ro.join().unwrap_or_default(),
        stderr: re.join().unwrap_or_default(),
    })
}

/// Runs a command that must succeed; its standard output.
fn check(cmd: &mut Command) -> Result<String> {
    let out = output(cmd, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every `every` until it holds or `limit` has passed.
fn until(what: &str, limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("timed out after {limit:?} waiting until {what}");
        }
        std::thread::sleep(every);
    }
}

fn log_to(path: &Path) -> Stdio {
    std::fs::File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A daemon of a baseline: SIGTERM first (so it removes its interface and
/// socket), SIGKILL after 3 s; the namespace's teardown kills it in any case.
struct Daemon {
    proc: Proc,
    uapi: Option<PathBuf>,
}

impl Daemon {
    /// Starts `cmd` with its output (both streams) in `log`.
    fn spawn(cmd: &mut Command, log: &Path) -> Daemon {
        let (out, err) = match std::fs::File::create(log).and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        Daemon {
            proc: Proc::spawn(cmd.stdout(out).stderr(err)),
            uapi: None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.proc.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && !self.proc.exited() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(p) = &self.uapi {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------
// Measurements

#[derive(Debug, Clone, Default)]
struct Figures {
    mbps: Option<f64>,
    retransmits: Option<u64>,
    ping_ms: Option<f64>,
    /// Why there is no ping figure, or what is odd about it.
    ping_note: Option<String>,
    /// The path (and what the product said about it) during the measurement.
    path: String,
    /// Cores' worth of CPU other processes used during the iperf3 run.
    other_load: Option<f64>,
    error: Option<String>,
}

/// iperf3, one TCP stream from `ns` to `host:port`: (receiver Mbit/s, retransmits).
fn iperf(ns: &Netns, host: &str, port: u16, secs: u32) -> Result<(f64, u64)> {
    let out = output(
        ns.command("iperf3").args([
            "-c",
            host,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
            "--connect-timeout",
            "5000",
        ]),
        Duration::from_secs(u64::from(secs) + 40),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -J output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 gave no receiver figure"))?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e6, retr))
}

/// A 1 s iperf3 run until one succeeds (tunnel up, handshakes done, server ready).
fn iperf_warm_up(ns: &Netns, host: &str, port: u16) -> Result<()> {
    let mut last = None;
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        match iperf(ns, host, port, 1) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no try"))
        .context("iperf3 warm-up"))
}

/// `ping -c 20 -i 0.2`: average RTT in ms, and a note on loss.
fn ping(ns: &Netns, host: &str) -> Result<(f64, Option<String>)> {
    // Warm up: the first echo may wait for a handshake.
    let _ = until(
        "a first echo reply",
        Duration::from_secs(10),
        Duration::ZERO,
        || {
            output(
                ns.command("ping").args(["-n", "-c", "1", "-W", "1", host]),
                Duration::from_secs(5),
            )
            .is_ok_and(|o| o.status.success())
        },
    );
    let out = output(
        ns.command("ping").args([
            "-n",
            "-q",
            "-c",
            &PING_COUNT.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            host,
        ]),
        Duration::from_secs(60),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let loss = text
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|n| n.trim().parse::<f64>().ok());
    let avg = text
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|a| a.parse::<f64>().ok());
    match (avg, loss) {
        (Some(a), Some(l)) if l > 0.0 => Ok((a, Some(format!("{l}% lost")))),
        (Some(a), _) => Ok((a, None)),
        (None, l) => bail!("no echo reply ({}% lost)", l.unwrap_or(100.0)),
    }
}

/// iperf3 and ping through whatever routes `ns` has now.
fn measure(ns: &Netns, host: &str, port: u16, secs: u32, with_ping: bool) -> Figures {
    let mut f = Figures::default();
    let measured = iperf_warm_up(ns, host, port).and_then(|()| {
        let (c0, t0) = (other_cpu_secs(), Instant::now());
        let r = iperf(ns, host, port, secs)?;
        f.other_load = Some((other_cpu_secs() - c0) / t0.elapsed().as_secs_f64());
        Ok(r)
    });
    match measured {
        Ok((mbps, retr)) => {
            f.mbps = Some(mbps);
            f.retransmits = Some(retr);
        }
        Err(e) => f.error = Some(format!("{e:#}")),
    }
    if with_ping {
        match ping(ns, host) {
            Ok((ms, note)) => {
                f.ping_ms = Some(ms);
                f.ping_note = note;
            }
            Err(e) => f.ping_note = Some(format!("{e:#}")),
        }
    }
    eprintln!(
        "   {:?} Mbit/s, {:?} retransmits, ping {:?} ms {}{}",
        f.mbps.map(|m| m.round()),
        f.retransmits,
        f.ping_ms,
        f.ping_note.as_deref().unwrap_or(""),
        f.error.as_deref().unwrap_or("")
    );
    f
}

// ---------------------------------------------------------------------------
// Drawbridge

/// The device's firewall also allows ICMP to the LAN (the lab's allows TCP only).
fn release_icmp(lab: &Lab) -> Result<()> {
    let (s, v) = lab.api.patch(
        &format!("/devices/{}", lab.device_id),
        json!({"firewall": [
            {"address": "192.168.1.0/24", "protocol": "tcp", "ports": "1-65535"},
            {"address": "192.168.1.0/24", "protocol": "icmp"}
        ]}),
    );
    if s != 200 {
        bail!("adding icmp to the device's firewall: {s} {v}");
    }
    Ok(())
}

fn start_iperf_server(lab: &Lab) -> Result<Proc> {
    let p = Proc::spawn(
        lab.lan
            .command("iperf3")
            .args(["-s", "-B", PLC_IP, "--idle-timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr: std::net::SocketAddr = format!("{PLC_IP}:{IPERF_PORT}").parse()?;
    let ok =
        |rt: &NsRuntime| rt.run(async move { tokio::net::TcpStream::connect(addr).await.is_ok() });
    until(
        "iperf3 -s listens",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || ok(&lab.lan_rt),
    )?;
    Ok(p)
}

fn start_session(lab: &Lab, sid: &str) -> Result<()> {
    let (s, v) = lab.api.post(&format!("/sessions/{sid}/start"), json!({}));
    if s != 200 {
        bail!("starting the session: {s} {v}");
    }
    if v["state"] != "active" {
        bail!("the session is {} after its start, not active", v["state"]);
    }
    Ok(())
}

fn end_session(lab: &Lab, sid: &str) {
    let _ = lab.api.post(&format!("/sessions/{sid}/end"), json!({}));
}

fn connect(lab: &Lab, client: &Client, sid: &str, mode: &[&str], log: &str) -> Proc {
    Proc::spawn(
        client
            .command()
            .args(["connect", sid])
            .args(mode)
            .args(["--for-seconds", "900"])
            .stdout(Stdio::null())
            .stderr(log_to(&lab.dir.path().join(log))),
    )
}

fn path_of(client: &Client) -> (String, String) {
    let d = Lab::client_device(client);
    (
        d["path"].as_str().unwrap_or_default().to_string(),
        d["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Reads registers from the office every 50 ms (each try on its own, so a lost
/// SYN does not hide a later success) until one answers; the time since `start`.
fn first_modbus(rt: &NsRuntime, start: Instant, limit: Duration) -> Result<Duration> {
    let addr = Lab::addr(PLC);
    rt.run(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut tries = tokio::task::JoinSet::new();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(t) = rx.recv() => return Ok(t.duration_since(start)),
                _ = tick.tick() => {
                    let tx = tx.clone();
                    tries.spawn(async move {
                        if plc::read_registers(addr).await.is_ok_and(|r| r == plc::EXPECTED) {
                            let _ = tx.try_send(Instant::now());
                        }
                    });
                }
                _ = &mut deadline => bail!("no Modbus reply within {limit:?}"),
            }
        }
    })
}

/// Timestamped lines of a binary's log (tracing's RFC 3339 timestamps, ANSI removed).
fn log_lines(path: &Path) -> Vec<(OffsetDateTime, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let l = strip_ansi(l);
            let ts = l.split_whitespace().next()?;
            let t =
                OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
            Some((t, l))
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The client's relay connection (its first handshake goes out on it) → the
/// edge's switch of that peer to the direct path, from the server's and the
/// edge's logs (same clock, microsecond timestamps). Also returns when the
/// edge switched.
fn direct_upgrade(lab: &Lab, since: OffsetDateTime) -> Result<(Duration, OffsetDateTime)> {
    let edge = log_lines(&lab.dir.path().join("edge.log"));
    let server = log_lines(&lab.dir.path().join("server.log"));
    for (t_direct, l) in edge
        .iter()
        .filter(|(t, l)| *t >= since && l.contains("path: direct"))
    {
        let Some(peer) = field(l, "peer") else {
            continue;
        };
        let relay = server.iter().find(|(t, l)| {
            *t >= since && l.contains("relay: connected") && field(l, "peer") == Some(peer)
        });
        if let Some((t_relay, _)) = relay {
            let d = *t_direct - *t_relay;
            let d = Duration::try_from(d)
                .map_err(|_| anyhow!("direct before the relay connection ({d})"))?;
            return Ok((d, *t_direct));
        }
    }
    bail!("no switch to the direct path of a client that connected to the relay in the logs")
}

/// How many sessions are started for the timing figures (per lab).
const SAMPLES: usize = 5;

/// One session start.
#[derive(Debug, Default)]
struct Sample {
    modbus: Option<Result<Duration, String>>,
    upgrade: Option<Result<Duration, String>>,
    /// Session start → the client's status file says direct (1 s granularity).
    status_direct: Option<Duration>,
    /// First Modbus reply − the edge's switch to direct (negative: before).
    reply_after_direct_ms: Option<i64>,
    /// The session's relay connections and disconnections (edge and client):
    /// (ms after the start request, what, peer).
    relay_events: Vec<(i64, &'static str, String)>,
    name: String,
}

#[derive(Debug, Default)]
struct Timings {
    direct: Vec<Sample>,
    relay: Vec<Sample>,
}

/// Creates and starts a session, runs `drawbridge connect --tun` and times the
/// first Modbus reply (and, with `direct`, the upgrade to the direct path).
/// Returns the running client and the session id.
fn session_sample(
    lab: &Lab,
    client: &Client,
    name: &str,
    targets: &Value,
    direct: bool,
) -> Result<(Proc, String, Sample)> {
    let sid = lab.session_with(name, targets.clone());
    let since = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    start_session(lab, &sid)?;
    let conn = connect(
        lab,
        client,
        &sid,
        &["--tun"],
        &format!("connect-{name}.log"),
    );
    let modbus = first_modbus(&lab.office_rt, t0, Duration::from_secs(60));
    let mut s = Sample::default();
    let want = if direct { "direct" } else { "relay" };
    let seen = until(
        &format!("the client reports the {want} path"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || path_of(client).0 == want,
    );
    if direct {
        if seen.is_ok() {
            s.status_direct = Some(t0.elapsed());
        }
        match seen.and_then(|()| direct_upgrade(lab, since)) {
            Ok((up, t_direct)) => {
                s.upgrade = Some(Ok(up));
                if let Ok(m) = &modbus {
                    let reply = since + *m;
                    s.reply_after_direct_ms = Some((reply - t_direct).whole_milliseconds() as i64);
                }
            }
            Err(e) => s.upgrade = Some(Err(format!("{e:#}"))),
        }
    }
    s.modbus = Some(modbus.map_err(|e| format!("{e:#}")));
    s.name = name.to_string();
    let server = log_lines(&lab.dir.path().join("server.log"));
    let peers: Vec<&str> = server
        .iter()
        .filter(|(t, l)| {
            *t >= since && l.contains("relay: connected") && field(l, "session") == Some(&sid)
        })
        .filter_map(|(_, l)| field(l, "peer"))
        .collect();
    s.relay_events = server
        .iter()
        .filter(|(t, _)| *t >= since)
        .filter_map(|(t, l)| {
            let what = if l.contains("relay: connected") {
                "connected"
            } else if l.contains("relay: disconnected") {
                "disconnected"
            } else {
                return None;
            };
            let peer = field(l, "peer").filter(|p| peers.contains(p))?;
            Some((
                (*t - since).whole_milliseconds() as i64,
                what,
                peer.to_string(),
            ))
        })
        .collect();
    eprintln!("   {name}: {s:?}");
    Ok((conn, sid, s))
}

fn drawbridge_targets() -> Value {
    json!([
        {"address": PLC_IP, "protocol": "tcp", "ports": "502"},
        {"address": PLC_IP, "protocol": "tcp", "ports": IPERF_PORT.to_string()},
        {"address": PLC_IP, "protocol": "icmp"}
    ])
}

/// `SAMPLES` session starts; the last one's client is left running (with its
/// session id) for the throughput row.
fn samples(
    lab: &Lab,
    client: &Client,
    prefix: &str,
    direct: bool,
    out: &mut Vec<Sample>,
) -> Result<(Proc, String)> {
    let targets = drawbridge_targets();
    let mut last: Option<(Proc, String)> = None;
    for i in 1..=SAMPLES {
        if let Some((mut c, sid)) = last.take() {
            c.interrupt();
            end_session(lab, &sid);
        }
        let (c, sid, s) = session_sample(lab, client, &format!("{prefix}-{i}"), &targets, direct)?;
        out.push(s);
        last = Some((c, sid));
    }
    last.ok_or_else(|| anyhow!("no session"))
}

fn cone_lab(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    release_icmp(&lab)?;
    let _iperf = start_iperf_server(&lab)?;
    let client = Client::login(
        &lab.office.host,
        &lab.server,
        &lab.dir.path().join("client"),
    );

    if opts.wants(RowKind::Direct) {
        // Drawbridge, TUN mode, direct path; the last session start is measured.
        eprintln!("-- Drawbridge direct (TUN)");
        let (mut conn, sid) = samples(&lab, &client, "direct", true, &mut report.timings.direct)?;
        report.rows.push(Row::new(
            RowKind::Direct,
            drawbridge_row(&lab, &client, PLC_IP, IPERF_PORT, opts.seconds, true),
        ));
        conn.interrupt();
        end_session(&lab, &sid);
    }

    if opts.wants(RowKind::Userspace) {
        // Drawbridge, userspace `-L` forward, direct path.
        eprintln!("-- Drawbridge userspace -L");
        let sid = lab.session_with(
            "bench-userspace",
            json!([{"address": PLC_IP, "protocol": "tcp", "ports": IPERF_PORT.to_string()}]),
        );
        start_session(&lab, &sid)?;
        let fwd = format!("127.0.0.1:{DB_LOCAL_PORT}:{PLC_IP}:{IPERF_PORT}");
        let mut conn = connect(&lab, &client, &sid, &["-L", &fwd], "connect-userspace.log");
        let _ = until(
            "the userspace client reports the direct path",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || path_of(&client).0 == "direct",
        );
        let mut f = drawbridge_row(
            &lab,
            &client,
            "127.0.0.1",
            DB_LOCAL_PORT,
            opts.seconds,
            false,
        );
        f.ping_note = Some("n/a: -L forwards TCP only".into());
        report.rows.push(Row::new(RowKind::Userspace, f));
        conn.interrupt();
        end_session(&lab, &sid);
    }

    // Baselines between the same namespaces.
    let base = Baselines::prepare(&lab)?;
    if opts.wants(RowKind::WireguardGo) || opts.wants(RowKind::Onetun) {
        eprintln!("-- wireguard-go (and onetun against it)");
        let (wg, onetun) = base.wireguard_go(&lab, tools, opts);
        if let Some(wg) = wg {
            report.rows.push(Row::new(RowKind::WireguardGo, wg));
        }
        if let Some(ot) = onetun {
            report.rows.push(Row::new(RowKind::Onetun, ot));
        }
    }
    if opts.wants(RowKind::Boringtun) {
        eprintln!("-- boringtun-cli");
        report.rows.push(Row::new(
            RowKind::Boringtun,
            base.boringtun(&lab, tools, opts.seconds),
        ));
    }
    if opts.wants(RowKind::Openvpn) {
        eprintln!("-- OpenVPN");
        report
            .rows
            .push(Row::new(RowKind::Openvpn, base.openvpn(&lab, opts.seconds)));
    }
    Ok(())
}

/// Measures through a running `drawbridge connect`, noting the path before and after.
fn drawbridge_row(
    lab: &Lab,
    client: &Client,
    host: &str,
    port: u16,
    secs: u32,
    with_ping: bool,
) -> Figures {
    let before = path_of(client);
    let mut f = measure(&lab.office.host, host, port, secs, with_ping);
    let after = path_of(client);
    let edge = &lab.edge.status()["sessions"];
    let edge_path = edge
        .as_array()
        .and_then(|s| s.last())
        .map(|s| s["peers"][0]["path"].as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into());
    f.path = if before.0 == after.0 {
        format!("{} ({}; edge: {edge_path})", after.0, after.1)
    } else {
        format!(
            "{} ({}) → {} ({}) during the run",
            before.0, before.1, after.0, after.1
        )
    };
    f
}

fn relay_lab(opts: &Opts, report: &mut Report) -> Result<()> {
    let lab = Lab::new(Nat::Symmetric, Nat::Symmetric);
    release_icmp(&lab)?;
    let _iperf = start_iperf_server(&lab)?;
    let client = Client::login(
        &lab.office.host,
        &lab.server,
        &lab.dir.path().join("client"),
    );
    eprintln!("-- Drawbridge via relay (TUN)");
    let (mut conn, sid) = samples(&lab, &client, "relay", false, &mut report.timings.relay)?;
    // Give hole punching its chance to (not) happen before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let f = drawbridge_row(&lab, &client, PLC_IP, IPERF_PORT, opts.seconds, true);
    if !f.path.starts_with("relay") {
        eprintln!("   warning: not on the relay: {}", f.path);
    }
    report.rows.push(Row::new(RowKind::Relay, f));
    conn.interrupt();
    end_session(&lab, &sid);
    Ok(())
}

// ---------------------------------------------------------------------------
// Baselines

struct Baselines {
    dir: PathBuf,
}

fn wg_keypair() -> Result<(String, String)> {
    let private = check(Command::new("wg").arg("genkey"))?.trim().to_string();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("wg pubkey")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn secret_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A userspace WireGuard implementation driven by `wg` over its UAPI socket.
#[derive(Clone, Copy)]
enum WgImpl {
    WireguardGo,
    Boringtun,
}

/// One end of a WireGuard tunnel: its daemon and interface.
struct WgEnd {
    _daemon: Daemon,
    iface: String,
}

impl Baselines {
    /// The plant host routes tunnel traffic to the LAN, masqueraded (the LAN
    /// devices know no route back to the tunnel addresses).
    fn prepare(lab: &Lab) -> Result<Baselines> {
        let host = &lab.plant.host;
        host.sysctl("net.ipv4.ip_forward=1");
        host.nft(
            "table ip benchnat {\n  chain post {\n    type nat hook postrouting priority 100;\n    ip saddr 10.200.0.0/14 ip daddr 192.168.1.0/24 masquerade\n  }\n}\n",
        );
        let dir = lab.dir.path().join("baselines");
        std::fs::create_dir_all(&dir)?;
        Ok(Baselines { dir })
    }

    fn wg_end(&self, ns: &Netns, imp: WgImpl, tools: &Tools, tag: &str) -> Result<WgEnd> {
        let iface = unique(tag);
        let log = self.dir.join(format!("{iface}.log"));
        let mut cmd = match imp {
            WgImpl::WireguardGo => {
                let mut c = ns.command("wireguard-go");
                c.args(["-f", &iface]);
                c
            }
            WgImpl::Boringtun => {
                let mut c = ns.command(&tools.boringtun);
                c.args(["--foreground", "--disable-drop-privileges", "--log"])
                    .arg(self.dir.join(format!("{iface}.boringtun.log")))
                    .arg(&iface);
                c
            }
        };
        cmd.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        let mut daemon = Daemon::spawn(&mut cmd, &log);
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        daemon.uapi = Some(sock.clone());
        until(
            "the WireGuard daemon made its interface and socket",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                sock.exists()
                    && Command::new("ip")
                        .args(["-n", ns.name(), "link", "show", &iface])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
            },
        )?;
        Ok(WgEnd {
            _daemon: daemon,
            iface,
        })
    }

    /// Office and plant ends of one implementation on `10.<net>.0.0/24`; the
    /// plant end also admits `extra` (onetun's key, as 10.<net>.0.3).
    fn wg_pair(
        &self,
        lab: &Lab,
        imp: WgImpl,
        tools: &Tools,
        net: u8,
        extra: Option<&str>,
    ) -> Result<(WgEnd, WgEnd, String)> {
        let (o_priv, o_pub) = wg_keypair()?;
        let (p_priv, p_pub) = wg_keypair()?;
        let (office, plant) = (&lab.office.host, &lab.plant.host);
        let o = self.wg_end(office, imp, tools, "bwo")?;
        let p = self.wg_end(plant, imp, tools, "bwp")?;
        let o_key = self.dir.join(format!("{}.key", o.iface));
        let p_key = self.dir.join(format!("{}.key", p.iface));
        secret_file(&o_key, &o_priv)?;
        secret_file(&p_key, &p_priv)?;
        check(
            office
                .command("wg")
                .args(["set", &o.iface, "listen-port", &WG_PORT_OFFICE.to_string()])
                .arg("private-key")
                .arg(&o_key)
                .args([
                    "peer",
                    &p_pub,
                    "endpoint",
                    &format!("{PLANT_WAN}:{WG_PORT_PLANT}"),
                    "allowed-ips",
                    &format!("10.{net}.0.0/24,192.168.1.0/24"),
                    "persistent-keepalive",
                    "25",
                ]),
        )?;
        check(
            plant
                .command("wg")
                .args(["set", &p.iface, "listen-port", &WG_PORT_PLANT.to_string()])
                .arg("private-key")
                .arg(&p_key)
                .args([
                    "peer",
                    &o_pub,
                    "endpoint",
                    &format!("{OFFICE_WAN}:{WG_PORT_OFFICE}"),
                    "allowed-ips",
                    &format!("10.{net}.0.1/32"),
                    "persistent-keepalive",
                    "25",
                ]),
        )?;
        if let Some(k) = extra {
            check(plant.command("wg").args([
                "set",
                &p.iface,
                "peer",
                k,
                "allowed-ips",
                &format!("10.{net}.0.3/32"),
            ]))?;
        }
        office.ip(&["addr", "add", &format!("10.{net}.0.1/24"), "dev", &o.iface]);
        office.ip(&["link", "set", "mtu", "1420", "up", "dev", &o.iface]);
        office.ip(&["route", "add", "192.168.1.0/24", "dev", &o.iface]);
        plant.ip(&["addr", "add", &format!("10.{net}.0.2/24"), "dev", &p.iface]);
        plant.ip(&["link", "set", "mtu", "1420", "up", "dev", &p.iface]);
        Ok((o, p, p_pub))
    }

    fn path_note(ns: &Netns, iface: &str) -> String {
        let eps = check(ns.command("wg").args(["show", iface, "endpoints"])).unwrap_or_default();
        let ep = eps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect::<Vec<_>>()
            .join(", ");
        format!("direct UDP (peer at {ep})")
    }

    /// wireguard-go on both ends; then onetun against the plant end.
    fn wireguard_go(
        &self,
        lab: &Lab,
        tools: &Tools,
        opts: &Opts,
    ) -> (Option<Figures>, Option<Figures>) {
        let secs = opts.seconds;
        let run = || -> Result<(Option<Figures>, Option<Figures>)> {
            let (ot_priv, ot_pub) = wg_keypair()?;
            let (o, _p, p_pub) =
                self.wg_pair(lab, WgImpl::WireguardGo, tools, 200, Some(&ot_pub))?;
            let wg = opts.wants(RowKind::WireguardGo).then(|| {
                let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
                f.path = Self::path_note(&lab.office.host, &o.iface);
                f
            });
            if !opts.wants(RowKind::Onetun) {
                return Ok((wg, None));
            }
            eprintln!("-- onetun");
            let key = self.dir.join("onetun.key");
            secret_file(&key, &ot_priv)?;
            let log = self.dir.join("onetun.log");
            let _onetun = Daemon::spawn(
                lab.office
                    .host
                    .command(&tools.onetun)
                    .arg(format!(
                        "127.0.0.1:{ONETUN_LOCAL_PORT}:{PLC_IP}:{IPERF_PORT}:TCP"
                    ))
                    .args([
                        "--endpoint-addr",
                        &format!("{PLANT_WAN}:{WG_PORT_PLANT}"),
                        "--endpoint-public-key",
                        &p_pub,
                        "--private-key-file",
                    ])
                    .arg(&key)
                    .args([
                        "--source-peer-ip",
                        "10.200.0.3",
                        "--keep-alive",
                        "25",
                        "--log",
                        "warn",
                    ]),
                &log,
            );
            let mut ot = measure(
                &lab.office.host,
                "127.0.0.1",
                ONETUN_LOCAL_PORT,
                secs,
                false,
            );
            let lost = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("Failed to read event bus")
                .count();
            ot.path = format!(
                "direct UDP, to the wireguard-go peer on the plant host; onetun logged {lost} × \"Failed to read event bus\" (its internal broadcast bus lagged: packets lost inside onetun)"
            );
            ot.ping_note = Some("n/a: onetun forwards TCP/UDP ports only".into());
            Ok((wg, Some(ot)))
        };
        run().unwrap_or_else(|e| {
            let f = Figures {
                error: Some(format!("{e:#}")),
                ..Figures::default()
            };
            (
                opts.wants(RowKind::WireguardGo).then(|| f.clone()),
                opts.wants(RowKind::Onetun).then_some(f),
            )
        })
    }

    fn boringtun(&self, lab: &Lab, tools: &Tools, secs: u32) -> Figures {
        let run = || -> Result<Figures> {
            let (o, _p, _) = self.wg_pair(lab, WgImpl::Boringtun, tools, 201, None)?;
            let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
            f.path = Self::path_note(&lab.office.host, &o.iface);
            Ok(f)
        };
        run().unwrap_or_else(|e| Figures {
            error: Some(format!("{e:#}")),
            ..Figures::default()
        })
    }

    fn openvpn(&self, lab: &Lab, secs: u32) -> Figures {
        let run = || -> Result<Figures> {
            let pki = self.dir.join("pki");
            openvpn_pki(&pki)?;
            let mut ends = Vec::new();
            for (ns, side, local, remote, peer_wan) in [
                (
                    &lab.plant.host,
                    "server",
                    "10.202.0.2",
                    "10.202.0.1",
                    OFFICE_WAN,
                ),
                (
                    &lab.office.host,
                    "client",
                    "10.202.0.1",
                    "10.202.0.2",
                    PLANT_WAN,
                ),
            ] {
                let iface = unique("bov");
                let log = self.dir.join(format!("openvpn-{side}.log"));
                let other = if side == "server" { "client" } else { "server" };
                let mut cmd = ns.command("openvpn");
                cmd.args(["--dev", &iface, "--dev-type", "tun", "--proto", "udp"])
                    .args(["--port", &OVPN_PORT.to_string(), "--remote", peer_wan])
                    .args(["--ifconfig", local, remote])
                    .args(["--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM"])
                    .args(["--disable-dco", "--verb", "3", "--remote-cert-tls", other])
                    .arg("--ca")
                    .arg(pki.join("ca.pem"))
                    .arg("--cert")
                    .arg(pki.join(format!("{side}.pem")))
                    .arg("--key")
                    .arg(pki.join(format!("{side}.key")));
                if side == "server" {
                    cmd.args(["--tls-server", "--dh", "none"]);
                } else {
                    cmd.arg("--tls-client");
                }
                ends.push((Daemon::spawn(&mut cmd, &log), log, iface));
            }
            for (_, log, _) in &ends {
                until(
                    "OpenVPN completes its initialisation",
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    || {
                        std::fs::read_to_string(log)
                            .is_ok_and(|t| t.contains("Initialization Sequence Completed"))
                    },
                )
                .with_context(|| format!("see {}", log.display()))?;
            }
            let client_log = std::fs::read_to_string(&ends[1].1).unwrap_or_default();
            let cipher = client_log
                .lines()
                .find_map(|l| l.split("Data Channel: cipher '").nth(1))
                .and_then(|c| c.split('\'').next())
                .unwrap_or("?")
                .to_string();
            if cipher != "AES-256-GCM" {
                bail!("OpenVPN's data channel uses {cipher}, not AES-256-GCM");
            }
            lab.office
                .host
                .ip(&["route", "add", "192.168.1.0/24", "dev", &ends[1].2]);
            let mut f = measure(&lab.office.host, PLC_IP, IPERF_PORT, secs, true);
            f.path = format!("direct UDP (peer at {PLANT_WAN}:{OVPN_PORT}), data channel {cipher}");
            Ok(f)
        };
        run().unwrap_or_else(|e| Figures {
            error: Some(format!("{e:#}")),
            ..Figures::default()
        })
    }
}

/// A throwaway CA with a server and a client certificate (ECDSA P-256) for OpenVPN.
fn openvpn_pki(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "drawbridge bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    for (name, eku) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        secret_file(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The report

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Direct,
    Relay,
    Userspace,
    WireguardGo,
    Boringtun,
    Openvpn,
    Onetun,
}

impl RowKind {
    const ALL: [RowKind; 7] = [
        RowKind::Direct,
        RowKind::Relay,
        RowKind::Userspace,
        RowKind::WireguardGo,
        RowKind::Boringtun,
        RowKind::Openvpn,
        RowKind::Onetun,
    ];

    fn key(self) -> &'static str {
        match self {
            RowKind::Direct => "direct",
            RowKind::Relay => "relay",
            RowKind::Userspace => "userspace",
            RowKind::WireguardGo => "wireguard-go",
            RowKind::Boringtun => "boringtun",
            RowKind::Openvpn => "openvpn",
            RowKind::Onetun => "onetun",
        }
    }

    fn label(self) -> &'static str {
        match self {
            RowKind::Direct => "Drawbridge direct (TUN)",
            RowKind::Relay => "Drawbridge via relay (TUN)",
            RowKind::Userspace => "Drawbridge userspace `-L`",
            RowKind::WireguardGo => "wireguard-go ↔ wireguard-go",
            RowKind::Boringtun => "boringtun-cli ↔ boringtun-cli",
            RowKind::Openvpn => "OpenVPN UDP, AES-256-GCM",
            RowKind::Onetun => "onetun → wireguard-go",
        }
    }
}

#[derive(Debug)]
struct Row {
    kind: RowKind,
    f: Figures,
}

impl Row {
    fn new(kind: RowKind, f: Figures) -> Row {
        Row { kind, f }
    }
}

#[derive(Debug, Default)]
struct Machine {
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    os: String,
    date: String,
    versions: Vec<(String, String)>,
}

impl Machine {
    fn read(tools: &Tools) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "?".into());
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("?")
            .trim_matches('"')
            .to_string();
        let date = OffsetDateTime::now_utc()
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_default();
        let bin = drawbridge_lab::procs::bin("drawbridge");
        let versions = [
            ("drawbridge", version(&bin, "--version")),
            ("iperf3", version(Path::new("iperf3"), "--version")),
            (
                "wireguard-go",
                version(Path::new("wireguard-go"), "--version"),
            ),
            ("boringtun-cli", version(&tools.boringtun, "--version")),
            ("onetun", version(&tools.onetun, "--version")),
            ("OpenVPN", version(Path::new("openvpn"), "--version")),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            os,
            date,
            versions,
        }
    }
}

/// The load average and the compilers running at a point of the run (the machine
/// may be shared with builds), with the CPU time other processes used so far.
fn contention(when: &str) -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut compilers = 0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(c) = std::fs::read_to_string(e.path().join("comm"))
                && matches!(c.trim(), "rustc" | "cc1" | "cc1plus" | "ld" | "cargo")
            {
                compilers += 1;
            }
        }
    }
    format!(
        "{when}: load average {load}, {compilers} compiler/cargo processes, {:.0} CPU-seconds used by other processes since the start",
        other_cpu_secs()
    )
}

/// CPU ticks (1/100 s) used by processes that are not this driver or its
/// descendants (other builds and tests sharing the machine), summed by a sampler.
static OTHER_TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn other_cpu_secs() -> f64 {
    OTHER_TICKS.load(std::sync::atomic::Ordering::Relaxed) as f64 / 100.0
}

/// (pid, ppid, utime + stime) of every user-space process.
fn processes() -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, flags 9.
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        let (Some(ppid), Some(flags), Some(ut), Some(st)) = (num(4), num(9), num(14), num(15))
        else {
            continue;
        };
        const PF_KTHREAD: u64 = 0x0020_0000;
        if flags & PF_KTHREAD != 0 {
            continue;
        }
        out.push((pid, ppid as u32, ut + st));
    }
    out
}

/// Starts the sampler behind [`other_cpu_secs`] (every 250 ms, for the life of the process).
fn start_cpu_sampler() {
    std::thread::spawn(|| {
        let me = std::process::id();
        let mut last: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        let mut first = true;
        loop {
            let procs = processes();
            let parent: std::collections::HashMap<u32, u32> =
                procs.iter().map(|&(p, pp, _)| (p, pp)).collect();
            let ours = |mut p: u32| {
                for _ in 0..64 {
                    if p == me {
                        return true;
                    }
                    match parent.get(&p) {
                        Some(&pp) if pp != 0 => p = pp,
                        _ => return false,
                    }
                }
                false
            };
            let mut now = std::collections::HashMap::new();
            let mut add = 0;
            for &(pid, _, ticks) in &procs {
                now.insert(pid, ticks);
                if first || ours(pid) {
                    continue;
                }
                add += ticks.saturating_sub(last.get(&pid).copied().unwrap_or(0));
            }
            OTHER_TICKS.fetch_add(add, std::sync::atomic::Ordering::Relaxed);
            last = now;
            first = false;
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

#[derive(Debug, Default)]
struct Report {
    seconds: u32,
    machine: Machine,
    rows: Vec<Row>,
    timings: Timings,
    contention: Vec<String>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}"))
}

/// One timing figure of a sample, in seconds.
type Getter = fn(&Sample) -> Option<Result<f64, String>>;

fn secs(d: &Option<Result<Duration, String>>) -> Option<Result<f64, String>> {
    d.as_ref()
        .map(|r| r.as_ref().map(Duration::as_secs_f64).map_err(Clone::clone))
}

/// "median | each" cells for a timing row.
fn summary(samples: &[Sample], get: Getter) -> String {
    let all: Vec<Result<f64, String>> = samples.iter().filter_map(get).collect();
    if all.is_empty() {
        return "not measured | ".into();
    }
    let mut ok: Vec<f64> = all
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    ok.sort_by(f64::total_cmp);
    let median = ok
        .get(ok.len() / 2)
        .map_or_else(|| "n/a".into(), |m| format!("{m:.2} s"));
    let each = all
        .iter()
        .map(|r| match r {
            Ok(v) => format!("{v:.2}"),
            Err(e) => format!("failed: {}", e.replace('|', "/")),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{median} | {each}")
}

impl Report {
    fn row(&self, k: RowKind) -> Option<&Figures> {
        self.rows.iter().find(|r| r.kind == k).map(|r| &r.f)
    }

    fn mbps(&self, k: RowKind) -> Option<f64> {
        self.row(k).and_then(|f| f.mbps)
    }

    fn ratios(&self) -> String {
        format!(
            "ratios: direct/wireguard-go={} relay/direct={} userspace/onetun={}",
            fmt_ratio(ratio(
                self.mbps(RowKind::Direct),
                self.mbps(RowKind::WireguardGo)
            )),
            fmt_ratio(ratio(self.mbps(RowKind::Relay), self.mbps(RowKind::Direct))),
            fmt_ratio(ratio(
                self.mbps(RowKind::Userspace),
                self.mbps(RowKind::Onetun)
            )),
        )
    }

    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Figures of one run of `bench/run` (driver: `crates/lab/src/bin/lab-bench.rs`), {}.\n",
            m.date
        );
        let _ = writeln!(
            s,
            "**Machine:** {}, {} cores, {} RAM; {}, kernel {}.\n",
            m.cpu, m.cores, m.memory, m.os, m.kernel
        );
        let _ = writeln!(
            s,
            "**Load while measuring** (other builds may share the machine):\n"
        );
        for c in &self.contention {
            let _ = writeln!(s, "- {c}");
        }
        let _ = writeln!(
            s,
            "\n**How:** the lab's namespaces (office host → NAT router → internet ← NAT router ← plant host → machine LAN). \
             Each row: iperf3, one TCP stream, {} s, office host → `iperf3 -s` on 192.168.1.10 in the machine-LAN namespace \
             (receiver's figure; sender's retransmits), then `ping -c {PING_COUNT} -i 0.2 192.168.1.10` (average RTT). \
             Drawbridge direct and userspace: cone NAT on both sides; Drawbridge via relay: symmetric NAT on both sides \
             (the relay is the WebSocket relay inside `drawbridge-server` on the \"internet\" namespace). \
             Baselines run between the same office and plant hosts over the same cone NAT routers, UDP straight to the \
             peer router's WAN address; the plant host routes (and masquerades) to the LAN. All userspace: \
             Drawbridge's edge terminates TCP in smoltcp and opens its own connection to the LAN; \
             wireguard-go, boringtun-cli and OpenVPN (`--disable-dco`) route IP packets through the kernel; \
             onetun, like `-L`, terminates TCP in a userspace stack on the office side. \
             Ratios: throughput ÷ wireguard-go's (higher is better), RTT ÷ wireguard-go's (lower is better). \
             \"Other load\": CPU (in cores of the {} here) that processes other than this benchmark used during the row's iperf3 run.\n",
            self.seconds, m.cores
        );
        let wg = self.row(RowKind::WireguardGo);
        let _ = writeln!(
            s,
            "| setup | path | TCP throughput | × wireguard-go | retransmits | ping RTT | × wireguard-go | other load |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
        for k in RowKind::ALL {
            let Some(f) = self.row(k) else {
                let _ = writeln!(s, "| {} | not run | | | | | | |", k.label());
                continue;
            };
            let mbps = match (f.mbps, &f.error) {
                (Some(m), _) => format!("{m:.0} Mbit/s"),
                (None, Some(e)) => format!("failed: {}", e.replace('|', "/")),
                (None, None) => "n/a".into(),
            };
            let ping = match (f.ping_ms, &f.ping_note) {
                (Some(p), None) => format!("{p:.3} ms"),
                (Some(p), Some(n)) => format!("{p:.3} ms ({n})"),
                (None, Some(n)) => n.replace('|', "/"),
                (None, None) => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                k.label(),
                f.path.replace('|', "/"),
                mbps,
                fmt_ratio(ratio(f.mbps, wg.and_then(|w| w.mbps))),
                f.retransmits.map_or_else(|| "".into(), |r| r.to_string()),
                ping,
                if f.ping_ms.is_some() {
                    fmt_ratio(ratio(f.ping_ms, wg.and_then(|w| w.ping_ms)))
                } else {
                    String::new()
                },
                f.other_load
                    .map_or_else(String::new, |l| format!("{l:.2} cores")),
            );
        }
        let t = &self.timings;
        let _ = writeln!(
            s,
            "\n| Drawbridge timing ({SAMPLES} session starts each) | median | each |\n|---|---:|---|"
        );
        let rows: [(&str, &[Sample], Getter); 5] = [
            (
                "session start (API) → first Modbus reply, cone NAT, TUN (a read every 50 ms)",
                &t.direct,
                |x| secs(&x.modbus),
            ),
            (
                "session start (API) → first Modbus reply, symmetric NAT (relay), TUN",
                &t.relay,
                |x| secs(&x.modbus),
            ),
            (
                "direct-path upgrade: the client's relay connection (its first handshake goes out on it) → the edge switches to direct (server and edge logs, µs timestamps)",
                &t.direct,
                |x| secs(&x.upgrade),
            ),
            (
                "first Modbus reply − the edge's switch to direct (negative: the reply came first)",
                &t.direct,
                |x| x.reply_after_direct_ms.map(|ms| Ok(ms as f64 / 1000.0)),
            ),
            (
                "session start → the client's `drawbridge status` says direct (status file rewritten every 1 s)",
                &t.direct,
                |x| x.status_direct.map(|d| Ok(d.as_secs_f64())),
            ),
        ];
        for (what, samples, get) in rows {
            let _ = writeln!(s, "| {what} | {} |", summary(samples, get));
        }
        let slow: Vec<&Sample> = t
            .direct
            .iter()
            .chain(&t.relay)
            .filter(|x| matches!(x.modbus, Some(Ok(d)) if d > Duration::from_secs(1)))
            .collect();
        if !slow.is_empty() {
            let _ = writeln!(
                s,
                "\nSlow session starts (first Modbus reply after more than 1 s):\n"
            );
            for x in slow {
                let _ = writeln!(
                    s,
                    "- {}: {}; the session's relay connections (edge and client keys), ms after the start request: {}",
                    x.name,
                    secs(&x.modbus)
                        .and_then(Result::ok)
                        .map_or_else(String::new, |v| format!("{v:.2} s")),
                    x.relay_events
                        .iter()
                        .map(|(ms, what, peer)| format!("+{ms} {what} {peer}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let _ = writeln!(s, "\nVersions:\n");
        for (name, v) in &m.versions {
            let _ = writeln!(s, "- {name}: {v}");
        }
        let _ = writeln!(s, "\n{}", self.ratios());
        s
    }
}
