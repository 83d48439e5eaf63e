//! Address rewriting for the edge's kernel forwarding mode (sans-IO).
//!
//! In kernel mode the clients' packets leave the edge through a TUN interface
//! and the host's kernel forwards them to the LAN. Every session numbers its
//! clients from 100.64.0.2, so before the kernel sees a packet its source is
//! moved into the session's own block: slot `k`, client host `h` becomes
//! `100.64.0.0 + k·65536 + h`. The destination becomes the real LAN address
//! (1:1 NAT). Only packets the session's [`Policy`] releases are rewritten at
//! all; the way back undoes both changes.

use crate::policy::{DropReason, Policy, Verdict, classify};
use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};
use std::net::Ipv4Addr;

/// Sessions one edge can forward in kernel mode at once.
pub const SLOTS: u8 = 64;
/// Client hosts per session in kernel mode (the server numbers them from 2).
pub const HOSTS: u32 = 1 << 16;
const BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// The prefix every mapped address lies in (what the edge routes into its TUN).
pub const MAPPED_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// The kernel-side address of client `overlay` in session slot `slot`.
pub fn mapped(slot: u8, overlay: Ipv4Addr) -> Option<Ipv4Addr> {
    let host = u32::from(overlay).checked_sub(BASE)?;
    if slot >= SLOTS || host >= HOSTS {
        return None;
    }
    Some(Ipv4Addr::from(BASE + (u32::from(slot) << 16) + host))
}

/// The slot and client overlay address behind a kernel-side address.
pub fn unmapped(addr: Ipv4Addr) -> Option<(u8, Ipv4Addr)> {
    let off = u32::from(addr).checked_sub(BASE)?;
    let slot = u8::try_from(off >> 16).ok().filter(|s| *s < SLOTS)?;
    Some((slot, Ipv4Addr::from(BASE + (off & (HOSTS - 1)))))
}

/// The address a LAN device is shown at in the session (reverse 1:1 NAT).
fn virtual_of(policy: &Policy, real: Ipv4Addr) -> Ipv4Addr {
    for m in &policy.nat {
        if m.check().is_err() {
            continue;
        }
        if let (ipnet::IpNet::V4(virt), ipnet::IpNet::V4(r)) = (m.virtual_subnet, m.real)
            && r.contains(&real)
        {
            let host = u32::from(real) & u32::from(r.hostmask());
            return Ipv4Addr::from(u32::from(virt.network()) | host);
        }
    }
    real
}

/// Sets both addresses and recomputes the IP and transport checksums.
fn set_addrs(packet: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Option<()> {
    let mut ip = Ipv4Packet::new_checked(&mut *packet).ok()?;
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let proto = ip.next_header();
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let body = packet.get_mut(hl..total)?;
    let (s, d) = (src.into(), dst.into());
    match proto {
        IpProtocol::Tcp => {
            let mut t = TcpPacket::new_checked(body).ok()?;
            t.fill_checksum(&s, &d);
        }
        IpProtocol::Udp => {
            let mut u = UdpPacket::new_checked(body).ok()?;
            // A zero UDP checksum means "none" and stays so.
            if u.checksum() != 0 {
                u.fill_checksum(&s, &d);
            }
        }
        // ICMP's checksum covers no addresses.
        _ => {}
    }
    Some(())
}

/// A client's packet on its way to the LAN: checked against the policy, then
/// moved to the session's slot and the real destination.
pub fn to_lan(policy: &Policy, slot: u8, packet: &[u8]) -> Result<Vec<u8>, DropReason> {
    let key = match classify(policy, packet)? {
        Verdict::Tcp { key, .. } | Verdict::Udp { key, .. } | Verdict::IcmpEcho { key, .. } => key,
    };
    let src = mapped(slot, key.src).ok_or(DropReason::BadSource)?;
    let mut out = packet.to_vec();
    set_addrs(&mut out, src, key.real).ok_or(DropReason::Malformed)?;
    Ok(out)
}

/// The session slot a packet from the kernel belongs to (by its destination).
pub fn slot_of(packet: &[u8]) -> Option<u8> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    unmapped(ip.dst_addr()).map(|(slot, _)| slot)
}

