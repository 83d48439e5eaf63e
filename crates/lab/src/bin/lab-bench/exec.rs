//! Running programs: with a time limit, polling, and daemons that end cleanly.

use anyhow::{Context, Result, bail};
use drawbridge_lab::Proc;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command to completion (killed after `timeout`); its output.
pub(crate) fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
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
pub(crate) fn check(cmd: &mut Command) -> Result<String> {
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
pub(crate) fn until(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<()> {
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

pub(crate) fn log_to(path: &Path) -> Stdio {
    std::fs::File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A daemon of a baseline: SIGTERM first (so it removes its interface and
/// socket), SIGKILL after 3 s; the namespace's teardown kills it in any case.
pub(crate) struct Daemon {
    pub(crate) proc: Proc,
    pub(crate) uapi: Option<PathBuf>,
}

impl Daemon {
    /// Starts `cmd` with its output (both streams) in `log`.
    pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Daemon {
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
