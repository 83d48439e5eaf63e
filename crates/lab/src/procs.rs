//! The real Drawbridge binaries, started inside lab namespaces, and a blocking
//! admin API client whose connections are made from inside a namespace.

use crate::netns::{Netns, NsRuntime};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "Blue-Tractor-42";
/// Where the server listens inside its namespace.
pub const SERVER_PORT: u16 = 443;
pub const STUN_PORT: u16 = 3478;
/// The relay's UDP bridge for standard WireGuard clients.
pub const BRIDGE_PORT: u16 = 51820;

/// A binary of the workspace. `DRAWBRIDGE_BIN_DIR` names its directory when set;
/// otherwise it is the current executable's profile directory (`target/<profile>`,
/// whether that executable is a test in `target/<profile>/deps` or a binary such as
/// `lab-bench` in `target/<profile>`). Built when missing (`cargo test --workspace`
/// has built them all already).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DRAWBRIDGE_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let exe = std::env::current_exe().expect("current executable");
            let dir = exe.parent().expect("executable's directory");
            // target/<profile>/deps/<test> → target/<profile>
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.parent().expect("target dir").to_path_buf()
            } else {
                dir.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--bin", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo
            .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}

/// A child process, killed (by its PID) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(
            cmd.stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
        )
    }

    /// Sends SIGINT (Ctrl-C) and waits for the process to exit.
    pub fn interrupt(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        wait("the process exits after Ctrl-C", || {
            self.0.try_wait().ok().flatten().is_some()
        });
    }

    pub fn exited(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// Environment that must not leak from the developer's shell into the binaries.
fn scrub(cmd: &mut Command) -> &mut Command {
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "DRAWBRIDGE_PROXY",
        "DRAWBRIDGE_SERVER",
        "DRAWBRIDGE_CA_FILE",
        "DRAWBRIDGE_TOKEN",
    ] {
        cmd.env_remove(v);
    }
    // DRAWBRIDGE_LAB_LOG=debug turns the binaries' logs up (they go to files
    // in the lab's directory; DRAWBRIDGE_LAB_KEEP=1 keeps it).
    cmd.env(
        "RUST_LOG",
        std::env::var("DRAWBRIDGE_LAB_LOG").unwrap_or_else(|_| "warn".into()),
    )
}

/// A log file for a process (appended to across restarts).
pub fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A control plane (with its relay and STUN) in a namespace, on `ip`.
pub struct Server {
    pub proc: Option<Proc>,
    pub data: PathBuf,
    pub ip: String,
    pub rt: Arc<NsRuntime>,
    ns_name: String,
}

