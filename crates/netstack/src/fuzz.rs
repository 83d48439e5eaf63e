//! Bodies of the `cargo fuzz` targets in `crates/netstack/fuzz`, shared with the
//! replay test (`tests/fuzz_corpus.rs`) that runs the stored corpus and every
//! crash found on stable Rust. Not part of the API.

use crate::policy::{Policy, Verdict, classify, never_forwarded};
use crate::rewrite::{SLOTS, slot_of, to_client, to_lan, unmapped};
use drawbridge_proto::model::NatMapping;
use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};
use std::net::IpAddr;
use std::sync::OnceLock;

fn policies() -> &'static [Policy; 2] {
    static P: OnceLock<[Policy; 2]> = OnceLock::new();
    P.get_or_init(|| {
        let parse = |s: &str| s.parse().expect("literal target");
        [
            // What an admin typically releases, with 1:1 NAT.
            Policy {
                targets: vec![
                    parse("tcp:192.168.1.10:502"),
                    parse("udp:192.168.1.0/24:161"),
                    parse("icmp:192.168.1.10"),
                ],
                nat: vec![NatMapping {
                    real: "192.168.1.0/24".parse().expect("literal"),
                    virtual_subnet: "10.77.1.0/24".parse().expect("literal"),
                }],
                allowed_sources: vec!["100.64.0.2/32".parse().expect("literal")],
            },
            // Everything released, NAT into loopback and the overlay tried.
            Policy {
                targets: vec![
                    parse("tcp:0.0.0.0/0"),
                    parse("udp:0.0.0.0/0"),
                    parse("icmp:0.0.0.0/0"),
                ],
                nat: vec![
                    NatMapping {
                        real: "127.0.0.0/24".parse().expect("literal"),
                        virtual_subnet: "10.77.1.0/24".parse().expect("literal"),
                    },
                    NatMapping {
                        real: "100.65.0.0/24".parse().expect("literal"),
                        virtual_subnet: "10.77.2.0/24".parse().expect("literal"),
                    },
                ],
                allowed_sources: vec!["100.64.0.0/24".parse().expect("literal")],
            },
        ]
    })
}

/// Refills the IPv4 header and TCP/UDP checksums where the packet parses, so the
/// fuzzer gets past the checksum checks.
fn fill_checksums(packet: &mut [u8]) {
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut *packet) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    let proto = ip.next_header();
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let Some(body) = packet.get_mut(hl..total) else {
        return;
    };
    match proto {
        IpProtocol::Tcp => {
            if let Ok(mut t) = TcpPacket::new_checked(body) {
                t.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut u) = UdpPacket::new_checked(body) {
                u.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Icmp => {
            if let Ok(mut i) = smoltcp::wire::Icmpv4Packet::new_checked(body) {
                i.fill_checksum();
            }
        }
        _ => {}
    }
}

fn valid_ipv4(packet: &[u8]) -> bool {
    Ipv4Packet::new_checked(packet).is_ok_and(|ip| ip.verify_checksum())
}

/// `fuzz_targets/policy_rewrite.rs`: one client packet (first byte: bit 0 = refill
/// checksums, the rest = kernel-mode slot) through `classify`, `to_lan`, `slot_of`
/// and `to_client` under a narrow and a wide-open policy. Never panics; whatever
/// passes is consistent: ranges inside the packet, the flow allowed, the
/// destination never a never-forwarded address, checksums valid after rewriting.
pub fn policy_rewrite(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut packet = rest.to_vec();
    if mode & 1 == 1 {
        fill_checksums(&mut packet);
    }
    let slot = (mode >> 1) % SLOTS;
    for policy in policies() {
        if let Ok(verdict) = classify(policy, &packet) {
            let key = match &verdict {
                Verdict::Tcp { key, .. } => key,
                Verdict::Udp { key, payload } => {
                    assert!(payload.start <= payload.end && payload.end <= packet.len());
                    key
                }
                Verdict::IcmpEcho { key, data, .. } => {
                    assert!(data.start <= data.end && data.end <= packet.len());
                    key
                }
            };
            assert!(policy.allows_flow(key), "{verdict:?}");
            assert!(!never_forwarded(IpAddr::V4(key.real)), "{verdict:?}");
            let out = to_lan(policy, slot, &packet).expect("a released packet is rewritten");
            assert!(valid_ipv4(&out));
            let ip = Ipv4Packet::new_checked(&out[..]).expect("checked");
            assert_eq!(ip.dst_addr(), key.real);
            assert_eq!(unmapped(ip.src_addr()), Some((slot, key.src)));
        } else {
            assert!(to_lan(policy, slot, &packet).is_err());
        }
        // The same bytes as a reply from the LAN.
        let _ = slot_of(&packet);
        if let Some(back) = to_client(policy, &packet) {
            assert!(valid_ipv4(&back));
            let ip = Ipv4Packet::new_checked(&back[..]).expect("checked");
            assert!(policy.source_allowed(ip.dst_addr()));
        }
    }
}
