//! Which devices of a session the client side runs, and how its tunnel's
//! peers change from one device list to the next (pure).

use drawbridge_proto::Target;
use drawbridge_proto::channel::{JoinDevice, JoinResponse};
use std::collections::HashMap;

/// A peer of the tunnel: one device's edge key and the targets routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePeer {
    pub key: [u8; 32],
    pub targets: Vec<Target>,
}

/// The devices the client runs now, from the session's live device list: the
/// one place both modes (userspace and TUN) take them from. The server lists
/// approved devices only (dual control per device: a waiting device arrives
/// with its approval; a refused or timed-out one never comes); a device whose
/// targets a rights change cut (firewall, narrowing) is listed without targets
/// and is not run.
pub fn active_devices(join: &JoinResponse) -> Vec<&JoinDevice> {
    join.devices
        .iter()
        .filter(|d| !d.targets.is_empty())
        .collect()
}

/// The released targets of the active devices (the dialer's routes).
pub fn active_targets(active: &[&JoinDevice]) -> Vec<Target> {
    active.iter().flat_map(|d| d.targets.clone()).collect()
}

/// The networks routed into the TUN interface for the active devices.
pub fn active_prefixes(active: &[&JoinDevice]) -> Vec<ipnet::IpNet> {
    active
        .iter()
        .flat_map(|d| d.targets.iter().map(|t| t.address))
        .collect()
}

/// What turns the tunnel's peers into those of the active devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// device id and key of peers to remove: the device is no longer active,
    /// or its edge came back with another key.
    pub remove: Vec<(String, [u8; 32])>,
    /// device id → peer to add, or to replace (its targets changed).
    pub add: Vec<(String, EdgePeer)>,
}

/// The peer changes from the peers `installed` to the `active` devices (those
/// whose edge announced a key); peers that stay as they are are not touched.
pub fn peer_changes(installed: &HashMap<String, EdgePeer>, active: &[&JoinDevice]) -> PeerChanges {
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

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::SessionState;
    use drawbridge_proto::channel::JoinResponse;
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
            relays: vec![],
        }
    }

    fn nets(v: &[&str]) -> Vec<ipnet::IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The TUN routes from one device list to the next, as the client's TUN mode takes them.
    fn routes(old: &JoinResponse, new: &JoinResponse) -> drawbridge_tun::RouteChanges {
        route_changes(
            &active_prefixes(&active_devices(old)),
            &active_prefixes(&active_devices(new)),
        )
    }

    /// Peers as `SessionPeer` keeps them after applying `j`.
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
