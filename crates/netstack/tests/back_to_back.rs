//! A `Dialer` and a `Forwarder` back to back over in-memory channels (no WireGuard); the
//! "LAN devices" are tokio servers on 127.0.0.x, the client overlay is 100.64.0.2.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use drawbridge_netstack::forwarder::{ForwarderConfig, Limits};
use drawbridge_netstack::{Dialer, Forwarder, ForwarderHandle, servers, wire};
use drawbridge_proto::model::{NatMapping, Target};
use smoltcp::wire::{IpProtocol, Ipv4Packet, UdpPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const EDGE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn config(targets: Vec<Target>, nat: Vec<NatMapping>) -> ForwarderConfig {
    // The "LAN devices" here are servers on 127.0.0.x.
    drawbridge_netstack::policy::allow_loopback_lan();
    ForwarderConfig {
        local_ip: EDGE,
        targets,
        nat,
        allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        limits: Limits::default(),
    }
}

/// Starts a forwarder fed by our own channels: (inject, output, handle).
fn forwarder(
    cfg: ForwarderConfig,
) -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>, ForwarderHandle) {
    let (fwd, handle) = Forwarder::new(cfg);
    let (in_tx, in_rx) = mpsc::channel(1024);
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(fwd.run(in_rx, out_tx));
    (in_tx, out_rx, handle)
}

/// Dialer and forwarder linked back to back.
fn link(cfg: ForwarderConfig, routes: Vec<Target>) -> (Dialer, ForwarderHandle) {
    let (fwd, handle) = Forwarder::new(cfg);
    let dialer = Dialer::new(CLIENT, routes);
    let (a_tx, a_rx) = mpsc::channel(1024);
    let (b_tx, b_rx) = mpsc::channel(1024);
    tokio::spawn(fwd.run(a_rx, b_tx));
    tokio::spawn(dialer.clone().run(b_rx, a_tx));
    (dialer, handle)
}

/// A TCP echo server; returns its address and a channel of the local addresses its
/// accepted connections were made to.
async fn tcp_echo(ip: Ipv4Addr) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = tx.send(s.local_addr().unwrap());
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, rx)
}

async fn udp_echo(ip: Ipv4Addr) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                return;
            };
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes `data` and reads the echo concurrently; returns what came back.
async fn echo_roundtrip<S>(s: S, data: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(16 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    let _ = writer.await.unwrap();
    got
}

fn port_target(proto: &str, a: SocketAddr) -> Target {
    t(&format!("{proto}:{}:{}", a.ip(), a.port()))
}

const BIG: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn tcp_echo_5mb_through_forward_local() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, handle) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap();
    tokio::spawn(servers::forward_local_on(l, server, dialer));
    let s = TcpStream::connect(local).await.unwrap();
    let data = pattern(BIG);
    let got = tokio::time::timeout(Duration::from_secs(50), echo_roundtrip(s, data.clone()))
        .await
        .expect("transfer timed out");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs");
    assert_eq!(handle.stats().tcp_flows_total, 1);
}

/// A dialed stream hands over every byte once and in order, whatever the
/// reader's buffer: one byte, odd sizes, or more than the receive window (the
/// bytes come out of smoltcp's ring in up to two pieces per read).
#[tokio::test]
async fn a_dialed_stream_reads_every_byte_in_order_into_any_buffer_size() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, _handle) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let s = dialer.connect(server).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let data = pattern(3 * 1024 * 1024 + 17);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(40_000) {
            w.write_all(chunk).await.unwrap();
        }
        w
    });
    let mut got = Vec::with_capacity(data.len());
    let sizes = [1usize, 13, 4096, 1500, 300_000, 2 * 1024 * 1024];
    let mut buf = vec![0u8; 2 * 1024 * 1024];
    let mut i = 0;
    while got.len() < data.len() {
        let want = sizes[i % sizes.len()].min(data.len() - got.len());
        i += 1;
        let n = tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf[..want]))
            .await
            .expect("read timed out")
            .unwrap();
        assert!(n > 0 && n <= want, "read {n} of at most {want}");
        got.extend_from_slice(&buf[..n]);
    }
    let _w = writer.await.unwrap();
    assert!(got == data, "the stream's bytes differ");
}

