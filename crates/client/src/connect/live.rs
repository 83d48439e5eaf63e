//! The live parts of one connection: the tunnel (started once the first
//! device is approved), its peers following the session's device list, the
//! userspace dialer's routes, and the session channel to the control plane.

use super::Result;
use crate::Error;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drawbridge_netstack::Dialer;
use drawbridge_proto::channel::{JoinResponse, MAX_CHANNEL_FRAME};
use drawbridge_tunnel::driver::{Connector, DriverEvent, Tunnel};
use drawbridge_tunnel::session::{self, SessionTunnel, SessionTunnelConfig};
use drawbridge_tunnel::{IpNet, PeerConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The live parts of one connection.
pub(super) struct Live {
    pub(super) tunnel: Option<Arc<Tunnel>>,
    pub(super) events: Option<mpsc::Receiver<DriverEvent>>,
    /// The dialer's packets for the tunnel, taken by the pump when the tunnel starts.
    pub(super) from_dialer: Option<mpsc::Receiver<Bytes>>,
    pub(super) to_dialer: mpsc::Sender<Bytes>,
    pub(super) pump: Option<tokio::task::JoinHandle<()>>,
    pub(super) join: JoinResponse,
    pub(super) private_key: [u8; 32],
    /// device id → edge key (bytes) once known.
    pub(super) edges: HashMap<String, [u8; 32]>,
    pub(super) token: Option<String>,
    /// The TUN interface, in TUN mode.
    pub(super) interface: Option<String>,
    /// The userspace dialer (not in TUN mode): its routes follow the devices
    /// approved so far (dual control per device).
    pub(super) dialer: Option<Dialer>,
}

fn key_bytes(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

impl Live {
    pub(super) async fn apply(
        &mut self,
        j: JoinResponse,
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<()> {
        self.join = j;
        if let Some(d) = &self.dialer {
            d.set_routes(
                self.join
                    .devices
                    .iter()
                    .flat_map(|d| d.targets.clone())
                    .collect(),
            );
        }
        let Some(token) = self.join.relay_token.clone() else {
            return Ok(());
        };
        if self.tunnel.is_none()
            && let Some(from_dialer) = self.from_dialer.take()
        {
            let SessionTunnel {
                tunnel,
                events,
                pump,
            } = session::start(
                SessionTunnelConfig {
                    private_key: self.private_key,
                    stun: self.join.stun.clone(),
                    relay_url: self.join.relay_url.clone(),
                    relay_token: token.clone(),
                    connector: Connector::Rustls(tls.clone()),
                },
                from_dialer,
                self.to_dialer.clone(),
            )
            .await
            .map_err(|e| Error::user(format!("starting the tunnel: {e}")))?;
            self.pump = Some(pump);
            self.events = Some(events);
            self.tunnel = Some(tunnel);
            self.token = Some(token.clone());
        }
        let Some(t) = &self.tunnel else {
            return Ok(());
        };
        if self.token.as_deref() != Some(token.as_str()) {
            let _ = t.set_relay_token(0, token.clone()).await;
            self.token = Some(token);
        }
        for d in &self.join.devices {
            let Some(k) = d.edge_public_key.as_deref().and_then(key_bytes) else {
                continue;
            };
            match self.edges.get(&d.device_id) {
                Some(old) if *old == k => continue,
                // The edge restarted with a fresh key: its routes move to the new one.
                Some(old) => {
                    let _ = t.remove_peer(*old).await;
                }
                None => {}
            }
            let allowed = d
                .targets
                .iter()
                .map(|t| IpNet::new(t.address.addr(), t.address.prefix_len()))
                .collect();
            let cfg = PeerConfig {
                public_key: k,
                allowed_ips: allowed,
                relay: Some(0),
                persistent_keepalive: Some(25),
                bridged: false,
            };
            if t.add_peer(cfg).await.is_ok() {
                self.edges.insert(d.device_id.clone(), k);
            }
        }
        Ok(())
    }

    pub(super) fn device_of(&self, key: &[u8; 32]) -> Option<String> {
        self.edges
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(d, _)| d.clone())
    }
}

pub(super) type Ws = tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<Box<dyn drawbridge_tunnel::proxy::Io>>,
>;

/// Opens the session channel (bearer token, our TLS trust, bounded frames).
pub(super) async fn open_channel(
    url: &str,
    token: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Ws> {
    let mut req = url
        .into_client_request()
        .map_err(|e| Error::user(e.to_string()))?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Error::user("bad token"))?,
        );
    }
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_CHANNEL_FRAME);
    // Through the plant's HTTP proxy when DRAWBRIDGE_PROXY / HTTPS_PROXY says so.
    let proxy =
        drawbridge_tunnel::proxy::Proxy::from_env().map_err(|e| Error::user(e.to_string()))?;
    let ws = tokio::time::timeout(
        Duration::from_secs(15),
        drawbridge_tunnel::proxy::websocket(
            req,
            Some(cfg),
            Some(Connector::Rustls(tls.clone())),
            proxy.as_ref(),
        ),
    )
    .await
    .map_err(|_| Error::user("opening the session channel timed out"))?
    .map_err(|e| Error::user(format!("opening the session channel: {e}")))?;
    Ok(ws)
}
