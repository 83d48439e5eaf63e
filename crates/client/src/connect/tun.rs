//! TUN mode (kernel, root): a `drawbridge-tun` interface whose only routes are
//! the released targets of the active devices, and the loop that moves its
//! packets to and from the tunnel. The routes follow the session's device list
//! afterwards (`Live::apply` through the returned `TunRoutes`).

use super::Result;
use crate::Error;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Inner MTU of the TUN interface: room for WireGuard's 80 bytes of overhead (IPv6
/// outer header) within a 1500-byte path, as wg-quick does.
const TUN_MTU: u16 = 1420;

/// Brings up the TUN interface with routes to the released targets only and
/// moves packets between it and the tunnel channels. Returns the handle that
/// changes its routes and the task; dropping the device (task aborted) removes
/// interface and routes.
pub(super) async fn tun_mode(
    overlay: std::net::Ipv4Addr,
    routes: &[drawbridge_proto::Target],
    mut from_tunnel: mpsc::Receiver<Bytes>,
    to_tunnel: mpsc::Sender<Bytes>,
) -> Result<(drawbridge_tun::TunRoutes, tokio::task::JoinHandle<()>)> {
    let prefixes: Vec<ipnet::IpNet> = routes.iter().map(|t| t.address).collect();
    let dev = drawbridge_tun::TunDevice::create(&drawbridge_tun::TunConfig {
        name: None,
        address: overlay,
        mtu: TUN_MTU,
        routes: prefixes.clone(),
    })
    .await
    .map_err(|e| Error::user(format!("TUN mode: {e}")))?;
    let name = dev.name().to_string();
    let handle = dev.routes();
    let shown: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    eprintln!(
        "TUN interface {name} up as {overlay}; routes: {}",
        if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        }
    );
    let task = tokio::spawn(async move {
        let mut rx = drawbridge_tun::RecvBatch::default();
        let mut tx = drawbridge_tun::SendBatch::default();
        loop {
            tokio::select! {
                n = dev.recv_batch(&mut rx) => match n {
                    Ok(_) => {
                        if !hand_over(rx.packets(), &to_tunnel).await {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("reading the TUN interface failed: {e}");
                        return;
                    }
                },
                p = from_tunnel.recv() => match p {
                    Some(p) => {
                        tx.push(&p);
                        while !tx.is_full() {
                            let Ok(p) = from_tunnel.try_recv() else { break };
                            tx.push(&p);
                        }
                        // A packet the kernel refuses is lost like on a wire.
                        let _ = dev.send_batch(&mut tx).await;
                    }
                    None => return,
                },
            }
        }
    });
    Ok((handle, task))
}

/// Hands one read's packets (up to a 64 KiB super-packet's ~45 segments) to the
/// tunnel, waiting for room instead of dropping: while the tunnel's queue is full
/// the TUN interface is not read, so the kernel's queue holds what the sender's TCP
/// writes next (and slows it) instead of a run of consecutive segments being lost,
/// each run a retransmission burst. The tunnel's driver empties this queue even
/// while its own application queue is full, so the wait always ends. False once the
/// tunnel is gone.
async fn hand_over<'a>(
    packets: impl Iterator<Item = &'a [u8]>,
    to_tunnel: &mpsc::Sender<Bytes>,
) -> bool {
    for p in packets {
        if to_tunnel.send(Bytes::copy_from_slice(p)).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_larger_than_the_tunnels_free_queue_waits_and_loses_nothing() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let packets: Vec<Vec<u8>> = (0..45u8).map(|i| vec![i; 1380]).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(p) = rx.recv().await {
                got.push(p[0]);
                // A tunnel busier than the TUN reader.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            got
        });
        assert!(hand_over(packets.iter().map(|p| p.as_slice()), &tx).await);
        drop(tx);
        let got = reader.await.unwrap();
        assert_eq!(got, (0..45u8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_closed_tunnel_ends_the_hand_over() {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        drop(rx);
        let p = [0u8; 20];
        assert!(!hand_over(std::iter::once(&p[..]), &tx).await);
    }
}
