//! Pure packet classification and whitelist decisions (sans-IO, no clocks).
//!
//! [`classify`] parses one inner IPv4 packet from the tunnel with length and checksum
//! checks and decides, against a [`Policy`], whether it may reach the LAN and where.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use drawbridge_proto::model::{NatMapping, PortRange, Protocol, Target};
use ipnet::{IpNet, Ipv4Net};
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a well-formed IPv4 packet (lengths, checksums, header fields).
    Malformed,
    /// Inner source is not one of the allowed client overlay addresses.
    BadSource,
    /// Destination (after NAT), protocol and port are not covered by a released target.
    NotReleased,
    /// Not TCP, UDP or ICMP echo request over IPv4 (IPv6, other protocols, other ICMP).
    UnsupportedProtocol,
    /// IP fragments are not reassembled.
    Fragment,
    /// The flow table is full.
    TooManyFlows,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadSource => "bad_source",
            DropReason::NotReleased => "not_released",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::Fragment => "fragment",
            DropReason::TooManyFlows => "too_many_flows",
        }
    }
}

/// The client overlay range (RFC 6598 shared address space): every session's
/// clients, the edge's own overlay address and, in kernel mode, every session's
/// slot block live here. Never a LAN target.
pub const OVERLAY_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

static LOOPBACK_LAN: AtomicBool = AtomicBool::new(false);

/// Tests and single-host demos only: from now on this process lets released
/// targets on the host's loopback (127.0.0.0/8) through, because there the
/// "LAN devices" are servers on 127.0.0.x. One way (it cannot be turned off);
/// never called by the edge unless `DRAWBRIDGE_EDGE_LOOPBACK_LAN=1` is set.
pub fn allow_loopback_lan() {
    LOOPBACK_LAN.store(true, Ordering::Relaxed);
}

/// Destinations no packet is ever forwarded to, whatever a released target
/// covers (a target as wide as `0.0.0.0/0` included): the overlay range
/// (`100.64.0.0/10`: other clients, other sessions' kernel-mode blocks, the edge
/// itself), this network (`0.0.0.0/8`), loopback (`127.0.0.0/8`, `::1`; see
/// [`allow_loopback_lan`]), link-local (`169.254.0.0/16`, `fe80::/10`), multicast,
/// the reserved `240.0.0.0/4` with the broadcast address, and the IPv6
/// unspecified address; IPv4-mapped IPv6 addresses are judged as IPv4.
pub fn never_forwarded(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => never_forwarded_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => never_forwarded_v4(v4),
            None => never_forwarded_v6(a),
        },
    }
}

fn never_forwarded_v4(a: Ipv4Addr) -> bool {
    let (overlay, len) = OVERLAY_NET;
    let in_overlay = Ipv4Net::new(overlay, len).is_ok_and(|n| n.contains(&a));
    in_overlay
        || a.octets()[0] == 0
        || (a.is_loopback() && !LOOPBACK_LAN.load(Ordering::Relaxed))
        || a.is_link_local()
        || a.is_multicast()
        || a.octets()[0] >= 240
}

fn never_forwarded_v6(a: Ipv6Addr) -> bool {
    a.is_unspecified()
        || (a.is_loopback() && !LOOPBACK_LAN.load(Ordering::Relaxed))
        || a.is_unicast_link_local()
        || a.is_multicast()
}

/// The whitelist the edge enforces: released targets (real LAN addresses), 1:1 NAT and
/// the client overlay addresses that may send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub targets: Vec<Target>,
    pub nat: Vec<NatMapping>,
    pub allowed_sources: Vec<IpNet>,
}

impl Policy {
    /// Maps a client-visible destination to the real LAN address: an address inside a
    /// NAT mapping's virtual subnet is translated 1:1 into its real subnet; any other
    /// address is taken as real. Non-IPv4 or inconsistent mappings are ignored.
    pub fn translate(&self, dst: Ipv4Addr) -> Ipv4Addr {
        for m in &self.nat {
            if m.check().is_err() {
                continue;
            }
            if let (IpNet::V4(virt), IpNet::V4(real)) = (m.virtual_subnet, m.real)
                && virt.contains(&dst)
            {
                return nat_map(virt, real, dst);
            }
        }
        dst
    }

