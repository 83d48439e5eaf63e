//! Deterministic simulated-network tests of the engine: NAT matrix, path changes, ordering,
//! roaming and relay restart. Virtual time only; no sockets.

use std::time::Duration;

use drawbridge_testnet::sim::{LinkConfig, NatType, Sim, numbered_packet, packet_seq};
use drawbridge_tunnel::engine::{Event, Path, PathReason};

use NatType::*;

const ALL: [NatType; 5] = [
    None,
    EndpointIndependent,
    AddressDependent,
    Symmetric,
    UdpBlocked,
];

fn hard(n: NatType) -> bool {
    matches!(n, AddressDependent | Symmetric)
}

/// Where hole punching can work in the model: neither side blocks UDP, and at least one
/// side keeps one mapping for every destination (or has no NAT).
fn direct_expected(a: NatType, b: NatType) -> bool {
    a != UdpBlocked && b != UdpBlocked && !(hard(a) && hard(b))
}

fn seqs(sim: &Sim, host: usize) -> Vec<u32> {
    sim.delivered(host)
        .iter()
        .filter_map(|p| packet_seq(p))
        .collect()
}

#[test]
fn nat_matrix_goes_direct_where_hole_punching_can_work_and_stays_on_relay_otherwise() {
    let mut failures = Vec::new();
    for a in &ALL {
        for b in &ALL {
            let mut sim = Sim::new(7, [*a, *b], LinkConfig::default());
            sim.send_ip(0, &numbered_packet(0, 1, 1));
            sim.send_ip(1, &numbered_packet(1, 0, 2));
            sim.run_for(Duration::from_secs(12));
            sim.send_ip(0, &numbered_packet(0, 1, 3));
            sim.send_ip(1, &numbered_packet(1, 0, 4));
            sim.run_for(Duration::from_secs(1));
            if seqs(&sim, 1) != vec![1, 3] || seqs(&sim, 0) != vec![2, 4] {
                failures.push(format!(
                    "{a:?}/{b:?}: data did not flow: {:?} {:?}",
                    seqs(&sim, 0),
                    seqs(&sim, 1)
                ));
            }
            for host in 0..2 {
                let st = sim.stats(host);
                let direct = matches!(st.path, Path::Direct(_));
                if direct != direct_expected(*a, *b) {
                    failures.push(format!(
                        "{a:?}/{b:?} host {host}: path {} ({})",
                        st.path, st.reason
                    ));
                    continue;
                }
                let want_reason = if direct {
                    PathReason::DirectOk
                } else if *a == UdpBlocked || *b == UdpBlocked {
                    PathReason::UdpBlocked
                } else {
                    PathReason::SymmetricNatBothSides
                };
                if st.reason != want_reason {
                    failures.push(format!(
                        "{a:?}/{b:?} host {host}: reason {:?}, want {want_reason:?}",
                        st.reason
                    ));
                }
                if st.last_handshake.is_none() || st.tx_bytes == 0 || st.rx_bytes == 0 {
                    failures.push(format!("{a:?}/{b:?} host {host}: stats not filled: {st:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn first_packet_arrives_through_the_relay_in_well_under_a_second() {
    let mut sim = Sim::new(1, [Symmetric, Symmetric], LinkConfig::default());
    sim.send_ip(0, &numbered_packet(0, 1, 1));
    sim.run_for(Duration::from_millis(300));
    assert_eq!(seqs(&sim, 1), vec![1]);
    assert_eq!(sim.stats(0).path, Path::Relay);
}

#[test]
fn numbered_stream_arrives_complete_and_in_order_across_relay_to_direct_upgrade() {
    let mut sim = Sim::new(
        3,
        [EndpointIndependent, EndpointIndependent],
        LinkConfig::default(),
    );
    sim.stream(0, 0, 300, Duration::from_millis(5));
    sim.run_for(Duration::from_secs(1));
    let got = seqs(&sim, 1);
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    assert!(matches!(sim.stats(0).path, Path::Direct(_)));
    // The upgrade happened while the stream was running, not before it.
    let upgraded_at = sim
        .events(0)
        .iter()
        .find_map(|(t, e)| match e {
            Event::PathChanged {
                path: Path::Direct(_),
                ..
            } => Some(*t),
            _ => Option::None,
        })
        .expect("upgraded to direct");
    assert!(
        upgraded_at < Duration::from_millis(1400),
        "upgrade at {upgraded_at:?}"
    );
}

#[test]
fn numbered_stream_arrives_complete_and_in_order_across_direct_to_relay_fallback() {
    let mut sim = Sim::new(
        4,
        [EndpointIndependent, EndpointIndependent],
        LinkConfig::default(),
    );
    sim.run_for(Duration::from_secs(3));
    assert!(matches!(sim.stats(0).path, Path::Direct(_)));
    sim.stream(0, 0, 50, Duration::from_millis(20));
    // The direct path dies silently: host 1's network starts dropping all UDP.
    sim.set_nat(1, UdpBlocked);
    sim.stream(0, 50, 300, Duration::from_millis(20));
    sim.run_for(Duration::from_secs(1));
    let st = sim.stats(0);
    assert_eq!(st.path, Path::Relay);
    assert_eq!(st.reason, PathReason::DirectLost);
    assert_eq!(seqs(&sim, 1), (0..350).collect::<Vec<_>>());
}

#[test]
fn roaming_peer_is_followed_to_its_new_address_within_the_rekey_timeout() {
    let mut sim = Sim::new(
        5,
        [EndpointIndependent, EndpointIndependent],
        LinkConfig::default(),
    );
    sim.run_for(Duration::from_secs(3));
    let Path::Direct(before) = sim.stats(1).path else {
        panic!("not direct: {:?}", sim.stats(1));
    };
    sim.rebind_nat(0);
    // Host 0 keeps talking; host 1 must follow it to its new public port.
    sim.stream(0, 0, 100, Duration::from_millis(50));
    let Path::Direct(after) = sim.stats(1).path else {
        panic!("host 1 lost the direct path: {:?}", sim.stats(1));
    };
    assert_ne!(before, after, "host 1 still sends to the old address");
    assert_eq!(seqs(&sim, 1), (0..100).collect::<Vec<_>>());
    let roamed_at = sim
        .events(1)
        .iter()
        .filter_map(|(t, e)| match e {
            Event::PathChanged {
                path: Path::Direct(a),
                ..
            } if *a == after => Some(*t),
            _ => Option::None,
        })
        .next()
        .expect("path change to the new address");
    assert!(
        roamed_at < Duration::from_secs(3 + 5),
        "roamed at {roamed_at:?}"
    );
    // And the reverse direction works again.
    sim.send_ip(1, &numbered_packet(1, 0, 9));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(seqs(&sim, 0), vec![9]);
}

#[test]
fn relay_restart_is_recovered_within_the_wireguard_timers() {
    let mut sim = Sim::new(6, [Symmetric, Symmetric], LinkConfig::default());
    sim.stream(0, 0, 10, Duration::from_millis(100));
    assert_eq!(seqs(&sim, 1).len(), 10);
    sim.set_relay_up(false);
    sim.stream(0, 10, 50, Duration::from_millis(100));
    sim.run_for(Duration::from_secs(60));
    sim.set_relay_up(true);
    let restarted = sim.elapsed();
    let before = seqs(&sim, 1).len();
    assert_eq!(before, 10, "nothing crosses a dead relay");
    for seq in 100..200 {
        sim.send_ip(0, &numbered_packet(0, 1, seq));
        sim.run_for(Duration::from_millis(100));
        if seqs(&sim, 1).len() > before {
            break;
        }
    }
    let recovered = sim.elapsed() - restarted;
    // REKEY_TIMEOUT (5 s) plus jitter bounds a handshake retry.
    assert!(
        recovered <= Duration::from_millis(5_500),
        "recovered after {recovered:?}"
    );
    assert_eq!(sim.stats(0).path, Path::Relay);
}

#[test]
fn direct_path_is_found_despite_packet_loss() {
    let link = LinkConfig {
        loss: 0.2,
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(8, [EndpointIndependent, Symmetric], link);
    sim.run_for(Duration::from_secs(10));
    assert!(
        matches!(sim.stats(0).path, Path::Direct(_)),
        "{:?}",
        sim.stats(0)
    );
    assert!(
        matches!(sim.stats(1).path, Path::Direct(_)),
        "{:?}",
        sim.stats(1)
    );
    sim.stream(0, 0, 100, Duration::from_millis(10));
    let got = seqs(&sim, 1);
    assert!(got.len() >= 60, "only {} of 100 arrived", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "reordered: {got:?}");
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    let run = || {
        let mut sim = Sim::new(
            9,
            [EndpointIndependent, AddressDependent],
            LinkConfig::default(),
        );
        sim.stream(0, 0, 50, Duration::from_millis(50));
        (
            format!("{:?}", sim.events(0)),
            format!("{:?}", sim.events(1)),
            seqs(&sim, 1),
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn rtt_and_byte_counters_are_reported() {
    let mut sim = Sim::new(10, [EndpointIndependent, None], LinkConfig::default());
    sim.stream(0, 0, 20, Duration::from_millis(200));
    let st = sim.stats(0);
    assert!(matches!(st.path, Path::Direct(_)));
    // Direct RTT is two 10 ms hops in the model.
    assert_eq!(st.rtt, Some(Duration::from_millis(20)));
    assert!(st.tx_bytes >= 20 * 32);
    assert!(sim.stats(1).rx_bytes >= 20 * 32);
}

#[test]
fn direct_path_forms_even_when_the_relay_is_down_from_the_start() {
    let mut sim = Sim::new(
        11,
        [EndpointIndependent, AddressDependent],
        LinkConfig::default(),
    );
    sim.set_relay_up(false);
    sim.run_for(Duration::from_secs(8));
    assert!(
        matches!(sim.stats(0).path, Path::Direct(_)),
        "{:?}",
        sim.stats(0)
    );
    sim.stream(0, 0, 20, Duration::from_millis(20));
    sim.stream(1, 100, 20, Duration::from_millis(20));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(seqs(&sim, 1), (0..20).collect::<Vec<_>>());
    assert_eq!(seqs(&sim, 0), (100..120).collect::<Vec<_>>());
}

#[test]
fn losing_the_relay_does_not_disturb_a_direct_path() {
    let mut sim = Sim::new(12, [None, Symmetric], LinkConfig::default());
    sim.run_for(Duration::from_secs(3));
    assert!(matches!(sim.stats(1).path, Path::Direct(_)));
    sim.set_relay_up(false);
    sim.stream(1, 0, 200, Duration::from_millis(25));
    assert_eq!(seqs(&sim, 0), (0..200).collect::<Vec<_>>());
    assert!(matches!(sim.stats(1).path, Path::Direct(_)));
}

#[test]
fn stun_tells_easy_from_symmetric_nat_and_blocked_udp() {
    use drawbridge_tunnel::NatKind;
    let cases = [
        (None, NatKind::Open),
        (EndpointIndependent, NatKind::Easy),
        (AddressDependent, NatKind::Hard),
        (Symmetric, NatKind::Hard),
        (UdpBlocked, NatKind::UdpBlocked),
    ];
    for (nat, want) in cases {
        let mut sim = Sim::new(13, [nat, EndpointIndependent], LinkConfig::default());
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.node(0).nat(), want, "{nat:?}");
        // The peer learned it through the signalling channel.
        assert_eq!(sim.stats(1).remote_nat, want, "{nat:?}");
    }
}

#[test]
fn streams_in_both_directions_stay_in_order_across_the_upgrade() {
    let link = LinkConfig {
        relay_delay: Duration::from_millis(120),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(14, [EndpointIndependent, Symmetric], link);
    for seq in 0..400u32 {
        sim.send_ip(0, &numbered_packet(0, 1, seq));
        sim.send_ip(1, &numbered_packet(1, 0, 10_000 + seq));
        sim.run_for(Duration::from_millis(4));
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(seqs(&sim, 1), (0..400).collect::<Vec<_>>());
    assert_eq!(seqs(&sim, 0), (10_000..10_400).collect::<Vec<_>>());
    assert!(matches!(sim.stats(0).path, Path::Direct(_)));
    assert!(matches!(sim.stats(1).path, Path::Direct(_)));
}

#[test]
fn stream_stays_in_order_when_the_upgrade_follows_a_measured_relay() {
    // Candidates arrive late, so the relay's latency is known when the direct path opens.
    let link = LinkConfig {
        relay_delay: Duration::from_millis(60),
        signal_delay: Duration::from_millis(1500),
        ..LinkConfig::default()
    };
    let mut sim = Sim::new(15, [EndpointIndependent, EndpointIndependent], link);
    sim.stream(0, 0, 600, Duration::from_millis(4));
    sim.run_for(Duration::from_secs(1));
    assert!(sim.stats(0).rtt.is_some());
    assert!(matches!(sim.stats(0).path, Path::Direct(_)));
    assert_eq!(seqs(&sim, 1), (0..600).collect::<Vec<_>>());
}

#[test]
fn a_peer_whose_udp_comes_back_is_upgraded_to_direct() {
    let mut sim = Sim::new(16, [UdpBlocked, EndpointIndependent], LinkConfig::default());
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.stats(1).reason, PathReason::UdpBlocked);
    sim.set_nat(0, EndpointIndependent);
    // STUN retries (5 s when blocked) and slow probing (15 s) bound the recovery.
    sim.run_for(Duration::from_secs(25));
    assert!(
        matches!(sim.stats(0).path, Path::Direct(_)),
        "{:?}",
        sim.stats(0)
    );
    assert!(
        matches!(sim.stats(1).path, Path::Direct(_)),
        "{:?}",
        sim.stats(1)
    );
    sim.stream(1, 0, 10, Duration::from_millis(20));
    assert_eq!(seqs(&sim, 0), (0..10).collect::<Vec<_>>());
}

#[test]
fn direct_path_stays_up_across_rekeys_for_ten_minutes() {
    let mut sim = Sim::new(
        17,
        [EndpointIndependent, AddressDependent],
        LinkConfig::default(),
    );
    for minute in 0..10u32 {
        sim.stream(0, minute * 10, 10, Duration::from_secs(6));
    }
    assert_eq!(seqs(&sim, 1), (0..100).collect::<Vec<_>>());
    for host in 0..2 {
        let changes: Vec<_> = sim
            .events(host)
            .iter()
            .filter(|(_, e)| matches!(e, Event::PathChanged { .. }))
            .collect();
        assert_eq!(changes.len(), 1, "host {host} flapped: {changes:?}");
        let handshakes = sim
            .events(host)
            .iter()
            .filter(|(_, e)| matches!(e, Event::HandshakeCompleted { .. }))
            .count();
        // Sessions are renewed (REKEY_AFTER_TIME is 120 s) while the path stays direct.
        assert!(handshakes >= 4, "host {host}: only {handshakes} handshakes");
        assert!(matches!(sim.stats(host).path, Path::Direct(_)));
    }
}

/// A request/response exchange as a new TCP flow makes it (SYN, SYN-ACK, request,
/// response, …): host 0 sends, host 1 answers each packet as soon as it arrives.
/// Returns the virtual time each round trip took.
fn exchanges(sim: &mut Sim, rounds: u32) -> Vec<Duration> {
    let mut took = Vec::new();
    for seq in 0..rounds {
        let start = sim.elapsed();
        sim.send_ip(0, &numbered_packet(0, 1, seq));
        let mut answered = false;
        for _ in 0..2000 {
            sim.run_for(Duration::from_millis(1));
            if !answered && seqs(sim, 1).contains(&seq) {
                sim.send_ip(1, &numbered_packet(1, 0, seq));
                answered = true;
            }
            if seqs(sim, 0).contains(&seq) {
                break;
            }
        }
        assert!(seqs(sim, 0).contains(&seq), "round {seq} never completed");
        took.push(sim.elapsed() - start);
    }
    took
}

#[test]
fn the_first_flow_is_not_held_back_when_the_path_turns_direct_under_it() {
    // The flow starts on the relay the moment the tunnel is up and the direct path
    // opens during its first round trips, before either side has measured the relay.
    for seed in [21, 22, 23, 24] {
        let mut sim = Sim::new(
            seed,
            [EndpointIndependent, EndpointIndependent],
            LinkConfig::default(),
        );
        let took = exchanges(&mut sim, 12);
        assert!(matches!(sim.stats(0).path, Path::Direct(_)), "seed {seed}");
        assert!(matches!(sim.stats(1).path, Path::Direct(_)), "seed {seed}");
        // A relay round trip is 80 ms here; nothing may wait for a 500 ms hold.
        let slowest = took.iter().max().unwrap();
        assert!(
            *slowest < Duration::from_millis(300),
            "seed {seed}: round trips {took:?}"
        );
    }
}
