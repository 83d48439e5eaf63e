//! A dialer whose tunnel went away: `Dialer::close` ends the connections in
//! flight at once and refuses new ones, also when the task that pumped its
//! packets was aborted rather than left to notice the closed channels (the
//! server's browser peer stops that way when a session ends). The "LAN device"
//! is a server on 127.0.0.1 that accepts and never answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use drawbridge_netstack::forwarder::{ForwarderConfig, Limits};
use drawbridge_netstack::{Dialer, Forwarder};
use drawbridge_proto::model::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const EDGE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// A device that accepts connections, reads what it is sent and never answers.
async fn silent_device() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn closing_a_dialer_whose_pump_was_aborted_ends_its_connections_and_refuses_new_ones() {
    drawbridge_netstack::policy::allow_loopback_lan();
    let device = silent_device().await;
    let target: Target = format!("tcp:{}:{}", device.ip(), device.port())
        .parse()
        .unwrap();
    let (fwd, _handle) = Forwarder::new(ForwarderConfig {
        local_ip: EDGE,
        targets: vec![target.clone()],
        nat: vec![],
        allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        limits: Limits::default(),
    });
    let dialer = Dialer::new(CLIENT, vec![target]);
    let (a_tx, a_rx) = mpsc::channel(1024);
    let (b_tx, b_rx) = mpsc::channel(1024);
    tokio::spawn(fwd.run(a_rx, b_tx));
    let pump = tokio::spawn(dialer.clone().run(b_rx, a_tx));

    let mut stream = dialer.connect(device).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // A reader waits for the answer that will never come.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.is_finished(), "the device never answers");

    // The tunnel goes away the abrupt way: the pump is aborted, then the dialer closed.
    pump.abort();
    dialer.close();
    // Generous bound: only a reader left hanging would reach it.
    let read = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the pending read ended when the dialer closed")
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a closed dialer's connection gives no data: {read:?}"
    );
    let e = dialer.connect(device).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected, "{e}");
}
