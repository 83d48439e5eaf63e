//! `--data`'s edge figure: one real `drawbridge-edge run` polling `tags` tags
//! every second from the simulator PLC ([`super::plc`]) on a loopback address
//! (`DRAWBRIDGE_EDGE_LOOPBACK_LAN=1`: loopback is its machine LAN), logging
//! them to its historian (on change, or every second) and pushing them to the
//! server. The tags are set through the API (`PUT /api/v1/devices/{id}/tags`)
//! before the edge starts and reach it over its channel. After a warm-up the
//! edge process's CPU time and memory are sampled every second for `secs`.

use super::plc::{self, Simulator};
use crate::dataplane;
use crate::procfs;
use crate::server::Target;
use anyhow::{Context, bail};
use drawbridge_proto::api::CreatedDevice;
use drawbridge_proto::mailbox::DataStatus;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// Where the simulator PLC listens.
pub const PLC_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);

pub struct Options {
    pub tags: usize,
    pub warmup: Duration,
    pub secs: Duration,
}

/// The edge's figures over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeFigures {
    pub tags: usize,
    pub poll_ms: u32,
    /// How the tags are logged.
    pub logging: String,
    pub secs: f64,
    /// utime + stime over the window, % of one core.
    pub cpu_percent: f64,
    pub rss_mib_mean: f64,
    pub rss_mib_max: f64,
    /// VmHWM at the end (peak since the start, warm-up and tag load included).
    pub peak_rss_mib: f64,
    pub threads: u64,
    /// Reads the PLC answered, a second.
    pub reads_per_sec: f64,
    /// Points the server stored from this edge, a second.
    pub points_per_sec: f64,
    /// The edge's own status at the end: tags polled, their qualities, records waiting.
    pub polled: u64,
    pub qualities: Value,
    pub pending_at_end: u64,
}

/// Tag `i` of `n`: half u16 registers logged on change, three in ten f32
/// pairs logged every second, two in ten coils logged on change; all polled
/// every second; the first 16 are KPIs (no one watches), every tenth f32 has a
/// limits alarm that does not fire.
fn tag(i: usize, ip: Ipv4Addr, port: u16) -> Value {
    let k = i / 10;
    let (name, function, address, value_type, log, extra) = match i % 10 {
        0..=4 => {
            let n = k * 5 + i % 10;
            (
                format!("pressure.{n:03}"),
                "holding_registers",
                (n % usize::from(plc::U16_END)) as u16,
                "u16",
                json!({"mode": "on_change", "deadband": 0.0}),
                json!({"scale": 0.001, "unit": "bar"}),
            )
        }
        5..=7 => {
            let n = k * 3 + i % 10 - 5;
            let pairs = usize::from(plc::F32_END - plc::U16_END) / 2;
            let mut extra = json!({"unit": "°C"});
            if n.is_multiple_of(10) {
                extra["alarm"] = json!({"kind": "limits", "high": 90.0, "deadband": 1.0, "min_duration_ms": 2000});
            }
            (
                format!("temperature.{n:03}"),
                "holding_registers",
                plc::U16_END + 2 * (n % pairs) as u16,
                "f32",
                json!({"mode": "every", "period_ms": 1000}),
                extra,
            )
        }
        _ => {
            let n = k * 2 + i % 10 - 8;
            (
                format!("running.{n:03}"),
                "coils",
                (n % usize::from(plc::BITS)) as u16,
                "bool",
                json!({"mode": "on_change"}),
                json!({}),
            )
        }
    };
    let mut t = json!({
        "name": name,
        "description": "loadtest",
        "source": {"host": ip.to_string(), "port": port, "function": function, "address": address},
        "value_type": value_type,
        "poll_ms": 1000,
        "log": log,
        "kpi": i < 16,
    });
    if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    t
}

async fn data_status(admin: &drawbridge_api_client::Client, device: &str) -> anyhow::Result<i64> {
    let s: DataStatus = admin
        .get(&format!("/devices/{device}/data/status"))
        .await
        .context("the device's data status")?;
    Ok(s.points)
}

