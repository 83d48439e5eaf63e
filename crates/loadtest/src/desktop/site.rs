//! The plant side and the browser side of the desktop benchmark: a device
//! whose firewall releases the VNC server's port and marks it `vnc`, a real
//! `drawbridge-edge` (`DRAWBRIDGE_EDGE_LOOPBACK_LAN=1`, so the loopback VNC
//! server is its LAN), a started session with no client of its own (the
//! server's peer is its only tunnel), and the desktop opened as a browser
//! does: `POST /sessions/{id}/web`, the one-time entry link for the origin's
//! cookie, the WebSocket on `/.drawbridge/websockify` with that cookie.

use crate::dataplane;
use crate::server::Target;
use anyhow::{Context, bail};
use drawbridge_api_client::Client;
use drawbridge_proto::api::{CreatedDevice, OpenedWeb, TunnelInfo};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The enrolled device, its running edge and the started session.
pub struct Site {
    edge: Child,
    pub edge_pid: u32,
    pub device_id: String,
    pub session_id: String,
    pub vnc: SocketAddrV4,
    dir: tempfile::TempDir,
}

async fn until<F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what}: not within {secs} s")
}

impl Site {
    /// Creates and enrols the device for `vnc`, starts its edge with the
    /// switch on, and starts a session that releases `vnc` to the admin.
    pub async fn start(target: &Target, admin: &Client, vnc: SocketAddrV4) -> anyhow::Result<Site> {
        let edge_bin = dataplane::sibling("drawbridge-edge")?;
        let dir = tempfile::Builder::new()
            .prefix("drawbridge-loadtest-desktop-")
            .tempdir()?;
        let name = format!("lt-desktop-{:08x}", rand::random::<u32>());
        let port = vnc.port().to_string();
        let created: CreatedDevice = admin
            .post(
                "/devices",
                &json!({
                    "name": name,
                    "lan_subnets": [format!("{}/32", vnc.ip())],
                    "firewall": [{"address": vnc.ip().to_string(), "protocol": "tcp", "ports": port}],
                }),
            )
            .await
            .context("creating the desktop's device")?;
        let device = created.device.id.clone();
        let _: Value = admin
            .patch(
                &format!("/devices/{device}"),
                &json!({"web_services": [{"target": vnc.to_string(), "scheme": "vnc"}]}),
            )
            .await
            .context("marking the VNC port as a desktop (web_services vnc)")?;
        let state = dir.path().join("edge");
        let ca = target.ca_file.to_string_lossy().into_owned();
        let key = created.activation.key.clone();
        let enroll = ["enroll", "--server", &target.url, "--activation-key", &key];
        dataplane::edge_cmd(
            &edge_bin,
            &state,
            &[&enroll[..], &["--ca-file", &ca]].concat(),
        )
        .await?;
        dataplane::edge_cmd(&edge_bin, &state, &["switch", "on"]).await?;
        let edge = dataplane::command(&edge_bin)
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
        let edge_pid = edge.id().context("the edge's process id")?;
        let mut site = Site {
            edge,
            edge_pid,
            device_id: device.clone(),
            session_id: String::new(),
            vnc,
            dir,
        };
        let started = async {
            until("the edge online with its switch on", 30, || async {
                admin.get::<Value>(&format!("/devices/{device}")).await.is_ok_and(|d| {
                    d["status"]["online"] == true && d["status"]["switch_on"] == true
                })
            })
            .await?;
            let me = admin.me().await?.user.id;
            let session: Value = admin
                .post(
                    "/sessions",
                    &json!({
                        "name": format!("{name}-session"),
                        "devices": [{"device_id": device, "targets": [{"address": vnc.ip().to_string(), "protocol": "tcp", "ports": port}]}],
                        "users": [me],
                    }),
                )
                .await
                .context("preparing the session")?;
            let sid = session["id"].as_str().context("the session has no id")?.to_string();
            let s: Value = admin
                .post(&format!("/sessions/{sid}/start"), &json!({}))
                .await
                .context("starting the session")?;
            if s["state"] != "active" {
                bail!("the session is {} after its start, not active", s["state"]);
            }
            Ok::<_, anyhow::Error>(sid)
        }
        .await;
        match started {
            Ok(sid) => {
                site.session_id = sid;
                Ok(site)
            }
            Err(e) => {
                let log = site.edge_log();
                site.stop().await;
                Err(e.context(format!("the edge's log:\n{log}")))
            }
        }
    }

    pub fn edge_log(&self) -> String {
        crate::server::log_tail(&self.dir.path().join("edge.log"))
    }

    /// The session's tunnels: the server's peer is the only client, so its
    /// path as the edge reports it is the desktop's path.
    pub async fn tunnels(&self, admin: &Client) -> anyhow::Result<Vec<TunnelInfo>> {
        Ok(admin
            .get(&format!("/sessions/{}/tunnels", self.session_id))
            .await?)
    }

    pub async fn stop(mut self) {
        let _ = self.edge.start_kill();
        let _ = self.edge.wait().await;
    }
}

/// The desktop opened as a browser does; answers the WebSocket carrying RFB.
pub async fn open_desktop(
    admin: &Client,
    browser: &reqwest::Client,
    site: &Site,
) -> anyhow::Result<Ws> {
    let o: OpenedWeb = admin
        .post(
            &format!("/sessions/{}/web", site.session_id),
            &json!({"device_id": site.device_id, "target": site.vnc.to_string()}),
        )
        .await
        .context("opening the desktop (POST /sessions/{id}/web)")?;
    let entry = browser.get(&o.url).send().await.context("the entry link")?;
    if entry.status() != 303 {
        bail!("the entry link answered {}", entry.status());
    }
    let cookie = entry
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no cookie from the entry link")?
        .to_string();
    let origin = url_host_port(&o.origin)?;
    let mut req = format!("wss://{}:{}/.drawbridge/websockify", origin.0, origin.1)
        .into_client_request()
        .context("the WebSocket request")?;
    req.headers_mut().insert("cookie", cookie.parse()?);
    req.headers_mut().insert("origin", o.origin.parse()?);
    // *.localhost is the server, as browsers resolve it.
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, origin.1)).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_tungstenite::Connector::Rustls(admin.ws_tls());
    // The bridge sends what one read of the VNC connection gave (≤ 64 KiB a message).
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector))
        .await
        .context("the desktop's WebSocket (/.drawbridge/websockify)")?;
    Ok(ws)
}

/// `https://HOST:PORT` → (HOST, PORT).
fn url_host_port(origin: &str) -> anyhow::Result<(String, u16)> {
    let rest = origin.strip_prefix("https://").context("an https origin")?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "443"));
    Ok((host.to_string(), port.parse().context("the origin's port")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_origin_splits_into_host_and_port() {
        assert_eq!(
            super::url_host_port("https://ab12.web.localhost:8443").unwrap(),
            ("ab12.web.localhost".into(), 8443)
        );
        assert_eq!(
            super::url_host_port("https://x.example").unwrap(),
            ("x.example".into(), 443)
        );
        assert!(super::url_host_port("http://x:1").is_err());
    }
}
