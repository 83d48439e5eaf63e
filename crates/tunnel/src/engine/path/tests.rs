//! The path state machine on its own: no WireGuard, no node; time is passed in.

use super::*;

const A: &str = "192.0.2.10:51820";
const B: &str = "198.51.100.20:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn signal(cands: &[&str], nat: NatKind) -> Signal {
    Signal {
        candidates: cands.iter().map(|c| addr(c)).collect(),
        nat,
    }
}

/// A peer on relay 0 that knows candidate `A`.
fn agent(now: Instant) -> PathAgent {
    let mut a = PathAgent::new(now, Some(0), false);
    assert!(a.on_signal(now, signal(&[A], NatKind::Easy)));
    a
}

/// Ticks and answers nothing; returns the nonces of the UDP pings asked for (the node
/// would draw them; here they count up from `next`).
fn tick(a: &mut PathAgent, now: Instant, next: &mut u64) -> Vec<(u64, Option<SocketAddr>)> {
    let mut pings = Vec::new();
    for action in a.tick(now, NatKind::Easy) {
        let to = match action {
            Action::PingUdp(to) => Some(to),
            Action::PingRelay => None,
            Action::FellBack { .. } => continue,
        };
        *next += 1;
        a.ping_sent(now, *next, to);
        if to.is_none() {
            a.relay_ping_sent(now);
        }
        pings.push((*next, to));
    }
    pings
}

/// Brings `a` onto the direct path at `now`; returns the next free nonce.
fn go_direct(a: &mut PathAgent, now: Instant) -> u64 {
    let mut n = 0;
    let pings = tick(a, now, &mut n);
    let (nonce, _) = pings.iter().find(|(_, to)| *to == Some(addr(A))).unwrap();
    assert_eq!(
        a.on_pong(now, *nonce, Via::Udp(addr(A))),
        Some(Path::Direct(addr(A)))
    );
    n
}

fn data(n: u8) -> Vec<u8> {
    vec![4, 0, 0, 0, n]
}

#[test]
fn a_new_peer_starts_on_its_relay_and_pings_it_but_probes_nothing_without_candidates() {
    let now = Instant::now();
    let mut a = PathAgent::new(now, Some(0), false);
    assert_eq!(
        (a.path(), a.reason()),
        (Path::Relay, PathReason::AwaitingCandidates)
    );
    assert_eq!(a.tick(now, NatKind::Unknown), vec![Action::PingRelay]);
    assert_eq!(a.reason(), PathReason::AwaitingCandidates);
    // Not sent (no session yet): asked again on the next tick.
    assert_eq!(
        a.tick(now + TICK, NatKind::Unknown),
        vec![Action::PingRelay]
    );
    a.relay_ping_sent(now + TICK);
    assert_eq!(a.tick(now + TICK * 2, NatKind::Unknown), vec![]);
    let none = PathAgent::new(now, None, false);
    assert_eq!(
        (none.path(), none.reason()),
        (Path::None, PathReason::NoPath)
    );
}

#[test]
fn a_pong_from_the_pinged_address_switches_to_direct_and_one_from_elsewhere_does_not() {
    let now = Instant::now();
    let mut a = agent(now);
    let mut n = 0;
    let pings = tick(&mut a, now, &mut n);
    assert!(pings.contains(&(2, Some(addr(A)))), "{pings:?}");
    assert_eq!(a.reason(), PathReason::Probing);
    // The right nonce from another address, an unknown nonce, a pong over the relay: no.
    assert_eq!(a.on_pong(now, 2, Via::Udp(addr(B))), None);
    let pings = tick(&mut a, now + ms(500), &mut n);
    let nonce = pings.iter().find(|(_, to)| *to == Some(addr(A))).unwrap().0;
    assert_eq!(a.on_pong(now + ms(520), 999, Via::Udp(addr(A))), None);
    assert_eq!(a.on_pong(now + ms(520), nonce, Via::Relay), None);
    assert_eq!(a.path(), Path::Relay);
    // The same nonce was consumed by the relay "answer": a ping is answered once.
    let pings = tick(&mut a, now + ms(1000), &mut n);
    let nonce = pings.iter().find(|(_, to)| *to == Some(addr(A))).unwrap().0;
    assert_eq!(
        a.on_pong(now + ms(1020), nonce, Via::Udp(addr(A))),
        Some(Path::Direct(addr(A)))
    );
    assert_eq!((a.reason(), a.rtt()), (PathReason::DirectOk, Some(ms(20))));
}

