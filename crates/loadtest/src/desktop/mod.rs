//! `--desktop`: a VNC desktop in the browser, measured (issue: "a 1920×1080
//! VNC desktop at ≥ 20 updates/s through the relayed path; recording adds
//! < 10 % CPU"). On loopback with the real binaries:
//!
//! - a real VNC server ([`vnc::Xvnc`], TigerVNC) on 127.0.0.60 whose whole
//!   screen a painter ([`vnc::Painter`]) fills with another colour
//!   `paint_hz` times a second;
//! - a device releasing it and marking it `vnc`, a real `drawbridge-edge`,
//!   a started session ([`site::Site`]); the server's own peer is the
//!   session's only tunnel, and its path (the edge's report) is printed;
//! - per encoding and recording mode (the account's `desktop_recording`,
//!   `required` then `off`; `recording_max_mb` at its 4096 maximum while
//!   measuring) the desktop opened as a browser does and read by a minimal
//!   RFB viewer ([`rfb`]) that asks for the whole screen again after each
//!   update. After a warm-up, over a window: updates and bytes a second, the
//!   time between updates and from a request to its whole update, and the
//!   CPU time of the server, the edge, Xvnc and this tool from
//!   `/proc/PID/stat` — the server's per update and per MiB.
//!
//! Figures, never assertions: a missed goal is reported, not failed.

pub mod report;
pub mod rfb;
pub mod site;
pub mod vnc;

use crate::procfs;
use crate::server::Target;
use anyhow::{Context, bail};
use drawbridge_api_client::Client;
use futures_util::{SinkExt, StreamExt};
use report::{DesktopReport, RunFigures};
use rfb::{Encoding, Event, Rfb};
use serde_json::{Value, json};
use site::{Site, Ws};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The goals.
pub const GOAL_UPDATES_PER_SEC: f64 = 20.0;
pub const GOAL_RECORDING_PERCENT: f64 = 10.0;
/// Where the VNC server listens (the edge's "LAN").
pub const VNC_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);

pub struct Options {
    pub width: u16,
    pub height: u16,
    pub encodings: Vec<Encoding>,
    /// Colours a second the painter tries (0: as fast as Xvnc takes them).
    pub paint_hz: f64,
    pub warmup: Duration,
    pub window: Duration,
    /// Windows per mode and encoding, alternating required and off.
    pub rounds: u16,
    pub quiet: bool,
}

/// The account's largest recording (`recording_max_mb`'s maximum), which the
/// tool sets while measuring.
const RECORDING_MAX_MIB: f64 = 4096.0;

impl Options {
    /// The window for `encoding`: `window`, shortened for Raw so that the
    /// warm-up and the window together record at most 90 % of the account's
    /// largest recording at the painter's rate (60 a second when it paints as
    /// fast as it can): the server would end a `required` window at the limit.
    pub fn window_for(&self, encoding: Encoding) -> Duration {
        if encoding != Encoding::Raw {
            return self.window;
        }
        let update_mib = f64::from(self.width) * f64::from(self.height) * 4.0 / 1048576.0;
        let rate = if self.paint_hz > 0.0 {
            self.paint_hz
        } else {
            60.0
        };
        let fits = 0.9 * RECORDING_MAX_MIB / (update_mib * rate) - self.warmup.as_secs_f64();
        self.window.min(Duration::from_secs_f64(fits.max(5.0)))
    }
}

/// What the viewer counts; the measured window reads differences.
#[derive(Default)]
struct Counters {
    updates: AtomicU64,
    update_bytes: AtomicU64,
    pixels: AtomicU64,
    /// Updates whose rectangles cover the whole screen.
    full: AtomicU64,
    messages: AtomicU64,
    received: AtomicU64,
    measuring: AtomicBool,
    /// Over the window: ms between updates, ms from a request to its whole update.
    intervals: Mutex<Vec<f32>>,
    latencies: Mutex<Vec<f32>>,
    screen: Mutex<Option<(u16, u16)>>,
}

/// CPU seconds of the processes measured, at one moment.
struct Cpu {
    at: Instant,
    server: Option<f64>,
    edge: f64,
    xvnc: f64,
    tool: f64,
    machine: (u64, u64),
}

fn cpu_secs(pid: u32) -> f64 {
    procfs::sample(&pid.to_string(), "desktop").map_or(f64::NAN, |s| s.cpu_secs)
}

