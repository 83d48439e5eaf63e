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

/// (pid, ppid, utime + stime) of every user-space process.
fn processes() -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, flags 9.
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        let (Some(ppid), Some(flags), Some(ut), Some(st)) = (num(4), num(9), num(14), num(15))
        else {
            continue;
        };
        const PF_KTHREAD: u64 = 0x0020_0000;
        if flags & PF_KTHREAD != 0 {
            continue;
        }
        out.push((pid, ppid as u32, ut + st));
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
                procs.iter().map(|&(p, pp, _)| (p, pp)).collect();
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
            let mut add = 0;
            for &(pid, _, ticks) in &procs {
                now.insert(pid, ticks);
                if first || ours(pid) {
                    continue;
                }
                add += ticks.saturating_sub(last.get(&pid).copied().unwrap_or(0));
            }
            OTHER_TICKS.fetch_add(add, std::sync::atomic::Ordering::Relaxed);
            last = now;
            first = false;
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}
