//! What else runs on the (shared) machine while measuring.

use std::time::Duration;

/// The load average and the compilers running at a point of the run (the machine
/// may be shared with builds), with the CPU time other processes used so far.
pub(crate) fn contention(when: &str) -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut compilers = 0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(c) = std::fs::read_to_string(e.path().join("comm"))
                && matches!(c.trim(), "rustc" | "cc1" | "cc1plus" | "ld" | "cargo")
            {
                compilers += 1;
            }
        }
    }
    format!(
        "{when}: load average {load}, {compilers} compiler/cargo processes, {:.0} CPU-seconds used by other processes since the start",
        other_cpu_secs()
    )
}

/// CPU ticks (1/100 s) used by processes that are not this driver or its
/// descendants (other builds and tests sharing the machine), summed by a sampler.
static OTHER_TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn other_cpu_secs() -> f64 {
    OTHER_TICKS.load(std::sync::atomic::Ordering::Relaxed) as f64 / 100.0
}

/// CPU ticks used by this driver's tunnel processes: Drawbridge's (client,
/// edge, server with its relay) and the baselines' daemons, summed by the
/// same sampler.
static TUNNEL_TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn tunnel_cpu_secs() -> f64 {
    TUNNEL_TICKS.load(std::sync::atomic::Ordering::Relaxed) as f64 / 100.0
}

/// Whether a process of this driver is a tunnel's (by its command name, which
/// the kernel cuts to 15 bytes: `drawbridge-serv`).
fn is_tunnel(comm: &str) -> bool {
    comm.starts_with("drawbridge")
        || matches!(
            comm,
            "wireguard-go" | "boringtun-cli" | "openvpn" | "onetun"
        )
}

/// The whole machine's busy CPU time so far, in seconds (all cores; all but
/// idle and waiting for I/O), from /proc/stat.
pub(crate) fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let all: u64 = f.iter().take(8).sum();
    Some((all - f.get(3)? - f.get(4)?) as f64 / 100.0)
}

/// One process's `/proc/PID/stat`.
struct Stat {
    comm: String,
    ppid: u32,
    flags: u64,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, flags 9.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm: head.split_once('(').map_or("", |(_, c)| c).to_string(),
        ppid: u32::try_from(num(4)?).ok()?,
        flags: num(9)?,
        ticks: num(14)? + num(15)?,
    })
}

/// A process's CPU time so far (user + system, in clock ticks).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).map(|s| s.ticks)
}

/// (pid, ppid, utime + stime, command name) of every user-space process.
fn processes() -> Vec<(u32, u32, u64, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Some(s) = read_stat(pid) else {
            continue;
        };
        const PF_KTHREAD: u64 = 0x0020_0000;
        if s.flags & PF_KTHREAD != 0 {
            continue;
        }
        out.push((pid, s.ppid, s.ticks, s.comm));
    }
    out
}

/// Starts the sampler behind [`other_cpu_secs`] (every 250 ms, for the life of the process).
pub(crate) fn start_cpu_sampler() {
    std::thread::spawn(|| {
        let me = std::process::id();
        let mut last: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        let mut first = true;
        loop {
            let procs = processes();
            let parent: std::collections::HashMap<u32, u32> =
                procs.iter().map(|&(p, pp, _, _)| (p, pp)).collect();
            let ours = |mut p: u32| {
                for _ in 0..64 {
                    if p == me {
                        return true;
                    }
                    match parent.get(&p) {
                        Some(&pp) if pp != 0 => p = pp,
                        _ => return false,
                    }
                }
                false
            };
            let mut now = std::collections::HashMap::new();
            let (mut other, mut tunnel) = (0, 0);
            for (pid, _, ticks, comm) in &procs {
                now.insert(*pid, *ticks);
                if first {
                    continue;
                }
                let used = ticks.saturating_sub(last.get(pid).copied().unwrap_or(0));
                if !ours(*pid) {
                    other += used;
                } else if is_tunnel(comm) {
                    tunnel += used;
                }
            }
            OTHER_TICKS.fetch_add(other, std::sync::atomic::Ordering::Relaxed);
            TUNNEL_TICKS.fetch_add(tunnel, std::sync::atomic::Ordering::Relaxed);
            last = now;
            first = false;
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_processes_are_known_by_their_cut_command_names() {
        for t in [
            "drawbridge",
            "drawbridge-edge",
            "drawbridge-serv",
            "wireguard-go",
            "boringtun-cli",
            "openvpn",
            "onetun",
        ] {
            assert!(is_tunnel(t), "{t}");
        }
        for o in ["iperf3", "ping", "lab-bench", "cargo", "ip"] {
            assert!(!is_tunnel(o), "{o}");
        }
    }

    #[test]
    fn a_process_stat_reads_its_parent_and_name() {
        let me = read_stat(std::process::id()).expect("our own stat reads");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(!me.comm.is_empty());
        assert!(read_stat(u32::MAX).is_none());
    }

    #[test]
    fn the_machines_busy_time_reads_and_grows_with_work() {
        let a = machine_busy_secs().expect("/proc/stat reads");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let b = machine_busy_secs().unwrap();
        assert!(b - a >= 0.1, "{a} → {b}");
    }
}
