//! Two engines under the tokio driver on 127.0.0.1 reach each other directly (no relay).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_testnet::sim::{numbered_packet, overlay_ip, packet_seq};
use drawbridge_tunnel::driver::{DriverConfig, DriverEvent, Tunnel, TunnelIo};
use drawbridge_tunnel::engine::{IpNet, NodeConfig, Path, PeerConfig};
use tokio::sync::mpsc;

fn key(seed: u8) -> [u8; 32] {
    [seed; 32]
}

fn public(seed: u8) -> [u8; 32] {
    drawbridge_tunnel::keys::public_key(&key(seed))
}

/// A driver on 127.0.0.1 with peer `other` (overlay host `1 - index`).
fn config(me: u8, other: u8, index: usize, queue: usize) -> DriverConfig {
    DriverConfig {
        node: NodeConfig {
            private_key: key(me),
            stun_servers: vec![],
            local_addrs: vec![],
            seed: None,
        },
        bind: "127.0.0.1:0".parse().unwrap(),
        relays: vec![],
        peers: vec![PeerConfig {
            public_key: public(other),
            allowed_ips: vec![IpNet::new(IpAddr::V4(overlay_ip(1 - index)), 32)],
            relay: None,
            persistent_keepalive: None,
            bridged: false,
        }],
        queue,
    }
}

async fn start(me: u8, other: u8, index: usize) -> (Tunnel, TunnelIo) {
    Tunnel::start(config(me, other, index, 256)).await.unwrap()
}

/// Forwards signals between the two (the control plane's job).
async fn pump_signals(
    a: &Tunnel,
    a_io: &mut TunnelIo,
    b: &Tunnel,
    b_io: &mut TunnelIo,
    a_key: [u8; 32],
    b_key: [u8; 32],
) {
    while let Ok(ev) = a_io.events.try_recv() {
        if let DriverEvent::Signal { signal, .. } = ev {
            b.signal(a_key, signal).await.unwrap();
        }
    }
    while let Ok(ev) = b_io.events.try_recv() {
        if let DriverEvent::Signal { signal, .. } = ev {
            a.signal(b_key, signal).await.unwrap();
        }
    }
}

