//! Harness for end-to-end tests: the real `drawbridge-server` binary on
//! loopback with its self-signed CA, and the real `drawbridge` binary, each
//! test with its own data directory and its own `DRAWBRIDGE_CONFIG_DIR`.
#![allow(dead_code)]

pub mod edge;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

pub const ADMIN_PASSWORD: &str = "Very-Secret-Pass-42";
pub const USER_PASSWORD: &str = "Blue-Harbor-7731";

/// Every variable the binaries read that a developer's shell might have set.
const ENV_VARS: &[&str] = &[
    "DRAWBRIDGE_SERVER",
    "DRAWBRIDGE_CA_FILE",
    "DRAWBRIDGE_TOKEN",
    "DRAWBRIDGE_CONFIG_DIR",
    "DRAWBRIDGE_CONFIG",
    "DRAWBRIDGE_LISTEN",
    "DRAWBRIDGE_DATA_DIR",
    "DRAWBRIDGE_DATABASE_URL",
    "DRAWBRIDGE_TLS_CERT",
    "DRAWBRIDGE_TLS_KEY",
    "DRAWBRIDGE_PUBLIC_URL",
    // Loopback only: never through a proxy.
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub fn client_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drawbridge"))
}

/// The server binary next to the client's; built once if it is missing.
pub fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let client = client_bin();
        let dir = client.parent().expect("binary directory");
        let bin = dir.join(format!("drawbridge-server{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            let target_dir = dir.parent().expect("target directory");
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "drawbridge-server"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("CARGO_TARGET_DIR", target_dir);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p drawbridge-server");
            assert!(status.success(), "cargo build -p drawbridge-server failed");
        }
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// A running server; killed (by its own handle) when dropped, also on test failure.
pub struct Server {
    child: Child,
    pub url: String,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// `drawbridge-server init` (account `acme`, admin `root`), then `run` on 127.0.0.1:0.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pw = dir.path().join("admin-password");
        std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
        let mut init = Command::new(server_bin());
        for v in ENV_VARS {
            init.env_remove(v);
        }
        let out = init
            .args(["init", "--data-dir"])
            .arg(&data)
            .args([
                "--account",
                "acme",
                "--admin-user",
                "root",
                "--admin-password-file",
            ])
            .arg(&pw)
            .output()
            .expect("run drawbridge-server init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(server_bin());
        for v in ENV_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd
            .args(["run", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start drawbridge-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            ca: data.join("ca.pem"),
            dir,
        };
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        server.url = rest.trim().to_string();
                        break;
                    }
                }
                Err(_) => panic!(
                    "the server did not say where it listens; log:\n{}",
                    std::fs::read_to_string(server.dir.path().join("server.log"))
                        .unwrap_or_default()
                ),
            }
        }
        assert!(
            server.url.starts_with("https://127.0.0.1:"),
            "{}",
            server.url
        );
        assert!(server.ca.exists(), "no CA file at {}", server.ca.display());
        server
    }

    /// A fresh `drawbridge` user environment (own config directory).
    pub fn cli(&self) -> Cli {
        Cli {
            config: tempfile::tempdir().expect("tempdir"),
            url: self.url.clone(),
            ca: self.ca.clone(),
            env: Vec::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One user's `drawbridge`, with its own config directory.
pub struct Cli {
    pub config: tempfile::TempDir,
    pub url: String,
    pub ca: PathBuf,
    pub env: Vec<(String, String)>,
}

/// What a run printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn expect_ok(&self) -> &str {
        assert!(self.ok(), "command failed: {self:#?}");
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn expect_err(&self) -> &str {
        assert!(
            !self.ok() && self.code.is_some(),
            "command should have failed: {self:#?}"
        );
        &self.stderr
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.expect_ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Cli {
    pub fn credentials(&self) -> PathBuf {
        self.config.path().join("credentials.json")
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(client_bin());
        for v in ENV_VARS {
            cmd.env_remove(v);
        }
        cmd.env("DRAWBRIDGE_CONFIG_DIR", self.config.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `drawbridge ARGS` with `stdin` (or an empty standard input).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start drawbridge");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        child
            .wait_with_output()
            .expect("wait for drawbridge")
            .into()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args, None).expect_ok().to_string()
    }

    /// `drawbridge login --server URL --ca-file CA --account acme --user USER --password-stdin`.
    pub fn login(&self, user: &str, password: &str, extra: &[&str]) -> Run {
        let ca = self.ca.to_string_lossy().into_owned();
        let mut args = vec![
            "login",
            "--server",
            &self.url,
            "--ca-file",
            &ca,
            "--account",
            "acme",
            "--user",
            user,
            "--password-stdin",
        ];
        args.extend_from_slice(extra);
        self.run(&args, Some(&format!("{password}\n")))
    }
}

impl Server {
    /// Marks a device (by name) as if its edge were connected with the site
    /// switch on, straight in the server's database: sessions start only then.
    /// A stand-in until these tests run a real edge agent.
    pub fn edge_up(&self, device: &str) {
        use sqlx::Connection;
        let db = self.dir.path().join("data").join("drawbridge.db");
        let url = format!("sqlite://{}", db.display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = sqlx::sqlite::SqliteConnection::connect(&url)
                .await
                .expect("open the server's database");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let r = sqlx::query(
                "UPDATE devices SET online = 1, switch_on = 1, last_seen = $1 WHERE name = $2",
            )
            .bind(now)
            .bind(device)
            .execute(&mut c)
            .await
            .expect("update device");
            assert_eq!(r.rows_affected(), 1, "no device named {device}");
        });
    }
}
