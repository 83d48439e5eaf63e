//! Throughput bench (not a test): prints packets/s and Gbit/s of
//! 1. WireGuard encapsulate + decapsulate through two engines in one process, and
//! 2. relay forwarding of data frames over WebSocket on loopback.
//!
//! Run: `cargo run --release -p drawbridge-testnet --bin drawbridge-bench -- [packets]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drawbridge_relay::token::{self, Claims, SigningKey};
use drawbridge_relay::{RelayConfig, RelayState, router};
use drawbridge_tunnel::engine::{Node, NodeConfig, Output, Path, PeerConfig};
use drawbridge_tunnel::frame::Frame;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PAYLOAD: usize = 1380;

fn report(what: &str, packets: u64, bytes: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what}: {packets} packets of {PAYLOAD} B in {:.3} s = {:.0} packets/s, {:.3} Gbit/s",
        secs,
        packets as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e9
    );
}

fn ip_packet(seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Moves every output of `from` into `to` (UDP and relay alike); returns delivered packets.
fn pump(from: &mut Node, from_addr: SocketAddr, to: &mut Node, now: Instant) -> u64 {
    let mut delivered = 0;
    let mut outs = Vec::new();
    while let Some(o) = from.poll_output() {
        outs.push(o);
    }
    for o in outs {
        match o {
            Output::Udp { payload, .. } => to.handle_udp(now, from_addr, &payload),
            Output::Relay { frame, .. } => {
                let mut f = frame;
                let src = from.public_key();
                if drawbridge_tunnel::frame::rewrite_data_source(&mut f, &src).is_ok() {
                    to.handle_relay_frame(now, 0, &f);
                }
            }
            Output::Signal { signal, .. } => to.handle_signal(now, &from.public_key(), signal),
            Output::Deliver { .. } => delivered += 1,
            Output::Event(_) => {}
        }
    }
    delivered
}

fn bench_engine(n: u64) {
    let t0 = Instant::now();
    let a_addr: SocketAddr = "127.0.0.1:1".parse().expect("literal");
    let b_addr: SocketAddr = "127.0.0.1:2".parse().expect("literal");
    let mk = |k: u8, addr| {
        Node::new(
            NodeConfig {
                private_key: [k; 32],
                stun_servers: vec![],
                local_addrs: vec![addr],
                seed: Some(u64::from(k)),
            },
            t0,
        )
    };
    let mut a = mk(1, a_addr);
    let mut b = mk(2, b_addr);
    let (ka, kb) = (a.public_key(), b.public_key());
    let peer = |k| PeerConfig {
        public_key: k,
        allowed_ips: vec![],
        relay: Some(0),
        persistent_keepalive: None,
        bridged: false,
    };
    a.add_peer(t0, peer(kb)).expect("peer");
    b.add_peer(t0, peer(ka)).expect("peer");
    // Let them find the direct path (virtual time, instant).
    let mut now = t0;
    for _ in 0..100 {
        now += Duration::from_millis(50);
        a.handle_timeout(now);
        b.handle_timeout(now);
        pump(&mut a, a_addr, &mut b, now);
        pump(&mut b, b_addr, &mut a, now);
        if matches!(a.peer_stats(&kb).map(|s| s.path), Some(Path::Direct(_))) {
            break;
        }
    }
    now += Duration::from_secs(1);
    a.handle_timeout(now);
    pump(&mut a, a_addr, &mut b, now);
    let packets: Vec<Vec<u8>> = (0..64).map(ip_packet).collect();
    let start = Instant::now();
    let mut delivered = 0;
    for i in 0..n {
        let _ = a.send_ip_to(now, &kb, &packets[(i % 64) as usize]);
        pump(&mut a, a_addr, &mut b, now);
        delivered += pump(&mut b, b_addr, &mut a, now);
    }
    let elapsed = start.elapsed();
    let path = a.peer_stats(&kb).map(|s| s.path);
    println!("engine path during the bench: {path:?}");
    report(
        "engine encapsulate+decapsulate (one core)",
        delivered,
        delivered * PAYLOAD as u64,
        elapsed,
    );
}

async fn bench_relay(n: u64) {
    let (key, _) = SigningKey::generate().expect("key");
    let mut cfg = RelayConfig::new(key.verifying_key());
    cfg.send_queue = 4096;
    let state = RelayState::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 600;
    let (ka, kb) = ([0xA; 32], [0xB; 32]);
    let connect = |me: [u8; 32], other: [u8; 32]| {
        let tok = token::issue(
            &key,
            &Claims {
                session_id: "bench".into(),
                peer: me,
                allowed_peers: vec![other],
                expires_at: exp,
                bridge: false,
            },
        )
        .expect("token");
        async move {
            let mut req = format!("ws://{addr}/relay/v1")
                .into_client_request()
                .expect("url");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {tok}").parse().expect("header"),
            );
            tokio_tungstenite::connect_async(req)
                .await
                .expect("connect")
                .0
        }
    };
    let a = connect(ka, kb).await;
    let mut b = connect(kb, ka).await;
    while state.stats().connections < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = Arc::new(AtomicU64::new(0));
    let rx_count = received.clone();
    let receiver = tokio::spawn(async move {
        while rx_count.load(Ordering::Relaxed) < n {
            match b.next().await {
                Some(Ok(Message::Binary(_))) => {
                    rx_count.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    let frame = Frame::Data {
        peer: kb,
        payload: &ip_packet(0),
    }
    .encode()
    .expect("frame");
    let frame = bytes_of(frame);
    let start = Instant::now();
    let (mut sink, _stream) = a.split();
    for i in 0..n {
        // Window of 1024 frames in flight, so the relay never sees a slow receiver.
        while i.saturating_sub(received.load(Ordering::Relaxed)) > 1024 {
            tokio::task::yield_now().await;
        }
        if sink.feed(Message::Binary(frame.clone())).await.is_err() {
            break;
        }
        if i % 64 == 0 {
            let _ = sink.flush().await;
        }
    }
    let _ = sink.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), receiver).await;
    let elapsed = start.elapsed();
    let got = received.load(Ordering::Relaxed);
    report(
        "relay forwarding over WebSocket on loopback",
        got,
        got * PAYLOAD as u64,
        elapsed,
    );
    server.abort();
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    bench_engine(n);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(bench_relay(n));
}