impl Cpu {
    fn now(server: Option<u32>, edge: u32, xvnc: u32) -> Cpu {
        Cpu {
            at: Instant::now(),
            server: server.map(cpu_secs),
            edge: cpu_secs(edge),
            xvnc: cpu_secs(xvnc),
            tool: procfs::sample("self", "desktop").map_or(f64::NAN, |s| s.cpu_secs),
            machine: crate::dos::machine_ticks(),
        }
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

/// The viewer: reads the WebSocket, frames RFB, asks for the next update
/// after each, counts; until `stop`, then closes the WebSocket.
async fn view(
    mut ws: Ws,
    encodings: Vec<Encoding>,
    c: Arc<Counters>,
    stop: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut rfb = Rfb::new(&encodings);
    let mut out = Vec::new();
    let mut requested = Instant::now();
    let mut last_update: Option<Instant> = None;
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.notified() => {
                let _ = ws.close(None).await;
                // Until the server's close: the desktop ends as a closed viewer.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Ok(());
            }
        };
        let data = match m {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(f))) => {
                bail!(
                    "the server closed the desktop: {}",
                    f.map(|f| f.reason.to_string()).unwrap_or_default()
                )
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("the desktop's WebSocket: {e}"),
            None => bail!("the desktop's WebSocket ended"),
        };
        c.messages.fetch_add(1, Ordering::Relaxed);
        c.received.fetch_add(data.len() as u64, Ordering::Relaxed);
        for ev in rfb.feed(&data, &mut out)? {
            match ev {
                Event::Ready { width, height } => {
                    if let Ok(mut s) = c.screen.lock() {
                        *s = Some((width, height));
                    }
                }
                Event::Update(u) => {
                    let now = Instant::now();
                    c.updates.fetch_add(1, Ordering::Relaxed);
                    c.update_bytes.fetch_add(u.bytes, Ordering::Relaxed);
                    c.pixels.fetch_add(u.pixels, Ordering::Relaxed);
                    if u.pixels >= u64::from(rfb.width) * u64::from(rfb.height) {
                        c.full.fetch_add(1, Ordering::Relaxed);
                    }
                    if c.measuring.load(Ordering::Relaxed) {
                        let ms = |d: Duration| d.as_secs_f32() * 1e3;
                        if let (Some(l), Ok(mut v)) = (last_update, c.intervals.lock()) {
                            v.push(ms(now - l));
                        }
                        if let Ok(mut v) = c.latencies.lock() {
                            v.push(ms(now - requested));
                        }
                    }
                    last_update = Some(now);
                }
            }
        }
        if !out.is_empty() {
            ws.send(Message::Binary(std::mem::take(&mut out).into()))
                .await
                .context("sending to the desktop")?;
            requested = Instant::now();
        }
    }
}

/// The account's settings with `desktop_recording` set to `mode` and the
/// largest recording allowed.
async fn set_recording(admin: &Client, base: &Value, mode: &str) -> anyhow::Result<()> {
    let mut s = base.clone();
    s["desktop_recording"] = json!(mode);
    s["recording_max_mb"] = json!(4096);
    let _: Value = admin
        .patch("/account", &json!({"settings": s}))
        .await
        .with_context(|| format!("setting desktop_recording to {mode}"))?;
    Ok(())
}

/// The session's desktop records.
async fn desktops(admin: &Client, session: &str) -> anyhow::Result<Vec<Value>> {
    Ok(admin
        .get(&format!("/desktops?session_id={session}&limit=100"))
        .await?)
}

/// Everything a run needs besides its encoding and mode.
struct Bench<'a> {
    o: &'a Options,
    admin: &'a Client,
    browser: reqwest::Client,
    site: &'a Site,
    server_pid: Option<u32>,
    xvnc: &'a vnc::Xvnc,
}

