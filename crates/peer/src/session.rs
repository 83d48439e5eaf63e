//! `SessionPeer`: the tunnel of one joined session, started once a relay token
//! names an edge, with one peer per active device.

use crate::devices::{EdgePeer, active_devices, peer_changes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use drawbridge_proto::channel::JoinResponse;
use drawbridge_tunnel::driver::{Connector, DriverEvent, LocalRelay, Tunnel};
use drawbridge_tunnel::session::{self, RelayLink, SessionTunnel, SessionTunnelConfig};
use drawbridge_tunnel::{IpNet, PeerConfig, Signal};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The client side of one session's tunnel. Dropping it stops the tunnel.
pub struct SessionPeer {
    tunnel: Option<Arc<Tunnel>>,
    events: Option<mpsc::Receiver<DriverEvent>>,
    /// The application's packets for the tunnel, taken by the driver when the tunnel starts.
    from_app: Option<mpsc::Receiver<Bytes>>,
    to_app: mpsc::Sender<Bytes>,
    join: JoinResponse,
    private_key: [u8; 32],
    /// device id → the tunnel's peer for that device's edge.
    peers: HashMap<String, EdgePeer>,
    /// The relay connection as last given.
    relay: RelayLink,
    connector: Connector,
    /// The relay in this process, when this peer runs inside the server.
    local_relay: Option<LocalRelay>,
}

impl SessionPeer {
    /// A peer for a session joined with `private_key`'s public half. Nothing
    /// starts before [`SessionPeer::apply`] brings a relay token.
    pub fn new(
        private_key: [u8; 32],
        join: JoinResponse,
        connector: Connector,
        from_app: mpsc::Receiver<Bytes>,
        to_app: mpsc::Sender<Bytes>,
    ) -> Self {
        SessionPeer {
            tunnel: None,
            events: None,
            from_app: Some(from_app),
            to_app,
            join,
            private_key,
            peers: HashMap::new(),
            relay: RelayLink::default(),
            connector,
            local_relay: None,
        }
    }

    /// Reaches `local` in-process whenever it is the session's relay (the
    /// server's own peers and its embedded relay).
    pub fn with_local_relay(mut self, local: LocalRelay) -> Self {
        self.local_relay = Some(local);
        self
    }

    /// The session's latest join data.
    pub fn join(&self) -> &JoinResponse {
        &self.join
    }

    pub fn tunnel(&self) -> Option<&Arc<Tunnel>> {
        self.tunnel.as_ref()
    }

    /// Follows a new device list: the tunnel starts once a relay token names
    /// an edge, its token is kept current, and its peers become those of the
    /// active devices (a new device gets a peer, a dropped one loses it, the
    /// others are not touched, so their flows go on).
    pub async fn apply(&mut self, join: JoinResponse) -> io::Result<()> {
        self.join = join;
        let Some(token) = self.join.relay_token.clone() else {
            return Ok(());
        };
        if self.tunnel.is_none()
            && let Some(from_app) = self.from_app.take()
        {
            let started = session::start(
                SessionTunnelConfig {
                    private_key: self.private_key,
                    stun: self.join.stun.clone(),
                    relay_url: self.join.relay_url.clone(),
                    relay_token: token.clone(),
                    connector: self.connector.clone(),
                    local_relay: self.local_relay.clone(),
                },
                from_app,
                self.to_app.clone(),
            )
            .await;
            let SessionTunnel { tunnel, events } = started?;
            self.events = Some(events);
            self.tunnel = Some(tunnel);
            self.relay = RelayLink::started(&self.join.relay_url, &token);
        }
        let Some(t) = &self.tunnel else {
            return Ok(());
        };
        self.relay
            .follow(
                t,
                &self.join.relay_url,
                &token,
                &self.connector,
                self.local_relay.as_ref(),
            )
            .await;
        let changes = peer_changes(&self.peers, &active_devices(&self.join));
        for (device, key) in changes.remove {
            let _ = t.remove_peer(key).await;
            self.peers.remove(&device);
        }
        for (device, peer) in changes.add {
            let cfg = PeerConfig {
                public_key: peer.key,
                allowed_ips: peer
                    .targets
                    .iter()
                    .map(|t| IpNet::new(t.address.addr(), t.address.prefix_len()))
                    .collect(),
                relay: Some(0),
                persistent_keepalive: Some(25),
                bridged: false,
            };
            if t.add_peer(cfg).await.is_ok() {
                self.peers.insert(device, peer);
            }
        }
        Ok(())
    }

    /// Hands a device's candidates (base64 of an encoded signal, as they come
    /// through the control plane) to the tunnel; anything undecodable, or for
    /// a device without a peer, is ignored.
    pub async fn signal(&self, device_id: &str, data: &str) {
        if let (Some(t), Some(k)) = (&self.tunnel, self.edge_key(device_id))
            && let Some(sig) = STANDARD
                .decode(data)
                .ok()
                .and_then(|b| Signal::decode(&b).ok())
        {
            let _ = t.signal(k, sig).await;
        }
    }

    /// The tunnel's next event; waits for ever while no tunnel runs.
    pub async fn event(&mut self) -> Option<DriverEvent> {
        match self.events.as_mut() {
            Some(ev) => ev.recv().await,
            None => std::future::pending().await,
        }
    }

    /// For an engine event carrying this side's candidates: the device they
    /// are for and the data to send it through the control plane.
    pub fn outgoing_signal(&self, ev: &DriverEvent) -> Option<(String, String)> {
        let DriverEvent::Signal { peer, signal } = ev else {
            return None;
        };
        Some((self.device_of(peer)?, STANDARD.encode(signal.encode())))
    }

    /// The edge key of a device the tunnel has a peer for.
    pub fn edge_key(&self, device_id: &str) -> Option<[u8; 32]> {
        self.peers.get(device_id).map(|p| p.key)
    }

    pub fn device_of(&self, key: &[u8; 32]) -> Option<String> {
        self.peers
            .iter()
            .find(|(_, p)| p.key == *key)
            .map(|(d, _)| d.clone())
    }
}
