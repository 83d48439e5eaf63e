//! The live parts of one connection: the session's tunnel (`SessionPeer`,
//! started once the first device is approved, its peers following the
//! session's live device list), the routes (the userspace dialer's, or the TUN
//! interface's) following the same list, and the session channel to the
//! control plane.

use super::Result;
use crate::Error;
use drawbridge_netstack::Dialer;
use drawbridge_peer::{SessionPeer, active_devices, active_prefixes, active_targets};
use drawbridge_proto::channel::{JoinResponse, MAX_CHANNEL_FRAME};
use drawbridge_tunnel::driver::Connector;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The live parts of one connection.
pub(super) struct Live {
    pub(super) peer: SessionPeer,
    /// The TUN interface's routes, in TUN mode: they follow the active devices.
    pub(super) tun: Option<drawbridge_tun::TunRoutes>,
    /// The userspace dialer (not in TUN mode): its routes follow the active devices.
    pub(super) dialer: Option<Dialer>,
}

impl Live {
    /// Follows a new device list from the session channel: the tunnel starts
    /// with the first approved device; peers, then routes, follow the active
    /// devices (a new device gets its peer before its routes, a dropped one
    /// loses its peer and its routes); nothing else is touched, so flows to the
    /// other devices go on.
    pub(super) async fn apply(&mut self, j: JoinResponse) -> Result<()> {
        let active = active_devices(&j);
        if let Some(d) = &self.dialer {
            d.set_routes(active_targets(&active));
        }
        let prefixes = active_prefixes(&active);
        self.peer
            .apply(j)
            .await
            .map_err(|e| Error::user(format!("starting the tunnel: {e}")))?;
        if let Some(r) = self.tun.as_mut() {
            match r.set(&prefixes).await {
                Ok(c) if !c.is_empty() => {
                    let show = |v: &[ipnet::IpNet]| {
                        let v: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                        if v.is_empty() {
                            "none".to_string()
                        } else {
                            v.join(", ")
                        }
                    };
                    eprintln!(
                        "routes via {}: added {}; removed {}",
                        r.name(),
                        show(&c.add),
                        show(&c.remove)
                    );
                }
                Ok(_) => {}
                // The edge refuses what is no longer released whatever the
                // routes say; the next update tries again.
                Err(e) => eprintln!("changing the routes via {} failed: {e}", r.name()),
            }
        }
        Ok(())
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
            None,
        ),
    )
    .await
    .map_err(|_| Error::user("opening the session channel timed out"))?
    .map_err(|e| Error::user(format!("opening the session channel: {e}")))?;
    Ok(ws)
}
