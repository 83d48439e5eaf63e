//! Which relay a session uses: pure rules over the relays as one replica sees
//! them, so that every replica, given the same heartbeats, decides the same.

use super::Relay;
use std::collections::HashMap;

/// Round-trip times within this many milliseconds of the best count as equal.
pub const NEAR_MS: u32 = 5;

/// What is known of where a session's edges are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Near {
    /// Relay name → round-trip time from the session's edges (ms, summed).
    pub rtt: HashMap<String, u32>,
    /// The regions its devices are configured in.
    pub regions: Vec<String>,
}

/// A relay whose last heartbeat is older than this (seconds) is taken as down.
pub const STALE_SECS: i64 = 6;

impl Relay {
    /// Heard from within [`STALE_SECS`].
    pub fn live(&self, now: i64) -> bool {
        now - self.heartbeat_at <= STALE_SECS
    }

    /// May carry sessions: live, and neither draining nor drained by an operator.
    pub fn takes_sessions(&self, now: i64) -> bool {
        self.live(now) && !self.draining && !self.drain_requested
    }

    /// Its sessions must move: draining, drained, or down. A replica judges a
    /// relay down only once it has heard from it `since` (its start, or the end of
    /// a database outage, when no heartbeat could be recorded), or [`GRACE_SECS`]
    /// after that: after an outage the relays' heartbeats come back with their
    /// poll backoff.
    pub fn to_leave(&self, now: i64, since: i64) -> bool {
        let judged = self.heartbeat_at >= since || now - since >= GRACE_SECS;
        self.draining || self.drain_requested || (!self.live(now) && judged)
    }
}

/// See [`Relay::to_leave`].
pub const GRACE_SECS: i64 = 40;

/// What to do with a session's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The assigned relay stays.
    Keep(&'a Relay),
    /// Assign this one (none was assigned, or the assigned one is down, draining
    /// or lacks the bridge the session needs).
    Move(&'a Relay),
    /// No relay takes sessions: go on with this one (the assigned one, or the
    /// first known) without recording anything.
    Fallback(&'a Relay),
    /// No relay is known at all.
    Nothing,
}

/// Decides for session `session_id`, assigned to `assigned` (a relay name), at
/// `now`, judging relays down as [`Relay::to_leave`] does from `since`.
/// `needs_bridge`: a standard WireGuard client is in the session, so its relay
/// must run the UDP bridge (when any live relay does).
pub fn decide<'a>(
    session_id: &str,
    assigned: Option<&str>,
    relays: &'a [Relay],
    now: i64,
    since: i64,
    needs_bridge: bool,
    near: &Near,
) -> Decision<'a> {
    let current = assigned.and_then(|a| relays.iter().find(|r| r.name == a));
    let mut candidates: Vec<&Relay> = relays.iter().filter(|r| r.takes_sessions(now)).collect();
    if needs_bridge && candidates.iter().any(|r| r.bridge.is_some()) {
        candidates.retain(|r| r.bridge.is_some());
    }
    if let Some(c) = current {
        let bridge_ok =
            !needs_bridge || c.bridge.is_some() || !candidates.iter().any(|r| r.bridge.is_some());
        // A standby relay keeps a session only while no other relay takes it.
        let standby_ok = !c.standby || !candidates.iter().any(|r| !r.standby);
        if !c.to_leave(now, since) && bridge_ok && standby_ok {
            return Decision::Keep(c);
        }
    }
    // Standby relays only when nothing else takes sessions.
    if candidates.iter().any(|r| !r.standby) {
        candidates.retain(|r| !r.standby);
    }
    // The nearest relays by the edges' measurements: those within 20 % (and 5 ms)
    // of the best count as equally near; unmeasured ones only when none is measured.
    // Where nothing is measured, the relays of the devices' configured region.
    let rtt = &near.rtt;
    if let Some(best) = candidates.iter().filter_map(|r| rtt.get(&r.name)).min() {
        let limit = best.saturating_add((best / 5).max(NEAR_MS));
        candidates.retain(|r| rtt.get(&r.name).is_some_and(|v| *v <= limit));
    } else if candidates.iter().any(|r| near.regions.contains(&r.region)) {
        candidates.retain(|r| near.regions.contains(&r.region));
    }
    match candidates
        .into_iter()
        .max_by_key(|r| (score(session_id, &r.name), r.name.as_str()))
    {
        Some(r) => Decision::Move(r),
        None => match current.or(relays.first()) {
            Some(r) => Decision::Fallback(r),
            None => Decision::Nothing,
        },
    }
}