#[tokio::test]
async fn tcp_echo_5mb_through_socks5() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, _) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(servers::socks5_on(l, dialer));
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0]);
    let SocketAddr::V4(v4) = server else { panic!() };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.unwrap();
    assert_eq!(&rep[..4], &[5, 0, 0, 1]);
    assert_eq!(&rep[4..8], &CLIENT.octets());
    let data = pattern(BIG);
    let got = tokio::time::timeout(Duration::from_secs(50), echo_roundtrip(s, data.clone()))
        .await
        .expect("transfer timed out");
    assert!(got == data, "echo differs");
}

async fn socks_connect(proxy: SocketAddr, dst: SocketAddrV4) -> u8 {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&dst.ip().octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 12];
    s.read_exact(&mut rep).await.unwrap();
    rep[3]
}

#[tokio::test]
async fn dialer_refuses_unreleased_targets() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (other, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, handle) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let e = dialer.connect(other).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    let e = dialer
        .connect(SocketAddr::new("127.0.0.9".parse().unwrap(), server.port()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    // Nothing went out.
    assert_eq!(handle.stats().packets_in, 0);
    // -L refuses at start, SOCKS5 answers "not allowed by ruleset".
    let e = servers::forward_local("127.0.0.1:0".parse().unwrap(), other, dialer.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(servers::socks5_on(l, dialer));
    let SocketAddr::V4(o) = other else { panic!() };
    assert_eq!(socks_connect(proxy, o).await, 0x02);
}

/// The edge enforces the whitelist itself: forged packets straight into the forwarder.
#[tokio::test]
async fn forwarder_drops_forged_unreleased_and_bad_source() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    let (inject, mut out, handle) = forwarder(config(vec![port_target("tcp", server)], vec![]));
    let lo = Ipv4Addr::LOCALHOST;
    // Released address, other port; other address, released port; other protocol.
    let other_port = if server.port() == 65535 {
        1
    } else {
        server.port() + 1
    };
    for p in [
        wire::tcp_syn(CLIENT, 40000, lo, other_port),
        wire::tcp_syn(CLIENT, 40001, "127.0.0.9".parse().unwrap(), server.port()),
        wire::udp(CLIENT, 40002, lo, server.port(), b"x"),
        wire::icmp_echo(CLIENT, lo, 1, 1, b"x", false),
    ] {
        inject.send(Bytes::from(p)).await.unwrap();
    }
    // Inner source outside the allowed overlay addresses, to a released target.
    inject
        .send(Bytes::from(wire::tcp_syn(
            "100.64.0.3".parse().unwrap(),
            40003,
            lo,
            server.port(),
        )))
        .await
        .unwrap();
    inject
        .send(Bytes::from(wire::tcp_syn(
            "192.168.1.5".parse().unwrap(),
            40004,
            lo,
            server.port(),
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = handle.stats();
    assert_eq!(st.packets_in, 6);
    assert_eq!(st.dropped_not_released, 4, "{st:?}");
    assert_eq!(st.dropped_bad_source, 2, "{st:?}");
    assert_eq!(st.tcp_flows_total, 0);
    assert!(out.try_recv().is_err(), "nothing may be answered");
    let accepted = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
    assert!(
        accepted.is_err(),
        "the LAN server must not see a connection"
    );

    // The released target itself works (SYN-ACK comes back, the LAN sees a connection).
    inject
        .send(Bytes::from(wire::tcp_syn(CLIENT, 40005, lo, server.port())))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wire::addrs(&reply), Some((lo, CLIENT)));
    tokio::time::timeout(Duration::from_secs(5), l.accept())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn nat_one_to_one_client_dials_virtual_address() {
    let real_ip: Ipv4Addr = "127.0.0.2".parse().unwrap();
    let (server, mut seen) = tcp_echo(real_ip).await;
    let nat = vec![NatMapping {
        real: "127.0.0.0/24".parse().unwrap(),
        virtual_subnet: "10.77.1.0/24".parse().unwrap(),
    }];
    let virt = SocketAddr::new("10.77.1.2".parse().unwrap(), server.port());
    let (dialer, _) = link(
        config(vec![port_target("tcp", server)], nat),
        vec![port_target("tcp", virt)],
    );
    let s = dialer.connect(virt).await.unwrap();
    assert_eq!(s.peer_addr(), virt);
    let got = echo_roundtrip(s, b"through the NAT".to_vec()).await;
    assert_eq!(got, b"through the NAT");
    assert_eq!(
        seen.recv().await.unwrap(),
        server,
        "LAN side sees its real address"
    );
    // The real address is not a route of the client.
    assert!(dialer.connect(server).await.is_err());
}

#[tokio::test]
async fn udp_echo_with_and_without_nat() {
    let server = udp_echo(Ipv4Addr::LOCALHOST).await;
    let nat = vec![NatMapping {
        real: "127.0.0.0/24".parse().unwrap(),
        virtual_subnet: "10.77.1.0/24".parse().unwrap(),
    }];
    let (inject, mut out, handle) = forwarder(config(vec![port_target("udp", server)], nat));
    for dst in [Ipv4Addr::LOCALHOST, "10.77.1.1".parse().unwrap()] {
        inject
            .send(Bytes::from(wire::udp(
                CLIENT,
                5000,
                dst,
                server.port(),
                b"hello udp",
            )))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .unwrap()
            .unwrap();
        let ip = Ipv4Packet::new_checked(&reply[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            ip.src_addr(),
            dst,
            "reply comes from the address the client used"
        );
        assert_eq!(ip.dst_addr(), CLIENT);
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&dst.into(), &CLIENT.into()));
        assert_eq!((udp.src_port(), udp.dst_port()), (server.port(), 5000));
        assert_eq!(udp.payload(), b"hello udp");
    }
    assert_eq!(handle.stats().udp_flows_total, 2);
    // Another port of the same host is not released.
    inject
        .send(Bytes::from(wire::udp(
            CLIENT,
            5000,
            Ipv4Addr::LOCALHOST,
            9,
            b"x",
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handle.stats().dropped_not_released, 1);
}

#[tokio::test]
async fn icmp_echo_only_for_released_targets() {
    let (inject, mut out, handle) = forwarder(config(vec![t("icmp:127.0.0.1")], vec![]));
    inject
        .send(Bytes::from(wire::icmp_echo(
            CLIENT,
            "127.0.0.3".parse().unwrap(),
            7,
            1,
            b"nope",
            false,
        )))
        .await
        .unwrap();
    inject
        .send(Bytes::from(wire::icmp_echo(
            CLIENT,
            Ipv4Addr::LOCALHOST,
            7,
            2,
            b"ping data",
            false,
        )))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), out.recv()).await;
    let st = handle.stats();
    assert_eq!(st.dropped_not_released, 1);
    match reply {
        Ok(Some(p)) => {
            // The OS allows unprivileged ICMP sockets: a real echo reply came back.
            let expect = wire::icmp_echo(Ipv4Addr::LOCALHOST, CLIENT, 7, 2, b"ping data", true);
            let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
            let e = Ipv4Packet::new_checked(&expect[..]).unwrap();
            assert_eq!(ip.payload(), e.payload());
            assert_eq!(st.icmp_echo_answered, 1);
            eprintln!("ICMP echo answered through an ICMP socket");
        }
        _ => {
            // net.ipv4.ping_group_range excludes us: no reply is invented.
            assert_eq!(st.icmp_unavailable, 1, "{st:?}");
            eprintln!("no ICMP socket available here: echo dropped, not invented");
        }
    }
}

#[tokio::test]
async fn flow_limit_holds() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    let userver = udp_echo(Ipv4Addr::LOCALHOST).await;
    let mut cfg = config(
        vec![port_target("tcp", server), port_target("udp", userver)],
        vec![],
    );
    cfg.limits.max_flows = 4;
    let (inject, _out, handle) = forwarder(cfg);
    for i in 0..3 {
        inject
            .send(Bytes::from(wire::tcp_syn(
                CLIENT,
                41000 + i,
                Ipv4Addr::LOCALHOST,
                server.port(),
            )))
            .await
            .unwrap();
    }
    for i in 0..3 {
        inject
            .send(Bytes::from(wire::udp(
                CLIENT,
                42000 + i,
                Ipv4Addr::LOCALHOST,
                userver.port(),
                b"u",
            )))
            .await
            .unwrap();
    }
    // A retransmitted SYN of an existing flow is not a new flow.
    inject
        .send(Bytes::from(wire::tcp_syn(
            CLIENT,
            41000,
            Ipv4Addr::LOCALHOST,
            server.port(),
        )))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = handle.stats();
    assert_eq!(st.tcp_flows + st.udp_flows, 4, "{st:?}");
    assert_eq!(st.tcp_flows_total, 3);
    assert_eq!(st.udp_flows_total, 1);
    assert_eq!(st.dropped_too_many_flows, 2);
}

#[tokio::test]
async fn per_source_flow_limit_leaves_room_for_others() {
    let userver = udp_echo(Ipv4Addr::LOCALHOST).await;
    let mut cfg = config(vec![port_target("udp", userver)], vec![]);
    cfg.allowed_sources = vec!["100.64.0.0/24".parse().unwrap()];
    cfg.limits.max_flows = 10;
    cfg.limits.max_flows_per_source = 3;
    let (inject, _out, handle) = forwarder(cfg);
    let other: Ipv4Addr = "100.64.0.3".parse().unwrap();
    for i in 0..5 {
        inject
            .send(Bytes::from(wire::udp(
                CLIENT,
                43000 + i,
                Ipv4Addr::LOCALHOST,
                userver.port(),
                b"u",
            )))
            .await
            .unwrap();
    }
    for i in 0..2 {
        inject
            .send(Bytes::from(wire::udp(
                other,
                43000 + i,
                Ipv4Addr::LOCALHOST,
                userver.port(),
                b"u",
            )))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = handle.stats();
    assert_eq!(st.udp_flows_total, 5, "{st:?}");
    assert_eq!(st.dropped_too_many_flows, 2);
}

#[tokio::test]
async fn random_packets_never_panic() {
    let server = udp_echo(Ipv4Addr::LOCALHOST).await;
    let (tcp_server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (inject, mut out, handle) = forwarder(config(
        vec![
            port_target("udp", server),
            port_target("tcp", tcp_server),
            t("icmp:127.0.0.1"),
        ],
        vec![],
    ));
    let templates = [
        wire::udp(
            CLIENT,
            5000,
            Ipv4Addr::LOCALHOST,
            server.port(),
            b"0123456789",
        ),
        wire::tcp_syn(CLIENT, 5001, Ipv4Addr::LOCALHOST, tcp_server.port()),
        wire::icmp_echo(CLIENT, Ipv4Addr::LOCALHOST, 1, 1, b"abc", false),
    ];
    let mut n = 0u64;
    for i in 0..6000u32 {
        let p: Vec<u8> = if i % 2 == 0 {
            let len = rand::random::<usize>() % 1500;
            let mut v: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            if let Some(b) = v.first_mut() {
                *b = 0x45; // mostly IPv4-looking
            }
            v
        } else {
            let mut v = templates[i as usize % 3].clone();
            for _ in 0..1 + rand::random::<usize>() % 4 {
                let at = rand::random::<usize>() % v.len();
                v[at] = rand::random();
            }
            if rand::random::<bool>() {
                let cut = rand::random::<usize>() % v.len();
                v.truncate(cut);
            }
            v
        };
        n += 1;
        inject.send(Bytes::from(p)).await.unwrap();
        while out.try_recv().is_ok() {}
    }
    // Still alive and forwarding.
    inject
        .send(Bytes::from(wire::udp(
            CLIENT,
            6000,
            Ipv4Addr::LOCALHOST,
            server.port(),
            b"alive",
        )))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = tokio::time::timeout_at(deadline, out.recv())
            .await
            .expect("no reply after fuzzing")
            .unwrap();
        if let Ok(ip) = Ipv4Packet::new_checked(&p[..])
            && ip.next_header() == IpProtocol::Udp
            && let Ok(u) = UdpPacket::new_checked(ip.payload())
            && u.dst_port() == 6000
        {
            assert_eq!(u.payload(), b"alive");
            break;
        }
    }
    assert_eq!(handle.stats().packets_in, n + 1);
}

#[tokio::test]
async fn policy_update_cuts_existing_flows() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, handle) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let mut s = dialer.connect(server).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    handle.update_config(vec![], vec![], vec!["100.64.0.2/32".parse().unwrap()]);
    // The edge resets the connection: the client sees the end of the stream.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "connection not cut");
    assert_eq!(handle.stats().flows_revoked, 1);
    // New connections are refused by the edge even if the client still tries.
    let mut st = handle.stats().dropped_not_released;
    for _ in 0..50 {
        if st > 0 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), dialer.connect(server)).await;
        st = handle.stats().dropped_not_released;
    }
    assert!(st > 0);
}

