//! `--desktop`'s figures and their Markdown table.

use super::rfb::Encoding;
use super::{GOAL_RECORDING_PERCENT, GOAL_UPDATES_PER_SEC};
use serde::Serialize;

/// One (encoding, recording) run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub encoding: Encoding,
    pub recording: String,
    pub width: u16,
    pub height: u16,
    pub window_secs: f64,
    pub paints_per_sec: f64,
    pub updates: u64,
    pub updates_per_sec: f64,
    /// RFB bytes to the viewer, MiB a second.
    pub mib_per_sec: f64,
    pub ws_messages_per_sec: f64,
    pub mean_update_kib: f64,
    /// Share of updates covering the whole screen.
    pub full_screen_percent: f64,
    pub interval_p50_ms: f64,
    pub interval_p99_ms: f64,
    pub interval_max_ms: f64,
    pub request_to_update_p50_ms: f64,
    pub request_to_update_p99_ms: f64,
    /// % of one core over the window.
    pub server_cpu_percent: Option<f64>,
    pub server_ms_per_update: Option<f64>,
    pub server_ms_per_mib: Option<f64>,
    pub edge_cpu_percent: f64,
    pub edge_ms_per_mib: f64,
    pub xvnc_cpu_percent: f64,
    /// The viewer and the painter (threads of this tool).
    pub tool_cpu_percent: f64,
    pub machine_busy_cores: f64,
    pub server_rss_mib: Option<f64>,
    /// The desktop's record once it ended: bytes recorded and why it ended.
    pub recorded_mib: Option<f64>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DesktopReport {
    pub machine: crate::data::Machine,
    pub database: String,
    /// The server's peer's tunnel as the edge reported it.
    pub path: String,
    pub path_reason: String,
    pub paint_hz: f64,
    pub runs: Vec<RunFigures>,
    pub errors: Vec<String>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

impl DesktopReport {
    /// The two runs of one encoding: (required, off).
    fn pair(&self, e: Encoding) -> Option<(&RunFigures, &RunFigures)> {
        let find = |m: &str| {
            self.runs
                .iter()
                .find(|r| r.encoding == e && r.recording == m)
        };
        Some((find("required")?, find("off")?))
    }

    /// The recording's cost: the server's CPU per update with it over
    /// without it, and per MiB sent, in %.
    pub fn recording_percent(&self, e: Encoding) -> Option<(f64, f64)> {
        let (req, off) = self.pair(e)?;
        Some((
            (req.server_ms_per_update? / off.server_ms_per_update? - 1.0) * 100.0,
            (req.server_ms_per_mib? / off.server_ms_per_mib? - 1.0) * 100.0,
        ))
    }

    /// The figures as Markdown.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let m = &self.machine;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "drawbridge-loadtest --desktop on {}; {} cores ({}); load average {} ({} compiler processes) at the start, {} ({}) at the end; the server's peer's tunnel: {} ({})\n",
            self.database,
            m.cores,
            m.cpu,
            m.load_start,
            m.compilers_start,
            m.load_end,
            m.compilers_end,
            self.path,
            self.path_reason
        );
        let _ = writeln!(
            o,
            "| encoding | recording | screen | paints/s | updates/s | full-screen | MiB/s | KiB/update | WebSocket messages/s | between updates p50/p99/max ms | request → update p50/p99 ms | server CPU | server ms/update | server ms/MiB | edge CPU | edge ms/MiB | Xvnc CPU | tool CPU | machine busy | server RSS max | recorded |"
        );
        let _ = writeln!(
            o,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.runs {
            let _ = writeln!(
                o,
                "| {} | {} | {}×{} | {:.1} | {:.1} | {:.0} % | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {} % | {} | {} | {:.0} % | {:.2} | {:.0} % | {:.0} % | {:.2} cores | {} MiB | {} |",
                r.encoding.name(),
                r.recording,
                r.width,
                r.height,
                r.paints_per_sec,
                r.updates_per_sec,
                r.full_screen_percent,
                r.mib_per_sec,
                r.mean_update_kib,
                r.ws_messages_per_sec,
                r.interval_p50_ms,
                r.interval_p99_ms,
                r.interval_max_ms,
                r.request_to_update_p50_ms,
                r.request_to_update_p99_ms,
                opt(r.server_cpu_percent, 0),
                opt(r.server_ms_per_update, 2),
                opt(r.server_ms_per_mib, 2),
                r.edge_cpu_percent,
                r.edge_ms_per_mib,
                r.xvnc_cpu_percent,
                r.tool_cpu_percent,
                r.machine_busy_cores,
                opt(r.server_rss_mib, 0),
                r.recorded_mib
                    .map_or("n/a".into(), |b| format!("{b:.1} MiB")),
            );
        }
        let _ = writeln!(o, "\n| goal | encoding | value | |\n|---|---|---:|---|");
        for e in [Encoding::Raw, Encoding::Zrle] {
            let Some((req, off)) = self.pair(e) else {
                continue;
            };
            let worst = req.updates_per_sec.min(off.updates_per_sec);
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            let _ = writeln!(
                o,
                "| ≥ {GOAL_UPDATES_PER_SEC:.0} updates/s, {}×{}, relayed (the slower of the two runs) | {} | {worst:.1} updates/s | {} |",
                req.width,
                req.height,
                e.name(),
                verdict(worst >= GOAL_UPDATES_PER_SEC)
            );
            if let Some((p, per_mib)) = self.recording_percent(e) {
                let _ = writeln!(
                    o,
                    "| recording adds < {GOAL_RECORDING_PERCENT:.0} % server CPU (per update, required vs off; per MiB {per_mib:+.1} %) | {} | {p:+.1} % | {} |",
                    e.name(),
                    verdict(p < GOAL_RECORDING_PERCENT)
                );
            }
        }
        for r in &self.runs {
            if let Some(why) = &r.end_reason {
                let _ = writeln!(
                    o,
                    "\n{} / {}: the desktop ended: {why}",
                    r.encoding.name(),
                    r.recording
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(o, "ERROR: {e}");
        }
        o
    }
}
