//! The one loop that drives a smoltcp stack against a tunnel, for both sides: the
//! edge's [`crate::Forwarder`] and the client's [`crate::Dialer`] differ only in what
//! they do with an inbound packet, which packets may leave, and (the forwarder)
//! wake-ups of their own.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::stack::Shared;

/// Inbound packets handled per driver turn (the first one plus those already queued).
const BATCH: usize = 64;
/// How often closed sockets are reclaimed.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What one side of the tunnel adds to [`run`].
pub(crate) trait Side {
    /// A wake-up of the side's own (never resolves for a side that has none).
    type Wake;
    /// One packet from the tunnel.
    fn inbound(&mut self, packet: Bytes);
    /// The side's next own wake-up.
    fn wake(&mut self) -> impl Future<Output = Self::Wake> + Send;
    fn on_wake(&mut self, wake: Self::Wake);
    /// Every [`SWEEP_EVERY`]: reclaim closed sockets and idle flows.
    fn sweep(&mut self);
    /// Sends what smoltcp has for the tunnel; true when the tunnel had no room.
    fn egress(&mut self, to_tunnel: &mpsc::Sender<Bytes>) -> bool;
}

/// Moves packets between the stack and the tunnel until `from_tunnel` closes: up to
/// [`BATCH`] inbound packets per turn, then smoltcp's output, which waits for room
/// in `to_tunnel` (smoltcp keeps the data) instead of dropping or spinning.
pub(crate) async fn run<S: Side>(
    shared: &Shared,
    side: &mut S,
    mut from_tunnel: mpsc::Receiver<Bytes>,
    to_tunnel: &mpsc::Sender<Bytes>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut blocked = false;
    loop {
        let mut delay = shared.poll_delay();
        if blocked {
            // smoltcp wants to send now but the tunnel is full: wait for room
            // (the reserve branch) instead of spinning on a zero delay.
            delay = delay.max(Duration::from_millis(20));
        }
        tokio::select! {
            p = from_tunnel.recv() => {
                let Some(p) = p else { break };
                side.inbound(p);
                for _ in 1..BATCH {
                    match from_tunnel.try_recv() {
                        Ok(p) => side.inbound(p),
                        Err(_) => break,
                    }
                }
            }
            w = side.wake() => side.on_wake(w),
            _ = shared.notify.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            p = to_tunnel.reserve(), if blocked => { drop(p); }
            _ = sweep.tick() => side.sweep(),
        }
        blocked = side.egress(to_tunnel);
    }
}