    pub fn source_allowed(&self, src: Ipv4Addr) -> bool {
        self.allowed_sources
            .iter()
            .any(|n| n.contains(&IpAddr::V4(src)))
    }

    /// True when a released target covers `real` (a real LAN address), `proto`, `port`.
    /// Destinations inside the allowed client sources and every [`never_forwarded`]
    /// address (overlay, loopback, link-local, multicast, broadcast, …) are never released.
    pub fn released(&self, real: Ipv4Addr, proto: Protocol, port: Option<u16>) -> bool {
        if self.source_allowed(real) || never_forwarded(IpAddr::V4(real)) {
            return false;
        }
        let want = Target {
            address: IpNet::V4(Ipv4Net::from(real)),
            protocol: proto,
            ports: port.map(PortRange::single),
        };
        self.targets.iter().any(|t| t.covers(&want))
    }

    /// Does the policy still allow this flow? (Used to cut flows after an update.)
    pub fn allows_flow(&self, key: &FlowKey) -> bool {
        self.source_allowed(key.src)
            && self.translate(key.dst) == key.real
            && self.released(key.real, key.proto, key.dst_port())
    }
}

fn nat_map(from: Ipv4Net, to: Ipv4Net, addr: Ipv4Addr) -> Ipv4Addr {
    let host = u32::from(addr) & u32::from(from.hostmask());
    Ipv4Addr::from(u32::from(to.network()) | host)
}

/// A flow as the client sees it, plus the real LAN address it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Protocol,
    /// Client overlay address and port (ICMP: the echo identifier).
    pub src: Ipv4Addr,
    pub src_port: u16,
    /// Client-visible destination (virtual when NAT applies) and port (ICMP: 0).
    pub dst: Ipv4Addr,
    pub dst_port_raw: u16,
    /// Real LAN destination.
    pub real: Ipv4Addr,
}

impl FlowKey {
    pub fn dst_port(&self) -> Option<u16> {
        match self.proto {
            Protocol::Icmp => None,
            _ => Some(self.dst_port_raw),
        }
    }
}

/// What an accepted packet is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand to the TCP stack. `syn` is a connection-opening segment (SYN without ACK).
    Tcp { key: FlowKey, syn: bool },
    /// UDP payload at `payload` (byte range within the packet).
    Udp {
        key: FlowKey,
        payload: std::ops::Range<usize>,
    },
    /// ICMP echo request: identifier, sequence number, data range within the packet.
    IcmpEcho {
        key: FlowKey,
        ident: u16,
        seq: u16,
        data: std::ops::Range<usize>,
    },
}

