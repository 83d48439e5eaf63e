//! Every connect fast: from `drawbridge connect` to the first reply of a released
//! TCP service (a Modbus read of the lab's PLC), through a TUN interface, a `-L`
//! forward and the SOCKS5 proxy, cold and warm, [`CONNECTS`] times each.
//!
//! - **cold:** a new session: the clock starts before its start request (API), then
//!   `drawbridge connect` starts; the edge learns of the session from the server.
//! - **warm:** a second client joins the session that is already active. For `-L`
//!   and SOCKS5 the first (cold) client keeps running beside it; for TUN it is
//!   stopped first, as the lab's office host has room for one TUN client.
//!
//! Reads are tried every 10 ms, each on its own connection, so a lost SYN or a
//! listener that is not bound yet does not hide a later success.

use crate::drawbridge::{connect, end_session, start_session};
use anyhow::{Result, bail};
use drawbridge_lab::netns::NsRuntime;
use drawbridge_lab::topology::{Lab, PLC, PLC_IP};
use drawbridge_lab::{Client, plc};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Connects per mode and temperature.
pub(crate) const CONNECTS: usize = 20;
/// How often a read is tried while waiting for the first reply.
const TRY_EVERY: Duration = Duration::from_millis(10);
/// A connect that has no reply after this long counts as failed.
const LIMIT: Duration = Duration::from_secs(30);
/// The office's local ports of the cold and the warm client (`-L`, SOCKS5).
const COLD_PORT: u16 = 15301;
const WARM_PORT: u16 = 15302;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Tun,
    Forward,
    Socks5,
}

impl Mode {
    pub(crate) const ALL: [Mode; 3] = [Mode::Tun, Mode::Forward, Mode::Socks5];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Tun => "TUN (`--tun`)",
            Mode::Forward => "`-L` forward",
            Mode::Socks5 => "SOCKS5 (`--socks5`)",
        }
    }

    fn args(self, port: u16) -> Vec<String> {
        match self {
            Mode::Tun => vec!["--tun".into()],
            Mode::Forward => vec!["-L".into(), format!("127.0.0.1:{port}:{PLC}")],
            Mode::Socks5 => vec!["--socks5".into(), format!("127.0.0.1:{port}")],
        }
    }

    /// How the office host reaches the PLC through this client.
    fn reach(self, port: u16) -> Reach {
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        match self {
            Mode::Tun => Reach::Direct(Lab::addr(PLC)),
            Mode::Forward => Reach::Direct(local),
            Mode::Socks5 => Reach::Socks5(local, Lab::addr(PLC)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Reach {
    Direct(SocketAddr),
    Socks5(SocketAddr, SocketAddr),
}

impl Reach {
    async fn read(self) -> bool {
        let regs = match self {
            Reach::Direct(a) => plc::read_registers(a).await,
            Reach::Socks5(proxy, plc) => plc::read_registers_via_socks5(proxy, plc).await,
        };
        regs.is_ok_and(|r| r == plc::EXPECTED)
    }
}

/// Each connect's time to the first reply, or why there was none.
type Times = Vec<Result<Duration, String>>;

/// The figures of one lab: per mode, the cold and the warm connects.
#[derive(Debug, Default)]
pub(crate) struct ConnectTimes {
    /// (mode, warm, each connect's figure).
    pub(crate) rows: Vec<(Mode, bool, Times)>,
}

impl ConnectTimes {
    fn push(&mut self, mode: Mode, warm: bool, r: Result<Duration, String>) {
        match self
            .rows
            .iter_mut()
            .find(|(m, w, _)| *m == mode && *w == warm)
        {
            Some((_, _, v)) => v.push(r),
            None => self.rows.push((mode, warm, vec![r])),
        }
    }
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of sorted figures.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The goal of the performance issue: p99 of 20 connects at most this.
pub(crate) const GOAL_P99: Duration = Duration::from_millis(150);

/// A markdown table of the connect figures of each lab (`(what, figures)`).
pub(crate) fn markdown(labs: &[(&str, &ConnectTimes)]) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "| connect → first reply of a released TCP service ({CONNECTS} each; a Modbus read tried every 10 ms) | lab | median | p99 | goal p99 ≤ {} ms | each (ms) |\n|---|---|---:|---:|---|---|\n",
        GOAL_P99.as_millis()
    );
    for (lab, times) in labs {
        for (mode, warm, all) in &times.rows {
            let mut ok: Vec<Duration> = all
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect();
            ok.sort();
            let failed = all.len() - ok.len();
            let ms = |d: Option<Duration>| {
                d.map_or_else(|| "n/a".into(), |d| format!("{} ms", d.as_millis()))
            };
            let p99 = percentile(&ok, 0.99);
            let verdict = match p99 {
                Some(p) if failed == 0 && p <= GOAL_P99 => "met".to_string(),
                _ if failed > 0 => format!("missed ({failed} failed)"),
                _ => "missed".to_string(),
            };
            let each = all
                .iter()
                .map(|r| match r {
                    Ok(d) => d.as_millis().to_string(),
                    Err(e) => format!("failed: {}", e.replace('|', "/")),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let what = if *warm {
                format!(
                    "{}, warm: a second client on the active session",
                    mode.label()
                )
            } else {
                format!("{}, cold: session start (API) included", mode.label())
            };
            let _ = writeln!(
                s,
                "| {what} | {lab} | {} | {} | {verdict} | {each} |",
                ms(percentile(&ok, 0.5)),
                ms(p99)
            );
        }
    }
    s
}

/// Tries a read every `every` (each on its own, so a lost SYN does not hide a
/// later success) until one answers; the time since `start`. Fails after `limit`.
pub(crate) fn first_reply(
    rt: &NsRuntime,
    reach: Reach,
    start: Instant,
    every: Duration,
    limit: Duration,
) -> Result<Duration> {
    rt.run(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1);
        let mut tick = tokio::time::interval(every);
        let mut tries = tokio::task::JoinSet::new();
        let deadline = tokio::time::sleep_until((start + limit).into());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(t) = rx.recv() => return Ok(t.duration_since(start)),
                _ = tick.tick() => {
                    let tx = tx.clone();
                    tries.spawn(async move {
                        if reach.read().await {
                            let _ = tx.try_send(Instant::now());
                        }
                    });
                }
                _ = &mut deadline => bail!("no Modbus reply within {limit:?}"),
            }
        }
    })
}