/// Runs the edge figure against `target`.
pub async fn run(
    opts: &Options,
    target: &Target,
    admin: &drawbridge_api_client::Client,
    http: &reqwest::Client,
) -> anyhow::Result<EdgeFigures> {
    let edge_bin = dataplane::sibling("drawbridge-edge")?;
    let sim = Simulator::start(PLC_IP)
        .await
        .with_context(|| format!("starting the PLC simulator on {PLC_IP} (a loopback address)"))?;
    let name = format!("lt-poll-{:08x}", rand::random::<u32>());
    let created: CreatedDevice = admin
        .post(
            "/devices",
            &json!({"name": name, "lan_subnets": [format!("{PLC_IP}/32")]}),
        )
        .await
        .context("creating the polling edge's device")?;
    let device = created.device.id.clone();
    let token = admin.token().context("no admin token")?;
    for i in 0..opts.tags {
        let r = http
            .put(format!("{}/api/v1/devices/{device}/tags", target.url))
            .bearer_auth(token)
            .json(&tag(i, PLC_IP, sim.addr.port()))
            .send()
            .await
            .context("PUT a tag")?;
        if !r.status().is_success() {
            let s = r.status();
            bail!("PUT tag {i}: {s}: {}", r.text().await.unwrap_or_default());
        }
    }
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("edge");
    let ca = target.ca_file.to_string_lossy().into_owned();
    dataplane::edge_cmd(
        &edge_bin,
        &state,
        &[
            "enroll",
            "--server",
            &target.url,
            "--activation-key",
            &created.activation.key,
            "--ca-file",
            &ca,
        ],
    )
    .await?;
    let mut cmd = dataplane::command(&edge_bin);
    let mut edge = cmd
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .env("RUST_LOG", "warn")
        .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("edge.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting drawbridge-edge run")?;
    let pid = edge.id().context("the edge's process id")?.to_string();
    let result = measure(opts, admin, &device, &sim, &pid, &state).await;
    let _ = edge.start_kill();
    let _ = edge.wait().await;
    result.map_err(|e| {
        let log = crate::server::log_tail(&dir.path().join("edge.log"));
        e.context(format!("the edge's log:\n{log}"))
    })
}

async fn measure(
    opts: &Options,
    admin: &drawbridge_api_client::Client,
    device: &str,
    sim: &Simulator,
    pid: &str,
    state: &std::path::Path,
) -> anyhow::Result<EdgeFigures> {
    // Points reach the server: the edge has its tags, polls and pushes.
    let until = Instant::now() + Duration::from_secs(60);
    while data_status(admin, device).await? == 0 {
        if Instant::now() > until {
            bail!("no point from the polling edge within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(opts.warmup).await;
    let (points0, reads0) = (data_status(admin, device).await?, sim.reads());
    let s0 = procfs::sample(pid, "edge start")?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = s0.clone();
    while t0.elapsed() < opts.secs {
        tick.tick().await;
        last = procfs::sample(pid, "edge")?;
        rss.push(last.rss_kib as f64 / 1024.0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let (points1, reads1) = (data_status(admin, device).await?, sim.reads());
    let status: Value = std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let data = &status["data"];
    let n = opts.tags;
    Ok(EdgeFigures {
        tags: n,
        poll_ms: 1000,
        logging: format!(
            "{} u16 on change, {} f32 every 1 s, {} bool on change; {} KPIs unwatched, {} limit alarms",
            (0..n).filter(|i| i % 10 <= 4).count(),
            (0..n).filter(|i| (5..=7).contains(&(i % 10))).count(),
            (0..n).filter(|i| i % 10 >= 8).count(),
            n.min(16),
            (0..n)
                .filter(|i| (5..=7).contains(&(i % 10)) && ((i / 10) * 3 + i % 10 - 5) % 10 == 0)
                .count(),
        ),
        secs,
        cpu_percent: (last.cpu_secs - s0.cpu_secs) / secs * 100.0,
        rss_mib_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        rss_mib_max: rss.iter().copied().fold(0.0, f64::max),
        peak_rss_mib: last.peak_rss_kib as f64 / 1024.0,
        threads: last.threads,
        reads_per_sec: (reads1 - reads0) as f64 / secs,
        points_per_sec: (points1 - points0) as f64 / secs,
        polled: data["polled"].as_u64().unwrap_or(0),
        qualities: data["quality"].clone(),
        pending_at_end: data["buffer"]["pending"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::data::TagSpec;

    #[test]
    fn two_hundred_tags_are_valid_distinct_and_inside_the_plc() {
        let mut names = std::collections::HashSet::new();
        for i in 0..500 {
            let t: TagSpec = serde_json::from_value(tag(i, PLC_IP, 5020)).expect("a valid tag");
            assert!(names.insert(t.name.as_str().to_string()), "{i}");
            let end = u32::from(t.source.address) + u32::from(t.value_type.width());
            let limit = if t.source.function.is_bits() {
                plc::BITS
            } else {
                plc::F32_END
            };
            assert!(end <= u32::from(limit), "{i}: {end}");
            assert_eq!(t.poll_ms, 1000);
        }
    }
}