#[test]
fn a_pong_older_than_the_ping_validity_is_ignored() {
    let now = Instant::now();
    let mut a = agent(now);
    let mut n = 0;
    let pings = tick(&mut a, now, &mut n);
    let nonce = pings.iter().find(|(_, to)| *to == Some(addr(A))).unwrap().0;
    assert_eq!(
        a.on_pong(now + PING_VALID + ms(1), nonce, Via::Udp(addr(A))),
        None
    );
    assert_eq!(a.path(), Path::Relay);
}

#[test]
fn after_an_upgrade_direct_packets_wait_until_the_relay_data_has_landed() {
    let t0 = Instant::now();
    let mut a = agent(t0);
    let mut n = 0;
    // The relay's RTT is 100 ms; the last data goes through it at t0 + 480 ms.
    let relay_ping = tick(&mut a, t0, &mut n)
        .iter()
        .find(|(_, to)| to.is_none())
        .unwrap()
        .0;
    assert_eq!(a.on_pong(t0 + ms(100), relay_ping, Via::Relay), None);
    assert!(matches!(
        a.route(t0 + ms(480), data(1), true),
        Routed::Send(Route::Relay { relay: 0, .. }, _)
    ));
    // A direct pong with a 20 ms RTT: hold = (100 - 20) / 2 + 5 = 45 ms after that packet.
    let pings = tick(&mut a, t0 + ms(500), &mut n);
    let nonce = pings.iter().find(|(_, to)| *to == Some(addr(A))).unwrap().0;
    let up = t0 + ms(520);
    assert_eq!(
        a.on_pong(up, nonce, Via::Udp(addr(A))),
        Some(Path::Direct(addr(A)))
    );
    assert_eq!(a.hold_until(), Some(t0 + ms(525)));
    assert_eq!(a.route(up, data(2), true), Routed::Held);
    assert_eq!(a.route(up + ms(1), data(3), true), Routed::Held);
    assert_eq!(a.flush_hold(t0 + ms(524)), None);
    assert_eq!(
        a.flush_hold(t0 + ms(525)),
        Some((addr(A), vec![data(2), data(3)]))
    );
    assert_eq!(a.hold_until(), None);
    assert_eq!(
        a.route(t0 + ms(526), data(4), true),
        Routed::Send(Route::Udp(addr(A)), data(4))
    );
}

#[test]
fn an_upgrade_before_the_relays_pong_measures_the_relay_at_once_and_holds_only_that_long() {
    let t0 = Instant::now();
    let mut a = agent(t0);
    // Data went through the relay; the relay ping of the first tick is lost.
    assert!(matches!(
        a.route(t0, data(0), true),
        Routed::Send(Route::Relay { relay: 0, .. }, _)
    ));
    let mut n = go_direct(&mut a, t0 + ms(10));
    assert_eq!(a.hold_until(), Some(t0 + HOLD_MAX), "a guessed hold");
    assert_eq!(a.route(t0 + ms(10), data(1), true), Routed::Held);
    // The node is woken at once for a relay ping (not at its next tick).
    assert_eq!(a.wake_at(), Some(t0 + ms(10)));
    let pings = tick(&mut a, t0 + ms(10), &mut n);
    let relay_ping = pings
        .iter()
        .find(|(_, to)| to.is_none())
        .expect("a relay ping")
        .0;
    // Its pong (a 4 ms round trip) shrinks the hold to (4 - 0) / 2 + 5 ms after the data.
    assert_eq!(a.on_pong(t0 + ms(14), relay_ping, Via::Relay), None);
    assert_eq!(a.hold_until(), Some(t0 + ms(7)));
    assert_eq!(a.flush_hold(t0 + ms(14)), Some((addr(A), vec![data(1)])));
    // Measured: no more relay pings on the direct path, no early wake-ups.
    assert_eq!(a.wake_at(), None);
    assert!(
        tick(&mut a, t0 + ms(200), &mut n)
            .iter()
            .all(|(_, to)| to.is_some())
    );
}

