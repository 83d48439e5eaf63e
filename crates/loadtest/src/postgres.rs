//! A throwaway PostgreSQL for `--data` when no `--database` is given: Debian's
//! newest `/usr/lib/postgresql/*/bin`, `initdb` into a temporary directory,
//! `pg_ctl start` on a free 127.0.0.1 port, stopped and deleted when dropped.
//!
//! Unlike the test suite's (scripts/test turns fsync and synchronous commit
//! off to make tests fast), this one keeps PostgreSQL's durable defaults: every
//! commit waits for its WAL flush, as a production server would. As root the
//! cluster runs as the `postgres` user (`runuser`), since PostgreSQL refuses
//! root.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// The postmaster's process id (its backends are its children).
    pub pid: u32,
    /// `postgres --version`.
    pub version: String,
}

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, b)) => Ok(b),
        None => bail!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install Debian's postgresql (apt-get install postgresql) or pass --database postgres://…"
        ),
    }
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Postgres {
    fn cmd(&self, tool: &str) -> Command {
        command(&self.bin, tool, self.as_postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (for error messages).
    pub fn log_tail(&self) -> String {
        crate::server::log_tail(&self.dir.path().join("postgres.log"))
    }

    /// Initialises and starts a cluster; waits until it accepts connections.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        // SAFETY: geteuid has no arguments and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("drawbridge-loadtest-pg-")
            .tempdir()
            .context("creating the PostgreSQL directory")?;
        if as_postgres {
            let mut c = Command::new("chown");
            c.arg("postgres").arg(dir.path());
            run(
                c,
                "chown postgres (as root the cluster runs as the postgres user; create it with: useradd --system postgres)",
            )?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut v = command(&bin, "postgres", false);
        v.arg("--version");
        let version = run(v, "postgres --version")?.trim().to_string();
        let mut pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            dir,
            as_postgres,
            pid: 0,
            version,
        };
        let mut init = pg.cmd("initdb");
        init.arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run(init, "initdb")?;
        let mut start = pg.cmd("pg_ctl");
        start
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(pg.dir.path().join("postgres.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200",
                pg.dir.path().display()
            ))
            .arg("start");
        if let Err(e) = run(start, "pg_ctl start") {
            bail!("{e:#}\nits log:\n{}", pg.log_tail());
        }
        let pid_file = std::fs::read_to_string(pg.data().join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        let pid = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid has no process id")?;
        pg.pid = pid;
        Ok(pg)
    }
}

/// `tool` of PostgreSQL's `bin`, as the `postgres` user when `as_postgres`.
fn command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Also after a failed start (a server may be up nonetheless).
        let mut stop = self.cmd("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
    }
}
