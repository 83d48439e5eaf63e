//! The forwarding rules alone: no sockets, no tasks; time is passed in.

use drawbridge_wire::frame::Frame;

use super::*;

const A: Key = [1; 32];
const B: Key = [2; 32];
const C: Key = [3; 32];

fn grant(session: &str, allowed: &[Key]) -> Grant {
    Grant {
        session: session.into(),
        allowed: allowed.iter().copied().collect(),
        bridge: None,
    }
}

fn data(to: Key) -> Vec<u8> {
    Frame::Data {
        peer: to,
        payload: &[4, 0, 0, 0, 9, 9],
    }
    .encode()
    .unwrap()
}

/// A and B in session "s", each allowed the other.
fn board() -> Switchboard<&'static str> {
    let mut sb = Switchboard::default();
    assert!(sb.admit(A, 1, grant("s", &[B]), "a").is_none());
    assert!(sb.admit(B, 2, grant("s", &[A]), "b").is_none());
    sb
}

#[test]
fn a_frame_between_mutually_allowed_peers_of_one_session_is_routed_with_the_source_rewritten() {
    let sb = board();
    let mut f = data(B);
    assert_eq!(sb.route(&A, &grant("s", &[B]), &mut f), Ok(B));
    assert_eq!(
        Frame::decode(&f).unwrap(),
        Frame::Data {
            peer: A,
            payload: &[4, 0, 0, 0, 9, 9]
        }
    );
}

#[test]
fn a_destination_the_sender_may_not_reach_is_refused() {
    let sb = board();
    assert_eq!(
        sb.route(&A, &grant("s", &[]), &mut data(B)),
        Err(Drop::NotAllowed)
    );
}

#[test]
fn a_destination_that_does_not_allow_the_sender_is_refused() {
    let mut sb = board();
    sb.admit(C, 3, grant("s", &[B]), "c");
    assert_eq!(
        sb.route(&A, &grant("s", &[C]), &mut data(C)),
        Err(Drop::NotAllowed)
    );
}

#[test]
fn peers_of_different_sessions_never_reach_each_other_even_when_both_allow_it() {
    let mut sb = board();
    sb.admit(C, 3, grant("other", &[A]), "c");
    assert_eq!(
        sb.route(&A, &grant("s", &[C]), &mut data(C)),
        Err(Drop::NotAllowed)
    );
}

#[test]
fn a_destination_not_connected_has_no_route_and_malformed_frames_are_refused() {
    let sb = board();
    assert_eq!(
        sb.route(&A, &grant("s", &[C]), &mut data(C)),
        Err(Drop::NoRoute)
    );
    let mut ping = Frame::Ping([0; 8]).encode().unwrap();
    assert_eq!(
        sb.route(&A, &grant("s", &[B]), &mut ping),
        Err(Drop::Malformed)
    );
    assert_eq!(Drop::NoRoute.reason(), "no_route");
    assert_eq!(Drop::NotAllowed.reason(), "not_allowed");
}

#[test]
fn a_second_connection_with_the_same_key_replaces_the_first_and_the_first_cannot_leave_it() {
    let mut sb = board();
    assert_eq!(sb.admit(A, 10, grant("s", &[B]), "a2"), Some("a"));
    assert_eq!(sb.leave(&A, 1), None);
    assert_eq!(sb.get(&A).map(|m| m.handle), Some("a2"));
    // The old connection's token refresh no longer applies either.
    assert!(!sb.regrant(&A, 1, grant("s", &[])));
    assert!(sb.regrant(&A, 10, grant("s", &[])));
    assert_eq!(sb.leave(&A, 10), Some("a2"));
    assert_eq!(sb.len(), 1);
}

#[test]
fn new_grants_take_effect_for_the_next_frame() {
    let mut sb = board();
    assert!(sb.regrant(&B, 2, grant("s", &[])));
    assert_eq!(
        sb.route(&A, &grant("s", &[B]), &mut data(B)),
        Err(Drop::NotAllowed)
    );
}

#[test]
fn removing_a_session_removes_exactly_its_members() {
    let mut sb = board();
    sb.admit(C, 3, grant("other", &[]), "c");
    let mut gone = sb.remove_session("s");
    gone.sort();
    assert_eq!(gone, vec!["a", "b"]);
    assert!(sb.get(&C).is_some() && sb.len() == 1);
}

#[test]
fn a_receiver_full_for_the_slow_limit_is_disconnected_and_one_that_drains_is_not() {
    let mut sb = board();
    let t0 = Instant::now();
    let slow = Duration::from_secs(2);
    assert_eq!(sb.queue_full(&B, t0, slow), Full::Dropped);
    assert_eq!(
        sb.queue_full(&B, t0 + Duration::from_secs(1), slow),
        Full::Dropped
    );
    // It took something off: the clock starts again.
    sb.queued(&B);
    assert_eq!(
        sb.queue_full(&B, t0 + Duration::from_secs(2), slow),
        Full::Dropped
    );
    assert_eq!(
        sb.queue_full(&B, t0 + Duration::from_secs(3), slow),
        Full::Dropped
    );
    assert_eq!(
        sb.queue_full(&B, t0 + Duration::from_secs(4), slow),
        Full::Disconnected("b")
    );
    assert!(sb.get(&B).is_none());
}

#[test]
fn a_bridged_handshake_goes_to_the_bridging_edge_its_mac1_names_and_to_no_other() {
    let mut sb: Switchboard<()> = Switchboard::default();
    let mut edge = grant("s", &[]);
    edge.bridge = Some(wgmac::mac1_key(&A));
    sb.admit(A, 1, edge, ());
    sb.admit(B, 2, grant("s", &[]), ());
    let mut init: Vec<u8> = vec![7; wgmac::HANDSHAKE_INIT_LEN];
    init[..4].copy_from_slice(&[1, 0, 0, 0]);
    let at = wgmac::HANDSHAKE_INIT_LEN - 2 * wgmac::MAC_LEN;
    let m = wgmac::mac1(&wgmac::mac1_key(&A), &init).unwrap();
    init[at..at + wgmac::MAC_LEN].copy_from_slice(&m);
    assert_eq!(sb.bridge_edge_for(&init), Some(A));
    assert!(sb.bridges(&A) && !sb.bridges(&B));
    // Keyed to B, which does not bridge: nobody.
    let m = wgmac::mac1(&wgmac::mac1_key(&B), &init).unwrap();
    init[at..at + wgmac::MAC_LEN].copy_from_slice(&m);
    assert_eq!(sb.bridge_edge_for(&init), None);
}
