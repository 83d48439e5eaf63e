//! Which relay a session uses: pure rules over the relays as one replica sees
//! them, so that every replica, given the same heartbeats, decides the same.

use super::Relay;

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

    /// Its sessions must move: draining, drained, or down. A replica that started
    /// at `started_at` judges a relay down only once it has heard from it since,
    /// or after [`GRACE_SECS`] of its own: after an outage of the whole control
    /// plane the relays' heartbeats come back with their poll backoff.
    pub fn to_leave(&self, now: i64, started_at: i64) -> bool {
        let judged = self.heartbeat_at >= started_at || now - started_at >= GRACE_SECS;
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
/// `now`, on a replica up since `started_at` ([`Relay::to_leave`]).
/// `needs_bridge`: a standard WireGuard client is in the session, so its relay
/// must run the UDP bridge (when any live relay does).
pub fn decide<'a>(
    session_id: &str,
    assigned: Option<&str>,
    relays: &'a [Relay],
    now: i64,
    started_at: i64,
    needs_bridge: bool,
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
        if !c.to_leave(now, started_at) && bridge_ok && standby_ok {
            return Decision::Keep(c);
        }
    }
    // Standby relays only when nothing else takes sessions.
    if candidates.iter().any(|r| !r.standby) {
        candidates.retain(|r| !r.standby);
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
        let now = 1000;
        let rs = vec![
            relay("a", now - 1),
            relay("b", now - 2),
            relay("c", now - 30),
        ];
        assert_eq!(name(decide("s", Some("a"), &rs, now, 0, false)).0, "keep");
        // c's heartbeat is 30 s old: down.
        let (what, to) = name(decide("s", Some("c"), &rs, now, 0, false));
        assert_eq!(what, "move");
        assert!(to == "a" || to == "b");
        // Draining, or drained by an operator: moved as well.
        let mut d = rs.clone();
        d[0].draining = true;
        assert_eq!(
            name(decide("s", Some("a"), &d, now, 0, false)),
            ("move", "b".into())
        );
        d[0].draining = false;
        d[0].drain_requested = true;
        assert_eq!(
            name(decide("s", Some("a"), &d, now, 0, false)),
            ("move", "b".into())
        );
        // In a replica's first seconds a relay not heard from since its start is
        // kept (the heartbeats may not be back yet); a draining one, or one heard
        // from since and silent now, is left.
        assert_eq!(name(decide("s", Some("c"), &rs, now, 0, false)).0, "move");
        assert_eq!(
            name(decide("s", Some("c"), &rs, now, now - 5, false)).0,
            "keep"
        );
        assert_eq!(
            name(decide("s", Some("a"), &d, now, now - 5, false)).0,
            "move"
        );
        assert_eq!(
            name(decide("s", Some("c"), &rs, now, now - 35, false)).0,
            "move"
        );
    }

    #[test]
    fn every_replica_picks_the_same_relay_and_sessions_spread_over_the_live_ones() {
        let now = 1000;
        let rs = vec![relay("a", now), relay("b", now), relay("c", now)];
        let mut reversed = rs.clone();
        reversed.reverse();
        let mut count = std::collections::HashMap::new();
        for i in 0..300 {
            let s = format!("session-{i}");
            let one = name(decide(&s, None, &rs, now, 0, false));
            let other = name(decide(&s, None, &reversed, now, 0, false));
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
            let (_, before) = name(decide(&s, None, &rs, now, 0, false));
            let (_, after) = name(decide(&s, Some(&before), &without_c, now, 0, false));
            if before != "c" {
                assert_eq!(after, before);
            } else {
                assert_ne!(after, "c");
            }
        }
    }

    #[test]
    fn standby_relays_and_bridges_and_nothing_alive() {
        let now = 1000;
        let mut rs = vec![relay("local", now), relay("eu-1", now)];
        rs[0].standby = true;
        rs[0].bridge = Some("192.0.2.1:51820".into());
        // The standby relay takes nothing while another one lives...
        for i in 0..50 {
            let s = format!("s{i}");
            assert_eq!(
                name(decide(&s, None, &rs, now, 0, false)),
                ("move", "eu-1".into())
            );
        }
        // ...except a session that needs the bridge only it runs.
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, true)),
            ("move", "local".into())
        );
        // eu-1 dies: the standby relay takes over...
        rs[1].heartbeat_at = now - 60;
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, false)),
            ("move", "local".into())
        );
        assert_eq!(
            name(decide("s", Some("local"), &rs, now, 0, false)).0,
            "keep"
        );
        // ...and hands the session back when eu-1 returns.
        rs[1].heartbeat_at = now;
        assert_eq!(
            name(decide("s", Some("local"), &rs, now, 0, false)),
            ("move", "eu-1".into())
        );
        rs[1].heartbeat_at = now - 60;
        // Nothing takes sessions: the assigned relay goes on, nothing is recorded.
        rs[0].drain_requested = true;
        assert_eq!(
            name(decide("s", Some("eu-1"), &rs, now, 0, false)),
            ("fallback", "eu-1".into())
        );
        assert_eq!(name(decide("s", None, &[], now, 0, false)).0, "nothing");
    }
}