#[test]
fn without_data_on_the_relay_an_upgrade_holds_nothing() {
    let now = Instant::now();
    let mut a = agent(now);
    go_direct(&mut a, now);
    assert_eq!(a.hold_until(), None);
    assert_eq!(
        a.route(now, data(1), true),
        Routed::Send(Route::Udp(addr(A)), data(1))
    );
}

#[test]
fn the_hold_queue_is_bounded() {
    let now = Instant::now();
    let mut a = agent(now);
    assert!(matches!(a.route(now, data(0), true), Routed::Send(..)));
    go_direct(&mut a, now);
    assert!(a.hold_until().is_some());
    for _ in 0..HOLD_QUEUE {
        assert_eq!(a.route(now, data(1), true), Routed::Held);
    }
    assert_eq!(a.route(now, data(1), true), Routed::Dropped);
}

#[test]
fn a_silent_direct_path_falls_back_to_the_relay_and_re_sends_what_went_direct() {
    let t0 = Instant::now();
    let mut a = agent(t0);
    let mut n = go_direct(&mut a, t0);
    // Keepalive pings go every second; nobody answers.
    assert_eq!(
        tick(&mut a, t0 + ms(1000), &mut n),
        vec![(n, Some(addr(A)))]
    );
    for i in 0..3 {
        a.route(t0 + ms(2000 + i), data(i as u8), true);
    }
    // A handshake (not data) is not kept for re-sending.
    a.route(t0 + ms(2100), vec![1; 148], false);
    let mut fell = None;
    let mut t = t0 + ms(1000);
    while fell.is_none() {
        t += TICK;
        for action in a.tick(t, NatKind::Easy) {
            if let Action::FellBack {
                path,
                reason,
                replay,
            } = action
            {
                fell = Some((t, path, reason, replay));
            }
        }
    }
    let (t, path, reason, replay) = fell.unwrap();
    assert!(
        t > t0 + DIRECT_TIMEOUT && t <= t0 + DIRECT_TIMEOUT + TICK,
        "{:?}",
        t - t0
    );
    assert_eq!((path, reason), (Path::Relay, PathReason::DirectLost));
    assert_eq!(replay, vec![data(0), data(1), data(2)]);
    assert_eq!(
        (a.path(), a.reason()),
        (Path::Relay, PathReason::DirectLost)
    );
    // Probing starts again after a pause; the reason stays "lost" through the fast rounds.
    assert!(a.next_probe.is_some_and(|p| p > t));
}

#[test]
fn a_handshake_initiation_on_the_relay_also_goes_to_the_candidates_data_does_not() {
    let now = Instant::now();
    let mut a = agent(now);
    let init = vec![1; HANDSHAKE_INIT_LEN];
    assert_eq!(
        a.route(now, init.clone(), false),
        Routed::Send(
            Route::Relay {
                relay: 0,
                also: vec![addr(A)]
            },
            init
        )
    );
    assert_eq!(
        a.route(now, data(1), true),
        Routed::Send(
            Route::Relay {
                relay: 0,
                also: vec![]
            },
            data(1)
        )
    );
}

#[test]
fn without_relay_or_direct_path_handshakes_fan_out_and_data_is_dropped() {
    let now = Instant::now();
    let mut a = PathAgent::new(now, None, false);
    assert_eq!(a.route(now, vec![1; 148], false), Routed::Dropped);
    a.on_signal(now, signal(&[A, B], NatKind::Easy));
    assert_eq!(
        a.route(now, vec![1; 148], false),
        Routed::Send(Route::Fanout(vec![addr(A), addr(B)]), vec![1; 148])
    );
    assert_eq!(a.route(now, data(1), true), Routed::Dropped);
}

