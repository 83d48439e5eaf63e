//! The VNC server under test and what changes its screen: TigerVNC's `Xvnc`
//! (Debian's `tigervnc-standalone-server`) on a loopback address, and a
//! painter, a minimal X11 client speaking the core protocol over Xvnc's Unix
//! socket that fills the whole root window with another solid colour at each
//! step (`ChangeWindowAttributes` background-pixel + `ClearArea`, the same
//! requests `xsetroot -solid` makes, without a process per colour), then
//! waits for the server to have done it (`GetInputFocus` round trip).

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `Xvnc`; this PID alone is killed when it is stopped or dropped.
pub struct Xvnc {
    child: Child,
    pub pid: u32,
    pub display: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl Xvnc {
    /// Starts `Xvnc -displayfd … -rfbport PORT -interface IP -SecurityTypes
    /// None -geometry WxH -depth 24 -AlwaysShared` and waits for its RFB
    /// greeting; the X display is the one Xvnc picked and wrote on the
    /// display fd.
    pub async fn start(ip: Ipv4Addr, width: u16, height: u16) -> anyhow::Result<Xvnc> {
        if !on_path("Xvnc") {
            bail!(
                "Xvnc not found: apt-get install tigervnc-standalone-server (TigerVNC's X server)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("drawbridge-loadtest-xvnc-")
            .tempdir()?;
        let log = dir.path().join("xvnc.log");
        // Taken and freed: Xvnc may lose it to another program, then the start fails.
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("a free port on {ip} (a loopback address)"))?
            .port();
        let mut child = Command::new("Xvnc")
            .args(["-displayfd", "1", "-nolisten", "tcp"])
            .args(["-rfbport", &port.to_string(), "-interface", &ip.to_string()])
            .args(["-SecurityTypes", "None", "-AlwaysShared"])
            .args(["-geometry", &format!("{width}x{height}"), "-depth", "24"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting Xvnc")?;
        let pid = child.id().context("Xvnc's process id")?;
        let stdout = child.stdout.take().context("Xvnc's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let display = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let display = match display {
            Ok(Ok(Some(l))) => l.trim().parse::<u32>().ok(),
            _ => None,
        };
        let mut x = Xvnc {
            child,
            pid,
            display: display.unwrap_or(0),
            ip,
            port,
            log,
            _dir: dir,
        };
        if display.is_none() {
            let log = x.log_tail();
            x.stop().await;
            bail!("Xvnc did not say its display within 20 s; its log:\n{log}");
        }
        // The RFB port answers with a greeting.
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await {
                use tokio::io::AsyncReadExt;
                let mut g = [0u8; 12];
                let r = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut g)).await;
                if matches!(r, Ok(Ok(_))) && g.starts_with(b"RFB ") {
                    return Ok(x);
                }
            }
            if tokio::time::Instant::now() > until || x.child.try_wait()?.is_some() {
                let log = x.log_tail();
                x.stop().await;
                bail!("Xvnc did not answer on {ip}:{port}; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        crate::server::log_tail(&self.log)
    }

    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The painter's figures, shared with the thread that paints.
#[derive(Default)]
pub struct Painted {
    pub paints: AtomicU64,
    stop: AtomicBool,
    error: std::sync::Mutex<Option<String>>,
}

impl Painted {
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// A thread painting the whole screen of display `display` with a new
/// colour `hz` times a second (0: as fast as the X server takes it).
pub struct Painter {
    pub painted: Arc<Painted>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Painter {
    pub fn start(display: u32, hz: f64) -> anyhow::Result<Painter> {
        let mut x = X11::connect(display)?;
        // One paint before the thread runs: the connection works.
        x.fill(0x20_40_60)?;
        let painted = Arc::new(Painted::default());
        let p = painted.clone();
        let thread = std::thread::Builder::new()
            .name("painter".into())
            .spawn(move || {
                let step = (hz > 0.0).then(|| Duration::from_secs_f64(1.0 / hz));
                let mut next = Instant::now();
                // Colours far apart: every pixel changes at every step.
                let colours = [
                    0x33_66_99u32,
                    0xcc_66_33,
                    0x99_cc_33,
                    0x66_33_cc,
                    0xee_ee_ee,
                ];
                let mut i = 0usize;
                while !p.stop.load(Ordering::Relaxed) {
                    if let Err(e) = x.fill(colours[i % colours.len()]) {
                        if let Ok(mut slot) = p.error.lock() {
                            *slot = Some(format!("painting: {e:#}"));
                        }
                        return;
                    }
                    i += 1;
                    p.paints.fetch_add(1, Ordering::Relaxed);
                    if let Some(step) = step {
                        next += step;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            // Behind: no burst to catch up.
                            next = now;
                        }
                    }
                }
            })?;
        Ok(Painter {
            painted,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.painted.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection to an X server speaking the core protocol (little-endian).
struct X11 {
    s: UnixStream,
    root: u32,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn u16le(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl X11 {
    /// Connects to `/tmp/.X11-unix/X{display}` without authorisation (Xvnc
    /// started without `-auth` lets local clients in) and finds the root window.
    fn connect(display: u32) -> anyhow::Result<X11> {
        let path = format!("/tmp/.X11-unix/X{display}");
        let mut s = UnixStream::connect(&path).with_context(|| format!("connecting to {path}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // Byte order 'l', protocol 11.0, no authorisation name or data.
        s.write_all(&[b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head)
            .context("the X server's setup answer")?;
        let mut rest = vec![0u8; u16le(&head, 6) * 4];
        s.read_exact(&mut rest)?;
        if head[0] != 1 {
            let reason = String::from_utf8_lossy(&rest[..usize::from(head[1]).min(rest.len())]);
            bail!("the X server refused the connection: {reason}");
        }
        // Setup data: vendor length at 16, formats at 21, vendor from 32,
        // then 8 bytes a pixmap format, then the first screen (its root first).
        if rest.len() < 32 {
            bail!("short X setup answer");
        }
        let vendor = u16le(&rest, 16);
        let formats = usize::from(rest[21]);
        let screen = 32 + vendor + pad4(vendor) + 8 * formats;
        let root = rest
            .get(screen..screen + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .context("no screen in the X setup answer")?;
        Ok(X11 { s, root })
    }

    /// The whole root window in `pixel` (0xRRGGBB at depth 24), done when this answers.
    fn fill(&mut self, pixel: u32) -> anyhow::Result<()> {
        let mut req = Vec::with_capacity(36);
        // ChangeWindowAttributes(root, background-pixel).
        req.extend_from_slice(&[2, 0, 4, 0]);
        req.extend_from_slice(&self.root.to_le_bytes());
        req.extend_from_slice(&2u32.to_le_bytes());
        req.extend_from_slice(&pixel.to_le_bytes());
        // ClearArea(root, 0, 0, 0, 0): the whole window, no exposures.
        req.extend_from_slice(&[61, 0, 4, 0]);
        req.extend_from_slice(&self.root.to_le_bytes());
        req.extend_from_slice(&[0; 8]);
        // GetInputFocus: its reply says the two above were done.
        req.extend_from_slice(&[43, 0, 1, 0]);
        self.s.write_all(&req)?;
        loop {
            let mut m = [0u8; 32];
            self.s.read_exact(&mut m).context("the X server's reply")?;
            match m[0] {
                0 => bail!("X error {} (request {})", m[1], m[10]),
                1 => {
                    // A reply: 32 bytes and 4 × length more.
                    let more = u32::from_le_bytes([m[4], m[5], m[6], m[7]]) as usize * 4;
                    let mut skip = vec![0u8; more];
                    self.s.read_exact(&mut skip)?;
                    return Ok(());
                }
                // An event: not asked for, skipped.
                _ => {}
            }
        }
    }
}