#[tokio::test]
async fn two_drivers_on_loopback_exchange_data_directly() {
    let (a, mut a_io) = start(1, 2, 0).await;
    let (b, mut b_io) = start(2, 1, 1).await;
    let (ka, kb) = (public(1), public(2));
    until_direct((&a, &mut a_io, ka), (&b, &mut b_io, kb)).await;
    for seq in 0..50u32 {
        a.send_ip(numbered_packet(0, 1, seq)).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let (from, p) = tokio::time::timeout(Duration::from_secs(5), b_io.incoming.recv())
            .await
            .expect("packets arrive")
            .unwrap();
        assert_eq!(from, ka);
        got.push(packet_seq(&p).unwrap());
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // And back.
    b.send_ip(numbered_packet(1, 0, 7)).await.unwrap();
    let (_, p) = tokio::time::timeout(Duration::from_secs(5), a_io.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(packet_seq(&p), Some(7));
    let st = b.stats(ka).await.unwrap().unwrap();
    assert_eq!(st.path, Path::Direct(a.local_addr()));
    assert!(
        a.local_signal()
            .await
            .unwrap()
            .candidates
            .contains(&a.local_addr())
    );
    assert!(st.rx_bytes > 0 && st.tx_bytes > 0);
}

#[tokio::test]
async fn a_packet_from_a_source_outside_allowed_ips_is_not_delivered() {
    let (a, mut a_io) = start(3, 4, 0).await;
    let (b, mut b_io) = start(4, 3, 1).await;
    until_direct((&a, &mut a_io, public(3)), (&b, &mut b_io, public(4))).await;
    // Spoofed inner source (host index 5 is not A's allowed address at B).
    let mut spoof = numbered_packet(5, 1, 1);
    spoof[16..20].copy_from_slice(&overlay_ip(1).octets());
    a.send_ip(spoof).await.unwrap();
    a.send_ip(numbered_packet(0, 1, 2)).await.unwrap();
    let (_, p) = tokio::time::timeout(Duration::from_secs(5), b_io.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        packet_seq(&p),
        Some(2),
        "the spoofed packet must have been dropped"
    );
}

#[tokio::test]
async fn a_driver_bound_to_the_unspecified_address_offers_its_route_address_as_candidate() {
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (t, _io) = Tunnel::start(DriverConfig {
        node: NodeConfig {
            private_key: key(9),
            stun_servers: vec![stun.local_addr().unwrap()],
            local_addrs: vec![],
            seed: None,
        },
        bind: "0.0.0.0:0".parse().unwrap(),
        relays: vec![],
        peers: vec![],
        queue: 16,
    })
    .await
    .unwrap();
    let port = t.local_addr().port();
    let want: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(t.local_signal().await.unwrap().candidates.contains(&want));
}

/// A driver on the application's own channels ([`Tunnel::start_with_app`]) for peer
/// `other`, and an [`TunnelIo`] whose `incoming` stays empty (packets go to the app).
async fn start_app(
    me: u8,
    other: u8,
    index: usize,
    queue: usize,
) -> (Tunnel, TunnelIo, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    let (app_tx, from_app) = mpsc::channel::<Bytes>(queue);
    let (to_app, app_rx) = mpsc::channel::<Bytes>(queue);
    let (t, events) = Tunnel::start_with_app(config(me, other, index, queue), from_app, to_app)
        .await
        .unwrap();
    let (_, incoming) = mpsc::channel(1);
    (t, TunnelIo { incoming, events }, app_tx, app_rx)
}

/// Waits until `a` reaches `b` directly.
async fn until_direct(
    (a, a_io, ka): (&Tunnel, &mut TunnelIo, [u8; 32]),
    (b, b_io, kb): (&Tunnel, &mut TunnelIo, [u8; 32]),
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        pump_signals(a, a_io, b, b_io, ka, kb).await;
        if matches!(a.stats(kb).await.unwrap().unwrap().path, Path::Direct(_)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no direct path");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A driver fed by the application's own channels (the session tunnels of the client
/// and the edge): it reads packets straight from `from_app`, delivers decrypted ones
/// straight into `to_app`, refuses `try_send_ip` (nothing else may inject packets) and
/// stops when the application's sending side is gone.
#[tokio::test]
async fn a_driver_on_the_applications_channels_moves_packets_without_a_task_between() {
    let (a, mut a_io) = start(5, 6, 0).await;
    let (b, mut b_io, app_tx, mut app_rx) = start_app(6, 5, 1, 64).await;
    until_direct((&a, &mut a_io, public(5)), (&b, &mut b_io, public(6))).await;
    for seq in 0..20u32 {
        a.send_ip(numbered_packet(0, 1, seq)).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let p = tokio::time::timeout(Duration::from_secs(5), app_rx.recv())
            .await
            .expect("packets reach the application's channel")
            .unwrap();
        got.push(packet_seq(&p).unwrap());
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    // The application's channel carries packets into the tunnel.
    app_tx
        .send(Bytes::from(numbered_packet(1, 0, 9)))
        .await
        .unwrap();
    let (from, p) = tokio::time::timeout(Duration::from_secs(5), a_io.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from, packet_seq(&p)), (public(6), Some(9)));
    // Only the application's channel feeds this driver.
    assert!(b.try_send_ip(numbered_packet(1, 0, 10)).is_err());
    assert!(b.send_ip(numbered_packet(1, 0, 11)).await.is_err());
    // The application closed its side: the driver stops (commands fail).
    drop(app_tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.stats(public(5)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the driver outlived the application's channel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// More packets than the application's queue holds arrive while the application is
/// briefly busy: the driver leaves them in the socket until there is room instead of
/// decrypting them only to drop them (which the sender's TCP would see as losses).
#[tokio::test]
async fn a_briefly_busy_application_gets_every_packet_in_order() {
    const QUEUE: usize = 256;
    const SENT: u32 = QUEUE as u32 + 100;
    let (a, mut a_io) = start(7, 8, 0).await;
    let (b, mut b_io, _app_tx, mut app_rx) = start_app(8, 7, 1, QUEUE).await;
    until_direct((&a, &mut a_io, public(7)), (&b, &mut b_io, public(8))).await;
    for seq in 0..SENT {
        a.send_ip(numbered_packet(0, 1, seq)).await.unwrap();
    }
    // Busy for a while, but less than the driver's patience (STALL, 20 ms).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut got = Vec::new();
    while got.len() < SENT as usize {
        let p = tokio::time::timeout(Duration::from_secs(5), app_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {SENT} packets arrived", got.len()))
            .unwrap();
        got.push(packet_seq(&p).unwrap());
    }
    assert_eq!(got, (0..SENT).collect::<Vec<_>>());
}

/// An application that stopped reading does not stall the tunnel: after a short wait
/// the driver reads on (and drops what does not fit), so handshakes and keepalives
/// still get through.
#[tokio::test]
async fn an_application_that_stopped_reading_does_not_stall_the_tunnel() {
    let (a, mut a_io) = start(9, 10, 0).await;
    let (b, mut b_io, _app_tx, _app_rx) = start_app(10, 9, 1, 64).await;
    until_direct((&a, &mut a_io, public(9)), (&b, &mut b_io, public(10))).await;
    let sent = 1000u32;
    for seq in 0..sent {
        a.send_ip(numbered_packet(0, 1, seq)).await.unwrap();
        if seq % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // B's engine went on reading the socket although nobody takes its packets.
    let per_packet = 32; // the inner packet's bytes
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rx = b.stats(public(9)).await.unwrap().unwrap().rx_bytes;
        if rx >= u64::from(sent) * per_packet {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B stalled behind its full queue: {rx} bytes read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An application queue smaller than one wake-up's batch still gets its packets (the
/// driver waits for the whole queue, not for more room than it can ever have).
#[tokio::test]
async fn a_queue_smaller_than_a_batch_still_delivers() {
    let (a, mut a_io) = start(11, 12, 0).await;
    let (b, mut b_io, _app_tx, mut app_rx) = start_app(12, 11, 1, 16).await;
    until_direct((&a, &mut a_io, public(11)), (&b, &mut b_io, public(12))).await;
    for seq in 0..40u32 {
        a.send_ip(numbered_packet(0, 1, seq)).await.unwrap();
        let p = tokio::time::timeout(Duration::from_secs(5), app_rx.recv())
            .await
            .expect("delivered")
            .unwrap();
        assert_eq!(packet_seq(&p), Some(seq));
    }
}
