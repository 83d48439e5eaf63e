//! The relay's UDP bridge: standard WireGuard clients (wg-quick, wireguard-go, ...) reach an
//! edge through the relay's UDP port, the edge answering over its relay WebSocket.
//!
//! The relay never sees plaintext and holds no secret. It reads only the WireGuard header
//! (message type, indices) and checks a handshake initiation's `mac1` against the public
//! keys of the connected edges whose token carries the `bridge` claim: `mac1` needs only the
//! responder's public key, so it tells whom the handshake is for, not who sent it. The edge
//! admits or refuses the client by its static key in the WireGuard handshake.
//!
//! Datagrams from a client endpoint `S` reach the edge as [`Frame::Bridge`] with a *tag*: a
//! random u64 naming the pair (`S`, edge). The edge sends [`Frame::Bridge`] frames with that
//! tag back; the relay checks the tag is the sending edge's and sends the payload to `S`.
//! Which edge a later datagram from `S` belongs to (a response, cookie or data packet, where
//! one client socket may talk to several edges) is found by the receiver index in it: the
//! relay learns the edge's sender indices from the initiations and responses the edge sends
//! to `S`.
//!
//! Every table is bounded: at most [`MAX_TAGS`] tags (the oldest evicted when full, idle
//! ones expired after [`TAG_IDLE`]) and [`MAX_ROUTES_PER_TAG`] index routes per tag.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use drawbridge_wire::frame::{Frame, MAX_PAYLOAD};
use drawbridge_wire::wgmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;

use crate::{Key, Push, RelayState, drop_reason, short};

/// Most client endpoints (tags) the bridge tracks at once.
pub const MAX_TAGS: usize = 8192;
/// A tag unused for this long is forgotten.
pub const TAG_IDLE: Duration = Duration::from_secs(180);
/// Most receiver indices remembered per tag (the edge's current, previous and next
/// sessions need three; a few more ride out handshake retries).
pub const MAX_ROUTES_PER_TAG: usize = 8;
/// Smallest WireGuard message (a data packet with an empty payload: a keepalive).
const MIN_WG: usize = 32;
const COOKIE_REPLY_LEN: usize = 64;
/// How often idle tags are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// `last_seen` is refreshed at most this often (keeps the LRU order cheap under load).
const TOUCH_GRANULARITY: Duration = Duration::from_secs(1);

/// The WireGuard message type of `p` if it is shaped like one (type 1..=4, three zero
/// bytes, the type's length); `None` for anything the bridge must not carry.
fn wg_type(p: &[u8]) -> Option<u8> {
    if !(MIN_WG..=MAX_PAYLOAD).contains(&p.len()) || p[1..4] != [0, 0, 0] {
        return None;
    }
    let ok = match p[0] {
        1 => p.len() == wgmac::HANDSHAKE_INIT_LEN,
        2 => p.len() == wgmac::HANDSHAKE_RESP_LEN,
        3 => p.len() == COOKIE_REPLY_LEN,
        4 => true,
        _ => false,
    };
    ok.then_some(p[0])
}

fn le_u32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// The receiver index a client's datagram names (the edge's index), for types 2, 3, 4.
fn receiver_idx(ty: u8, p: &[u8]) -> Option<u32> {
    match ty {
        2 => le_u32(p, 8),
        3 | 4 => le_u32(p, 4),
        _ => None,
    }
}

/// The sender index the edge chose in its own initiation or response (types 1, 2).
fn sender_idx(ty: u8, p: &[u8]) -> Option<u32> {
    match ty {
        1 | 2 => le_u32(p, 4),
        _ => None,
    }
}

struct TagEntry {
    endpoint: SocketAddr,
    edge: Key,
    last_seen: Instant,
    /// The edge's sender indices learned for this tag, oldest first.
    idxs: VecDeque<u32>,
}

/// The bridge's routing state. Pure bookkeeping with explicit time, so it is tested alone.
pub(crate) struct Table {
    tags: HashMap<u64, TagEntry>,
    by_pair: HashMap<(SocketAddr, Key), u64>,
    routes: HashMap<(SocketAddr, u32), u64>,
    /// (last seen, tag), oldest first: for expiry and eviction.
    lru: BTreeSet<(Instant, u64)>,
    rng: SystemRandom,
    max_tags: usize,
}

