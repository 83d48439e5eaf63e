//! Throughput of a TCP transfer Dialer → Forwarder → loopback server, back to back over
//! in-memory channels (no WireGuard). `cargo run --release -p drawbridge-netstack
//! --example bench [MEGABYTES]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use drawbridge_netstack::{Dialer, Forwarder, ForwarderConfig, Limits};
use drawbridge_proto::model::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let total = mb * 1024 * 1024;

    // LAN server: for each connection, the first byte says upload (0: read and discard,
    // then answer one byte) or download (1: send `total` bytes).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                s.read_exact(&mut mode).await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                if mode[0] == 0 {
                    let mut n = 0;
                    while n < total {
                        let r = s.read(&mut buf).await.unwrap();
                        if r == 0 {
                            break;
                        }
                        n += r;
                    }
                    s.write_all(&[1]).await.unwrap();
                } else {
                    let mut n = 0;
                    while n < total {
                        let k = buf.len().min(total - n);
                        s.write_all(&buf[..k]).await.unwrap();
                        n += k;
                    }
                    s.shutdown().await.unwrap();
                }
            });
        }
    });

    let target: Target = format!("tcp:{}:{}", server.ip(), server.port())
        .parse()
        .unwrap();
    let client = Ipv4Addr::new(100, 64, 0, 2);
    // The "LAN device" is a server on 127.0.0.1.
    drawbridge_netstack::policy::allow_loopback_lan();
    let (fwd, handle) = Forwarder::new(ForwarderConfig {
        local_ip: Ipv4Addr::new(100, 64, 0, 1),
        targets: vec![target.clone()],
        nat: vec![],
        allowed_sources: vec!["100.64.0.2/32".parse().unwrap()],
        limits: Limits::default(),
    });
    let dialer = Dialer::new(client, vec![target]);
    let (a_tx, a_rx) = mpsc::channel(1024);
    let (b_tx, b_rx) = mpsc::channel(1024);
    tokio::spawn(fwd.run(a_rx, b_tx));
    tokio::spawn(dialer.clone().run(b_rx, a_tx));

    let up = upload(&dialer, server, total).await;
    let down = download(&dialer, server, total).await;
    println!(
        "upload   (client → LAN): {mb} MiB in {up:.2} s = {:.1} MiB/s",
        mb as f64 / up
    );
    println!(
        "download (LAN → client): {mb} MiB in {down:.2} s = {:.1} MiB/s",
        mb as f64 / down
    );
    println!("{:?}", handle.stats());
}

async fn upload(dialer: &Dialer, server: SocketAddr, total: usize) -> f64 {
    let mut s = dialer.connect(server).await.unwrap();
    let start = Instant::now();
    s.write_all(&[0]).await.unwrap();
    let buf = vec![0x5au8; 64 * 1024];
    let mut n = 0;
    while n < total {
        let k = buf.len().min(total - n);
        s.write_all(&buf[..k]).await.unwrap();
        n += k;
    }
    let mut done = [0u8; 1];
    s.read_exact(&mut done).await.unwrap();
    start.elapsed().as_secs_f64()
}

async fn download(dialer: &Dialer, server: SocketAddr, total: usize) -> f64 {
    let mut s = dialer.connect(server).await.unwrap();
    let start = Instant::now();
    s.write_all(&[1]).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let r = s.read(&mut buf).await.unwrap();
        if r == 0 {
            break;
        }
        n += r;
    }
    assert_eq!(n, total);
    start.elapsed().as_secs_f64()
}
