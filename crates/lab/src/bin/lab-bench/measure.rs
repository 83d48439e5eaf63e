//! iperf3 and ping from a namespace.

use crate::PING_COUNT;
use crate::exec::{output, until};
use crate::load::{machine_busy_secs, other_cpu_secs, tunnel_cpu_secs};
use anyhow::{Context, Result, anyhow, bail};
use drawbridge_lab::Netns;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) mbps: Option<f64>,
    pub(crate) retransmits: Option<u64>,
    pub(crate) ping_ms: Option<f64>,
    /// Why there is no ping figure, or what is odd about it.
    pub(crate) ping_note: Option<String>,
    /// The path (and what the product said about it) during the measurement.
    pub(crate) path: String,
    /// Cores' worth of CPU other processes used during the iperf3 run.
    pub(crate) other_load: Option<f64>,
    /// Cores' worth of CPU the tunnel's processes used during the iperf3 run.
    pub(crate) tunnel_cores: Option<f64>,
    /// Cores' worth of CPU the whole machine was busy during the iperf3 run.
    pub(crate) machine_cores: Option<f64>,
    pub(crate) error: Option<String>,
}

/// iperf3, one TCP stream from `ns` to `host:port`: (receiver Mbit/s, retransmits).
pub(crate) fn iperf(ns: &Netns, host: &str, port: u16, secs: u32) -> Result<(f64, u64)> {
    let out = output(
        ns.command("iperf3").args([
            "-c",
            host,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
            "--connect-timeout",
            "5000",
        ]),
        Duration::from_secs(u64::from(secs) + 40),
    )?;
    parse_iperf(&out.stdout)
        .with_context(|| format!("iperf3: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `iperf3 -J` output: (receiver Mbit/s, sender's retransmits).
fn parse_iperf(json: &[u8]) -> Result<(f64, u64)> {
    let v: Value = serde_json::from_slice(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 gave no receiver figure"))?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e6, retr))
}

/// A 1 s iperf3 run until one succeeds (tunnel up, handshakes done, server ready).
pub(crate) fn iperf_warm_up(ns: &Netns, host: &str, port: u16) -> Result<()> {
    let mut last = None;
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        match iperf(ns, host, port, 1) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no try"))
        .context("iperf3 warm-up"))
}

/// `ping -c 20 -i 0.2`: average RTT in ms, and a note on loss.
fn ping(ns: &Netns, host: &str) -> Result<(f64, Option<String>)> {
    // Warm up: the first echo may wait for a handshake.
    let _ = until(
        "a first echo reply",
        Duration::from_secs(10),
        Duration::ZERO,
        || {
            output(
                ns.command("ping").args(["-n", "-c", "1", "-W", "1", host]),
                Duration::from_secs(5),
            )
            .is_ok_and(|o| o.status.success())
        },
    );
    let out = output(
        ns.command("ping").args([
            "-n",
            "-q",
            "-c",
            &PING_COUNT.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            host,
        ]),
        Duration::from_secs(60),
    )?;
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// `ping -q` output: average RTT in ms, and a note on loss.
fn parse_ping(text: &str) -> Result<(f64, Option<String>)> {
    let loss = text
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|n| n.trim().parse::<f64>().ok());
    let avg = text
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|a| a.parse::<f64>().ok());
    match (avg, loss) {
        (Some(a), Some(l)) if l > 0.0 => Ok((a, Some(format!("{l}% lost")))),
        (Some(a), _) => Ok((a, None)),
        (None, l) => bail!("no echo reply ({}% lost)", l.unwrap_or(100.0)),
    }
}

/// iperf3 and ping through whatever routes `ns` has now.
pub(crate) fn measure(ns: &Netns, host: &str, port: u16, secs: u32, with_ping: bool) -> Figures {
    let mut f = Figures::default();
    let measured = iperf_warm_up(ns, host, port).and_then(|()| {
        let (c0, u0, m0) = (other_cpu_secs(), tunnel_cpu_secs(), machine_busy_secs());
        let t0 = Instant::now();
        let r = iperf(ns, host, port, secs)?;
        let secs = t0.elapsed().as_secs_f64();
        f.other_load = Some((other_cpu_secs() - c0) / secs);
        f.tunnel_cores = Some((tunnel_cpu_secs() - u0) / secs);
        f.machine_cores = machine_busy_secs().zip(m0).map(|(b, a)| (b - a) / secs);
        Ok(r)
    });
    match measured {
        Ok((mbps, retr)) => {
            f.mbps = Some(mbps);
            f.retransmits = Some(retr);
        }
        Err(e) => f.error = Some(format!("{e:#}")),
    }
    if with_ping {
        match ping(ns, host) {
            Ok((ms, note)) => {
                f.ping_ms = Some(ms);
                f.ping_note = note;
            }
            Err(e) => f.ping_note = Some(format!("{e:#}")),
        }
    }
    eprintln!(
        "   {:?} Mbit/s, {:?} retransmits, ping {:?} ms {}{}",
        f.mbps.map(|m| m.round()),
        f.retransmits,
        f.ping_ms,
        f.ping_note.as_deref().unwrap_or(""),
        f.error.as_deref().unwrap_or("")
    );
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_read() {
        let ok = "--- 192.168.1.10 ping statistics ---\n20 packets transmitted, 20 received, 0% packet loss, time 3805ms\nrtt min/avg/max/mdev = 0.301/0.492/0.911/0.121 ms\n";
        assert_eq!(parse_ping(ok).unwrap(), (0.492, None));
        let lossy = "20 packets transmitted, 19 received, 5% packet loss, time 3805ms\nrtt min/avg/max/mdev = 0.3/1.5/9.1/0.1 ms\n";
        assert_eq!(parse_ping(lossy).unwrap(), (1.5, Some("5% lost".into())));
        let none = "20 packets transmitted, 0 received, 100% packet loss, time 3805ms\n";
        assert!(parse_ping(none).is_err());
    }

    #[test]
    fn iperf_json_is_read() {
        let j = br#"{"end": {"sum_sent": {"retransmits": 12}, "sum_received": {"bits_per_second": 725000000.0}}}"#;
        assert_eq!(parse_iperf(j).unwrap(), (725.0, 12));
        assert!(parse_iperf(br#"{"error": "unable to connect"}"#).is_err());
        assert!(parse_iperf(b"not json").is_err());
    }
}
