//! A relayed tunnel for `--dos`: a real `drawbridge-edge` (enrolled, switch on,
//! `DRAWBRIDGE_EDGE_LOOPBACK_LAN=1` so a TCP sink on 127.0.0.1 is its "LAN
//! device") and a real `drawbridge connect -L … --relay-only` (the client sends
//! and accepts no address candidates, so the tunnel stays on the server's
//! WebSocket relay although a direct path would work on one host). Bytes are
//! pumped through the `-L` forward and counted at the sink.

use crate::server::Target;
use anyhow::{Context, bail};
use drawbridge_proto::api::CreatedDevice;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Proxy variables the edge and client must not inherit: everything is on loopback.
const PROXY_VARS: &[&str] = &[
    "DRAWBRIDGE_PROXY",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The tunnel's two ends, running; both are killed when this is dropped.
pub struct Relayed {
    edge: Child,
    client: Child,
    client_bin: PathBuf,
    client_env: Vec<(String, String)>,
    /// The client's `-L` forward to the LAN device.
    pub forward: SocketAddr,
    /// The session and the device behind the edge.
    pub session_id: String,
    pub device_id: String,
    received: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the tool")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to the tool: build it with the same profile (cargo build --release -p drawbridge-edge -p drawbridge)",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A TCP sink on 127.0.0.1: reads and counts whatever arrives.
async fn sink(received: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(addr)
}

/// `bin` without the proxy variables.
pub(crate) fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// `drawbridge-edge --state-dir STATE ARGS…`, to completion.
pub(crate) async fn edge_cmd(bin: &Path, state: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = command(bin)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running drawbridge-edge {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "drawbridge-edge {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn poll<F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what}: not within {secs} s")
}

impl Relayed {
    /// Enrols a device, starts its edge and a relay-only client with a `-L`
    /// forward to the sink, and waits until bytes arrive through the tunnel.
    pub async fn start(
        target: &Target,
        admin: &drawbridge_api_client::Client,
    ) -> anyhow::Result<Relayed> {
        Relayed::start_to(target, admin, None).await
    }

    /// Like [`Relayed::start`], with `lan` (an HTTP server on 127.0.0.1) as
    /// the device instead of the sink, and a client free to go direct; waits
    /// until the device answers through the forward.
    pub async fn start_to(
        target: &Target,
        admin: &drawbridge_api_client::Client,
        lan: Option<SocketAddr>,
    ) -> anyhow::Result<Relayed> {
        let edge_bin = sibling("drawbridge-edge")?;
        let client_bin = sibling("drawbridge")?;
        let dir = tempfile::tempdir()?;
        let received = Arc::new(AtomicU64::new(0));
        let sink = match lan {
            Some(a) => a,
            None => sink(received.clone()).await?,
        };
        let name = format!("lt-relay-{:08x}", rand::random::<u32>());
        let created: CreatedDevice = admin
            .post(
                "/devices",
                &json!({
                    "name": name,
                    "lan_subnets": ["192.168.1.0/24"],
                    "firewall": [{"address": "127.0.0.1", "protocol": "tcp", "ports": sink.port().to_string()}],
                }),
            )
            .await
            .context("creating the relay device")?;
        let device = created.device.id.clone();
        let state = dir.path().join("edge");
        let ca = target.ca_file.to_string_lossy().into_owned();
        edge_cmd(
            &edge_bin,
            &state,
            &[
                "enroll",
                "--server",
                &target.url,
                "--activation-key",
                &created.activation.key,
                "--ca-file",
                &ca,
            ],
        )
        .await?;
        edge_cmd(&edge_bin, &state, &["switch", "on"]).await?;
        let mut cmd = Command::new(&edge_bin);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let edge = cmd
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .env("RUST_LOG", "warn")
            .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("edge.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting drawbridge-edge run")?;
        poll("the edge online with its switch on", 30, || async {
            admin
                .get::<Value>(&format!("/devices/{device}"))
                .await
                .is_ok_and(|d| d["status"]["online"] == true && d["status"]["switch_on"] == true)
        })
        .await?;
        let me = admin.me().await?.user.id;
        let session: Value = admin
            .post(
                "/sessions",
                &json!({
                    "name": format!("{name}-session"),
                    "devices": [{"device_id": device, "targets": [{"address": "127.0.0.1", "protocol": "tcp", "ports": sink.port().to_string()}]}],
                    "users": [me],
                }),
            )
            .await
            .context("preparing the session")?;
        let sid = session["id"]
            .as_str()
            .context("the session has no id")?
            .to_string();
        let forward: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let client_env = vec![
            (
                "DRAWBRIDGE_CONFIG_DIR".to_string(),
                dir.path().join("client").to_string_lossy().into_owned(),
            ),
            ("DRAWBRIDGE_SERVER".to_string(), target.url.clone()),
            ("DRAWBRIDGE_CA_FILE".to_string(), ca.clone()),
            (
                "DRAWBRIDGE_TOKEN".to_string(),
                admin.token().context("no admin token")?.to_string(),
            ),
        ];
        let mut cmd = Command::new(&client_bin);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let client = cmd
            .envs(client_env.iter().map(|(k, v)| (k, v)))
            .args(["connect", &sid, "--for-seconds", "36000"])
            .args(lan.is_none().then_some("--relay-only"))
            .arg("-L")
            .arg(format!("{forward}:{sink}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("client.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting drawbridge connect")?;
        let r = Relayed {
            edge,
            client,
            client_bin,
            client_env,
            forward,
            session_id: sid,
            device_id: device,
            received,
            _dir: dir,
        };
        if lan.is_some() {
            // The device answers an HTTP request through the forward: the tunnel is up.
            poll("the device answering through the tunnel", 60, || async {
                let Ok(Ok(mut c)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(r.forward),
                )
                .await
                else {
                    return false;
                };
                let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                let mut buf = [0u8; 12];
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf)).await,
                    Ok(Ok(_)) if buf.starts_with(b"HTTP/1.")
                )
            })
            .await?;
            return Ok(r);
        }
        // Bytes through the forward reach the sink: the tunnel is up.
        poll("bytes through the relayed tunnel", 60, || async {
            let before = r.received.load(Ordering::Relaxed);
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(r.forward),
            )
            .await
            {
                let _ = c.write_all(b"hello").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r.received.load(Ordering::Relaxed) > before
        })
        .await?;
        Ok(r)
    }

    /// The tunnel's path as the client reports it (`drawbridge status --json`).
    pub async fn path(&self) -> String {
        let mut cmd = Command::new(&self.client_bin);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let out = cmd
            .envs(self.client_env.iter().map(|(k, v)| (k, v)))
            .args(["status", "--json"])
            .output()
            .await;
        match out {
            Ok(o) => serde_json::from_slice::<Value>(&o.stdout)
                .ok()
                .and_then(|v| v[0]["devices"][0]["path"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into()),
            Err(_) => "unknown".into(),
        }
    }

    /// Pumps bytes into the forward for half a second (ramp-up), then counts
    /// what reaches the sink for `secs`: Mbit/s.
    pub async fn throughput(&self, secs: f64) -> anyhow::Result<f64> {
        let mut c = tokio::net::TcpStream::connect(self.forward)
            .await
            .context("connecting to the -L forward")?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let buf = vec![0x5au8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if c.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (b0, t0) = (self.received.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (b1, dt) = (
            self.received.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        stop.store(true, Ordering::Relaxed);
        writer.abort();
        let _ = writer.await;
        // Let the tunnel drain before the next figure is taken.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok((b1 - b0) as f64 * 8.0 / dt / 1e6)
    }

    /// The edge's and the client's process ids.
    pub fn pids(&self) -> Vec<u32> {
        [self.edge.id(), self.client.id()]
            .into_iter()
            .flatten()
            .collect()
    }

    pub async fn stop(mut self) {
        let _ = self.client.start_kill();
        let _ = self.client.wait().await;
        let _ = self.edge.start_kill();
        let _ = self.edge.wait().await;
    }
}