/// Rendezvous hashing: each (session, relay) pair gets a stable score and the
/// highest wins, so sessions spread evenly and only those of a relay that
/// leaves move.
fn score(session_id: &str, relay: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(session_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(relay.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(name: &str, heartbeat_at: i64) -> Relay {
        Relay {
            name: name.into(),
            url: format!("wss://{name}.example.com/relay/v1"),
            region: String::new(),
            stun: vec![],
            bridge: None,
            draining: false,
            drain_requested: false,
            standby: false,
            connections: 0,
            heartbeat_at,
        }
    }

    fn name(d: Decision<'_>) -> (&'static str, String) {
        match d {
            Decision::Keep(r) => ("keep", r.name.clone()),
            Decision::Move(r) => ("move", r.name.clone()),
            Decision::Fallback(r) => ("fallback", r.name.clone()),
            Decision::Nothing => ("nothing", String::new()),
        }
    }

    #[test]
    fn a_session_stays_on_a_live_relay_and_leaves_a_dead_or_draining_one() {
        let none = Near::default();
        let now = 1000;
        let rs = vec![
            relay("a", now - 1),
            relay("b", now - 2),
            relay("c", now - 30),
        ];
        assert_eq!(
            name(decide("s", Some("a"), &rs, now, 0, false, &none)).0,
            "keep"
        );
        // c's heartbeat is 30 s old: down.
        let (what, to) = name(decide("s", Some("c"), &rs, now, 0, false, &none));
        assert_eq!(what, "move");
        assert!(to == "a" || to == "b");
        // Draining, or drained by an operator: moved as well.
        let mut d = rs.clone();
        d[0].draining = true;
        assert_eq!(
            name(decide("s", Some("a"), &d, now, 0, false, &none)),
            ("move", "b".into())
        );
        d[0].draining = false;
        d[0].drain_requested = true;
        assert_eq!(
            name(decide("s", Some("a"), &d, now, 0, false, &none)),
            ("move", "b".into())
        );
        // In a replica's first seconds a relay not heard from since its start is
        // kept (the heartbeats may not be back yet); a draining one, or one heard
        // from since and silent now, is left.
        assert_eq!(
            name(decide("s", Some("c"), &rs, now, 0, false, &none)).0,
            "move"
        );
        assert_eq!(
            name(decide("s", Some("c"), &rs, now, now - 5, false, &none)).0,
            "keep"
        );
        assert_eq!(
            name(decide("s", Some("a"), &d, now, now - 5, false, &none)).0,
            "move"
        );
        assert_eq!(
            name(decide("s", Some("c"), &rs, now, now - 35, false, &none)).0,
            "move"
        );
    }

    #[test]
    fn every_replica_picks_the_same_relay_and_sessions_spread_over_the_live_ones() {
        let none = Near::default();
        let now = 1000;
        let rs = vec![relay("a", now), relay("b", now), relay("c", now)];
        let mut reversed = rs.clone();
        reversed.reverse();
        let mut count = std::collections::HashMap::new();
        for i in 0..300 {
            let s = format!("session-{i}");
            let one = name(decide(&s, None, &rs, now, 0, false, &none));
            let other = name(decide(&s, None, &reversed, now, 0, false, &none));
            assert_eq!(
                one, other,
                "the order the relays are listed in changes nothing"
            );
            *count.entry(one.1).or_insert(0) += 1;
        }
        for n in ["a", "b", "c"] {
            assert!(count[n] > 60, "{count:?}");
        }
        // When c dies, only c's sessions move.
        let mut without_c = rs.clone();
        without_c[2].heartbeat_at = now - 60;
        for i in 0..300 {
            let s = format!("session-{i}");
            let (_, before) = name(decide(&s, None, &rs, now, 0, false, &none));
            let (_, after) = name(decide(&s, Some(&before), &without_c, now, 0, false, &none));
            if before != "c" {
                assert_eq!(after, before);
            } else {
                assert_ne!(after, "c");
            }
        }
    }

    #[test]
    fn standby_relays_and_bridges_and_nothing_alive() {
        let none = Near::default();
        let now = 1000;
        let mut rs = vec![relay("local", now), relay("eu-1", now)];
        rs[0].standby = true;
        rs[0].bridge = Some("192.0.2.1:51820".into());
        // The standby relay takes nothing while another one lives...
        for i in 0..50 {
            let s = format!("s{i}");
            assert_eq!(
                name(decide(&s, None, &rs, now, 0, false, &none)),
                ("move", "eu-1".into())
            );
        }
        // ...except a session that needs the bridge only it runs.
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, true, &none)),
            ("move", "local".into())
        );
        // eu-1 dies: the standby relay takes over...
        rs[1].heartbeat_at = now - 60;
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, false, &none)),
            ("move", "local".into())
        );
        assert_eq!(
            name(decide("s", Some("local"), &rs, now, 0, false, &none)).0,
            "keep"
        );
        // ...and hands the session back when eu-1 returns.
        rs[1].heartbeat_at = now;
        assert_eq!(
            name(decide("s", Some("local"), &rs, now, 0, false, &none)),
            ("move", "eu-1".into())
        );
        rs[1].heartbeat_at = now - 60;
        // Nothing takes sessions: the assigned relay goes on, nothing is recorded.
        rs[0].drain_requested = true;
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, false, &none)),
            ("fallback", "eu-1".into())
        );
        assert_eq!(
            name(decide("s", None, &[], now, 0, false, &none)).0,
            "nothing"
        );
    }

    #[test]
    fn a_new_session_goes_to_the_relay_nearest_its_edges() {
        let now = 1000;
        let rs = vec![
            relay("eu-1", now),
            relay("eu-2", now),
            relay("us-1", now),
            relay("ap-1", now),
        ];
        let rtt = Near {
            rtt: [("eu-1", 12), ("eu-2", 14), ("us-1", 95), ("ap-1", 240)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            regions: vec!["ap-south".into()],
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let (what, to) = name(decide(&format!("s{i}"), None, &rs, now, 0, false, &rtt));
            assert_eq!(what, "move");
            assert!(to == "eu-1" || to == "eu-2", "{to}");
            seen.insert(to);
        }
        assert_eq!(seen.len(), 2, "equally near relays share the sessions");
        // The near ones die: the next nearest.
        let mut far = rs.clone();
        far[0].heartbeat_at = now - 60;
        far[1].draining = true;
        assert_eq!(
            name(decide("s", Some("eu-1"), &far, now, 0, false, &rtt)),
            ("move", "us-1".into())
        );
        // Measurements do not move a session that is on a live relay.
        assert_eq!(
            name(decide("s", Some("ap-1"), &rs, now, 0, false, &rtt)).0,
            "keep"
        );
    }

    #[test]
    fn where_nothing_is_measured_the_devices_region_decides() {
        let now = 1000;
        let mut rs = vec![relay("eu-1", now), relay("us-1", now), relay("us-2", now)];
        rs[0].region = "eu-central".into();
        rs[1].region = "us-east".into();
        rs[2].region = "us-east".into();
        let near = Near {
            rtt: HashMap::new(),
            regions: vec!["us-east".into()],
        };
        for i in 0..50 {
            let (_, to) = name(decide(&format!("s{i}"), None, &rs, now, 0, false, &near));
            assert!(to.starts_with("us-"), "{to}");
        }
        // No relay in that region: any live one.
        let far = Near {
            rtt: HashMap::new(),
            regions: vec!["ap-south".into()],
        };
        assert_eq!(name(decide("s", None, &rs, now, 0, false, &far)).0, "move");
    }
}
