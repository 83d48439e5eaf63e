//! The status file of a live tunnel (one per `connect`) and `drawbridge status`,
//! which shows the files updated in the last seconds.

use super::Result;
use super::live::Live;
use drawbridge_peer::active_devices;
use drawbridge_proto::api::Session;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What `drawbridge status` shows, one file per live tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub session_id: String,
    pub session: String,
    pub overlay_ip: String,
    /// The TUN interface, in TUN mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub pid: u32,
    pub updated_at: i64,
    /// The relay instance the session uses (`wss://…/relay/v1`).
    #[serde(default)]
    pub relay: String,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    pub path: String,
    pub reason: String,
    pub rtt_ms: Option<u64>,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    /// Seconds since the last WireGuard handshake with the edge, if any.
    pub handshake_secs_ago: Option<u64>,
    pub targets: Vec<String>,
}

pub(super) fn status_dir() -> Result<PathBuf> {
    Ok(crate::config::config_dir()?.join("tunnels"))
}

pub(super) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `drawbridge status`.
pub fn status(json: bool) -> Result<()> {
    let dir = status_dir()?;
    let mut live = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten().take(256) {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(s) = serde_json::from_str::<TunnelStatus>(&text) else {
                continue;
            };
            if unix_now() - s.updated_at <= 10 {
                live.push(s);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&live).unwrap_or_default()
        );
        return Ok(());
    }
    if live.is_empty() {
        println!("no tunnels are up");
    }
    for s in live {
        let via = s
            .interface
            .as_deref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        println!(
            "{} ({}) as {}{via}, relay {}",
            s.session, s.session_id, s.overlay_ip, s.relay
        );
        for d in s.devices {
            let rtt = d.rtt_ms.map(|r| format!(", {r} ms")).unwrap_or_default();
            println!(
                "  {}: {} ({}{rtt}), {} B sent, {} B received; {}",
                d.device,
                d.path,
                d.reason,
                d.bytes_to_device,
                d.bytes_from_device,
                d.targets.join(" ")
            );
        }
    }
    Ok(())
}

pub(super) async fn snapshot(live: &Live, s: &Session, id: &str) -> TunnelStatus {
    let mut devices = Vec::new();
    for d in active_devices(live.peer.join()) {
        let mut st = DeviceStatus {
            device: d.name.clone(),
            path: "connecting".into(),
            reason: if d.online {
                "waiting for the edge".into()
            } else {
                "the edge is offline".into()
            },
            rtt_ms: None,
            bytes_to_device: 0,
            bytes_from_device: 0,
            handshake_secs_ago: None,
            targets: d.targets.iter().map(|t| t.to_string()).collect(),
        };
        if let (Some(t), Some(k)) = (live.peer.tunnel(), live.peer.edge_key(&d.device_id))
            && let Ok(Some(p)) = t.stats(k).await
        {
            st.path = p.path.kind().to_string();
            st.reason = p.reason.to_string();
            st.rtt_ms = p.rtt.map(|r| r.as_millis() as u64);
            st.bytes_to_device = p.tx_bytes;
            st.bytes_from_device = p.rx_bytes;
            st.handshake_secs_ago = p.last_handshake.map(|t| t.elapsed().as_secs());
        }
        devices.push(st);
    }
    TunnelStatus {
        session_id: id.to_string(),
        session: s.name.to_string(),
        overlay_ip: live.peer.join().overlay_ip.clone(),
        interface: live.tun.as_ref().map(|r| r.name().to_string()),
        pid: std::process::id(),
        updated_at: unix_now(),
        relay: live.peer.join().relay_url.clone(),
        devices,
    }
}