/// Parses and checks one inbound packet against `policy`.
pub fn classify(policy: &Policy, packet: &[u8]) -> Result<Verdict, DropReason> {
    let Some(&first) = packet.first() else {
        return Err(DropReason::Malformed);
    };
    if first >> 4 == 6 {
        return Err(DropReason::UnsupportedProtocol);
    }
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return Err(DropReason::Malformed);
    }
    let src = ip.src_addr();
    let dst = ip.dst_addr();
    if !policy.source_allowed(src) {
        return Err(DropReason::BadSource);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DropReason::Fragment);
    }
    let hl = ip.header_len() as usize;
    let total = ip.total_len() as usize;
    let payload = &packet[hl..total];
    let real = policy.translate(dst);
    let (s, d) = (src.into(), dst.into());
    match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if !tcp.verify_checksum(&s, &d) {
                return Err(DropReason::Malformed);
            }
            let key = FlowKey {
                proto: Protocol::Tcp,
                src,
                src_port: tcp.src_port(),
                dst,
                dst_port_raw: tcp.dst_port(),
                real,
            };
            if tcp.src_port() == 0 || tcp.dst_port() == 0 {
                return Err(DropReason::Malformed);
            }
            if !policy.released(real, Protocol::Tcp, Some(tcp.dst_port())) {
                return Err(DropReason::NotReleased);
            }
            Ok(Verdict::Tcp {
                key,
                syn: tcp.syn() && !tcp.ack() && !tcp.rst(),
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if udp.checksum() != 0 && !udp.verify_checksum(&s, &d) {
                return Err(DropReason::Malformed);
            }
            if udp.src_port() == 0 || udp.dst_port() == 0 {
                return Err(DropReason::Malformed);
            }
            let key = FlowKey {
                proto: Protocol::Udp,
                src,
                src_port: udp.src_port(),
                dst,
                dst_port_raw: udp.dst_port(),
                real,
            };
            if !policy.released(real, Protocol::Udp, Some(udp.dst_port())) {
                return Err(DropReason::NotReleased);
            }
            let start = hl + 8;
            let end = hl + udp.len() as usize;
            Ok(Verdict::Udp {
                key,
                payload: start..end,
            })
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if !icmp.verify_checksum() {
                return Err(DropReason::Malformed);
            }
            if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                return Err(DropReason::UnsupportedProtocol);
            }
            let ident = icmp.echo_ident();
            let key = FlowKey {
                proto: Protocol::Icmp,
                src,
                src_port: ident,
                dst,
                dst_port_raw: 0,
                real,
            };
            if !policy.released(real, Protocol::Icmp, None) {
                return Err(DropReason::NotReleased);
            }
            Ok(Verdict::IcmpEcho {
                key,
                ident,
                seq: icmp.echo_seq_no(),
                data: hl + 8..total,
            })
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn policy() -> Policy {
        Policy {
            targets: vec![
                "tcp:192.168.1.10:502".parse().unwrap(),
                "udp:192.168.1.0/24:161".parse().unwrap(),
                "icmp:192.168.1.10".parse().unwrap(),
                "tcp:100.64.0.0/10".parse().unwrap(),
            ],
            nat: vec![NatMapping {
                real: "192.168.1.0/24".parse().unwrap(),
                virtual_subnet: "10.77.1.0/24".parse().unwrap(),
            }],
            allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        }
    }

    const C: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    #[test]
    fn nat_translates_virtual_to_real() {
        let p = policy();
        assert_eq!(
            p.translate("10.77.1.10".parse().unwrap()),
            "192.168.1.10".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            p.translate("192.168.1.10".parse().unwrap()),
            "192.168.1.10".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            p.translate("10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn tcp_released_port_only() {
        let p = policy();
        let ok = wire::tcp_syn(C, 40000, "10.77.1.10".parse().unwrap(), 502);
        match classify(&p, &ok) {
            Ok(Verdict::Tcp { key, syn: true }) => {
                assert_eq!(key.real, "192.168.1.10".parse::<Ipv4Addr>().unwrap())
            }
            other => panic!("{other:?}"),
        }
        let port = wire::tcp_syn(C, 40000, "10.77.1.10".parse().unwrap(), 503);
        assert_eq!(classify(&p, &port), Err(DropReason::NotReleased));
        let addr = wire::tcp_syn(C, 40000, "10.77.1.11".parse().unwrap(), 502);
        assert_eq!(classify(&p, &addr), Err(DropReason::NotReleased));
    }

    #[test]
    fn overlay_and_broadcast_never_released() {
        let p = policy();
        // Even though a target names 100.64.0.0/10, the client's own address is excluded.
        let pkt = wire::tcp_syn(C, 40000, C, 22);
        assert_eq!(classify(&p, &pkt), Err(DropReason::NotReleased));
        let mut p = p;
        p.targets.push("udp:0.0.0.0/0".parse().unwrap());
        let pkt = wire::udp(C, 5, Ipv4Addr::BROADCAST, 161, b"x");
        assert_eq!(classify(&p, &pkt), Err(DropReason::NotReleased));
        let pkt = wire::udp(C, 5, "224.0.0.1".parse().unwrap(), 161, b"x");
        assert_eq!(classify(&p, &pkt), Err(DropReason::NotReleased));
    }

    /// A policy that releases everything, as a careless admin might.
    fn wide_open() -> Policy {
        Policy {
            targets: vec![
                "tcp:0.0.0.0/0".parse().unwrap(),
                "udp:0.0.0.0/0".parse().unwrap(),
                "icmp:0.0.0.0/0".parse().unwrap(),
            ],
            nat: vec![],
            allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        }
    }

    fn all_protocols(p: &Policy, dst: Ipv4Addr) -> Vec<Result<Verdict, DropReason>> {
        vec![
            classify(p, &wire::tcp_syn(C, 40000, dst, 22)),
            classify(p, &wire::udp(C, 5000, dst, 53, b"x")),
            classify(p, &wire::icmp_echo(C, dst, 1, 1, b"ping", false)),
        ]
    }

    #[test]
    fn a_release_of_everything_still_reaches_no_overlay_loopback_or_link_local_address() {
        let p = wide_open();
        for dst in [
            // Other sessions' kernel-mode blocks and other clients, the edge's overlay address.
            "100.65.0.2",
            "100.64.0.3",
            "100.64.0.1",
            "100.127.255.254",
            // The edge's own loopback and the link-local range (kernel mode's TUN address).
            "127.0.0.1",
            "127.1.2.3",
            "169.254.77.1",
            "169.254.169.254",
            // This network, multicast, reserved and broadcast.
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            let dst: Ipv4Addr = dst.parse().unwrap();
            for verdict in all_protocols(&p, dst) {
                assert_eq!(verdict, Err(DropReason::NotReleased), "{dst}");
            }
        }
        // What the release is for still passes: any ordinary LAN or routed address.
        for dst in [
            "192.168.1.10",
            "10.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "8.8.8.8",
        ] {
            let dst: Ipv4Addr = dst.parse().unwrap();
            for verdict in all_protocols(&p, dst) {
                assert!(verdict.is_ok(), "{dst}: {verdict:?}");
            }
        }
    }

    #[test]
    fn one_to_one_nat_cannot_lead_into_loopback_or_the_overlay() {
        let mut p = wide_open();
        p.nat = vec![
            NatMapping {
                real: "127.0.0.0/24".parse().unwrap(),
                virtual_subnet: "10.77.1.0/24".parse().unwrap(),
            },
            NatMapping {
                real: "100.65.0.0/24".parse().unwrap(),
                virtual_subnet: "10.77.2.0/24".parse().unwrap(),
            },
        ];
        for dst in ["10.77.1.1", "10.77.2.2"] {
            let dst: Ipv4Addr = dst.parse().unwrap();
            for verdict in all_protocols(&p, dst) {
                assert_eq!(verdict, Err(DropReason::NotReleased), "{dst}");
            }
        }
    }

    #[test]
    fn never_forwarded_covers_ipv6_loopback_link_local_and_mapped_ipv4() {
        for a in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:100.64.0.2",
            "::ffff:169.254.1.1",
        ] {
            assert!(never_forwarded(a.parse().unwrap()), "{a}");
        }
        for a in [
            "2001:db8::1",
            "fd00::1",
            "::ffff:192.168.1.10",
            "192.168.1.10",
        ] {
            assert!(!never_forwarded(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn flows_to_never_forwarded_addresses_are_not_allowed_after_an_update_either() {
        let p = wide_open();
        let key = FlowKey {
            proto: Protocol::Tcp,
            src: C,
            src_port: 40000,
            dst: "100.65.0.2".parse().unwrap(),
            dst_port_raw: 22,
            real: "100.65.0.2".parse().unwrap(),
        };
        assert!(!p.allows_flow(&key));
        let lan = FlowKey {
            dst: "192.168.1.10".parse().unwrap(),
            real: "192.168.1.10".parse().unwrap(),
            ..key
        };
        assert!(p.allows_flow(&lan));
    }

    #[test]
    fn bad_source_dropped() {
        let p = policy();
        let pkt = wire::tcp_syn(
            "100.64.0.3".parse().unwrap(),
            40000,
            "192.168.1.10".parse().unwrap(),
            502,
        );
        assert_eq!(classify(&p, &pkt), Err(DropReason::BadSource));
    }

    #[test]
    fn udp_and_icmp() {
        let p = policy();
        let pkt = wire::udp(C, 5000, "10.77.1.20".parse().unwrap(), 161, b"hello");
        match classify(&p, &pkt) {
            Ok(Verdict::Udp { payload, .. }) => assert_eq!(&pkt[payload], b"hello"),
            other => panic!("{other:?}"),
        }
        let pkt = wire::udp(C, 5000, "10.77.1.20".parse().unwrap(), 162, b"hello");
        assert_eq!(classify(&p, &pkt), Err(DropReason::NotReleased));
        let pkt = wire::icmp_echo(C, "10.77.1.10".parse().unwrap(), 0x1234, 7, b"ping", false);
        match classify(&p, &pkt) {
            Ok(Verdict::IcmpEcho {
                ident, seq, data, ..
            }) => {
                assert_eq!((ident, seq), (0x1234, 7));
                assert_eq!(&pkt[data], b"ping");
            }
            other => panic!("{other:?}"),
        }
        let pkt = wire::icmp_echo(C, "10.77.1.11".parse().unwrap(), 1, 1, b"", false);
        assert_eq!(classify(&p, &pkt), Err(DropReason::NotReleased));
        let reply = wire::icmp_echo(C, "10.77.1.10".parse().unwrap(), 1, 1, b"", true);
        assert_eq!(classify(&p, &reply), Err(DropReason::UnsupportedProtocol));
    }

    #[test]
    fn malformed_and_unsupported() {
        let p = policy();
        assert_eq!(classify(&p, &[]), Err(DropReason::Malformed));
        assert_eq!(classify(&p, &[0x45; 10]), Err(DropReason::Malformed));
        let mut pkt = wire::tcp_syn(C, 40000, "192.168.1.10".parse().unwrap(), 502);
        let n = pkt.len();
        pkt[n - 1] ^= 0xff; // breaks the TCP checksum
        assert_eq!(classify(&p, &pkt), Err(DropReason::Malformed));
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        assert_eq!(classify(&p, &v6), Err(DropReason::UnsupportedProtocol));
    }

    #[test]
    fn random_input_never_panics() {
        let p = policy();
        let valid = [
            wire::tcp_syn(C, 40000, "10.77.1.10".parse().unwrap(), 502),
            wire::udp(C, 5000, "10.77.1.20".parse().unwrap(), 161, b"hello"),
            wire::icmp_echo(C, "10.77.1.10".parse().unwrap(), 1, 1, b"ping", false),
        ];
        for i in 0..50_000usize {
            let mut v = if i % 2 == 0 {
                let n = rand::random::<usize>() % 200;
                (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>()
            } else {
                valid[i % 3].clone()
            };
            if !v.is_empty() {
                for _ in 0..1 + i % 3 {
                    let at = rand::random::<usize>() % v.len();
                    v[at] = rand::random();
                }
                if i % 5 == 0 {
                    v.truncate(rand::random::<usize>() % v.len());
                }
            }
            // Whatever it says, a verdict's ranges lie inside the packet.
            match classify(&p, &v) {
                Ok(Verdict::Udp { payload, .. }) => assert!(payload.end <= v.len()),
                Ok(Verdict::IcmpEcho { data, .. }) => assert!(data.end <= v.len()),
                _ => {}
            }
        }
    }

    #[test]
    fn flow_recheck_after_update() {
        let mut p = policy();
        let pkt = wire::tcp_syn(C, 40000, "10.77.1.10".parse().unwrap(), 502);
        let Ok(Verdict::Tcp { key, .. }) = classify(&p, &pkt) else {
            panic!()
        };
        assert!(p.allows_flow(&key));
        p.targets.remove(0);
        assert!(!p.allows_flow(&key));
    }
}
