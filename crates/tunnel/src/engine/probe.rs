//! The path probe: a ping or pong carried *inside* the WireGuard session (an IPv4 header with
//! the experimental protocol number 253 and a magic), so an answer proves that the WireGuard
//! peer itself answered. Also the two IP header peeks the engine needs.

use std::net::IpAddr;

const PROBE_MAGIC: &[u8; 8] = b"DBPROBE1";
const PROBE_LEN: usize = 20 + 8 + 1 + 8;
pub(super) const PROBE_PING: u8 = 1;
pub(super) const PROBE_PONG: u8 = 2;

/// A probe of `kind` ([`PROBE_PING`] or [`PROBE_PONG`]) with `nonce`, as an inner packet.
pub(super) fn probe_packet(kind: u8, nonce: u64) -> Vec<u8> {
    let mut p = vec![0u8; PROBE_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PROBE_LEN as u16).to_be_bytes());
    p[8] = 1; // TTL
    p[9] = 253; // experimental protocol number (RFC 3692); never routed
    p[20..28].copy_from_slice(PROBE_MAGIC);
    p[28] = kind;
    p[29..37].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// The kind and nonce of a probe; `None` for every other packet.
pub(super) fn parse_probe(p: &[u8]) -> Option<(u8, u64)> {
    if p.len() != PROBE_LEN || p[0] != 0x45 || p[9] != 253 || &p[20..28] != PROBE_MAGIC {
        return None;
    }
    let nonce = u64::from_be_bytes(p[29..37].try_into().ok()?);
    Some((p[28], nonce))
}

/// Source and destination of an IPv4/IPv6 packet.
pub fn ip_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// The length an IPv4/IPv6 packet claims for itself, if it fits in `p`.
pub(super) fn ip_total_len(p: &[u8]) -> Option<usize> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    (len <= p.len() && len >= 20).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_packets_are_recognised_and_ordinary_packets_are_not() {
        let p = probe_packet(PROBE_PING, 42);
        assert_eq!(parse_probe(&p), Some((PROBE_PING, 42)));
        let mut q = p.clone();
        q[9] = 17;
        assert_eq!(parse_probe(&q), None);
        assert_eq!(parse_probe(&p[..30]), None);
    }

    #[test]
    fn ip_lengths_are_read_from_the_header_and_bounded_by_the_buffer() {
        let p = probe_packet(PROBE_PONG, 1);
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 11]);
        assert_eq!(ip_total_len(&padded), Some(p.len()));
        assert_eq!(ip_total_len(&p[..30]), None);
        assert_eq!(ip_total_len(&[0x60; 39]), None);
        assert!(ip_addrs(&p).is_some());
        assert_eq!(ip_addrs(&[0x45; 19]), None);
    }
}