impl Table {
    pub(crate) fn new(max_tags: usize) -> Self {
        Table {
            tags: HashMap::new(),
            by_pair: HashMap::new(),
            routes: HashMap::new(),
            lru: BTreeSet::new(),
            rng: SystemRandom::new(),
            max_tags: max_tags.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.tags.len()
    }

    /// The tag of (`endpoint`, `edge`), made (and the oldest evicted if full) when new.
    fn tag_for(&mut self, endpoint: SocketAddr, edge: Key, now: Instant) -> Option<u64> {
        if let Some(&tag) = self.by_pair.get(&(endpoint, edge)) {
            self.touch(tag, now);
            return Some(tag);
        }
        self.expire(now);
        while self.tags.len() >= self.max_tags {
            let &(_, oldest) = self.lru.first()?;
            self.remove(oldest);
        }
        let tag = loop {
            let mut b = [0u8; 8];
            self.rng.fill(&mut b).ok()?;
            let t = u64::from_be_bytes(b);
            if !self.tags.contains_key(&t) {
                break t;
            }
        };
        self.tags.insert(
            tag,
            TagEntry {
                endpoint,
                edge,
                last_seen: now,
                idxs: VecDeque::new(),
            },
        );
        self.by_pair.insert((endpoint, edge), tag);
        self.lru.insert((now, tag));
        Some(tag)
    }

    fn touch(&mut self, tag: u64, now: Instant) {
        if let Some(e) = self.tags.get_mut(&tag)
            && now.saturating_duration_since(e.last_seen) >= TOUCH_GRANULARITY
        {
            self.lru.remove(&(e.last_seen, tag));
            e.last_seen = now;
            self.lru.insert((now, tag));
        }
    }

    /// The endpoint and edge of `tag`.
    fn get(&self, tag: u64) -> Option<(SocketAddr, Key)> {
        self.tags.get(&tag).map(|e| (e.endpoint, e.edge))
    }

    /// Datagrams from the tag's endpoint naming receiver index `idx` belong to its edge.
    fn learn(&mut self, tag: u64, idx: u32) {
        let Some(e) = self.tags.get_mut(&tag) else {
            return;
        };
        if e.idxs.contains(&idx) {
            return;
        }
        if e.idxs.len() >= MAX_ROUTES_PER_TAG
            && let Some(old) = e.idxs.pop_front()
            && self.routes.get(&(e.endpoint, old)) == Some(&tag)
        {
            self.routes.remove(&(e.endpoint, old));
        }
        e.idxs.push_back(idx);
        self.routes.insert((e.endpoint, idx), tag);
    }

    /// The tag and edge a datagram from `endpoint` naming receiver index `idx` is for.
    fn route(&mut self, endpoint: SocketAddr, idx: u32, now: Instant) -> Option<(u64, Key)> {
        let tag = *self.routes.get(&(endpoint, idx))?;
        let edge = self.tags.get(&tag)?.edge;
        self.touch(tag, now);
        Some((tag, edge))
    }

    /// Forgets tags idle for longer than [`TAG_IDLE`].
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(seen, tag)) = self.lru.first() {
            if now.saturating_duration_since(seen) <= TAG_IDLE {
                break;
            }
            self.remove(tag);
        }
    }

    fn remove(&mut self, tag: u64) {
        let Some(e) = self.tags.remove(&tag) else {
            // Keep the LRU in step even if it held a stale entry.
            self.lru.retain(|&(_, t)| t != tag);
            return;
        };
        self.lru.remove(&(e.last_seen, tag));
        self.by_pair.remove(&(e.endpoint, e.edge));
        for idx in e.idxs {
            if self.routes.get(&(e.endpoint, idx)) == Some(&tag) {
                self.routes.remove(&(e.endpoint, idx));
            }
        }
    }
}

/// Handshake initiations accepted per second from one client IP address (after a
/// burst of twice as many): a stock client needs one every two minutes; the limit
/// keeps one source from flooding edges (and the tag table) with initiations.
pub const INITIATIONS_PER_SECOND: u32 = 10;

