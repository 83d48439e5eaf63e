//! Pure packet classification and whitelist decisions (sans-IO, no clocks).
//!
//! [`classify`] parses one inner IPv4 packet from the tunnel with length and checksum
//! checks and decides, against a [`Policy`], whether it may reach the LAN and where.

use std::net::{IpAddr, Ipv4Addr};

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
    /// Destinations inside the allowed client sources (the overlay) are never released.
    pub fn released(&self, real: Ipv4Addr, proto: Protocol, port: Option<u16>) -> bool {
        if self.source_allowed(real) || real.is_broadcast() || real.is_multicast() {
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
