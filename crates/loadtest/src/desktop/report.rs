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

/// The median of some figures (the upper middle one of an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// One recording mode's medians over its windows.
struct Medians {
    windows: usize,
    updates_per_sec: f64,
    server_ms_per_update: Option<f64>,
    server_ms_per_mib: Option<f64>,
}

impl DesktopReport {
    /// The medians of one encoding's windows per mode: (required, off).
    fn medians(&self, e: Encoding) -> Option<(Medians, Medians)> {
        let of = |m: &str| {
            let runs: Vec<&RunFigures> = self
                .runs
                .iter()
                .filter(|r| r.encoding == e && r.recording == m)
                .collect();
            let all = |f: fn(&RunFigures) -> Option<f64>| -> Option<Vec<f64>> {
                runs.iter().map(|r| f(r)).collect()
            };
            Some(Medians {
                windows: runs.len(),
                updates_per_sec: median(runs.iter().map(|r| r.updates_per_sec).collect())?,
                server_ms_per_update: all(|r| r.server_ms_per_update).and_then(median),
                server_ms_per_mib: all(|r| r.server_ms_per_mib).and_then(median),
            })
        };
        Some((of("required")?, of("off")?))
    }

    /// The recording's cost: the server's CPU per update with it over
    /// without it, and per MiB sent, in % (of the medians).
    pub fn recording_percent(&self, e: Encoding) -> Option<(f64, f64)> {
        let (req, off) = self.medians(e)?;
        Some((
            (req.server_ms_per_update? / off.server_ms_per_update? - 1.0) * 100.0,
            (req.server_ms_per_mib? / off.server_ms_per_mib? - 1.0) * 100.0,
        ))
    }

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
            let Some((req, off)) = self.medians(e) else {
                continue;
            };
            let Some(first) = self.runs.iter().find(|r| r.encoding == e) else {
                continue;
            };
            let of = if req.windows.min(off.windows) > 1 {
                format!("medians of {} and {} windows", req.windows, off.windows)
            } else {
                "one window each".to_string()
            };
            let worst = req.updates_per_sec.min(off.updates_per_sec);
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            let _ = writeln!(
                o,
                "| ≥ {GOAL_UPDATES_PER_SEC:.0} updates/s, {}×{}, relayed (the slower of required and off; {of}) | {} | {worst:.1} updates/s | {} |",
                first.width,
                first.height,
                e.name(),
                verdict(worst >= GOAL_UPDATES_PER_SEC)
            );
            if let Some((p, per_mib)) = self.recording_percent(e) {
                let _ = writeln!(
                    o,
                    "| recording adds < {GOAL_RECORDING_PERCENT:.0} % server CPU (per update, required vs off, {of}; per MiB {per_mib:+.1} %) | {} | {p:+.1} % | {} |",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(recording: &str, updates_per_sec: f64, ms_per_update: f64) -> RunFigures {
        RunFigures {
            encoding: Encoding::Raw,
            recording: recording.into(),
            width: 1920,
            height: 1080,
            window_secs: 20.0,
            paints_per_sec: 30.0,
            updates: 400,
            updates_per_sec,
            mib_per_sec: updates_per_sec * 8.1,
            ws_messages_per_sec: 3000.0,
            mean_update_kib: 8100.0,
            full_screen_percent: 100.0,
            interval_p50_ms: 50.0,
            interval_p99_ms: 60.0,
            interval_max_ms: 70.0,
            request_to_update_p50_ms: 50.0,
            request_to_update_p99_ms: 60.0,
            server_cpu_percent: Some(80.0),
            server_ms_per_update: Some(ms_per_update),
            server_ms_per_mib: Some(ms_per_update / 8.1),
            edge_cpu_percent: 40.0,
            edge_ms_per_mib: 2.5,
            xvnc_cpu_percent: 20.0,
            tool_cpu_percent: 10.0,
            machine_busy_cores: 1.5,
            server_rss_mib: Some(70.0),
            recorded_mib: None,
            end_reason: None,
        }
    }

    #[test]
    fn the_goals_take_each_modes_median_so_one_slow_window_does_not_decide_them() {
        let report = DesktopReport {
            machine: crate::data::Machine {
                cores: 2,
                cpu: String::new(),
                load_start: String::new(),
                load_end: String::new(),
                compilers_start: 0,
                compilers_end: 0,
            },
            database: "sqlite".into(),
            path: "relay".into(),
            path_reason: String::new(),
            paint_hz: 30.0,
            // One window of each mode hit a busy moment.
            runs: vec![
                run("required", 21.0, 42.0),
                run("off", 22.0, 40.0),
                run("required", 12.0, 80.0),
                run("off", 21.5, 40.0),
                run("required", 20.5, 43.0),
                run("off", 10.0, 90.0),
            ],
            errors: vec![],
        };
        let (p, _) = report.recording_percent(Encoding::Raw).unwrap();
        assert!((p - 7.5).abs() < 1e-9, "{p}");
        let table = report.table();
        assert!(table.contains("| raw | 20.5 updates/s | met |"), "{table}");
        assert!(table.contains("medians of 3 and 3 windows"), "{table}");
    }
}