impl Bench<'_> {
    async fn run(&self, encoding: Encoding, mode: &str) -> anyhow::Result<RunFigures> {
        let before: Vec<String> = desktops(self.admin, &self.site.session_id)
            .await?
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect();
        let painter = vnc::Painter::start(self.xvnc.display, self.o.paint_hz)?;
        let result = self.measure(encoding, mode, &painter).await;
        painter.stop();
        let mut f = result?;
        // The desktop's record, once it ended (what is pending is stored first).
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let list = desktops(self.admin, &self.site.session_id).await?;
            let new = list.iter().find(|d| {
                d["id"]
                    .as_str()
                    .is_some_and(|id| !before.iter().any(|b| b == id))
            });
            if let Some(d) = new.filter(|d| d["live"] == false) {
                f.recorded_mib = d["bytes"].as_f64().map(|b| b / 1048576.0);
                f.end_reason = d["end_reason"].as_str().map(str::to_string);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(f)
    }

    async fn measure(
        &self,
        encoding: Encoding,
        mode: &str,
        painter: &vnc::Painter,
    ) -> anyhow::Result<RunFigures> {
        let o = self.o;
        let ws = site::open_desktop(self.admin, &self.browser, self.site).await?;
        let c = Arc::new(Counters::default());
        let stop = Arc::new(tokio::sync::Notify::new());
        let viewer = tokio::spawn(view(ws, vec![encoding], c.clone(), stop.clone()));
        // The handshake and the first (full) update.
        let first = Instant::now() + Duration::from_secs(30);
        while c.updates.load(Ordering::Relaxed) == 0 && !viewer.is_finished() {
            if Instant::now() > first {
                bail!("no update from the desktop within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(o.warmup).await;
        let snap = |c: &Counters| {
            (
                c.updates.load(Ordering::Relaxed),
                c.update_bytes.load(Ordering::Relaxed),
                c.full.load(Ordering::Relaxed),
                c.messages.load(Ordering::Relaxed),
                painter.painted.paints.load(Ordering::Relaxed),
            )
        };
        let (edge, xvnc) = (self.site.edge_pid, self.xvnc.pid);
        c.measuring.store(true, Ordering::Relaxed);
        let (s0, cpu0) = (snap(&c), Cpu::now(self.server_pid, edge, xvnc));
        let mut rss = Vec::new();
        let end = cpu0.at + o.window_for(encoding);
        while Instant::now() < end && !viewer.is_finished() {
            tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(end)).await;
            if let Some(s) = self
                .server_pid
                .and_then(|p| procfs::sample(&p.to_string(), "").ok())
            {
                rss.push(s.rss_kib as f64 / 1024.0);
            }
            if !o.quiet {
                eprintln!(
                    "desktop {} recording {mode}: {} updates, {:.0} MiB",
                    encoding.name(),
                    c.updates.load(Ordering::Relaxed),
                    c.received.load(Ordering::Relaxed) as f64 / 1048576.0
                );
            }
        }
        let (s1, cpu1) = (snap(&c), Cpu::now(self.server_pid, edge, xvnc));
        c.measuring.store(false, Ordering::Relaxed);
        stop.notify_one();
        match viewer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("the viewer")),
            Err(e) => bail!("the viewer panicked: {e}"),
        }
        if let Some(e) = painter.painted.error() {
            bail!("{e}");
        }
        let dt = (cpu1.at - cpu0.at).as_secs_f64().max(1e-3);
        let updates = s1.0 - s0.0;
        let mib = (s1.1 - s0.1) as f64 / 1048576.0;
        let server = match (cpu0.server, cpu1.server) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let ((b0, t0), (b1, t1)) = (cpu0.machine, cpu1.machine);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (width, height) = c.screen.lock().ok().and_then(|s| *s).unwrap_or_default();
        let mut intervals = c.intervals.lock().map(|v| v.clone()).unwrap_or_default();
        let mut latencies = c.latencies.lock().map(|v| v.clone()).unwrap_or_default();
        let per = |secs: f64, n: f64| (n > 0.0).then(|| secs * 1e3 / n);
        Ok(RunFigures {
            encoding,
            recording: mode.to_string(),
            width,
            height,
            window_secs: dt,
            paints_per_sec: (s1.4 - s0.4) as f64 / dt,
            updates,
            updates_per_sec: updates as f64 / dt,
            mib_per_sec: mib / dt,
            ws_messages_per_sec: (s1.3 - s0.3) as f64 / dt,
            mean_update_kib: (s1.1 - s0.1) as f64 / 1024.0 / updates.max(1) as f64,
            full_screen_percent: (s1.2 - s0.2) as f64 * 100.0 / updates.max(1) as f64,
            interval_p50_ms: percentile(&mut intervals, 0.5),
            interval_p99_ms: percentile(&mut intervals, 0.99),
            interval_max_ms: percentile(&mut intervals, 1.0),
            request_to_update_p50_ms: percentile(&mut latencies, 0.5),
            request_to_update_p99_ms: percentile(&mut latencies, 0.99),
            server_cpu_percent: server.map(|s| s / dt * 100.0),
            server_ms_per_update: server.and_then(|s| per(s, updates as f64)),
            server_ms_per_mib: server.and_then(|s| per(s, mib)),
            edge_cpu_percent: (cpu1.edge - cpu0.edge) / dt * 100.0,
            edge_ms_per_mib: per(cpu1.edge - cpu0.edge, mib).unwrap_or(f64::NAN),
            xvnc_cpu_percent: (cpu1.xvnc - cpu0.xvnc) / dt * 100.0,
            tool_cpu_percent: (cpu1.tool - cpu0.tool) / dt * 100.0,
            machine_busy_cores: if t1 > t0 {
                (b1 - b0) as f64 / (t1 - t0) as f64 * cores
            } else {
                f64::NAN
            },
            server_rss_mib: (!rss.is_empty()).then(|| rss.iter().copied().fold(0.0, f64::max)),
            recorded_mib: None,
            end_reason: None,
        })
    }
}

