//! The node's outputs, in two queues that never share a bound: transmits (datagrams, relay
//! frames, packets for the application) and control (events, and the candidate signals the
//! control plane must carry). A flood of data can fill the first; it can never push a signal
//! or an event out of the second.

use std::collections::{BTreeMap, VecDeque};

use super::{Event, MAX_PEERS, Output, PeerId, Signal};

/// Most transmits queued before new ones are dropped (counted).
pub(super) const MAX_TRANSMITS: usize = 8192;
/// Most events queued before new ones are dropped (counted); signals are not events.
const MAX_EVENTS: usize = 4 * MAX_PEERS;

#[derive(Default)]
pub(super) struct Outbox {
    transmits: VecDeque<Output>,
    events: VecDeque<Event>,
    /// Peers with a signal to send, in order, and the latest signal of each: a newer
    /// signal replaces a queued one (only the latest candidates matter), so this holds at
    /// most one per peer and is never full.
    signal_order: VecDeque<PeerId>,
    signals: BTreeMap<PeerId, Signal>,
    dropped: u64,
}

impl Outbox {
    /// Queues a datagram, relay frame or delivery; dropped when the queue is full.
    pub fn transmit(&mut self, o: Output) {
        debug_assert!(matches!(
            o,
            Output::Udp { .. } | Output::Relay { .. } | Output::Deliver { .. }
        ));
        if self.transmits.len() >= MAX_TRANSMITS {
            self.dropped += 1;
            return;
        }
        self.transmits.push_back(o);
    }

    pub fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.dropped += 1;
            return;
        }
        self.events.push_back(e);
    }

    /// Queues `signal` for `peer`, replacing one still queued for it.
    pub fn signal(&mut self, peer: PeerId, signal: Signal) {
        if self.signals.insert(peer, signal).is_none() {
            self.signal_order.push_back(peer);
        }
    }

    /// Forgets what is queued for a peer that is gone (its signal).
    pub fn forget_peer(&mut self, peer: &PeerId) {
        if self.signals.remove(peer).is_some() {
            self.signal_order.retain(|p| p != peer);
        }
    }

    /// Control first (events, then signals), then transmits in the order they were queued.
    pub fn pop(&mut self) -> Option<Output> {
        if let Some(e) = self.events.pop_front() {
            return Some(Output::Event(e));
        }
        while let Some(peer) = self.signal_order.pop_front() {
            if let Some(signal) = self.signals.remove(&peer) {
                return Some(Output::Signal { peer, signal });
            }
        }
        self.transmits.pop_front()
    }

    /// Everything queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.transmits.len() + self.events.len() + self.signals.len()
    }

    /// Outputs dropped because their queue was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NatKind;

    fn udp(n: u8) -> Output {
        Output::Udp {
            dst: "192.0.2.1:9".parse().unwrap(),
            payload: vec![n],
        }
    }

    fn signal(port: u16) -> Signal {
        Signal {
            candidates: vec![std::net::SocketAddr::from(([192, 0, 2, 2], port))],
            nat: NatKind::Easy,
        }
    }

    #[test]
    fn a_full_transmit_queue_drops_transmits_but_never_a_signal_or_an_event() {
        let mut o = Outbox::default();
        for i in 0..MAX_TRANSMITS + 10 {
            o.transmit(udp(i as u8));
        }
        assert_eq!(o.dropped(), 10);
        o.signal([1; 32], signal(1));
        o.event(Event::HandshakeCompleted { peer: [1; 32] });
        assert_eq!(
            o.pop(),
            Some(Output::Event(Event::HandshakeCompleted { peer: [1; 32] }))
        );
        assert_eq!(
            o.pop(),
            Some(Output::Signal {
                peer: [1; 32],
                signal: signal(1)
            })
        );
        assert_eq!(o.pop(), Some(udp(0)));
    }

    #[test]
    fn a_newer_signal_replaces_the_queued_one_for_the_same_peer() {
        let mut o = Outbox::default();
        o.signal([1; 32], signal(1));
        o.signal([2; 32], signal(2));
        o.signal([1; 32], signal(3));
        let got: Vec<Output> = std::iter::from_fn(|| o.pop()).collect();
        assert_eq!(
            got,
            vec![
                Output::Signal {
                    peer: [1; 32],
                    signal: signal(3)
                },
                Output::Signal {
                    peer: [2; 32],
                    signal: signal(2)
                },
            ]
        );
        o.signal([4; 32], signal(4));
        o.forget_peer(&[4; 32]);
        assert_eq!(o.pop(), None);
    }

    #[test]
    fn transmits_keep_their_order() {
        let mut o = Outbox::default();
        for i in 0..5 {
            o.transmit(udp(i));
        }
        let got: Vec<Output> = std::iter::from_fn(|| o.pop()).collect();
        assert_eq!(got, (0..5).map(udp).collect::<Vec<_>>());
    }
}