#[test]
fn unanswered_probing_ends_with_a_reason_that_says_why() {
    let t0 = Instant::now();
    let cases = [
        (NatKind::Easy, NatKind::Easy, PathReason::NoDirectAnswer),
        (
            NatKind::Hard,
            NatKind::Hard,
            PathReason::SymmetricNatBothSides,
        ),
        (NatKind::Easy, NatKind::UdpBlocked, PathReason::UdpBlocked),
        (NatKind::UdpBlocked, NatKind::Easy, PathReason::UdpBlocked),
    ];
    for (local, remote, want) in cases {
        let mut a = PathAgent::new(t0, Some(0), false);
        a.on_signal(t0, signal(&[A], remote));
        let mut t = t0;
        for _ in 0..100 {
            a.tick(t, local);
            t += TICK;
        }
        assert_eq!(a.reason(), want, "local {local:?}, remote {remote:?}");
        assert_eq!(a.path(), Path::Relay);
    }
}

#[test]
fn candidates_are_bounded_deduplicated_and_unusable_ones_dropped() {
    let now = Instant::now();
    let mut a = PathAgent::new(now, Some(0), false);
    let mut cands: Vec<String> = vec!["0.0.0.0:1".into(), "192.0.2.1:0".into(), A.into(), A.into()];
    cands.extend((1..20).map(|i| format!("192.0.2.{i}:9")));
    let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    a.on_signal(now, signal(&refs, NatKind::Easy));
    let pinged: Vec<SocketAddr> = a
        .tick(now, NatKind::Easy)
        .into_iter()
        .filter_map(|x| match x {
            Action::PingUdp(to) => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(pinged.len(), MAX_CANDIDATES);
    assert_eq!(pinged[0], addr(A));
    assert!(!pinged[1..].contains(&addr(A)));
}

#[test]
fn outstanding_pings_are_bounded() {
    let now = Instant::now();
    let mut a = agent(now);
    for i in 0..(MAX_PENDING_PINGS as u64 * 3) {
        a.ping_sent(now + ms(i), i, Some(addr(A)));
    }
    assert_eq!(a.pings.len(), MAX_PENDING_PINGS);
    // The oldest went first.
    assert!(!a.pings.contains_key(&0));
    assert!(a.pings.contains_key(&(MAX_PENDING_PINGS as u64 * 3 - 1)));
}

#[test]
fn a_ping_from_an_unknown_address_is_probed_back_once() {
    let now = Instant::now();
    let mut a = agent(now);
    assert!(a.should_probe(addr(B)));
    a.ping_sent(now, 7, Some(addr(B)));
    assert!(!a.should_probe(addr(B)));
}

#[test]
fn a_bridged_peer_is_never_pinged_probed_or_given_candidates() {
    let now = Instant::now();
    let mut a = PathAgent::new(now, Some(3), true);
    assert_eq!((a.path(), a.reason()), (Path::Relay, PathReason::Bridged));
    assert!(!a.on_signal(now, signal(&[A], NatKind::Easy)));
    assert_eq!(a.probe_relay(), None);
    for i in 0..50 {
        assert_eq!(a.tick(now + TICK * i, NatKind::Easy), vec![]);
    }
    // Nowhere to send until the client has written through the bridge.
    assert_eq!(a.route(now, data(1), true), Routed::Dropped);
    assert!(a.bridge_endpoint(9));
    assert!(!a.bridge_endpoint(9));
    assert_eq!(
        a.route(now, data(1), true),
        Routed::Send(Route::Bridge { relay: 3, tag: 9 }, data(1))
    );
    // Another relay: the tag meant nothing there.
    a.set_relay(now, Some(4));
    assert_eq!(a.route(now, data(1), true), Routed::Dropped);
}

#[test]
fn moving_to_no_relay_leaves_the_relay_path() {
    let now = Instant::now();
    let mut a = agent(now);
    a.set_relay(now, None);
    assert_eq!(a.path(), Path::None);
    a.set_relay(now, Some(2));
    assert_eq!(a.path(), Path::Relay);
    assert!(matches!(
        a.route(now, data(1), true),
        Routed::Send(Route::Relay { relay: 2, .. }, _)
    ));
}