/// The bridge's share of the relay state.
pub(crate) struct Bridge {
    table: Mutex<Table>,
    socket: Mutex<Option<Arc<UdpSocket>>>,
    initiations: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl Bridge {
    pub(crate) fn new() -> Self {
        let rate =
            std::num::NonZeroU32::new(INITIATIONS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
        Bridge {
            table: Mutex::new(Table::new(MAX_TAGS)),
            socket: Mutex::new(None),
            initiations: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
        }
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // Every mutation leaves the table consistent; a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn socket(&self) -> Option<Arc<UdpSocket>> {
        self.socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl RelayState {
    /// Serves the UDP bridge on `socket` until it fails: standard WireGuard clients send
    /// their datagrams here and reach the connected edges whose token has `bridge`.
    pub async fn serve_bridge(&self, socket: UdpSocket) -> io::Result<()> {
        let socket = Arc::new(socket);
        *self
            .inner
            .bridge
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(socket.clone());
        tracing::info!(addr = ?socket.local_addr().ok(), "relay: UDP bridge listening");
        // One byte more than the largest datagram accepted, so an oversized one shows.
        let mut buf = vec![0u8; MAX_PAYLOAD + 1];
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.bridge_datagram(from, &buf[..n]),
                    // ICMP errors surface as recv errors on some platforms: keep serving.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                    Err(e) => return Err(e),
                },
                _ = sweep.tick() => {
                    self.inner.bridge.initiations.retain_recent();
                    let mut t = self.inner.bridge.table();
                    t.expire(Instant::now());
                    metrics::gauge!("relay_bridge_tags").set(t.len() as f64);
                }
            }
        }
    }

    fn bridge_drop(&self, reason: &'static str) {
        self.inner
            .counters
            .bridge_drops
            .fetch_add(1, Ordering::Relaxed);
        drop_reason(reason);
    }

    /// One datagram from a client endpoint: find its edge and hand it over.
    pub(crate) fn bridge_datagram(&self, from: SocketAddr, data: &[u8]) {
        let Some(ty) = wg_type(data) else {
            self.bridge_drop("bridge_malformed");
            return;
        };
        let now = Instant::now();
        let found = if ty == 1 {
            if self.inner.bridge.initiations.check_key(&from.ip()).is_err() {
                self.inner
                    .counters
                    .bridge_rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                self.bridge_drop("bridge_rate_limited");
                return;
            }
            // A handshake initiation: for the bridging edge whose public key it is keyed to.
            let edge = self.lock().bridge_edge_for(data);
            edge.and_then(|edge| {
                let tag = self.inner.bridge.table().tag_for(from, edge, now)?;
                Some((tag, edge))
            })
        } else {
            receiver_idx(ty, data).and_then(|idx| self.inner.bridge.table().route(from, idx, now))
        };
        let Some((tag, edge)) = found else {
            self.bridge_drop("bridge_no_route");
            return;
        };
        let Ok(frame) = (Frame::Bridge { tag, payload: data }).encode() else {
            self.bridge_drop("bridge_malformed");
            return;
        };
        let mut conns = self.lock();
        // The edge must still be connected with a token that bridges.
        if !conns.bridges(&edge) {
            drop(conns);
            self.bridge_drop("bridge_no_route");
            return;
        }
        match self.push(&mut conns, &edge, Bytes::from(frame)) {
            Push::Sent => {
                self.inner
                    .counters
                    .bridge_datagrams_in
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("relay_bridge_datagrams_in_total").increment(1);
            }
            Push::Full | Push::Gone => {
                drop(conns);
                self.bridge_drop("bridge_no_route");
            }
        }
    }

    /// A [`Frame::Bridge`] from edge `me` (whose token's `bridge` claim is `may_bridge`):
    /// send its payload to the client endpoint the tag names, if the tag is `me`'s.
    pub(crate) fn bridge_from_edge(&self, me: &Key, may_bridge: bool, tag: u64, payload: &[u8]) {
        if !may_bridge {
            self.inner
                .counters
                .drop_not_allowed
                .fetch_add(1, Ordering::Relaxed);
            self.bridge_drop("not_allowed");
            return;
        }
        let Some(ty) = wg_type(payload) else {
            self.bridge_drop("bridge_malformed");
            return;
        };
        let endpoint = {
            let mut t = self.inner.bridge.table();
            match t.get(tag) {
                Some((endpoint, edge)) if edge == *me => {
                    if let Some(idx) = sender_idx(ty, payload) {
                        t.learn(tag, idx);
                    }
                    t.touch(tag, Instant::now());
                    Some(endpoint)
                }
                Some(_) => None,
                None => {
                    drop(t);
                    self.bridge_drop("bridge_unknown_tag");
                    return;
                }
            }
        };
        let Some(endpoint) = endpoint else {
            // Another edge's client: never.
            tracing::debug!(peer = %short(me), "relay: bridge frame with a foreign tag");
            self.inner
                .counters
                .drop_not_allowed
                .fetch_add(1, Ordering::Relaxed);
            self.bridge_drop("not_allowed");
            return;
        };
        let Some(socket) = self.inner.bridge.socket() else {
            self.bridge_drop("bridge_no_socket");
            return;
        };
        // Never wait on the socket: a full send buffer drops the datagram.
        match socket.try_send_to(payload, endpoint) {
            Ok(_) => {
                self.inner
                    .counters
                    .bridge_datagrams_out
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("relay_bridge_datagrams_out_total").increment(1);
            }
            Err(_) => self.bridge_drop("bridge_send_failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_initiations_from_one_address_is_cut_off_and_others_are_not() {
        let state = RelayState::new(crate::RelayConfig::new(crate::VerifyingKey::from_bytes(
            [0u8; 32],
        )));
        let mut init = vec![0u8; wgmac::HANDSHAKE_INIT_LEN];
        init[0] = 1;
        let burst = 2 * INITIATIONS_PER_SECOND as u64;
        for _ in 0..burst + 30 {
            state.bridge_datagram(ep(40000), &init);
        }
        let limited = state.stats().bridge_rate_limited;
        assert!(
            limited >= 30 - INITIATIONS_PER_SECOND as u64,
            "limited {limited}"
        );
        // Another address is not affected.
        let other: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        state.bridge_datagram(other, &init);
        assert_eq!(state.stats().bridge_rate_limited, limited);
    }

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn wireguard_shapes_are_recognised_and_everything_else_refused() {
        let mut init = vec![0u8; 148];
        init[0] = 1;
        assert_eq!(wg_type(&init), Some(1));
        let mut resp = vec![0u8; 92];
        resp[0] = 2;
        assert_eq!(wg_type(&resp), Some(2));
        let mut cookie = vec![0u8; 64];
        cookie[0] = 3;
        assert_eq!(wg_type(&cookie), Some(3));
        let mut data = vec![0u8; 32];
        data[0] = 4;
        assert_eq!(wg_type(&data), Some(4));
        data.resize(MAX_PAYLOAD, 0);
        assert_eq!(wg_type(&data), Some(4));
        data.push(0);
        assert_eq!(wg_type(&data), None, "oversized");
        assert_eq!(wg_type(&data[..31]), None, "too short");
        assert_eq!(wg_type(&init[..147]), None);
        assert_eq!(wg_type(&resp[..91]), None);
        init[2] = 1;
        assert_eq!(wg_type(&init), None, "reserved bytes must be zero");
        let mut five = vec![0u8; 64];
        five[0] = 5;
        assert_eq!(wg_type(&five), None);
        assert_eq!(wg_type(&[]), None);
    }

    #[test]
    fn indices_are_read_little_endian_where_wireguard_puts_them() {
        let mut p = vec![0u8; 92];
        p[0] = 2;
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(sender_idx(2, &p), Some(7));
        assert_eq!(receiver_idx(2, &p), Some(9));
        assert_eq!(receiver_idx(4, &p), Some(7));
        assert_eq!(receiver_idx(1, &p), None);
        assert_eq!(sender_idx(4, &p), None);
    }

    #[test]
    fn one_tag_per_endpoint_and_edge() {
        let now = Instant::now();
        let mut t = Table::new(16);
        let a = t.tag_for(ep(1), [1; 32], now).unwrap();
        assert_eq!(t.tag_for(ep(1), [1; 32], now), Some(a));
        let b = t.tag_for(ep(1), [2; 32], now).unwrap();
        let c = t.tag_for(ep(2), [1; 32], now).unwrap();
        assert!(a != b && a != c && b != c);
        assert_eq!(t.get(b), Some((ep(1), [2; 32])));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn routes_find_the_edge_for_one_socket_talking_to_two_edges() {
        let now = Instant::now();
        let mut t = Table::new(16);
        let a = t.tag_for(ep(1), [1; 32], now).unwrap();
        let b = t.tag_for(ep(1), [2; 32], now).unwrap();
        t.learn(a, 100);
        t.learn(b, 200);
        assert_eq!(t.route(ep(1), 100, now), Some((a, [1; 32])));
        assert_eq!(t.route(ep(1), 200, now), Some((b, [2; 32])));
        // Same index from another endpoint: nothing.
        assert_eq!(t.route(ep(2), 100, now), None);
        assert_eq!(t.route(ep(1), 300, now), None);
    }

    #[test]
    fn routes_per_tag_are_bounded_oldest_first() {
        let now = Instant::now();
        let mut t = Table::new(16);
        let a = t.tag_for(ep(1), [1; 32], now).unwrap();
        for idx in 0..(MAX_ROUTES_PER_TAG as u32 + 3) {
            t.learn(a, idx);
        }
        assert_eq!(t.routes.len(), MAX_ROUTES_PER_TAG);
        assert_eq!(t.route(ep(1), 0, now), None);
        assert_eq!(t.route(ep(1), 2, now), None);
        assert!(t.route(ep(1), 3, now).is_some());
        assert!(t.route(ep(1), MAX_ROUTES_PER_TAG as u32 + 2, now).is_some());
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_tag_with_its_routes() {
        let t0 = Instant::now();
        let mut t = Table::new(3);
        let a = t.tag_for(ep(1), [1; 32], t0).unwrap();
        let b = t
            .tag_for(ep(2), [1; 32], t0 + Duration::from_secs(1))
            .unwrap();
        let c = t
            .tag_for(ep(3), [1; 32], t0 + Duration::from_secs(2))
            .unwrap();
        t.learn(a, 1);
        t.learn(b, 2);
        // `a` is used again, so `b` is now the oldest.
        assert!(t.route(ep(1), 1, t0 + Duration::from_secs(3)).is_some());
        let d = t
            .tag_for(ep(4), [1; 32], t0 + Duration::from_secs(4))
            .unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.get(b).is_none());
        assert_eq!(t.route(ep(2), 2, t0 + Duration::from_secs(4)), None);
        assert!(t.get(a).is_some() && t.get(c).is_some() && t.get(d).is_some());
        assert_eq!(t.routes.len(), 1);
        assert_eq!(t.lru.len(), 3);
        assert_eq!(t.by_pair.len(), 3);
    }

    #[test]
    fn idle_tags_expire_and_used_ones_stay() {
        let t0 = Instant::now();
        let mut t = Table::new(16);
        let a = t.tag_for(ep(1), [1; 32], t0).unwrap();
        let b = t.tag_for(ep(2), [1; 32], t0).unwrap();
        t.learn(a, 1);
        t.learn(b, 2);
        // `b` keeps being used; `a` does not.
        let later = t0 + TAG_IDLE - Duration::from_secs(10);
        assert!(t.route(ep(2), 2, later).is_some());
        t.expire(t0 + TAG_IDLE + Duration::from_secs(1));
        assert!(t.get(a).is_none());
        assert!(t.get(b).is_some());
        assert_eq!(t.route(ep(1), 1, t0 + TAG_IDLE), None);
        assert_eq!(t.routes.len(), 1);
        t.expire(later + TAG_IDLE + Duration::from_secs(1));
        assert_eq!(t.len(), 0);
        assert!(t.routes.is_empty() && t.lru.is_empty() && t.by_pair.is_empty());
    }
}
