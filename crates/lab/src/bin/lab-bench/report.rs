//! The markdown report: machine, rows, timings, ratios.

use crate::drawbridge::{SAMPLES, Sample, Timings};
use crate::measure::Figures;
use crate::{PING_COUNT, Tools, version};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowKind {
    Direct,
    DirectKernel,
    Relay,
    Userspace,
    WireguardGo,
    Boringtun,
    Openvpn,
    Onetun,
}

impl RowKind {
    pub(crate) const ALL: [RowKind; 8] = [
        RowKind::Direct,
        RowKind::DirectKernel,
        RowKind::Relay,
        RowKind::Userspace,
        RowKind::WireguardGo,
        RowKind::Boringtun,
        RowKind::Openvpn,
        RowKind::Onetun,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            RowKind::Direct => "direct",
            RowKind::DirectKernel => "direct-kernel",
            RowKind::Relay => "relay",
            RowKind::Userspace => "userspace",
            RowKind::WireguardGo => "wireguard-go",
            RowKind::Boringtun => "boringtun",
            RowKind::Openvpn => "openvpn",
            RowKind::Onetun => "onetun",
        }
    }

    fn label(self) -> &'static str {
        match self {
            RowKind::Direct => "Drawbridge direct (TUN)",
            RowKind::DirectKernel => "Drawbridge direct (TUN; edge `run --tun`, kernel forwarding)",
            RowKind::Relay => "Drawbridge via relay (TUN)",
            RowKind::Userspace => "Drawbridge userspace `-L`",
            RowKind::WireguardGo => "wireguard-go ↔ wireguard-go",
            RowKind::Boringtun => "boringtun-cli ↔ boringtun-cli",
            RowKind::Openvpn => "OpenVPN UDP, AES-256-GCM",
            RowKind::Onetun => "onetun → wireguard-go",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) kind: RowKind,
    pub(crate) f: Figures,
}

impl Row {
    pub(crate) fn new(kind: RowKind, f: Figures) -> Row {
        Row { kind, f }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) os: String,
    pub(crate) date: String,
    pub(crate) versions: Vec<(String, String)>,
}

impl Machine {
    pub(crate) fn read(tools: &Tools) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "?".into());
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("?")
            .trim_matches('"')
            .to_string();
        let date = OffsetDateTime::now_utc()
            .format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_default();
        let bin = drawbridge_lab::procs::bin("drawbridge");
        let versions = [
            ("drawbridge", version(&bin, "--version")),
            ("iperf3", version(Path::new("iperf3"), "--version")),
            (
                "wireguard-go",
                version(Path::new("wireguard-go"), "--version"),
            ),
            ("boringtun-cli", version(&tools.boringtun, "--version")),
            ("onetun", version(&tools.onetun, "--version")),
            ("OpenVPN", version(Path::new("openvpn"), "--version")),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            os,
            date,
            versions,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) seconds: u32,
    pub(crate) machine: Machine,
    pub(crate) rows: Vec<Row>,
    pub(crate) timings: Timings,
    pub(crate) contention: Vec<String>,
    /// Connect latency per lab: (which lab, figures).
    pub(crate) connects: Vec<(&'static str, crate::connects::ConnectTimes)>,
    /// Many peers on one edge.
    pub(crate) crowds: Vec<crate::crowd::Crowd>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".into(), |r| format!("{r:.2}"))
}

/// One timing figure of a sample, in seconds.
type Getter = fn(&Sample) -> Option<Result<f64, String>>;

fn secs(d: &Option<Result<Duration, String>>) -> Option<Result<f64, String>> {
    d.as_ref()
        .map(|r| r.as_ref().map(Duration::as_secs_f64).map_err(Clone::clone))
}

