//! Kernel forwarding mode (`drawbridge-edge run --tun`, root only).
//!
//! Instead of the userspace stack, the clients' packets go through one TUN
//! interface and the host's kernel forwards them to the LAN (full kernel TCP
//! speed, any protocol the policy releases). The agent still decides every
//! packet in userspace first: only what the session's policy releases is
//! written to the TUN, with its source moved into the session's own address
//! block and its destination to the real LAN address (see
//! `drawbridge_netstack::rewrite`). An nftables table of our own then
//! masquerades it towards the LAN, lets back only replies (connection
//! tracking), and never lets anything from the LAN or the edge host start a
//! connection to a client. The table, the interface and its route go away when
//! the agent stops; IPv4 forwarding, if the agent had to turn it on, is turned
//! off again and was limited to our interface meanwhile.

use anyhow::Context;
use bytes::Bytes;
use drawbridge_netstack::rewrite::{self, MAPPED_NET, SLOTS};
use drawbridge_netstack::{ForwarderStats, PacketCounters, Policy};
use drawbridge_tun::{RecvBatch, SendBatch};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

const FORWARD_SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
/// Our nftables table.
const TABLE: &str = "drawbridge_edge";
/// What `netstack::policy::never_forwarded` refuses, as an nftables set: this
/// network, the overlay, loopback, link-local, multicast, reserved and broadcast.
const NEVER_FORWARDED: &str =
    "{ 0.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 }";
/// The TUN's own (link-local) address; clients' packets never use it.
const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);

struct Slot {
    policy: Arc<RwLock<Policy>>,
    to_tunnel: mpsc::Sender<Bytes>,
    counters: Arc<PacketCounters>,
}

struct Inner {
    tun: Arc<drawbridge_tun::TunDevice>,
    slots: Mutex<Vec<Option<Slot>>>,
    /// The task reading replies from the TUN; it holds only a weak reference, so
    /// dropping the last `Gateway` stops it and cleans up at once.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    table: String,
    restore_forwarding: bool,
}

impl Inner {
    /// A packet the kernel routed into the TUN (a reply from the LAN): to the session
    /// its destination's slot names, if that session's policy lets it through.
    fn reply(&self, packet: &[u8]) {
        let Some(slot) = rewrite::slot_of(packet) else {
            return;
        };
        let target = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.get(usize::from(slot)).and_then(|s| {
                s.as_ref()
                    .map(|s| (s.policy.clone(), s.to_tunnel.clone(), s.counters.clone()))
            })
        };
        let Some((policy, to_tunnel, counters)) = target else {
            return;
        };
        let out = {
            let p = policy.read().unwrap_or_else(|e| e.into_inner());
            rewrite::to_client(&p, packet)
        };
        if let Some(out) = out {
            counters.outbound(1);
            let _ = to_tunnel.try_send(Bytes::from(out));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
        let _ = nft(&format!("delete table ip {}\n", self.table));
        if self.restore_forwarding {
            let _ = std::fs::write(FORWARD_SYSCTL, "0\n");
        }
    }
}

/// The edge's kernel path: one TUN interface shared by every session.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Runs `nft -f -` with `rules` (no shell; the text holds only our interface name).
fn nft(rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables for kernel mode)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The ruleset for interface `tun` (a kernel-chosen `tunN` name).
fn ruleset(table: &str, tun: &str, isolate_forwarding: bool) -> String {
    let (net, len) = MAPPED_NET;
    // When forwarding was off before us, it stays off for everything but our interface.
    let others = if isolate_forwarding {
        format!("    iifname != \"{tun}\" oifname != \"{tun}\" drop\n")
    } else {
        String::new()
    };
    // Behind the userspace check (`Policy::released`), the kernel refuses the same
    // never-forwarded destinations, and never routes one session's packet into another.
    let never = NEVER_FORWARDED;
    format!(
        "table ip {table} {{\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority -10; policy accept;\n\
         \x20   iifname \"{tun}\" oifname \"{tun}\" drop\n\
         \x20   iifname \"{tun}\" ip daddr {never} drop\n\
         \x20   iifname \"{tun}\" ip saddr {net}/{len} accept\n\
         \x20   iifname \"{tun}\" drop\n\
         \x20   oifname \"{tun}\" ct state established,related accept\n\
         \x20   oifname \"{tun}\" drop\n\
         {others}\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority -10; policy accept;\n\
         \x20   iifname \"{tun}\" ip daddr {never} drop\n\
         \x20 }}\n\
         \x20 chain output {{\n\
         \x20   type filter hook output priority -10; policy accept;\n\
         \x20   oifname \"{tun}\" ct state established,related accept\n\
         \x20   oifname \"{tun}\" drop\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority 100; policy accept;\n\
         \x20   iifname \"{tun}\" oifname != \"{tun}\" masquerade\n\
         \x20 }}\n\
         }}\n"
    )
}