/// [`CONNECTS`] rounds of: for each mode, a cold connect on a new session, then
/// a warm one on the same session. Rounds interleave the modes, so that a slow
/// minute of the machine does not fall on one mode only.
pub(crate) fn measure(lab: &Lab, client: &Client, tag: &str, out: &mut ConnectTimes) {
    let targets = json!([{"address": PLC_IP, "protocol": "tcp", "ports": "502"}]);
    for round in 1..=CONNECTS {
        for mode in Mode::ALL {
            let name = format!("{tag}-connect-{round}-{mode:?}").to_lowercase();
            let sid = lab.session_with(&name, targets.clone());
            let (cold, warm) = one(lab, client, &sid, &name, mode);
            end_session(lab, &sid);
            eprintln!("   {name}: cold {cold:?}, warm {warm:?}");
            out.push(mode, false, cold);
            out.push(mode, true, warm);
        }
    }
}

fn one(
    lab: &Lab,
    client: &Client,
    sid: &str,
    name: &str,
    mode: Mode,
) -> (Result<Duration, String>, Result<Duration, String>) {
    let t0 = Instant::now();
    if let Err(e) = start_session(lab, sid) {
        let e = format!("{e:#}");
        return (Err(e.clone()), Err(e));
    }
    let args = mode.args(COLD_PORT);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = connect(lab, client, sid, &args, &format!("{name}-cold.log"));
    let cold = first_reply(&lab.office_rt, mode.reach(COLD_PORT), t0, TRY_EVERY, LIMIT)
        .map_err(|e| format!("{e:#}"));
    // One TUN client per office host: the cold one makes room.
    if mode == Mode::Tun {
        first.interrupt();
    }
    let args = mode.args(WARM_PORT);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t1 = Instant::now();
    let mut second = connect(lab, client, sid, &args, &format!("{name}-warm.log"));
    let warm = first_reply(&lab.office_rt, mode.reach(WARM_PORT), t1, TRY_EVERY, LIMIT)
        .map_err(|e| format!("{e:#}"));
    second.interrupt();
    if mode != Mode::Tun {
        first.interrupt();
    }
    (cold, warm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=20).map(|i| Duration::from_millis(i * 10)).collect();
        assert_eq!(percentile(&d, 0.5), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&d, 0.99), Some(Duration::from_millis(200)));
        assert_eq!(percentile(&d[..1], 0.99), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_failed_connect_misses_the_goal_whatever_the_others_took() {
        let mut t = ConnectTimes::default();
        for _ in 0..19 {
            t.push(Mode::Forward, true, Ok(Duration::from_millis(40)));
        }
        t.push(
            Mode::Forward,
            true,
            Err("no Modbus reply within 30s".into()),
        );
        t.push(Mode::Tun, false, Ok(Duration::from_millis(90)));
        t.push(Mode::Tun, false, Ok(Duration::from_millis(160)));
        let md = markdown(&[("cone NAT", &t)]);
        let forward = md
            .lines()
            .find(|l| l.contains("`-L` forward, warm"))
            .unwrap();
        assert!(forward.contains("| missed (1 failed) |"), "{forward}");
        let tun = md
            .lines()
            .find(|l| l.contains("TUN (`--tun`), cold"))
            .unwrap();
        assert!(tun.contains("| 160 ms | missed |"), "{tun}");
    }
}
