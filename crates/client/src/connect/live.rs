//! The live parts of one connection: the tunnel (started once the first
//! device is approved), its peers and the routes (the userspace dialer's, or
//! the TUN interface's) following the session's live device list, and the
//! session channel to the control plane.

use super::Result;
use crate::Error;
use bytes::Bytes;
use drawbridge_netstack::Dialer;
use drawbridge_proto::Target;
use drawbridge_proto::channel::{JoinDevice, JoinResponse, MAX_CHANNEL_FRAME};
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
    /// device id → the tunnel's peer for that device's edge.
    pub(super) peers: HashMap<String, EdgePeer>,
    pub(super) token: Option<String>,
    /// The TUN interface's routes, in TUN mode: they follow the active devices.
    pub(super) tun: Option<drawbridge_tun::TunRoutes>,
    /// The userspace dialer (not in TUN mode): its routes follow the active devices.
    pub(super) dialer: Option<Dialer>,
}

/// A peer of the tunnel: one device's edge key and the targets routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EdgePeer {
    pub(super) key: [u8; 32],
    pub(super) targets: Vec<Target>,
}

/// The devices the client runs now, from the session's live device list: the
/// one place both modes (userspace and TUN) take them from. The server lists
/// approved devices only (dual control per device: a waiting device arrives
/// with its approval; a refused or timed-out one never comes); a device whose
/// targets a rights change cut (firewall, narrowing) is listed without targets
/// and is not run.
pub(super) fn active_devices(join: &JoinResponse) -> Vec<&JoinDevice> {
    join.devices
        .iter()
        .filter(|d| !d.targets.is_empty())
        .collect()
}

/// The released targets of the active devices (the dialer's routes).
pub(super) fn active_targets(active: &[&JoinDevice]) -> Vec<Target> {
    active.iter().flat_map(|d| d.targets.clone()).collect()
}

/// The networks routed into the TUN interface for the active devices.
pub(super) fn active_prefixes(active: &[&JoinDevice]) -> Vec<ipnet::IpNet> {
    active
        .iter()
        .flat_map(|d| d.targets.iter().map(|t| t.address))
        .collect()
}

/// What turns the tunnel's peers into those of the active devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PeerChanges {
    /// device id and key of peers to remove: the device is no longer active,
    /// or its edge came back with another key.
    pub(super) remove: Vec<(String, [u8; 32])>,
    /// device id → peer to add, or to replace (its targets changed).
    pub(super) add: Vec<(String, EdgePeer)>,
}

/// The peer changes from the peers `installed` to the `active` devices (those
/// whose edge announced a key); peers that stay as they are are not touched.
pub(super) fn peer_changes(
    installed: &HashMap<String, EdgePeer>,
    active: &[&JoinDevice],
) -> PeerChanges {
    let wanted: HashMap<&str, EdgePeer> = active
        .iter()
        .filter_map(|d| {
            let key = d.edge_public_key?.to_bytes();
            Some((
                d.device_id.as_str(),
                EdgePeer {
                    key,
                    targets: d.targets.clone(),
                },
            ))
        })
        .collect();
    let mut out = PeerChanges::default();
    let mut ids: Vec<&String> = installed.keys().collect();
    ids.sort();
    for id in ids {
        let old = &installed[id];
        if wanted.get(id.as_str()).is_none_or(|w| w.key != old.key) {
            out.remove.push((id.clone(), old.key));
        }
    }
    for d in active {
        if let Some(w) = wanted.get(d.device_id.as_str())
            && installed.get(&d.device_id) != Some(w)
        {
            out.add.push((d.device_id.clone(), w.clone()));
        }
    }
    out
}

