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

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after.
/// Children started afterwards (the server) inherit it.
pub fn raise_nofile() -> anyhow::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
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
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample("self", "test").expect("sample");
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.open_fds >= 1);
    }
}
