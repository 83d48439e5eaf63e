//! The tunnel of one Drawbridge session, as the client (`drawbridge connect`) and the
//! edge both run it: a fresh UDP socket on all addresses, the STUN servers the control
//! plane names, one relay connection (id 0, through the plant's HTTP proxy when
//! `DRAWBRIDGE_PROXY` / `HTTPS_PROXY` says so), no peers yet; the driver itself moves IP
//! packets between the tunnel and the application's userspace stack or TUN interface.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::NodeConfig;
use crate::driver::{Connector, DriverConfig, DriverEvent, LocalRelay, RelayEndpoint, Tunnel};

/// STUN servers used at most (the control plane's list is cut there).
pub const MAX_STUN: usize = 4;
/// Bound of each of the driver's channels.
pub const QUEUE: usize = 1024;

/// What the control plane gave for one session's tunnel.
pub struct SessionTunnelConfig {
    /// This side's WireGuard key for the session (only its public half leaves).
    pub private_key: [u8; 32],
    /// STUN servers as `host:port`; the first [`MAX_STUN`] are resolved, those that
    /// do not resolve are left out.
    pub stun: Vec<String>,
    pub relay_url: String,
    pub relay_token: String,
    /// TLS for the relay (the control plane's trust).
    pub connector: Connector,
    /// A relay in this process (the server's own peers), used when the
    /// session's relay is that one.
    pub local_relay: Option<LocalRelay>,
}

/// The session's relay connection (id 0): through the plant's HTTP proxy when the
/// environment names one, in-process when `local` is the relay at `url`.
/// [`Tunnel::set_relay`] with another URL moves the session to another relay
/// instance.
pub fn relay_endpoint(
    url: String,
    token: String,
    connector: &Connector,
    local: Option<&LocalRelay>,
) -> RelayEndpoint {
    let local = local.cloned();
    RelayEndpoint {
        id: 0,
        url,
        token,
        connector: Some(connector.clone()),
        proxy: crate::proxy::Proxy::from_env().ok().flatten(),
        local,
    }
}

/// What a session tunnel's relay connection (id 0) was last given, so that the
/// edge and the clients follow the control plane the same way.
#[derive(Debug, Default)]
pub struct RelayLink {
    url: Option<String>,
    token: Option<String>,
}

impl RelayLink {
    /// The relay a tunnel was started with.
    pub fn started(url: &str, token: &str) -> RelayLink {
        RelayLink {
            url: Some(url.to_string()),
            token: Some(token.to_string()),
        }
    }

    /// Follows the control plane: another relay URL (the session moved: its
    /// relay failed or drains) reconnects there, the WireGuard sessions go on;
    /// a new token goes to the open connection. Answers whether it moved.
    pub async fn follow(
        &mut self,
        tunnel: &Tunnel,
        url: &str,
        token: &str,
        connector: &Connector,
        local: Option<&LocalRelay>,
    ) -> bool {
        if self.url.as_deref() != Some(url) {
            let ep = relay_endpoint(url.to_string(), token.to_string(), connector, local);
            let _ = tunnel.set_relay(ep).await;
            *self = RelayLink::started(url, token);
            return true;
        }
        if self.token.as_deref() != Some(token) {
            let _ = tunnel.set_relay_token(0, token.to_string()).await;
            self.token = Some(token.to_string());
        }
        false
    }
}

/// A started session tunnel.
pub struct SessionTunnel {
    pub tunnel: Arc<Tunnel>,
    /// Candidates for the peers (to carry through the control plane) and engine events.
    pub events: mpsc::Receiver<DriverEvent>,
}

/// Starts the session's tunnel. Decrypted packets go to `to_app` and packets from
/// `from_app` into the tunnel (routed by destination over the peers' allowed IPs).
/// The tunnel never waits on the application: while `to_app` has no room for a
/// batch, datagrams wait in the socket buffer (at most 20 ms, then a full queue
/// drops). `from_app` is emptied as fast as the socket sends, whatever `to_app`
/// does, so an application may wait for room in it (the client's TUN loop does).
pub async fn start(
    config: SessionTunnelConfig,
    from_app: mpsc::Receiver<Bytes>,
    to_app: mpsc::Sender<Bytes>,
) -> io::Result<SessionTunnel> {
    let mut stun = Vec::new();
    for s in config.stun.iter().take(MAX_STUN) {
        if let Ok(mut addrs) = tokio::net::lookup_host(s.as_str()).await
            && let Some(a) = addrs.next()
        {
            stun.push(a);
        }
    }
    let (tunnel, events) = Tunnel::start_with_app(
        DriverConfig {
            node: NodeConfig {
                private_key: config.private_key,
                stun_servers: stun,
                local_addrs: vec![],
                seed: None,
            },
            bind: "0.0.0.0:0".parse().expect("static address"),
            relays: vec![relay_endpoint(
                config.relay_url,
                config.relay_token,
                &config.connector,
                config.local_relay.as_ref(),
            )],
            peers: vec![],
            queue: QUEUE,
        },
        from_app,
        to_app,
    )
    .await?;
    Ok(SessionTunnel {
        tunnel: Arc::new(tunnel),
        events,
    })
}