impl Live {
    /// Follows a new device list from the session channel: the tunnel starts
    /// with the first approved device; peers, then routes, follow the active
    /// devices (a new device gets its peer before its routes, a dropped one
    /// loses its peer and its routes); nothing else is touched, so flows to the
    /// other devices go on.
    pub(super) async fn apply(
        &mut self,
        j: JoinResponse,
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<()> {
        self.join = j;
        let join = self.join.clone();
        let active = active_devices(&join);
        if let Some(d) = &self.dialer {
            d.set_routes(active_targets(&active));
        }
        self.follow_peers(&active, tls).await?;
        if let Some(r) = self.tun.as_mut() {
            match r.set(&active_prefixes(&active)).await {
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

    /// Starts the tunnel once a relay token names an edge, keeps its token
    /// current, and makes its peers those of the active devices.
    async fn follow_peers(
        &mut self,
        active: &[&JoinDevice],
        tls: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<()> {
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
        let changes = peer_changes(&self.peers, active);
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

    /// The edge key of a device the tunnel has a peer for.
    pub(super) fn edge_key(&self, device_id: &str) -> Option<[u8; 32]> {
        self.peers.get(device_id).map(|p| p.key)
    }

    pub(super) fn device_of(&self, key: &[u8; 32]) -> Option<String> {
        self.peers
            .iter()
            .find(|(_, p)| p.key == *key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::SessionState;
    use drawbridge_tun::route_changes;

    fn device(id: &str, key: Option<u8>, targets: &[&str]) -> JoinDevice {
        JoinDevice {
            device_id: id.into(),
            name: id.into(),
            edge_public_key: key.map(|k| drawbridge_proto::WgKey::from_bytes([k; 32])),
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            online: true,
        }
    }

    fn join(devices: Vec<JoinDevice>) -> JoinResponse {
        JoinResponse {
            tunnel_id: "t".into(),
            session_id: "s".into(),
            state: SessionState::Active,
            overlay_ip: "100.64.0.2".into(),
            relay_url: "wss://relay".into(),
            relay_token: None,
            stun: vec![],
            devices,
            valid_until: 0,
            bridge_endpoint: None,
        }
    }

    fn nets(v: &[&str]) -> Vec<ipnet::IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The TUN routes from one device list to the next, as `Live::apply` takes them.
    fn routes(old: &JoinResponse, new: &JoinResponse) -> drawbridge_tun::RouteChanges {
        route_changes(
            &active_prefixes(&active_devices(old)),
            &active_prefixes(&active_devices(new)),
        )
    }

    /// Peers as `Live` keeps them after applying `j`.
    fn installed(j: &JoinResponse) -> HashMap<String, EdgePeer> {
        peer_changes(&HashMap::new(), &active_devices(j))
            .add
            .into_iter()
            .collect()
    }

    const A: &str = "tcp:192.168.1.10:502";
    const B: &str = "tcp:192.168.2.10:502";

    #[test]
    fn a_device_approved_later_gets_its_peer_and_routes_and_the_first_keeps_its_own() {
        let before = join(vec![device("a", Some(1), &[A])]);
        let after = join(vec![device("a", Some(1), &[A]), device("b", Some(2), &[B])]);
        let r = routes(&before, &after);
        assert_eq!(r.add, nets(&["192.168.2.10/32"]));
        assert!(r.remove.is_empty(), "A's route stays: {r:?}");
        let p = peer_changes(&installed(&before), &active_devices(&after));
        assert!(p.remove.is_empty(), "A's peer is not touched: {p:?}");
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.add[0].0, "b");
        assert_eq!(p.add[0].1.key, [2; 32]);
        // Approved before its edge announced a key: routes now, the peer once the key comes.
        let keyless = join(vec![device("a", Some(1), &[A]), device("b", None, &[B])]);
        assert_eq!(routes(&before, &keyless).add, nets(&["192.168.2.10/32"]));
        assert_eq!(
            peer_changes(&installed(&before), &active_devices(&keyless)),
            PeerChanges::default()
        );
    }

    #[test]
    fn a_dropped_or_cut_device_loses_its_peer_and_routes_and_the_other_is_untouched() {
        let both = join(vec![device("a", Some(1), &[A]), device("b", Some(2), &[B])]);
        // Refused, timed out or otherwise no longer listed …
        let gone = join(vec![device("a", Some(1), &[A])]);
        // … or still listed with every target cut by a rights change.
        let cut = join(vec![device("a", Some(1), &[A]), device("b", Some(2), &[])]);
        for after in [&gone, &cut] {
            let r = routes(&both, after);
            assert!(r.add.is_empty(), "{r:?}");
            assert_eq!(r.remove, nets(&["192.168.2.10/32"]));
            let p = peer_changes(&installed(&both), &active_devices(after));
            assert_eq!(p.remove, vec![("b".to_string(), [2; 32])]);
            assert!(p.add.is_empty(), "A's peer is not re-made: {p:?}");
        }
        assert_eq!(
            active_targets(&active_devices(&cut)),
            vec![A.parse().unwrap()]
        );
    }

    #[test]
    fn a_shared_network_stays_routed_while_one_device_still_has_it() {
        let lan = "tcp:10.0.0.0/24:502";
        let both = join(vec![
            device("a", Some(1), &[lan]),
            device("b", Some(2), &[lan]),
        ]);
        let one = join(vec![device("a", Some(1), &[lan])]);
        assert!(routes(&both, &one).is_empty());
        assert!(routes(&one, &join(vec![])).remove == nets(&["10.0.0.0/24"]));
    }

    #[test]
    fn a_narrowed_device_or_a_new_edge_key_replaces_only_that_peer() {
        let before = join(vec![
            device("a", Some(1), &[A]),
            device("b", Some(2), &["tcp:192.168.2.0/24:502"]),
        ]);
        let narrowed = join(vec![device("a", Some(1), &[A]), device("b", Some(2), &[B])]);
        let p = peer_changes(&installed(&before), &active_devices(&narrowed));
        assert!(p.remove.is_empty());
        assert_eq!(p.add.len(), 1);
        assert_eq!((p.add[0].0.as_str(), p.add[0].1.targets.len()), ("b", 1));
        let r = routes(&before, &narrowed);
        assert_eq!(
            (r.add, r.remove),
            (nets(&["192.168.2.10/32"]), nets(&["192.168.2.0/24"]))
        );
        // B's edge restarted with a fresh key: the old peer goes, the new one comes.
        let rekeyed = join(vec![device("a", Some(1), &[A]), device("b", Some(3), &[B])]);
        let p = peer_changes(&installed(&narrowed), &active_devices(&rekeyed));
        assert_eq!(p.remove, vec![("b".to_string(), [2; 32])]);
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.add[0].1.key, [3; 32]);
        assert!(routes(&narrowed, &rekeyed).is_empty());
    }
}
