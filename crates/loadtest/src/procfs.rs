//! What the kernel tells about a process: resident memory and CPU time from
//! `/proc/PID/status` and `/proc/PID/stat`, open descriptors, and the
//! descriptor limit (raised here for the simulated edges and, inherited, for
//! the server the tool starts).

use anyhow::Context;
use serde::Serialize;
use std::time::Instant;

/// One look at a process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Where in the run it was taken.
    pub phase: &'static str,
    #[serde(skip)]
    pub at: Option<Instant>,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS so far), KiB.
    pub peak_rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    pub threads: u64,
    pub open_fds: u64,
}

/// The `Key:   value kB` field of a `/proc/PID/status` text, as a number.
fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime in clock ticks from a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// after its closing parenthesis: utime and stime are fields 14 and 15.
fn stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Samples process `pid` ("self" for this one).
pub fn sample(pid: &str, phase: &'static str) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = stat_ticks(&stat).context("unexpected /proc/PID/stat")?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(Sample {
        phase,
        at: Some(Instant::now()),
        rss_kib: status_field(&status, "VmRSS").unwrap_or(0),
        peak_rss_kib: status_field(&status, "VmHWM").unwrap_or(0),
        cpu_secs: ticks as f64 / clock_ticks(),
        threads: status_field(&status, "Threads").unwrap_or(0),
        open_fds,
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, and as root the hard
/// limit first to the kernel's ceiling (`fs.nr_open`); returns (soft, hard)
/// after. Children started afterwards (the servers, HAProxy) inherit it.
/// Root without CAP_SYS_RESOURCE (a container) cannot raise the hard limit:
/// then only the soft one is raised.
pub fn raise_nofile() -> anyhow::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<libc::rlim_t>().ok());
    let set = |cur: libc::rlim_t, max: libc::rlim_t| {
        let r = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct we own.
        (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0).then_some(r)
    };
    if let Some(c) = ceiling.filter(|&c| root && c > lim.rlim_max)
        && let Some(r) = set(c, c)
    {
        lim = r;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim = set(lim.rlim_max, lim.rlim_max)
            .ok_or_else(std::io::Error::last_os_error)
            .context("setrlimit(RLIMIT_NOFILE)")?;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// utime + stime + cutime + cstime of every process named `postgres` (the
/// postmaster and its backends; a backend that exits moves its time to the
/// postmaster's cutime, so the sum only grows), in seconds. Machine-wide: every
/// PostgreSQL cluster on this machine counts. None when there is none.
pub fn postgres_cpu_secs() -> Option<f64> {
    let mut ticks = 0u64;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() != "postgres" {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_ticks_with_children(&s))
        {
            ticks += t;
            found = true;
        }
    }
    found.then(|| ticks as f64 / clock_ticks())
}

/// utime + stime + cutime + cstime of process `root` and its children (a
/// PostgreSQL postmaster and its backends: an exited backend's time moves to
/// the postmaster's cutime, so the sum only grows), in seconds. Only that one
/// cluster, unlike [`postgres_cpu_secs`]. None when `root` is gone.
pub fn tree_cpu_secs(root: u32) -> Option<f64> {
    let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let mut ticks = stat_ticks_with_children(&stat(&root.to_string())?)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(text) = stat(pid)
            && stat_ppid(&text) == Some(root)
        {
            ticks += stat_ticks_with_children(&text).unwrap_or(0);
        }
    }
    Some(ticks as f64 / clock_ticks())
}

/// The parent process id (field 4) of a `/proc/PID/stat` line.
fn stat_ppid(text: &str) -> Option<u32> {
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime + cutime + cstime (fields 14 to 17) of a `/proc/PID/stat` line.
fn stat_ticks_with_children(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0u64;
    for i in 11..15 {
        // cutime and cstime are signed in the kernel's format; never negative in practice.
        sum += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(sum)
}

/// How many local ports the kernel hands out for outgoing connections.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS"), Some(1024));
        assert_eq!(status_field(status, "VmHWM"), Some(2048));
        assert_eq!(status_field(status, "Threads"), Some(7));
        assert_eq!(status_field(status, "VmSwap"), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1 2 3";
        assert_eq!(stat_ticks(stat), Some(300));
        assert_eq!(stat_ticks_with_children(stat), Some(300));
        let with_children = "42 (postgres) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 7";
        assert_eq!(stat_ticks_with_children(with_children), Some(310));
        assert_eq!(stat_ppid(with_children), Some(1));
        assert_eq!(stat_ppid(stat), Some(1));
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn a_tree_counts_this_process() {
        let me = std::process::id();
        assert!(tree_cpu_secs(me).is_some_and(|s| s >= 0.0));
        assert_eq!(tree_cpu_secs(u32::MAX), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample("self", "test").expect("sample");
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.open_fds >= 1);
    }
}
