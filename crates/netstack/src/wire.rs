//! Builders for the IPv4 packets the crate emits itself (UDP and ICMP echo replies) and
//! for test packets. Checksums are always filled in.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

const TTL: u8 = 64;

fn ip_header(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, len: usize) {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: len,
        hop_limit: TTL,
    };
    let mut ip = Ipv4Packet::new_unchecked(buf);
    repr.emit(&mut ip, &ChecksumCapabilities::default());
}

/// An IPv4/UDP packet.
pub fn udp(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut buf = vec![0u8; 20 + udp_len];
    ip_header(&mut buf, src, dst, IpProtocol::Udp, udp_len);
    let repr = UdpRepr { src_port, dst_port };
    let mut pkt = UdpPacket::new_unchecked(&mut buf[20..]);
    repr.emit(
        &mut pkt,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// An IPv4 ICMP echo request (`reply == false`) or reply.
pub fn icmp_echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
    reply: bool,
) -> Vec<u8> {
    let repr = if reply {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        }
    } else {
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }
    };
    let len = repr.buffer_len();
    let mut buf = vec![0u8; 20 + len];
    ip_header(&mut buf, src, dst, IpProtocol::Icmp, len);
    let mut pkt = Icmpv4Packet::new_unchecked(&mut buf[20..]);
    repr.emit(&mut pkt, &ChecksumCapabilities::default());
    buf
}

/// Just the ICMP part of an echo request or reply (checksum filled in).
pub fn icmp_echo_body(ident: u16, seq_no: u16, data: &[u8], reply: bool) -> Vec<u8> {
    let repr = if reply {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        }
    } else {
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// An IPv4 packet carrying the TCP segment `repr`, checksums filled in.
fn tcp_packet(src: Ipv4Addr, dst: Ipv4Addr, repr: &TcpRepr<'_>) -> Vec<u8> {
    let len = repr.buffer_len();
    let mut buf = vec![0u8; 20 + len];
    ip_header(&mut buf, src, dst, IpProtocol::Tcp, len);
    let mut pkt = TcpPacket::new_unchecked(&mut buf[20..]);
    repr.emit(
        &mut pkt,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// A TCP SYN (for tests and forged-packet checks).
pub fn tcp_syn(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1360),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    tcp_packet(src, dst, &repr)
}

/// Source and destination of an IPv4 packet, if it parses.
pub fn addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    Some((ip.src_addr(), ip.dst_addr()))
}

/// The RST+ACK refusing a TCP SYN (`syn` is the client's IPv4 packet), as a host with
/// nothing listening would send it.
pub fn tcp_rst_for_syn(syn: &[u8]) -> Option<Vec<u8>> {
    let ip = Ipv4Packet::new_checked(syn).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let (src, dst) = (ip.dst_addr(), ip.src_addr());
    let repr = TcpRepr {
        src_port: tcp.dst_port(),
        dst_port: tcp.src_port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(tcp.seq_number() + 1),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    Some(tcp_packet(src, dst, &repr))
}