#[tokio::test]
async fn lan_refusal_resets_the_client() {
    // A released port where nothing listens.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    let (dialer, handle) = link(
        config(vec![port_target("tcp", closed)], vec![]),
        vec![port_target("tcp", closed)],
    );
    // The edge connects to the LAN before it answers the SYN: the client is refused.
    let e = tokio::time::timeout(Duration::from_secs(5), dialer.connect(closed))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let st = handle.stats();
    assert_eq!(st.lan_connect_failed, 1);
    assert_eq!(st.tcp_flows, 0);
    // Through SOCKS5 that is reply 0x05 (connection refused).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(servers::socks5_on(l, dialer));
    let SocketAddr::V4(c) = closed else { panic!() };
    assert_eq!(socks_connect(proxy, c).await, 0x05);
}

/// Data the LAN sends after the client's FIN still reaches the client (half-close).
#[tokio::test]
async fn half_close_both_ways() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // until the client's FIN
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let (dialer, _) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    let mut s = dialer.connect(server).await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, "got 100000 bytes");
}

/// Datagrams from the LAN that are not replies of the target (another port) are never
/// emitted; idle UDP flows end.
#[tokio::test]
async fn udp_only_replies_and_idle_timeout() {
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let taddr = target.local_addr().unwrap();
    let mut cfg = config(vec![port_target("udp", taddr)], vec![]);
    cfg.limits.udp_idle = Duration::from_millis(300);
    let (inject, mut out, handle) = forwarder(cfg);
    inject
        .send(Bytes::from(wire::udp(
            CLIENT,
            5000,
            Ipv4Addr::LOCALHOST,
            taddr.port(),
            b"q",
        )))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let (_, edge) = tokio::time::timeout(Duration::from_secs(5), target.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // Another LAN socket sends to the edge's flow socket: the kernel drops it (connected).
    let intruder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    intruder.send_to(b"unsolicited", edge).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        out.try_recv().is_err(),
        "an unsolicited datagram was emitted"
    );
    // The real reply goes through.
    target.send_to(b"a", edge).await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wire::addrs(&p), Some((Ipv4Addr::LOCALHOST, CLIENT)));
    assert_eq!(handle.stats().udp_flows, 1);
    // Idle: the flow ends and is reclaimed.
    let mut flows = 1;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        flows = handle.stats().udp_flows;
        if flows == 0 {
            break;
        }
    }
    assert_eq!(flows, 0);
}

