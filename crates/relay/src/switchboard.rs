//! The relay's forwarding rules, pure: who is connected (admit, replace, leave), which DATA
//! frame may go where (route, or drop with a reason), which edge a bridged handshake is for,
//! and when a receiver that takes nothing off its queue is cut off. No tokio, no sockets, no
//! clock (time is passed in); the shell in `lib.rs` keeps one [`Switchboard`] behind a lock
//! with a queue handle `H` per connection, and the simulated network drives the same code.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use drawbridge_wire::frame::{KEY_LEN, rewrite_data_source};
use drawbridge_wire::wgmac;
use subtle::ConstantTimeEq;

use crate::token::Claims;

/// A peer's WireGuard public key: how the relay names a connection.
pub type Key = [u8; KEY_LEN];

/// Why a frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a DATA frame with a destination.
    Malformed,
    /// The sender may not reach the destination, or the destination not the sender, or
    /// they are in different sessions.
    NotAllowed,
    /// The destination is not connected.
    NoRoute,
}

impl Drop {
    /// The `reason` label of the `relay_drops_total` metric.
    pub fn reason(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::NotAllowed => "not_allowed",
            Drop::NoRoute => "no_route",
        }
    }
}

/// What a connection's token grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub session: String,
    /// The keys it may reach.
    pub allowed: HashSet<Key>,
    /// The `mac1` key of its public key when it bridges standard WireGuard clients.
    pub bridge: Option<[u8; 32]>,
}

impl Grant {
    pub fn from_claims(claims: &Claims) -> Self {
        Grant {
            session: claims.session_id.clone(),
            allowed: claims.allowed_peers.iter().copied().collect(),
            bridge: claims.bridge.then(|| wgmac::mac1_key(&claims.peer)),
        }
    }
}

/// One connected peer.
#[derive(Debug)]
pub struct Member<H> {
    /// The connection's id (a newer connection with the same key has another).
    pub id: u64,
    pub grant: Grant,
    /// The shell's handle (its queue and kill switch).
    pub handle: H,
    /// Since when every frame for this member found its queue full.
    full_since: Option<Instant>,
}

/// What became of a frame queued for a member whose queue was full.
#[derive(Debug, PartialEq, Eq)]
pub enum Full<H> {
    /// Dropped; the receiver stays.
    Dropped,
    /// Dropped, and the receiver (full for `slow_after`) is disconnected: here is its handle.
    Disconnected(H),
}

/// The connected peers and the rules between them.
#[derive(Debug)]
pub struct Switchboard<H> {
    members: HashMap<Key, Member<H>>,
}

impl<H> Default for Switchboard<H> {
    fn default() -> Self {
        Switchboard {
            members: HashMap::new(),
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl<H> Switchboard<H> {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sessions with at least one member (a walk over all members: for metrics).
    pub fn sessions(&self) -> usize {
        self.members
            .values()
            .map(|m| m.grant.session.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    pub fn get(&self, key: &Key) -> Option<&Member<H>> {
        self.members.get(key)
    }

    /// Admits connection `id` as `key`. A second connection with the same key replaces the
    /// first: its handle is returned (to be closed).
    pub fn admit(&mut self, key: Key, id: u64, grant: Grant, handle: H) -> Option<H> {
        self.members
            .insert(
                key,
                Member {
                    id,
                    grant,
                    handle,
                    full_since: None,
                },
            )
            .map(|old| old.handle)
    }

    /// Connection `id` of `key` is gone. A newer connection with the same key stays.
    pub fn leave(&mut self, key: &Key, id: u64) -> Option<H> {
        if self.members.get(key).is_some_and(|m| m.id == id) {
            return self.members.remove(key).map(|m| m.handle);
        }
        None
    }

    /// A fresh token on connection `id` of `key`: its grants are replaced. `false` when that
    /// connection is no longer the member (replaced or gone).
    pub fn regrant(&mut self, key: &Key, id: u64, grant: Grant) -> bool {
        match self.members.get_mut(key).filter(|m| m.id == id) {
            Some(m) => {
                m.grant = grant;
                true
            }
            None => false,
        }
    }

    /// Removes every member of a session; their handles are returned (to be closed).
    pub fn remove_session(&mut self, session: &str) -> Vec<H> {
        let keys: Vec<Key> = self
            .members
            .iter()
            .filter(|(_, m)| m.grant.session == session)
            .map(|(k, _)| *k)
            .collect();
        keys.iter()
            .filter_map(|k| self.members.remove(k).map(|m| m.handle))
            .collect()
    }

    /// Routes a DATA `frame` from `src` (whose token grants `src_grant`): rewrites its key to
    /// the sender's (a peer cannot spoof its source) and returns the destination. Forwarded
    /// only when the sender may reach the destination, the destination the sender, and both
    /// are in the same session.
    pub fn route(&self, src: &Key, src_grant: &Grant, frame: &mut [u8]) -> Result<Key, Drop> {
        let dst = rewrite_data_source(frame, src).map_err(|_| Drop::Malformed)?;
        if !src_grant.allowed.contains(&dst) {
            return Err(Drop::NotAllowed);
        }
        let target = self.members.get(&dst).ok_or(Drop::NoRoute)?;
        if !same(&target.grant.session, &src_grant.session) || !target.grant.allowed.contains(src) {
            return Err(Drop::NotAllowed);
        }
        Ok(dst)
    }

    /// The bridging edge a standard client's handshake initiation is addressed to (its
    /// `mac1` is keyed to that edge's public key).
    pub fn bridge_edge_for(&self, initiation: &[u8]) -> Option<Key> {
        self.members
            .iter()
            .find(|(_, m)| {
                m.grant
                    .bridge
                    .is_some_and(|k| wgmac::mac1_matches(&k, initiation))
            })
            .map(|(key, _)| *key)
    }

    /// Whether `key` is connected with a token that bridges.
    pub fn bridges(&self, key: &Key) -> bool {
        self.members
            .get(key)
            .is_some_and(|m| m.grant.bridge.is_some())
    }

    /// A frame went into `dst`'s queue.
    pub fn queued(&mut self, dst: &Key) {
        if let Some(m) = self.members.get_mut(dst) {
            m.full_since = None;
        }
    }

    /// A frame for `dst` found its queue full at `now`: dropped, and a receiver whose queue
    /// has stayed full for `slow_after` is disconnected rather than buffered for.
    pub fn queue_full(&mut self, dst: &Key, now: Instant, slow_after: Duration) -> Full<H> {
        let Some(m) = self.members.get_mut(dst) else {
            return Full::Dropped;
        };
        let since = *m.full_since.get_or_insert(now);
        if now.duration_since(since) >= slow_after
            && let Some(m) = self.members.remove(dst)
        {
            return Full::Disconnected(m.handle);
        }
        Full::Dropped
    }
}

#[cfg(test)]
mod tests;