impl Server {
    /// Initialises account `acme` with admin `root` and starts the server.
    pub fn start(ns: &Netns, ip: &str, data: &Path) -> Server {
        let pw = data.with_extension("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).expect("password file");
        crate::netns::run(
            scrub(&mut Command::new(bin("drawbridge-server")))
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
                .arg(data),
        );
        let mut s = Server {
            proc: None,
            data: data.to_path_buf(),
            ip: ip.to_string(),
            rt: Arc::new(ns.runtime()),
            ns_name: ns.name().to_string(),
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("https://{}:{SERVER_PORT}", self.ip)
    }

    pub fn ca(&self) -> PathBuf {
        self.data.join("ca.pem")
    }

    /// Starts the process (again) and waits until it answers.
    pub fn restart(&mut self) {
        self.proc = None;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .arg(bin("drawbridge-server"));
        scrub(&mut cmd)
            .args([
                "run",
                "--listen",
                &format!("{}:{SERVER_PORT}", self.ip),
                "--stun-listen",
                &format!("{0}:{STUN_PORT},{0}:{1}", self.ip, STUN_PORT + 1),
                "--bridge-listen",
                &format!("{}:{BRIDGE_PORT}", self.ip),
                "--hostname",
                &self.ip,
                "--public-url",
                &self.url(),
                "--data-dir",
            ])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(log_file(&self.data.with_extension("log")));
        self.proc = Some(Proc::spawn(&mut cmd));
        let addr: SocketAddr = format!("{}:{SERVER_PORT}", self.ip).parse().expect("addr");
        let rt = self.rt.clone();
        // The port opens before a first start has written the CA: wait for both.
        let ca = self.ca();
        wait(&format!("the server answers in {}", self.ns_name), || {
            ca.exists() && rt.run(async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
        });
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// The admin's API client (connections made from the server's namespace).
    pub fn admin(&self) -> Api {
        Api::login(self)
    }
}

/// Blocking admin API calls, made from inside a namespace.
pub struct Api {
    rt: Arc<NsRuntime>,
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn login(s: &Server) -> Api {
        let ca = std::fs::read(s.ca()).expect("CA");
        let http = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
            .build()
            .expect("http client");
        let url = format!("{}/api/v1/auth/login", s.url());
        let h = http.clone();
        let v: Value = s.rt.run(async move {
            h.post(url)
                .json(&json!({"account": "acme", "username": "root", "password": PASSWORD}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("login answer")
        });
        Api {
            rt: s.rt.clone(),
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
        self.rt.run(async move {
            let res = r.send().await.expect("API call");
            let status = res.status().as_u16();
            (status, res.json().await.unwrap_or(Value::Null))
        })
    }

    pub fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).1
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body))
    }

    /// The admin's own user id.
    pub fn me(&self) -> String {
        self.get("/me")["user"]["id"]
            .as_str()
            .expect("user id")
            .to_string()
    }

    /// Creates a device; returns (device id, activation key).
    pub fn device(&self, name: &str, lan: &str, firewall: Value) -> (String, String) {
        let (s, v) = self.post(
            "/devices",
            json!({"name": name, "lan_subnets": [lan], "firewall": firewall}),
        );
        assert_eq!(s, 200, "{v}");
        (
            v["device"]["id"].as_str().expect("id").to_string(),
            v["activation"]["key"].as_str().expect("key").to_string(),
        )
    }
}

/// An edge: enrolled once, then run (and restarted) in its namespace.
pub struct Edge {
    pub state: PathBuf,
    pub proc: Option<Proc>,
    ns_name: String,
    /// Extra arguments for `run` (e.g. `--tun`).
    run_args: Vec<String>,
}

impl Edge {
    fn cmd(ns_name: &str, state: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns_name])
            .arg(bin("drawbridge-edge"))
            .arg("--state-dir")
            .arg(state);
        scrub(&mut c);
        c
    }

    /// Enrols with the activation key, turns the switch on and starts the agent.
    pub fn enroll_and_run(ns: &Netns, server: &Server, key: &str, state: &Path) -> Edge {
        Self::enroll_and_run_with(ns, server, key, state, &[])
    }

    /// Like [`Edge::enroll_and_run`], with extra arguments for `run`.
    pub fn enroll_and_run_with(
        ns: &Netns,
        server: &Server,
        key: &str,
        state: &Path,
        run_args: &[&str],
    ) -> Edge {
        crate::netns::run(
            Self::cmd(ns.name(), state)
                .args(["enroll", "--server", &server.url(), "--activation-key", key])
                .arg("--ca-file")
                .arg(server.ca()),
        );
        crate::netns::run(Self::cmd(ns.name(), state).args(["switch", "on"]));
        let mut e = Edge {
            state: state.to_path_buf(),
            proc: None,
            ns_name: ns.name().to_string(),
            run_args: run_args.iter().map(|a| a.to_string()).collect(),
        };
        e.restart();
        e
    }

    pub fn restart(&mut self) {
        self.proc = None;
        self.proc = Some(Proc::spawn(
            Self::cmd(&self.ns_name, &self.state)
                .arg("run")
                .args(&self.run_args)
                .stdout(Stdio::null())
                .stderr(log_file(&self.state.with_extension("log"))),
        ));
    }

    /// Stops the agent as an operator would (SIGTERM) and waits for it.
    pub fn terminate(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            wait("the edge exits after SIGTERM", || p.exited());
        }
    }

    /// `drawbridge-edge approve SESSION`: the site approves a session that
    /// waits for it (dual control); the running agent sends the decision.
    pub fn approve(&self, session: &str) {
        crate::netns::run(Self::cmd(&self.ns_name, &self.state).args(["approve", session]));
    }

    /// `drawbridge-edge status --json`.
    pub fn status(&self) -> Value {
        let out = Self::cmd(&self.ns_name, &self.state)
            .args(["status", "--json"])
            .output()
            .expect("edge status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

/// The `drawbridge` CLI of one user, in a namespace, with its own config dir.
pub struct Client {
    pub config: PathBuf,
    ns_name: String,
}

impl Client {
    pub fn command(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_name])
            .arg(bin("drawbridge"))
            .env("DRAWBRIDGE_CONFIG_DIR", &self.config);
        scrub(&mut c);
        c
    }

    /// Logs in as the admin of `server`.
    pub fn login(ns: &Netns, server: &Server, config: &Path) -> Client {
        let c = Client {
            config: config.to_path_buf(),
            ns_name: ns.name().to_string(),
        };
        let mut login = c
            .command()
            .args([
                "login",
                "--server",
                &server.url(),
                "--account",
                "acme",
                "--user",
                "root",
                "--password-stdin",
                "--ca-file",
            ])
            .arg(server.ca())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("login");
        login
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("password");
        let out = login.wait_with_output().expect("login");
        assert!(
            out.status.success(),
            "login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// `drawbridge status --json`.
    pub fn status(&self) -> Value {
        let out = self
            .command()
            .args(["status", "--json"])
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}