/// TCP through a link that loses packets still delivers every byte in order.
#[tokio::test]
async fn tcp_survives_packet_loss() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (fwd, _handle) = Forwarder::new(config(vec![port_target("tcp", server)], vec![]));
    let dialer = Dialer::new(CLIENT, vec![port_target("tcp", server)]);
    let (a_tx, mut a_rx) = mpsc::channel::<Bytes>(1024);
    let (b_tx, mut b_rx) = mpsc::channel::<Bytes>(1024);
    let (fa_tx, fa_rx) = mpsc::channel(1024);
    let (fb_tx, fb_rx) = mpsc::channel(1024);
    // Lossy relays: drop 1 packet in 100 each way (deterministically).
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(p) = a_rx.recv().await {
            n += 1;
            if n % 100 != 37 {
                let _ = fa_tx.try_send(p);
            }
        }
    });
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(p) = b_rx.recv().await {
            n += 1;
            if n % 100 != 53 {
                let _ = fb_tx.try_send(p);
            }
        }
    });
    tokio::spawn(fwd.run(fa_rx, b_tx));
    tokio::spawn(dialer.clone().run(fb_rx, a_tx));
    let s = dialer.connect(server).await.unwrap();
    let data = pattern(1024 * 1024);
    let got = tokio::time::timeout(Duration::from_secs(40), echo_roundtrip(s, data.clone()))
        .await
        .expect("transfer over a lossy link timed out");
    assert!(got == data, "echo differs");
}

