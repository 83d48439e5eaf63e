//! The `drawbridge-server` under test: started by the tool (a fresh data
//! directory, `init` with an account and admin, then `run` on a free
//! 127.0.0.1 port), or one that is already running.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Proxy variables a child must not inherit: everything here is on loopback.
const PROXY_VARS: &[&str] = &[
    "DRAWBRIDGE_PROXY",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The unauthenticated-route allowance the tool gives its own server, so that
/// N edges can enrol from 127.0.0.1 at once (the default is 30 a minute).
pub const LOADTEST_AUTH_ATTEMPTS_PER_MINUTE: u32 = 1_000_000;

/// The connection caps the tool gives its own server: every simulated edge
/// holds one connection from 127.0.0.1 (the default is 256 per address).
pub const LOADTEST_MAX_CONNECTIONS: u32 = 1_000_000;

/// Where the admin logs in.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub ca_file: PathBuf,
    pub account: String,
    pub admin_user: String,
    pub password: String,
    /// For RSS and CPU figures; None when the server runs elsewhere and no PID was given.
    pub pid: Option<u32>,
}

/// A server the tool started; killed when dropped.
pub struct Started {
    pub target: Target,
    child: Child,
    /// The data directory (and the server's stderr in `server.log`).
    pub data: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Started {
    pub fn log_tail(&self) -> String {
        log_tail(&self.data.join("server.log"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `drawbridge-server` next to this executable (the same target directory).
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = me.parent().context("this executable has no directory")?;
    let bin = dir.join("drawbridge-server");
    if !bin.exists() {
        bail!(
            "{} not found: build it with the same profile (cargo build [--release] -p drawbridge-server) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// A password the default policy accepts.
fn new_password() -> String {
    let r: u64 = rand::random();
    format!("Load-{r:016x}-Test")
}

/// The given data directory (created), or a temporary one removed when the
/// returned guard is dropped.
pub fn data_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("drawbridge-loadtest-")
                .tempdir()
                .context("creating a temporary data directory")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// The admin `init` made.
pub struct Admin {
    pub account: String,
    pub admin_user: String,
    pub password: String,
}

/// `--data-dir DIR [--database URL]`.
pub fn db_args(data: &Path, database: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec!["--data-dir".into(), data.display().to_string()];
    if let Some(url) = database {
        a.extend(["--database".into(), url.to_string()]);
    }
    a
}

/// `drawbridge-server init` with an account and an admin of a fresh password.
pub async fn init(bin: &Path, data: &Path, database: Option<&str>) -> anyhow::Result<Admin> {
    let password = new_password();
    let pw_file = data.join("admin-password");
    std::fs::write(&pw_file, format!("{password}\n")).context("writing the password file")?;
    let (account, admin_user) = ("loadtest".to_string(), "admin".to_string());
    let out = command(bin)
        .args(["init", "--account", &account, "--admin-user", &admin_user])
        .arg("--admin-password-file")
        .arg(&pw_file)
        .args(db_args(data, database))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("running {} init", bin.display()))?;
    if !out.status.success() {
        bail!(
            "drawbridge-server init failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Admin {
        account,
        admin_user,
        password,
    })
}

/// Starts `drawbridge-server run` with the tool's raised limits, `extra`
/// arguments, its stderr in `log`; returns once it printed "Ready." with the
/// URL it listens on (stdout is drained afterwards).
pub async fn spawn_run(
    bin: &Path,
    data: &Path,
    database: Option<&str>,
    extra: &[String],
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command(bin)
        .arg("run")
        .args(extra)
        .arg("--auth-attempts-per-minute")
        .arg(LOADTEST_AUTH_ATTEMPTS_PER_MINUTE.to_string())
        .arg("--max-connections")
        .arg(LOADTEST_MAX_CONNECTIONS.to_string())
        .arg("--max-connections-per-address")
        .arg(LOADTEST_MAX_CONNECTIONS.to_string())
        .args(db_args(data, database))
        .env(
            "RUST_LOG",
            std::env::var("LOADTEST_SERVER_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(u) = line.strip_prefix("Drawbridge server listening on ") {
                url = Some(u.trim().to_string());
            }
            if line == "Ready." {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match (ready, url) {
        (Ok(Ok(true)), Some(url)) if !url.is_empty() => {
            // Keep draining stdout so the server never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((child, url))
        }
        _ => {
            let _ = child.start_kill();
            bail!(
                "the server did not become ready; its log:\n{}",
                log_tail(log)
            )
        }
    }
}

/// The last 20 lines of a log file.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Initialises a fresh data directory and starts the server on 127.0.0.1.
pub async fn start(
    bin: &Path,
    database: Option<&str>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Started> {
    let (data, temp) = self::data_dir(data_dir)?;
    let admin = init(bin, &data, database).await?;
    let extra: Vec<String> = ["--listen", "127.0.0.1:0", "--no-stun", "--no-bridge"]
        .map(String::from)
        .into();
    let (child, url) = spawn_run(bin, &data, database, &extra, &data.join("server.log")).await?;
    Ok(Started {
        target: Target {
            url,
            ca_file: data.join("ca.pem"),
            account: admin.account,
            admin_user: admin.admin_user,
            password: admin.password,
            pid: child.id(),
        },
        child,
        data,
        _temp: temp,
    })
}
