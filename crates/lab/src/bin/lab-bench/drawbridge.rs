//! Drawbridge's rows and timings: sessions through the lab's API, `drawbridge connect`,
//! and the binaries' logs.

use crate::IPERF_PORT;
use crate::connects::{Reach, first_reply};
use crate::exec::{log_to, until};
use crate::measure::{Figures, measure};
use anyhow::{Result, anyhow, bail};
use drawbridge_lab::netns::NsRuntime;
use drawbridge_lab::topology::{Lab, PLC, PLC_IP};
use drawbridge_lab::{Client, Proc};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// The device's firewall also allows ICMP to the LAN (the lab's allows TCP only).
pub(crate) fn release_icmp(lab: &Lab) -> Result<()> {
    let (s, v) = lab.api.patch(
        &format!("/devices/{}", lab.device_id),
        json!({"firewall": [
            {"address": "192.168.1.0/24", "protocol": "tcp", "ports": "1-65535"},
            {"address": "192.168.1.0/24", "protocol": "icmp"}
        ]}),
    );
    if s != 200 {
        bail!("adding icmp to the device's firewall: {s} {v}");
    }
    Ok(())
}

pub(crate) fn start_iperf_server(lab: &Lab) -> Result<Proc> {
    let p = Proc::spawn(
        lab.lan
            .command("iperf3")
            .args(["-s", "-B", PLC_IP, "--idle-timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr: std::net::SocketAddr = format!("{PLC_IP}:{IPERF_PORT}").parse()?;
    let ok =
        |rt: &NsRuntime| rt.run(async move { tokio::net::TcpStream::connect(addr).await.is_ok() });
    until(
        "iperf3 -s listens",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || ok(&lab.lan_rt),
    )?;
    Ok(p)
}

pub(crate) fn start_session(lab: &Lab, sid: &str) -> Result<()> {
    let (s, v) = lab.api.post(&format!("/sessions/{sid}/start"), json!({}));
    if s != 200 {
        bail!("starting the session: {s} {v}");
    }
    if v["state"] != "active" {
        bail!("the session is {} after its start, not active", v["state"]);
    }
    Ok(())
}

pub(crate) fn end_session(lab: &Lab, sid: &str) {
    let _ = lab.api.post(&format!("/sessions/{sid}/end"), json!({}));
}

pub(crate) fn connect(lab: &Lab, client: &Client, sid: &str, mode: &[&str], log: &str) -> Proc {
    Proc::spawn(
        client
            .command()
            .args(["connect", sid])
            .args(mode)
            .args(["--for-seconds", "900"])
            .stdout(Stdio::null())
            .stderr(log_to(&lab.dir.path().join(log))),
    )
}

pub(crate) fn path_of(client: &Client) -> (String, String) {
    let d = Lab::client_device(client);
    (
        d["path"].as_str().unwrap_or_default().to_string(),
        d["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Reads registers from the office every 50 ms (each try on its own, so a lost
/// SYN does not hide a later success) until one answers; the time since `start`.
fn first_modbus(rt: &NsRuntime, start: Instant, limit: Duration) -> Result<Duration> {
    first_modbus_at(rt, Lab::addr(PLC), start, limit)
}

/// [`first_modbus`] to another address (e.g. a `-L` forward on the office host).
fn first_modbus_at(
    rt: &NsRuntime,
    addr: std::net::SocketAddr,
    start: Instant,
    limit: Duration,
) -> Result<Duration> {
    first_reply(
        rt,
        Reach::Direct(addr),
        start,
        Duration::from_millis(50),
        limit,
    )
}

/// Timestamped lines of a binary's log (tracing's RFC 3339 timestamps, ANSI removed).
fn log_lines(path: &Path) -> Vec<(OffsetDateTime, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let l = strip_ansi(l);
            let ts = l.split_whitespace().next()?;
            let t =
                OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
            Some((t, l))
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The client's relay connection (its first handshake goes out on it) → the
/// edge's switch of that peer to the direct path, from the server's and the
/// edge's logs (same clock, microsecond timestamps). Also returns when the
/// edge switched.
fn direct_upgrade(lab: &Lab, since: OffsetDateTime) -> Result<(Duration, OffsetDateTime)> {
    let edge = log_lines(&lab.dir.path().join("edge.log"));
    let server = log_lines(&lab.dir.path().join("server.log"));
    for (t_direct, l) in edge
        .iter()
        .filter(|(t, l)| *t >= since && l.contains("path: direct"))
    {
        let Some(peer) = field(l, "peer") else {
            continue;
        };
        let relay = server.iter().find(|(t, l)| {
            *t >= since && l.contains("relay: connected") && field(l, "peer") == Some(peer)
        });
        if let Some((t_relay, _)) = relay {
            let d = *t_direct - *t_relay;
            let d = Duration::try_from(d)
                .map_err(|_| anyhow!("direct before the relay connection ({d})"))?;
            return Ok((d, *t_direct));
        }
    }
    bail!("no switch to the direct path of a client that connected to the relay in the logs")
}

/// How many sessions are started for the timing figures (per lab).
pub(crate) const SAMPLES: usize = 5;

/// One session start.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub(crate) modbus: Option<Result<Duration, String>>,
    pub(crate) upgrade: Option<Result<Duration, String>>,
    /// Session start → the client's status file says direct (1 s granularity).
    pub(crate) status_direct: Option<Duration>,
    /// First Modbus reply − the edge's switch to direct (negative: before).
    pub(crate) reply_after_direct_ms: Option<i64>,
    /// A second client joins the already active session: its `drawbridge connect
    /// -L` starts → the first Modbus reply through that forward.
    pub(crate) second_client: Option<Result<Duration, String>>,
    /// The session's relay connections and disconnections (edge and client):
    /// (ms after the start request, what, peer).
    pub(crate) relay_events: Vec<(i64, &'static str, String)>,
    pub(crate) name: String,
}

impl Sample {
    /// A relay key disconnected and came back with another key connecting in between.
    pub(crate) fn relay_gap(&self) -> bool {
        let ev = &self.relay_events;
        ev.iter().enumerate().any(|(i, (_, what, peer))| {
            *what == "disconnected"
                && ev[i + 1..]
                    .iter()
                    .position(|(_, w, p)| *w == "connected" && p == peer)
                    .is_some_and(|j| {
                        ev[i + 1..i + 1 + j]
                            .iter()
                            .any(|(_, w, p)| *w == "connected" && p != peer)
                    })
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Timings {
    pub(crate) direct: Vec<Sample>,
    pub(crate) relay: Vec<Sample>,
}

/// Creates and starts a session, runs `drawbridge connect --tun` and times the
/// first Modbus reply (and, with `direct`, the upgrade to the direct path).
/// Returns the running client and the session id.
fn session_sample(
    lab: &Lab,
    client: &Client,
    name: &str,
    targets: &Value,
    direct: bool,
) -> Result<(Proc, String, Sample)> {
    let sid = lab.session_with(name, targets.clone());
    let since = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    start_session(lab, &sid)?;
    let conn = connect(
        lab,
        client,
        &sid,
        &["--tun"],
        &format!("connect-{name}.log"),
    );
    let modbus = first_modbus(&lab.office_rt, t0, Duration::from_secs(60));
    let mut s = Sample::default();
    let want = if direct { "direct" } else { "relay" };
    let seen = until(
        &format!("the client reports the {want} path"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || path_of(client).0 == want,
    );
    if direct {
        if seen.is_ok() {
            s.status_direct = Some(t0.elapsed());
        }
        match seen.and_then(|()| direct_upgrade(lab, since)) {
            Ok((up, t_direct)) => {
                s.upgrade = Some(Ok(up));
                if let Ok(m) = &modbus {
                    let reply = since + *m;
                    s.reply_after_direct_ms = Some((reply - t_direct).whole_milliseconds() as i64);
                }
            }
            Err(e) => s.upgrade = Some(Err(format!("{e:#}"))),
        }
    }
    s.modbus = Some(modbus.map_err(|e| format!("{e:#}")));
    s.name = name.to_string();
    let server = log_lines(&lab.dir.path().join("server.log"));
    let peers: Vec<&str> = server
        .iter()
        .filter(|(t, l)| {
            *t >= since && l.contains("relay: connected") && field(l, "session") == Some(&sid)
        })
        .filter_map(|(_, l)| field(l, "peer"))
        .collect();
    s.relay_events = server
        .iter()
        .filter(|(t, _)| *t >= since)
        .filter_map(|(t, l)| {
            let what = if l.contains("relay: connected") {
                "connected"
            } else if l.contains("relay: disconnected") {
                "disconnected"
            } else {
                return None;
            };
            let peer = field(l, "peer").filter(|p| peers.contains(p))?;
            Some((
                (*t - since).whole_milliseconds() as i64,
                what,
                peer.to_string(),
            ))
        })
        .collect();
    eprintln!("   {name}: {s:?}");
    Ok((conn, sid, s))
}

pub(crate) fn drawbridge_targets() -> Value {
    json!([
        {"address": PLC_IP, "protocol": "tcp", "ports": "502"},
        {"address": PLC_IP, "protocol": "tcp", "ports": IPERF_PORT.to_string()},
        {"address": PLC_IP, "protocol": "icmp"}
    ])
}

/// `SAMPLES` session starts; the last one's client is left running (with its
/// session id) for the throughput row.
pub(crate) fn samples(
    lab: &Lab,
    client: &Client,
    prefix: &str,
    direct: bool,
    out: &mut Vec<Sample>,
) -> Result<(Proc, String)> {
    let targets = drawbridge_targets();
    let mut last: Option<(Proc, String)> = None;
    for i in 1..=SAMPLES {
        if let Some((mut c, sid)) = last.take() {
            c.interrupt();
            end_session(lab, &sid);
        }
        let (c, sid, mut s) =
            session_sample(lab, client, &format!("{prefix}-{i}"), &targets, direct)?;
        s.second_client = Some(second_client(lab, client, &sid, &format!("{prefix}-{i}")));
        eprintln!("   {prefix}-{i} second client: {:?}", s.second_client);
        out.push(s);
        last = Some((c, sid));
    }
    last.ok_or_else(|| anyhow!("no session"))
}

/// The office's local port of the second client's `-L` forward to the PLC's Modbus.
const SECOND_CLIENT_PORT: u16 = 15202;

/// A second `drawbridge connect` (userspace `-L`) into the session that is already
/// active with the first client's tunnel up: its start → the first Modbus reply
/// through the forward. Once slow (~0.5 s: a hold on the upgrade to the direct
/// path while the relay's latency was unknown, `crates/tunnel/src/engine/path.rs`).
fn second_client(lab: &Lab, client: &Client, sid: &str, name: &str) -> Result<Duration, String> {
    let fwd = format!("127.0.0.1:{SECOND_CLIENT_PORT}:{PLC_IP}:502");
    let t0 = Instant::now();
    let mut conn = connect(
        lab,
        client,
        sid,
        &["-L", &fwd],
        &format!("connect-{name}-second.log"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], SECOND_CLIENT_PORT));
    let r = first_modbus_at(&lab.office_rt, addr, t0, Duration::from_secs(30))
        .map_err(|e| format!("{e:#}"));
    conn.interrupt();
    r
}

/// Measures through a running `drawbridge connect`, noting the path before and after.
pub(crate) fn drawbridge_row(
    lab: &Lab,
    client: &Client,
    host: &str,
    port: u16,
    secs: u32,
    with_ping: bool,
) -> Figures {
    let before = path_of(client);
    let mut f = measure(&lab.office.host, host, port, secs, with_ping);
    let after = path_of(client);
    let edge = &lab.edge.status()["sessions"];
    let edge_path = edge
        .as_array()
        .and_then(|s| s.last())
        .map(|s| s["peers"][0]["path"].as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into());
    f.path = path_text(&before, &after, &edge_path);
    f
}

/// The row's path column: the client's path (and reason) and the edge's, or the
/// change during the run. A client that had not written its status yet when the
/// row started (it rewrites it every second) has no "before".
fn path_text(before: &(String, String), after: &(String, String), edge_path: &str) -> String {
    if before.0 == after.0 || before.0.is_empty() {
        format!("{} ({}; edge: {edge_path})", after.0, after.1)
    } else {
        format!(
            "{} ({}) → {} ({}) during the run",
            before.0, before.1, after.0, after.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_not_reported_yet_at_the_start_is_no_change() {
        let p = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            path_text(&p("", ""), &p("direct", "direct ok"), "direct"),
            "direct (direct ok; edge: direct)"
        );
        assert_eq!(
            path_text(&p("relay", "probing"), &p("direct", "direct ok"), "direct"),
            "relay (probing) → direct (direct ok) during the run"
        );
    }

    #[test]
    fn log_fields_are_read_with_or_without_colours() {
        let l = "\u{1b}[2m2026-11-22T05:56:46.146022Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m drawbridge_relay: relay: connected \u{1b}[3mpeer\u{1b}[0m\u{1b}[2m=\u{1b}[0m320a754e session=01a2";
        let plain = strip_ansi(l);
        assert!(plain.starts_with("2026-11-22T05:56:46.146022Z DEBUG"));
        assert_eq!(field(&plain, "peer"), Some("320a754e"));
        assert_eq!(field(&plain, "session"), Some("01a2"));
        assert_eq!(field(&plain, "addr"), None);
    }

    fn ev(list: &[(i64, &'static str, &str)]) -> Sample {
        Sample {
            relay_events: list
                .iter()
                .map(|&(t, w, p)| (t, w, p.to_string()))
                .collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn a_relay_gap_is_a_reconnect_with_another_key_connecting_in_between() {
        let gap = ev(&[
            (10, "connected", "e"),
            (14, "disconnected", "e"),
            (18, "connected", "c"),
            (161, "connected", "e"),
        ]);
        assert!(gap.relay_gap());
        let none = ev(&[
            (10, "connected", "e"),
            (14, "disconnected", "e"),
            (100, "connected", "e"),
            (120, "connected", "c"),
        ]);
        assert!(!none.relay_gap());
    }
}