/// A reply from the LAN on its way back into the session: destination back to
/// the client's overlay address, source to the address the client knows.
pub fn to_client(policy: &Policy, packet: &[u8]) -> Option<Vec<u8>> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return None;
    }
    let (_, client) = unmapped(ip.dst_addr())?;
    if !policy.source_allowed(client) {
        return None;
    }
    let src = virtual_of(policy, ip.src_addr());
    let mut out = packet.to_vec();
    set_addrs(&mut out, src, client)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use drawbridge_proto::model::NatMapping;

    fn policy() -> Policy {
        Policy {
            targets: vec!["tcp:192.168.1.10:502".parse().unwrap()],
            nat: vec![NatMapping {
                real: "192.168.1.0/24".parse().unwrap(),
                virtual_subnet: "10.77.1.0/24".parse().unwrap(),
            }],
            allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        }
    }

    #[test]
    fn slots_map_clients_into_disjoint_blocks_and_back() {
        let c = Ipv4Addr::new(100, 64, 0, 2);
        assert_eq!(mapped(0, c), Some(c));
        assert_eq!(mapped(3, c), Some(Ipv4Addr::new(100, 67, 0, 2)));
        assert_eq!(unmapped(Ipv4Addr::new(100, 67, 0, 2)), Some((3, c)));
        assert_eq!(mapped(SLOTS, c), None);
        assert_eq!(mapped(0, Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(unmapped(Ipv4Addr::new(100, 128, 0, 1)), None);
        assert_eq!(unmapped(Ipv4Addr::new(10, 0, 0, 1)), None);
    }

    #[test]
    fn released_packets_are_rewritten_with_valid_checksums_and_come_back_unchanged() {
        let p = policy();
        let syn = wire::tcp_syn(
            Ipv4Addr::new(100, 64, 0, 2),
            40000,
            Ipv4Addr::new(10, 77, 1, 10),
            502,
        );
        let out = to_lan(&p, 5, &syn).unwrap();
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(100, 69, 0, 2));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(192, 168, 1, 10));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        // The reply (addresses swapped) finds its slot and goes back as the client knows it.
        let reply = wire::tcp_syn(
            Ipv4Addr::new(192, 168, 1, 10),
            502,
            Ipv4Addr::new(100, 69, 0, 2),
            40000,
        );
        assert_eq!(slot_of(&reply), Some(5));
        let back = to_client(&p, &reply).unwrap();
        let ip = Ipv4Packet::new_checked(&back[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 77, 1, 10));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(100, 64, 0, 2));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }

    #[test]
    fn a_client_released_everything_reaches_no_other_session_block_nor_the_edge_itself() {
        let mut p = policy();
        p.targets = vec![
            "tcp:0.0.0.0/0".parse().unwrap(),
            "udp:0.0.0.0/0".parse().unwrap(),
            "icmp:0.0.0.0/0".parse().unwrap(),
        ];
        let c = Ipv4Addr::new(100, 64, 0, 2);
        // Session slot 0's client aims at slot 1's and slot 63's clients, the edge's
        // loopback and the TUN's own link-local address.
        for dst in [
            mapped(1, c).unwrap(),
            mapped(SLOTS - 1, c).unwrap(),
            Ipv4Addr::new(100, 64, 0, 3),
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(169, 254, 77, 1),
        ] {
            for pkt in [
                wire::tcp_syn(c, 40000, dst, 22),
                wire::udp(c, 5000, dst, 53, b"x"),
                wire::icmp_echo(c, dst, 1, 1, b"x", false),
            ] {
                assert_eq!(to_lan(&p, 0, &pkt), Err(DropReason::NotReleased), "{dst}");
            }
        }
        let lan = wire::tcp_syn(c, 40000, Ipv4Addr::new(192, 168, 7, 7), 22);
        assert!(to_lan(&p, 0, &lan).is_ok());
    }

    #[test]
    fn what_is_not_released_is_never_rewritten() {
        let p = policy();
        let other_port = wire::tcp_syn(
            Ipv4Addr::new(100, 64, 0, 2),
            40000,
            Ipv4Addr::new(10, 77, 1, 10),
            503,
        );
        assert_eq!(to_lan(&p, 0, &other_port), Err(DropReason::NotReleased));
        let spoofed = wire::tcp_syn(
            Ipv4Addr::new(100, 64, 0, 9),
            40000,
            Ipv4Addr::new(10, 77, 1, 10),
            502,
        );
        assert_eq!(to_lan(&p, 0, &spoofed), Err(DropReason::BadSource));
        // A packet from the kernel to a client the session does not have.
        let stray = wire::tcp_syn(
            Ipv4Addr::new(192, 168, 1, 10),
            502,
            Ipv4Addr::new(100, 64, 0, 9),
            40000,
        );
        assert!(to_client(&p, &stray).is_none());
        assert!(to_client(&p, b"garbage").is_none());
    }
}
