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
                        for p in rx.packets() {
                            let _ = to_tunnel.try_send(Bytes::copy_from_slice(p));
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