/// "median | each" cells for a timing row.
fn summary(samples: &[Sample], get: Getter) -> String {
    let all: Vec<Result<f64, String>> = samples.iter().filter_map(get).collect();
    if all.is_empty() {
        return "not measured | ".into();
    }
    let mut ok: Vec<f64> = all
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    ok.sort_by(f64::total_cmp);
    let median = ok
        .get(ok.len() / 2)
        .map_or_else(|| "n/a".into(), |m| format!("{m:.2} s"));
    let each = all
        .iter()
        .map(|r| match r {
            Ok(v) => format!("{v:.2}"),
            Err(e) => format!("failed: {}", e.replace('|', "/")),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{median} | {each}")
}

impl Report {
    fn row(&self, k: RowKind) -> Option<&Figures> {
        self.rows.iter().find(|r| r.kind == k).map(|r| &r.f)
    }

    fn mbps(&self, k: RowKind) -> Option<f64> {
        self.row(k).and_then(|f| f.mbps)
    }

    /// Drawbridge's direct figure for the ratios: client in TUN mode, the edge
    /// as it runs by default (the kernel-mode row is shown beside it).
    fn direct_mbps(&self) -> Option<f64> {
        self.mbps(RowKind::Direct)
    }

    pub(crate) fn ratios(&self) -> String {
        format!(
            "ratios: direct/wireguard-go={} relay/direct={} userspace/onetun={}",
            fmt_ratio(ratio(self.direct_mbps(), self.mbps(RowKind::WireguardGo))),
            fmt_ratio(ratio(self.mbps(RowKind::Relay), self.direct_mbps())),
            fmt_ratio(ratio(
                self.mbps(RowKind::Userspace),
                self.mbps(RowKind::Onetun)
            )),
        )
    }

    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Figures of one run of `bench/run` (driver: `crates/lab/src/bin/lab-bench/`), {}.\n",
            m.date
        );
        let _ = writeln!(
            s,
            "**Machine:** {}, {} cores, {} RAM; {}, kernel {}.\n",
            m.cpu, m.cores, m.memory, m.os, m.kernel
        );
        let _ = writeln!(
            s,
            "**Load while measuring** (other builds may share the machine):\n"
        );
        for c in &self.contention {
            let _ = writeln!(s, "- {c}");
        }
        let _ = writeln!(
            s,
            "\n**How:** the lab's namespaces (office host → NAT router → internet ← NAT router ← plant host → machine LAN). \
             Each row: iperf3, one TCP stream, {} s, office host → `iperf3 -s` on 192.168.1.10 in the machine-LAN namespace \
             (receiver's figure; sender's retransmits), then `ping -c {PING_COUNT} -i 0.2 192.168.1.10` (average RTT). \
             Drawbridge direct and userspace: cone NAT on both sides; Drawbridge via relay: symmetric NAT on both sides \
             (the relay is the WebSocket relay inside `drawbridge-server` on the \"internet\" namespace). \
             Baselines run between the same office and plant hosts over the same cone NAT routers, UDP straight to the \
             peer router's WAN address; the plant host routes (and masquerades) to the LAN. All userspace: \
             Drawbridge's edge terminates TCP in smoltcp and opens its own connection to the LAN \
             (except with `run --tun`, where it checks each packet and the kernel forwards it); \
             wireguard-go, boringtun-cli and OpenVPN (`--disable-dco`) route IP packets through the kernel; \
             onetun, like `-L`, terminates TCP in a userspace stack on the office side. \
             Ratios: throughput ÷ wireguard-go's (higher is better), RTT ÷ wireguard-go's (lower is better). \
             \"Other load\": CPU (in cores of the {} here) that processes other than this benchmark used during the row's iperf3 run; \
             \"tunnel CPU\": what the tunnel's own processes used then (Drawbridge's client, edge and, relayed, the server; \
             the baselines' daemons), sampled every 250 ms; \"machine busy\": all cores' busy time then (iperf3, the kernel's TCP, \
             veth and softirq work included).\n",
            self.seconds, m.cores
        );
        let wg = self.row(RowKind::WireguardGo);
        let _ = writeln!(
            s,
            "| setup | path | TCP throughput | × wireguard-go | retransmits | ping RTT | × wireguard-go | other load | tunnel CPU | machine busy |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for k in RowKind::ALL {
            let Some(f) = self.row(k) else {
                let _ = writeln!(s, "| {} | not run | | | | | | | | |", k.label());
                continue;
            };
            let mbps = match (f.mbps, &f.error) {
                (Some(m), _) => format!("{m:.0} Mbit/s"),
                (None, Some(e)) => format!("failed: {}", e.replace('|', "/")),
                (None, None) => "n/a".into(),
            };
            let ping = match (f.ping_ms, &f.ping_note) {
                (Some(p), None) => format!("{p:.3} ms"),
                (Some(p), Some(n)) => format!("{p:.3} ms ({n})"),
                (None, Some(n)) => n.replace('|', "/"),
                (None, None) => "n/a".into(),
            };
            let cores = |x: Option<f64>| x.map_or_else(String::new, |l| format!("{l:.2} cores"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                k.label(),
                f.path.replace('|', "/"),
                mbps,
                fmt_ratio(ratio(f.mbps, wg.and_then(|w| w.mbps))),
                f.retransmits.map_or_else(|| "".into(), |r| r.to_string()),
                ping,
                if f.ping_ms.is_some() {
                    fmt_ratio(ratio(f.ping_ms, wg.and_then(|w| w.ping_ms)))
                } else {
                    String::new()
                },
                cores(f.other_load),
                cores(f.tunnel_cores),
                cores(f.machine_cores),
            );
        }
        let t = &self.timings;
        let _ = writeln!(
            s,
            "\n| Drawbridge timing ({SAMPLES} session starts each) | median | each |\n|---|---:|---|"
        );
        let rows: [(&str, &[Sample], Getter); 7] = [
            (
                "session start (API) → first Modbus reply, cone NAT, TUN (a read every 50 ms)",
                &t.direct,
                |x| secs(&x.modbus),
            ),
            (
                "session start (API) → first Modbus reply, symmetric NAT (relay), TUN",
                &t.relay,
                |x| secs(&x.modbus),
            ),
            (
                "direct-path upgrade: the client's relay connection (its first handshake goes out on it) → the edge switches to direct (server and edge logs, µs timestamps)",
                &t.direct,
                |x| secs(&x.upgrade),
            ),
            (
                "first Modbus reply − the edge's switch to direct (negative: the reply came first)",
                &t.direct,
                |x| x.reply_after_direct_ms.map(|ms| Ok(ms as f64 / 1000.0)),
            ),
            (
                "second client on the active session, cone NAT: `drawbridge connect -L` start → first Modbus reply through the forward",
                &t.direct,
                |x| secs(&x.second_client),
            ),
            (
                "second client on the active session, symmetric NAT (relay): `connect -L` start → first Modbus reply",
                &t.relay,
                |x| secs(&x.second_client),
            ),
            (
                "session start → the client's `drawbridge status` says direct (status file rewritten every 1 s)",
                &t.direct,
                |x| x.status_direct.map(|d| Ok(d.as_secs_f64())),
            ),
        ];
        for (what, samples, get) in rows {
            let _ = writeln!(s, "| {what} | {} |", summary(samples, get));
        }
        if !self.connects.is_empty() {
            let labs: Vec<(&str, &crate::connects::ConnectTimes)> =
                self.connects.iter().map(|(l, t)| (*l, t)).collect();
            let _ = write!(s, "\n{}", crate::connects::markdown(&labs));
        }
        if !self.crowds.is_empty() {
            let _ = write!(
                s,
                "\n{}",
                crate::crowd::markdown(&self.crowds, self.mbps(RowKind::Userspace))
            );
        }
        let slow: Vec<&Sample> = t
            .direct
            .iter()
            .chain(&t.relay)
            .filter(|x| matches!(x.modbus, Some(Ok(d)) if d > Duration::from_secs(1)))
            .collect();
        if !slow.is_empty() {
            let _ = writeln!(
                s,
                "\nSlow session starts (first Modbus reply after more than 1 s):\n"
            );
            for x in &slow {
                let _ = writeln!(
                    s,
                    "- {}: {}; the session's relay connections (edge and client keys), ms after the start request: {}",
                    x.name,
                    secs(&x.modbus)
                        .and_then(Result::ok)
                        .map_or_else(String::new, |v| format!("{v:.2} s")),
                    x.relay_events
                        .iter()
                        .map(|(ms, what, peer)| format!("+{ms} {what} {peer}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let gap = slow.iter().filter(|x| x.relay_gap()).count();
            let fast: Vec<&Sample> = t
                .direct
                .iter()
                .chain(&t.relay)
                .filter(|x| matches!(x.modbus, Some(Ok(d)) if d <= Duration::from_secs(1)))
                .collect();
            let fast_gap = fast.iter().filter(|x| x.relay_gap()).count();
            if gap > 0 {
                let _ = writeln!(
                    s,
                    "\nIn {gap} of these, the key that connected to the relay first (the edge's) was disconnected and \
                     connected again about 100–150 ms later, and the other key (the client's) connected in between: the \
                     edge re-opens its relay connection when its relay token changes (the client's key was added to it; \
                     `crates/edge/src/agent/sessions.rs` `converge` → `set_relay_token`, reconnect backoff from 100 ms in \
                     `crates/tunnel/src/driver.rs`). Likely: a handshake initiation sent through the relay around that \
                     gap is lost, and as it is still in flight the engine sends no other when the relay connection is back \
                     (`relay_connected` never forces one), so WireGuard retries only after 5 s (REKEY_TIMEOUT), which \
                     matches the ~5.2 s. The same reconnect shows in {fast_gap} of the {} fast starts, where a first \
                     handshake got through.",
                    fast.len()
                );
            }
        }
        let _ = writeln!(
            s,
            "\nReading the figures:\n\n\
             - The ratios take Drawbridge's direct figure with the client in TUN mode and the edge as it runs by \
             default; the row with the edge's kernel forwarding (`run --tun`) is shown beside it.\n\
             - By default Drawbridge's edge terminates the tunnel's TCP in smoltcp and opens its own TCP connection to the LAN \
             (split TCP), so the office's TCP sender talks to the edge, not to the LAN host; the baselines forward IP \
             packets end to end. The retransmit column counts the office sender's retransmissions: for the baselines \
             they are packets lost inside the tunnel path (userspace daemons' UDP and TUN queues on a busy 2-core machine).\n\
             - Where Drawbridge's speed comes from: the client's TUN uses the kernel's offloads (one read returns a \
             TCP super-packet of up to 64 KiB, split in userspace; writes are coalesced), the tunnel's UDP socket \
             sends runs of datagrams with one GSO call, receives a sender's run with one read (GRO) and has 4 MiB \
             buffers, and the edge's smoltcp sends all its \
             window allows per wake-up with 1 MiB windows and CUBIC. Debian's wireguard-go (v0.0.20220316) predates \
             wireguard-go's own TUN offloads.\n\
             - onetun's figure is onetun's own limit here: its log shows packets dropped inside it (a lagging \
             internal broadcast bus).\n\
             - One run on a shared 2-core VM: the same row varies by tens of percent between runs; read the \
             \"other load\" column with each row.\n\
             - \"First Modbus reply − the edge's switch to direct\": after a switch to the direct path, packets \
             are held only behind data already sent through the relay, and at most `HOLD_MAX` (500 ms, \
             `crates/tunnel/src/engine/path.rs`); a positive figure near +0.5 s would mean that hold is waiting.\n\
             - \"Edge memory per idle peer\": the growth, with every client connected and idle, of what the \
             edge's allocator has handed out (`heap_bytes` in `drawbridge-edge status --json`), divided by the \
             peers; in brackets the growth of its resident set, which also moves with memory that earlier rows \
             freed and the allocator kept (it can shrink while peers are added)."
        );
        let _ = writeln!(s, "\nVersions:\n");
        for (name, v) in &m.versions {
            let _ = writeln!(s, "- {name}: {v}");
        }
        let _ = writeln!(s, "\n{}", self.ratios());
        s
    }
}

/// The new report, followed by the sections (`## ` headings) of the file it
/// replaces: the load tool's figures and notes on partial runs live there.
pub(crate) fn merged(existing: &str, generated: &str) -> String {
    let mut out = generated.trim_end().to_string();
    out.push('\n');
    let mut at = 0;
    let kept = existing.lines().find_map(|l| {
        let start = at;
        at += l.len() + 1;
        l.starts_with("## ").then_some(start)
    });
    if let Some(start) = kept {
        out.push('\n');
        out.push_str(&existing[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_report_keeps_the_sections_of_the_file_it_replaces() {
        let old = "# Benchmarks\n\nold table\n\nratios: old\n## Login flood\n\nfigures\n\n## Desktops\nmore\n";
        let new = "# Benchmarks\n\nnew table\n\nratios: new\n";
        assert_eq!(
            merged(old, new),
            "# Benchmarks\n\nnew table\n\nratios: new\n\n## Login flood\n\nfigures\n\n## Desktops\nmore\n"
        );
        assert_eq!(merged("", new), new);
        assert_eq!(merged("# Benchmarks\nno sections\n", new), new);
    }

    #[test]
    fn timing_cells_show_the_median_and_each_start() {
        let s = |ms: u64| Sample {
            modbus: Some(Ok(Duration::from_millis(ms))),
            ..Sample::default()
        };
        let samples = [s(5200), s(150), s(5180), s(140), s(5790)];
        assert_eq!(
            summary(&samples, |x| secs(&x.modbus)),
            "5.18 s | 5.20, 0.15, 5.18, 0.14, 5.79"
        );
        assert_eq!(summary(&[], |x| secs(&x.modbus)), "not measured | ");
    }

    #[test]
    fn the_last_line_holds_the_ratios() {
        let f = |m: f64| Figures {
            mbps: Some(m),
            ..Figures::default()
        };
        let report = Report {
            rows: vec![
                Row::new(RowKind::Direct, f(700.0)),
                Row::new(RowKind::WireguardGo, f(560.0)),
                Row::new(RowKind::Relay, f(350.0)),
                Row::new(RowKind::Userspace, f(300.0)),
                Row::new(RowKind::Onetun, f(6.0)),
            ],
            ..Report::default()
        };
        let md = report.markdown();
        assert_eq!(
            md.trim_end().lines().last(),
            Some("ratios: direct/wireguard-go=1.25 relay/direct=0.50 userspace/onetun=50.00")
        );
        assert!(md.contains("| boringtun-cli ↔ boringtun-cli | not run |"));
    }
}