/// Resolves every name to 127.0.0.1, as browsers do for `*.localhost`.
struct Localhost;

impl reqwest::dns::Resolve for Localhost {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// Runs every (encoding, recording) pair against `target` with `admin` logged in.
pub async fn run(
    o: &Options,
    target: &Target,
    admin: &Client,
    database: &str,
) -> anyhow::Result<DesktopReport> {
    let (load_start, compilers_start) = (crate::dos::loadavg(), crate::dos::compilers());
    let account: Value = admin.get("/account").await.context("the account")?;
    let settings = account["settings"].clone();
    let mut xvnc = vnc::Xvnc::start(VNC_IP, o.width, o.height).await?;
    let vnc = SocketAddrV4::new(xvnc.ip, xvnc.port);
    let site = match Site::start(target, admin, vnc).await {
        Ok(s) => s,
        Err(e) => {
            xvnc.stop().await;
            return Err(e);
        }
    };
    let ca = std::fs::read(&target.ca_file).context("reading the CA certificate")?;
    let browser = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .dns_resolver(Arc::new(Localhost))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let bench = Bench {
        o,
        admin,
        browser,
        site: &site,
        server_pid: target.pid,
        xvnc: &xvnc,
    };
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    let rounds = (0..o.rounds).flat_map(|_| ["required", "off"]);
    'all: for &encoding in &o.encodings {
        for mode in rounds.clone() {
            let r = match set_recording(admin, &settings, mode).await {
                Ok(()) => bench.run(encoding, mode).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(f) => runs.push(f),
                Err(e) => {
                    errors.push(format!("{} / recording {mode}: {e:#}", encoding.name()));
                    if site.tunnels(admin).await.is_err() {
                        break 'all;
                    }
                }
            }
        }
    }
    let tunnels = site.tunnels(admin).await.unwrap_or_default();
    let (path, path_reason) = match tunnels.as_slice() {
        [t] => (
            t.path.clone().unwrap_or_else(|| "not reported".into()),
            t.path_reason.clone().unwrap_or_default(),
        ),
        [] => ("no tunnel".into(), String::new()),
        many => (
            format!(
                "{} tunnels: {:?}",
                many.len(),
                many.iter().map(|t| &t.path).collect::<Vec<_>>()
            ),
            String::new(),
        ),
    };
    if let Err(e) = admin
        .patch::<_, Value>("/account", &json!({"settings": settings}))
        .await
    {
        errors.push(format!("restoring the account's settings: {e}"));
    }
    if !errors.is_empty() {
        errors.push(format!("the edge's log:\n{}", site.edge_log()));
        errors.push(format!("Xvnc's log:\n{}", xvnc.log_tail()));
    }
    let _ = admin
        .post::<_, Value>(&format!("/sessions/{}/end", site.session_id), &json!({}))
        .await;
    site.stop().await;
    xvnc.stop().await;
    Ok(DesktopReport {
        machine: crate::data::Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpu_model(),
            load_start,
            load_end: crate::dos::loadavg(),
            compilers_start,
            compilers_end: crate::dos::compilers(),
        },
        database: database.to_string(),
        path,
        path_reason,
        paint_hz: o.paint_hz,
        runs,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(width: u16, height: u16, paint_hz: f64) -> Options {
        Options {
            width,
            height,
            encodings: vec![Encoding::Raw, Encoding::Zrle],
            paint_hz,
            warmup: Duration::from_secs(3),
            window: Duration::from_secs(20),
            rounds: 1,
            quiet: true,
        }
    }

    #[test]
    fn a_raw_window_records_less_than_the_accounts_largest_recording() {
        for (w, h, hz) in [(1920, 1080, 30.0), (1920, 1080, 0.0), (3840, 2160, 30.0)] {
            let o = options(w, h, hz);
            let secs = (o.warmup + o.window_for(Encoding::Raw)).as_secs_f64();
            let rate = if hz > 0.0 { hz } else { 60.0 };
            let mib = secs * rate * f64::from(w) * f64::from(h) * 4.0 / 1048576.0;
            assert!(
                mib <= RECORDING_MAX_MIB || o.window_for(Encoding::Raw).as_secs() == 5,
                "{w}×{h} at {hz}: {mib} MiB"
            );
        }
        let o = options(1920, 1080, 30.0);
        let raw = o.window_for(Encoding::Raw).as_secs_f64();
        assert!((12.0..13.0).contains(&raw), "{raw}");
        assert_eq!(o.window_for(Encoding::Zrle), o.window);
        assert_eq!(options(800, 600, 30.0).window_for(Encoding::Raw), o.window);
    }
}