/// A narrow, slow tunnel (channels of 4, a consumer that pauses) exercises the transmit
/// back-pressure: smoltcp keeps the data instead of dropping it, nothing stalls.
#[tokio::test]
async fn tcp_through_a_narrow_slow_link() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (fwd, handle) = Forwarder::new(config(vec![port_target("tcp", server)], vec![]));
    let dialer = Dialer::new(CLIENT, vec![port_target("tcp", server)]);
    let (a_tx, mut a_rx) = mpsc::channel::<Bytes>(4);
    let (b_tx, mut b_rx) = mpsc::channel::<Bytes>(4);
    let (fa_tx, fa_rx) = mpsc::channel(4);
    let (fb_tx, fb_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(p) = a_rx.recv().await {
            n += 1;
            if n.is_multiple_of(64) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if fa_tx.send(p).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(p) = b_rx.recv().await {
            if fb_tx.send(p).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(fwd.run(fa_rx, b_tx));
    tokio::spawn(dialer.clone().run(fb_rx, a_tx));
    let s = dialer.connect(server).await.unwrap();
    let data = pattern(1024 * 1024);
    let got = tokio::time::timeout(Duration::from_secs(40), echo_roundtrip(s, data.clone()))
        .await
        .expect("transfer over a narrow link timed out");
    assert!(got == data, "echo differs");
    assert_eq!(handle.stats().dropped_queue_full, 0);
}

/// The client stack survives hostile input from the tunnel too.
#[tokio::test]
async fn dialer_survives_random_packets() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (fwd, _) = Forwarder::new(config(vec![port_target("tcp", server)], vec![]));
    let dialer = Dialer::new(CLIENT, vec![port_target("tcp", server)]);
    let (a_tx, a_rx) = mpsc::channel::<Bytes>(1024);
    let (b_tx, mut b_rx) = mpsc::channel::<Bytes>(1024);
    let (d_tx, d_rx) = mpsc::channel::<Bytes>(1024);
    // Everything the edge sends, plus random garbage, reaches the dialer.
    let noise = d_tx.clone();
    tokio::spawn(async move {
        while let Some(p) = b_rx.recv().await {
            let _ = d_tx.send(p).await;
        }
    });
    tokio::spawn(fwd.run(a_rx, b_tx));
    tokio::spawn(dialer.clone().run(d_rx, a_tx));
    let mut s = dialer.connect(server).await.unwrap();
    let SocketAddr::V4(sv4) = server else {
        panic!()
    };
    let local_port = s.local_addr().port();
    for i in 0..3000u32 {
        let p = if i % 2 == 0 {
            let n = rand::random::<usize>() % 1500;
            (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>()
        } else {
            // Well-formed TCP SYNs at the dialer's own connection and port.
            wire::tcp_syn(
                *sv4.ip(),
                sv4.port(),
                CLIENT,
                local_port.wrapping_add((i % 3) as u16),
            )
        };
        noise.send(Bytes::from(p)).await.unwrap();
    }
    s.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    // A forged in-window segment may legitimately reset that connection; either way the
    // stack itself must live on.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await;
    drop(s);
    let s2 = dialer.connect(server).await.unwrap();
    let got = echo_roundtrip(s2, b"fresh".to_vec()).await;
    assert_eq!(got, b"fresh");
}

/// Closed connections are reclaimed on both stacks (no socket or flow leak).
#[tokio::test]
async fn closed_flows_are_reclaimed() {
    let (server, _) = tcp_echo(Ipv4Addr::LOCALHOST).await;
    let (dialer, handle) = link(
        config(vec![port_target("tcp", server)], vec![]),
        vec![port_target("tcp", server)],
    );
    for i in 0..40u32 {
        let s = dialer.connect(server).await.unwrap();
        let msg = format!("conn {i}");
        assert_eq!(
            echo_roundtrip(s, msg.clone().into_bytes()).await,
            msg.as_bytes()
        );
    }
    let mut left = (u64::MAX, usize::MAX);
    for _ in 0..50 {
        left = (handle.stats().tcp_flows, dialer.connections());
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, (0, 0), "flows/sockets left over");
    assert_eq!(handle.stats().tcp_flows_total, 40);
}