impl Gateway {
    /// Creates the TUN interface, its route and the nftables table.
    pub async fn start() -> anyhow::Result<Gateway> {
        anyhow::ensure!(
            drawbridge_tun::have_privileges(),
            "kernel mode (--tun) needs root (CAP_NET_ADMIN) and /dev/net/tun"
        );
        let (net, len) = MAPPED_NET;
        let tun = drawbridge_tun::TunDevice::create(&drawbridge_tun::TunConfig {
            name: None,
            address: TUN_ADDR,
            mtu: 1420,
            routes: vec![ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(net, len).context("mapped prefix")?,
            )],
        })
        .await?;
        let name = tun.name().to_string();
        anyhow::ensure!(
            drawbridge_tun::valid_name(&name),
            "unexpected interface name {name:?}"
        );
        // One table per host, so a crashed agent's rules are replaced at the next start.
        let table = TABLE.to_string();
        let was_on = std::fs::read_to_string(FORWARD_SYSCTL)
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        // Our own table; an old one of the same name (a crash) is replaced.
        let _ = nft(&format!("delete table ip {table}\n"));
        nft(&ruleset(&table, &name, !was_on))?;
        if !was_on {
            std::fs::write(FORWARD_SYSCTL, "1\n").context("turning on IPv4 forwarding")?;
        }
        tracing::info!(interface = %name, "kernel forwarding mode");
        let tun = Arc::new(tun);
        let inner = Arc::new(Inner {
            tun: tun.clone(),
            slots: Mutex::new((0..SLOTS).map(|_| None).collect()),
            table,
            restore_forwarding: !was_on,
            reader: Mutex::new(None),
        });
        // Replies from the LAN: find the session by the destination's slot.
        let weak = Arc::downgrade(&inner);
        let reader = tokio::spawn(async move {
            let mut batch = RecvBatch::default();
            loop {
                if let Err(e) = tun.recv_batch(&mut batch).await {
                    tracing::warn!(error = %e, "reading the TUN interface");
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                for packet in batch.packets() {
                    inner.reply(packet);
                }
            }
        });
        *inner.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        Ok(Gateway { inner })
    }

    /// The TUN interface's name.
    pub fn interface(&self) -> &str {
        self.inner.tun.name()
    }

    /// Attaches a session: its packets from the tunnel (`from_tunnel`) go to the
    /// LAN as the policy allows, replies go to `to_tunnel`. The slot is free again
    /// when the returned task ends (it ends when `from_tunnel` closes).
    pub fn attach(
        &self,
        policy: Policy,
        mut from_tunnel: mpsc::Receiver<Bytes>,
        to_tunnel: mpsc::Sender<Bytes>,
    ) -> anyhow::Result<(KernelHandle, tokio::task::JoinHandle<()>)> {
        let policy = Arc::new(RwLock::new(policy));
        let counters = Arc::new(PacketCounters::default());
        let slot = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            let free = slots
                .iter()
                .position(Option::is_none)
                .context("every kernel-mode slot is in use")?;
            slots[free] = Some(Slot {
                policy: policy.clone(),
                to_tunnel,
                counters: counters.clone(),
            });
            u8::try_from(free).context("slot")?
        };
        let handle = KernelHandle {
            policy: policy.clone(),
            counters: counters.clone(),
        };
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            // Frees the slot however the task ends (also when aborted).
            struct Release(Arc<Inner>, u8);
            impl Drop for Release {
                fn drop(&mut self) {
                    let mut slots = self.0.slots.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = slots.get_mut(usize::from(self.1)) {
                        *s = None;
                    }
                }
            }
            let release = Release(inner, slot);
            let mut batch = SendBatch::default();
            while let Some(first) = from_tunnel.recv().await {
                let mut next = Some(first);
                while let Some(packet) = next.take() {
                    counters.inbound(packet.len());
                    let out = {
                        let p = policy.read().unwrap_or_else(|e| e.into_inner());
                        rewrite::to_lan(&p, slot, &packet)
                    };
                    match out {
                        Ok(out) => {
                            batch.push(&out);
                        }
                        Err(reason) => {
                            counters.dropped(reason);
                        }
                    }
                    if !batch.is_full() {
                        next = from_tunnel.try_recv().ok();
                    }
                }
                // A packet the kernel refuses is lost like on a wire.
                let _ = release.0.tun.send_batch(&mut batch).await;
            }
        });
        Ok((handle, task))
    }
}

/// One session's view of the kernel path: its policy and counters.
#[derive(Clone)]
pub struct KernelHandle {
    policy: Arc<RwLock<Policy>>,
    counters: Arc<PacketCounters>,
}

impl KernelHandle {
    pub fn update_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The same figures the userspace forwarder reports (flows are the kernel's).
    pub fn stats(&self) -> ForwarderStats {
        self.counters.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_only_lets_replies_towards_clients_and_isolates_forwarding_when_asked() {
        let r = ruleset(TABLE, "tun0", true);
        assert!(r.contains("oifname \"tun0\" ct state established,related accept"));
        assert!(r.contains("oifname \"tun0\" drop"));
        assert!(r.contains("iifname != \"tun0\" oifname != \"tun0\" drop"));
        assert!(r.contains("masquerade"));
        let r = ruleset(TABLE, "tun0", false);
        assert!(!r.contains("iifname != \"tun0\" oifname != \"tun0\" drop"));
        // One session's packets never come back into another; the never-forwarded
        // destinations are refused by the kernel too, routed or local.
        assert!(r.contains("iifname \"tun0\" oifname \"tun0\" drop"));
        assert_eq!(
            r.matches(&format!("ip daddr {NEVER_FORWARDED} drop"))
                .count(),
            2
        );
        for net in [
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "0.0.0.0/8",
        ] {
            assert!(NEVER_FORWARDED.contains(net));
            let first = net.split('/').next().unwrap().parse().unwrap();
            assert!(drawbridge_netstack::policy::never_forwarded(first));
        }
    }

    #[test]
    fn interface_names_are_checked_before_they_reach_a_ruleset() {
        assert!(drawbridge_tun::valid_name("tun0"));
        assert!(!drawbridge_tun::valid_name("tun0\"; flush"));
        assert!(!drawbridge_tun::valid_name(""));
    }
}
