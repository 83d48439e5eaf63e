//! The harness the edge agent's end-to-end tests share: the real
//! `drawbridge-server`, `drawbridge-edge` and `drawbridge` binaries on loopback,
//! blocking API calls as the admin, and small "machine LAN" devices.
#![allow(dead_code)]

pub mod cluster;
pub mod data;
pub mod rdp;
pub mod vnc;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "Blue-Tractor-42";
pub const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub fn edge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drawbridge-edge"))
}

/// A binary of the workspace next to this test's; built once when missing
/// (`cargo test --workspace` has built them all already).
pub fn sibling_bin(name: &str) -> PathBuf {
    let dir = edge_bin().parent().expect("bin dir").to_path_buf();
    let bin = dir.join(name);
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", name])
            .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    bin
}

pub fn server_bin() -> PathBuf {
    sibling_bin("drawbridge-server")
}

/// A child process killed by its own handle when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Server {
    pub proc: Option<Proc>,
    pub data: PathBuf,
    pub port: u16,
}

impl Server {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn start(data: &Path, port: u16) -> Server {
        Server::start_with(data, port, &[])
    }

    /// A server with more flags (`--database …`, `--public-url …`).
    pub fn start_with(data: &Path, port: u16, extra: &[String]) -> Server {
        let mut cmd = Command::new(server_bin());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let child = cmd
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--stun-listen",
                &format!("127.0.0.1:{}", free_udp_port()),
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            // TEST_SERVER_LOG=FILTER shows the server's log (on stderr) while debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_SERVER_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start server");
        let s = Server {
            proc: Some(Proc(child)),
            data: data.to_path_buf(),
            port,
        };
        // The port opens before a first start has written the CA: wait for both.
        wait("the server answers", || {
            data.join("ca.pem").exists()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s
    }

    pub fn stop(&mut self) {
        self.proc.take();
    }
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// Blocking API calls as the admin.
pub struct Api {
    pub http: reqwest::blocking::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn login(s: &Server) -> Api {
        let ca = std::fs::read(s.data.join("ca.pem")).unwrap();
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let v: Value = http
            .post(format!("{}/api/v1/auth/login", s.url()))
            .json(&json!({"account": "acme", "username": "root", "password": PASSWORD}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        Api {
            http,
            base: s.url(),
            token: v["token"].as_str().expect("token").to_string(),
        }
    }
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }
    pub fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).1
    }
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }
}

pub fn edge(state: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(edge_bin());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run drawbridge-edge")
}

pub fn edge_run(state: &Path) -> Proc {
    edge_run_with(state, &[])
}

/// `drawbridge-edge run` with extra arguments (e.g. `--switch-file FILE`).
pub fn edge_run_with(state: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(edge_bin());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    Proc(
        cmd.arg("--state-dir")
            .arg(state)
            .arg("run")
            .args(extra)
            // TEST_EDGE_LOG=FILTER shows the edge's log (on stderr) while debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("TEST_EDGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The "LAN devices" of these tests are servers on 127.0.0.1.
            .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_EDGE_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start edge"),
    )
}

/// Server with account acme/root, a device, an enrolled edge state dir; returns (server, api, device id, edge dir).
pub fn setup(dir: &Path) -> (Server, Api, String, PathBuf) {
    setup_with(dir, free_port(), &[])
}

/// `setup` on `port`, with more server flags (for `init` and `run` alike: `--database …`).
pub fn setup_with(dir: &Path, port: u16, extra: &[String]) -> (Server, Api, String, PathBuf) {
    let data = dir.join("server");
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = Command::new(server_bin())
        .args([
            "init",
            "--account",
            "acme",
            "--admin-user",
            "root",
            "--admin-password-file",
        ])
        .arg(&pw)
        .arg("--data-dir")
        .arg(&data)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start_with(&data, port, extra);
    let api = Api::login(&server);
    let (s, v) = api.post(
        "/devices",
        json!({"name": "press-1", "lan_subnets": ["192.168.1.0/24"], "firewall": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}),
    );
    assert_eq!(s, 200, "{v}");
    let device = v["device"]["id"].as_str().unwrap().to_string();
    let key = v["activation"]["key"].as_str().unwrap().to_string();
    let state = dir.join("edge");
    let ca = data.join("ca.pem");
    let out = edge(
        &state,
        &[
            "enroll",
            "--server",
            &server.url(),
            "--activation-key",
            &key,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&device));
    // The key was single use.
    let again = edge(
        &dir.join("edge2"),
        &[
            "enroll",
            "--server",
            &server.url(),
            "--activation-key",
            &key,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    (server, api, device, state)
}

pub fn session(api: &Api, device: &str, admin_id: &str) -> String {
    let (s, v) = api.post(
        "/sessions",
        json!({"name": "fix", "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}], "users": [admin_id]}),
    );
    assert_eq!(s, 200, "{v}");
    v["id"].as_str().unwrap().to_string()
}

pub fn client_bin() -> PathBuf {
    sibling_bin("drawbridge")
}

pub fn client(config: &Path) -> Command {
    let mut cmd = Command::new(client_bin());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for v in [
        "DRAWBRIDGE_SERVER",
        "DRAWBRIDGE_CA_FILE",
        "DRAWBRIDGE_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("DRAWBRIDGE_CONFIG_DIR", config);
    cmd
}

/// A "machine LAN" TCP device on loopback: echoes what it receives.
pub fn echo_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

pub fn login(server: &Server, config: &Path) {
    login_as(server, config, "acme", "root");
}

pub fn login_as(server: &Server, config: &Path, account: &str, user: &str) {
    use std::io::Write;
    let mut login = client(config)
        .args([
            "login",
            "--server",
            &server.url(),
            "--account",
            account,
            "--user",
            user,
            "--password-stdin",
            "--ca-file",
        ])
        .arg(server.data.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A SOCKS5 CONNECT to `dst` through the proxy at `proxy`; returns the reply code.
pub fn socks_connect(
    proxy: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) -> (u8, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(hello, [5, 0]);
    let std::net::SocketAddr::V4(v4) = dst else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    (reply[1], s)
}

/// A session on a running edge: releases `ports` on 127.0.0.1 (with the
/// device's `web_services`, for browser access), turns the switch on, runs the
/// edge until it is online, and starts a session of the admin releasing those
/// ports. Answers the session and the running edge.
pub fn lan_session(
    api: &Api,
    device: &str,
    state: &Path,
    ports: &[u16],
    web_services: Value,
) -> (String, Proc) {
    let targets: Vec<Value> = ports
        .iter()
        .map(|p| json!({"address": "127.0.0.1", "protocol": "tcp", "ports": p.to_string()}))
        .collect();
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({ "firewall": targets, "web_services": web_services })),
    );
    assert_eq!(code, 200, "{v}");
    edge(state, &["switch", "on"]);
    let agent = edge_run(state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let (code, v) = api.post(
        "/sessions",
        json!({"name": "hmi", "devices": [{"device_id": device, "targets": targets}], "users": [me]}),
    );
    assert_eq!(code, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
    let (code, v) = api.post(&format!("/sessions/{sid}/start"), json!({}));
    assert_eq!(code, 200, "{v}");
    (sid, agent)
}

/// A "browser": trusts the server's CA, follows no redirects, and resolves
/// `host` (a device origin) to loopback. The port comes from the URL, so a
/// URL names the server (or replica) it goes to.
pub fn web_browser(server: &Server, host: &str) -> reqwest::blocking::Client {
    let ca = std::fs::read(server.data.join("ca.pem")).unwrap();
    reqwest::blocking::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(
            host,
            std::net::SocketAddr::from(([127, 0, 0, 1], server.port)),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The host of a device origin `https://HOST:PORT`.
pub fn origin_host(origin: &str) -> String {
    origin
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A Modbus TCP PLC simulator on loopback (tokio-modbus): holding registers
/// 0..16 hold 1000 + address; register 100 counts the reads it has answered.
pub fn plc_simulator() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio_modbus::prelude::*;
    use tokio_modbus::server::tcp::{Server as ModbusServer, accept_tcp_connection};

    #[derive(Clone)]
    struct Plc(std::sync::Arc<AtomicU16>);
    impl tokio_modbus::server::Service for Plc {
        type Request = Request<'static>;
        type Response = Response;
        type Exception = ExceptionCode;
        type Future = std::future::Ready<Result<Response, ExceptionCode>>;
        fn call(&self, req: Request<'static>) -> Self::Future {
            std::future::ready(match req {
                Request::ReadHoldingRegisters(100, 1) => Ok(Response::ReadHoldingRegisters(vec![
                    self.0.fetch_add(1, Ordering::Relaxed),
                ])),
                Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= 16 => Ok(
                    Response::ReadHoldingRegisters((a..a + n).map(|x| 1000 + x).collect()),
                ),
                _ => Err(ExceptionCode::IllegalDataAddress),
            })
        }
    }
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    std_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let plc = Plc(std::sync::Arc::new(AtomicU16::new(0)));
            let server = ModbusServer::new(listener);
            let on_connected = |stream, socket_addr| {
                let plc = plc.clone();
                async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(plc.clone()))) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
    });
    addr
}

/// Reads holding registers 0..4 over Modbus TCP at `addr`.
pub async fn read_registers(
    addr: std::net::SocketAddr,
) -> Result<Vec<u16>, Box<dyn std::error::Error + Send + Sync>> {
    use tokio_modbus::prelude::*;
    let mut ctx = tokio::time::timeout(Duration::from_secs(5), tcp::connect(addr)).await??;
    let regs =
        tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 4)).await???;
    Ok(regs)
}

/// `drawbridge-server ARGS --data-dir DATA`'s standard output.
pub fn server_cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `relays list` as (name, state, sessions); `extra`: database flags.
pub fn relays(data: &Path, extra: &[&str]) -> Vec<(String, String, u64)> {
    let args: Vec<&str> = ["relays", "list"].iter().chain(extra).copied().collect();
    server_cli(data, &args)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.to_string(),
                f.get(5)?.parse().ok()?,
            ))
        })
        .collect()
}

/// A standalone relay with TLS (the server's certificate) announcing itself as
/// `name` to the control plane at `control_url` (`extra`: database flags for
/// making its credential).
pub fn start_relay(
    dir: &Path,
    control_url: &str,
    data: &Path,
    extra: &[&str],
    name: &str,
    key: &str,
) -> (String, Proc) {
    start_relay_with(dir, control_url, data, extra, name, key, &[])
}

/// [`start_relay`] with more relay flags (e.g. `--metrics-listen ADDR`).
pub fn start_relay_with(
    dir: &Path,
    control_url: &str,
    data: &Path,
    extra: &[&str],
    name: &str,
    key: &str,
    flags: &[&str],
) -> (String, Proc) {
    let cred = dir.join(format!("{name}.cred"));
    let args: Vec<&str> = ["relay-credential", "--name", name]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    std::fs::write(&cred, server_cli(data, &args)).unwrap();
    let port = free_port();
    let url = format!("wss://127.0.0.1:{port}/relay/v1");
    let mut cmd = Command::new(server_bin());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let child = cmd
        .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--stun-listen", &format!("127.0.0.1:{}", free_udp_port())])
        .args(["--verifying-key", key, "--tls-cert"])
        .arg(data.join("server.pem"))
        .arg("--tls-key")
        .arg(data.join("server.key"))
        .args(["--control-url", control_url, "--credential-file"])
        .arg(&cred)
        .arg("--ca-file")
        .arg(data.join("ca.pem"))
        .args(["--public-url", &url, "--region", "eu-central"])
        .args(if flags.contains(&"--drain-secs") {
            &[][..]
        } else {
            &["--drain-secs", "0"][..]
        })
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (url, Proc(child))
}

/// A numbered TCP stream through `127.0.0.1:port`: 4-byte counters every 10 ms,
/// echoed back; the reader checks that each comes back once and in order.
pub struct NumberedStream {
    got: std::sync::Arc<std::sync::Mutex<(u32, Option<String>)>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl NumberedStream {
    pub fn start(port: u16) -> NumberedStream {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut reader = conn.try_clone().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if conn.write_all(&n.to_be_bytes()).is_err() {
                        return;
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let got = std::sync::Arc::new(std::sync::Mutex::new((0u32, None::<String>)));
        {
            let got = got.clone();
            std::thread::spawn(move || {
                let mut expect = 0u32;
                let mut b = [0u8; 4];
                loop {
                    if let Err(e) = reader.read_exact(&mut b) {
                        got.lock().unwrap().1.get_or_insert(format!("read: {e}"));
                        return;
                    }
                    let n = u32::from_be_bytes(b);
                    let mut g = got.lock().unwrap();
                    if n != expect {
                        g.1 = Some(format!("expected {expect}, got {n}"));
                        return;
                    }
                    expect += 1;
                    g.0 = expect;
                }
            });
        }
        NumberedStream {
            got,
            stop,
            writer: Some(writer),
        }
    }

    /// Numbers back so far.
    pub fn count(&self) -> u32 {
        self.got.lock().unwrap().0
    }

    /// What broke the stream (a gap, a duplicate, the connection), if anything did.
    pub fn broken(&self) -> Option<String> {
        self.got.lock().unwrap().1.clone()
    }

    /// Stops sending; answers what broke the stream before, if anything.
    pub fn stop(mut self) -> Option<String> {
        let broken = self.broken();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        broken
    }
}

/// The Prometheus text at `http://127.0.0.1:PORT/metrics` (empty when it does not answer).
pub fn metrics_text(port: u16) -> String {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}
