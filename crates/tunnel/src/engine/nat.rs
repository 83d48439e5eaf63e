//! STUN against the configured servers and what it tells: the node's public endpoints, its
//! candidates (mapped and local addresses) and the kind of NAT it is behind. Sans-IO: the
//! node feeds it the time, STUN answers and randomness, and sends the requests it returns.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{MAX_CANDIDATES, NatKind, Signal};
use crate::stun;

const STUN_RETRY: Duration = Duration::from_secs(1);
const STUN_REFRESH: Duration = Duration::from_secs(25);
const STUN_ATTEMPTS_BEFORE_BLOCKED: u32 = 3;
/// Most STUN servers asked.
const MAX_STUN_SERVERS: usize = 4;

struct StunServer {
    addr: SocketAddr,
    txid: [u8; 12],
    sent_at: Option<Instant>,
    next_at: Instant,
    attempts: u32,
    mapped: Option<SocketAddr>,
}

/// The node's STUN client and NAT classification.
pub(super) struct NatProbe {
    servers: Vec<StunServer>,
    local_addrs: Vec<SocketAddr>,
    candidates: Vec<SocketAddr>,
    nat: NatKind,
}

/// A STUN answer that changed what the node knows.
pub(super) struct Mapped {
    /// The public endpoint the server saw.
    pub addr: SocketAddr,
    /// Whether the candidates or NAT kind changed (the peers must be told).
    pub signal_changed: bool,
}

impl NatProbe {
    pub fn new(
        servers: &[SocketAddr],
        local_addrs: Vec<SocketAddr>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        let servers = servers
            .iter()
            .take(MAX_STUN_SERVERS)
            .map(|&addr| StunServer {
                addr,
                txid: rng.r#gen(),
                sent_at: None,
                next_at: now,
                attempts: 0,
                mapped: None,
            })
            .collect();
        let mut probe = NatProbe {
            servers,
            local_addrs: local_addrs.into_iter().take(MAX_CANDIDATES).collect(),
            candidates: Vec::new(),
            nat: NatKind::Unknown,
        };
        probe.candidates = probe.compute_candidates();
        probe
    }

    pub fn nat(&self) -> NatKind {
        self.nat
    }

    /// This node's current candidates and NAT kind.
    pub fn signal(&self) -> Signal {
        Signal {
            candidates: self.candidates.clone(),
            nat: self.nat,
        }
    }

    /// Local addresses changed: every server is asked again now. Returns whether the
    /// signal changed.
    pub fn set_local_addrs(&mut self, now: Instant, addrs: Vec<SocketAddr>) -> bool {
        self.local_addrs = addrs.into_iter().take(MAX_CANDIDATES).collect();
        for s in &mut self.servers {
            s.next_at = now;
        }
        self.classify()
    }

    /// A STUN datagram from `from`. `Some` when it is the answer to our outstanding request
    /// and the mapped address changed.
    pub fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Mapped> {
        let (txid, mapped) = stun::parse_binding_response(data)?;
        let s = self
            .servers
            .iter_mut()
            .find(|s| s.addr == from && s.txid == txid && s.sent_at.is_some())?;
        s.sent_at = None;
        s.attempts = 0;
        s.next_at = now + STUN_REFRESH;
        if s.mapped == Some(mapped) {
            return None;
        }
        s.mapped = Some(mapped);
        Some(Mapped {
            addr: mapped,
            signal_changed: self.classify(),
        })
    }

    /// The requests due now (`(server, datagram)`), and whether the signal changed (a
    /// server that stopped answering counts towards "UDP blocked").
    pub fn poll(&mut self, now: Instant, rng: &mut impl Rng) -> (Vec<(SocketAddr, Vec<u8>)>, bool) {
        let mut sends = Vec::new();
        let mut blocked_check = false;
        for s in &mut self.servers {
            if now < s.next_at {
                continue;
            }
            if s.sent_at.is_some() {
                s.attempts = s.attempts.saturating_add(1);
                if s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED {
                    blocked_check = true;
                    if s.mapped.is_some() && s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED * 2 {
                        s.mapped = None;
                    }
                }
            }
            s.txid = rng.r#gen();
            s.sent_at = Some(now);
            let backoff = if s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED {
                STUN_RETRY * 5
            } else {
                STUN_RETRY
            };
            s.next_at = now + backoff;
            sends.push((s.addr, stun::binding_request(s.txid)));
        }
        let changed = blocked_check && self.classify();
        (sends, changed)
    }

    /// Re-derives the NAT kind and candidates; returns whether either changed.
    fn classify(&mut self) -> bool {
        let mapped: BTreeSet<SocketAddr> = self.servers.iter().filter_map(|s| s.mapped).collect();
        let answered = self.servers.iter().filter(|s| s.mapped.is_some()).count();
        let nat_before = self.nat;
        self.nat = if mapped.is_empty() {
            if !self.servers.is_empty()
                && self
                    .servers
                    .iter()
                    .all(|s| s.attempts >= STUN_ATTEMPTS_BEFORE_BLOCKED)
            {
                NatKind::UdpBlocked
            } else {
                NatKind::Unknown
            }
        } else if mapped.len() > 1 {
            NatKind::Hard
        } else if mapped.iter().all(|m| self.local_addrs.contains(m)) {
            NatKind::Open
        } else if answered >= 2 {
            NatKind::Easy
        } else {
            NatKind::Unknown
        };
        let cands = self.compute_candidates();
        if cands != self.candidates || nat_before != self.nat {
            self.candidates = cands;
            return true;
        }
        false
    }

    fn compute_candidates(&self) -> Vec<SocketAddr> {
        let mut c: Vec<SocketAddr> = Vec::new();
        for a in self
            .servers
            .iter()
            .filter_map(|s| s.mapped)
            .chain(self.local_addrs.iter().copied())
        {
            if !c.contains(&a) && c.len() < MAX_CANDIDATES {
                c.push(a);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    const S1: &str = "198.51.100.1:3478";
    const S2: &str = "198.51.100.2:3478";

    fn probe(local: &[&str], now: Instant) -> (NatProbe, rand::rngs::StdRng) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let servers = [S1.parse().unwrap(), S2.parse().unwrap()];
        let local = local.iter().map(|a| a.parse().unwrap()).collect();
        (NatProbe::new(&servers, local, now, &mut rng), rng)
    }

    /// Each server answers the request it got with the address in `seen` (by server).
    fn answer(p: &mut NatProbe, now: Instant, reqs: &[(SocketAddr, Vec<u8>)], seen: [&str; 2]) {
        for (server, req) in reqs {
            let i = usize::from(*server != S1.parse().unwrap());
            let resp = stun::answer_binding_request(req, seen[i].parse().unwrap()).unwrap();
            p.handle_response(now, *server, &resp);
        }
    }

    #[test]
    fn two_servers_seeing_one_port_mean_an_easy_nat_and_two_ports_a_hard_one() {
        let now = Instant::now();
        let (mut p, mut rng) = probe(&["10.0.0.2:51820"], now);
        let (reqs, _) = p.poll(now, &mut rng);
        assert_eq!(reqs.len(), 2);
        answer(
            &mut p,
            now,
            &reqs,
            ["203.0.113.1:40000", "203.0.113.1:40000"],
        );
        assert_eq!(p.nat(), NatKind::Easy);
        let cands = p.signal().candidates;
        assert_eq!(
            cands,
            vec![
                "203.0.113.1:40000".parse().unwrap(),
                "10.0.0.2:51820".parse().unwrap()
            ]
        );

        let (mut p, mut rng) = probe(&["10.0.0.2:51820"], now);
        let (reqs, _) = p.poll(now, &mut rng);
        answer(
            &mut p,
            now,
            &reqs,
            ["203.0.113.1:40000", "203.0.113.1:40001"],
        );
        assert_eq!(p.nat(), NatKind::Hard);
    }

    #[test]
    fn a_mapped_address_equal_to_a_local_one_means_no_nat() {
        let now = Instant::now();
        let (mut p, mut rng) = probe(&["203.0.113.1:51820"], now);
        let (reqs, _) = p.poll(now, &mut rng);
        answer(
            &mut p,
            now,
            &reqs,
            ["203.0.113.1:51820", "203.0.113.1:51820"],
        );
        assert_eq!(p.nat(), NatKind::Open);
    }

    #[test]
    fn three_unanswered_rounds_mean_udp_is_blocked_and_change_the_signal() {
        let start = Instant::now();
        let (mut p, mut rng) = probe(&[], start);
        let mut changed = false;
        for s in 0..10 {
            let (_, c) = p.poll(start + Duration::from_secs(s), &mut rng);
            changed |= c;
        }
        assert_eq!(p.nat(), NatKind::UdpBlocked);
        assert!(changed);
    }

    #[test]
    fn answers_with_a_wrong_transaction_or_from_elsewhere_are_ignored() {
        let now = Instant::now();
        let (mut p, mut rng) = probe(&[], now);
        let (reqs, _) = p.poll(now, &mut rng);
        let from: SocketAddr = "203.0.113.1:1".parse().unwrap();
        let forged = stun::answer_binding_request(&stun::binding_request([0; 12]), from).unwrap();
        assert!(p.handle_response(now, reqs[0].0, &forged).is_none());
        let real = stun::answer_binding_request(&reqs[0].1, from).unwrap();
        assert!(
            p.handle_response(now, "192.0.2.9:3478".parse().unwrap(), &real)
                .is_none()
        );
        assert!(p.handle_response(now, reqs[0].0, &real).is_some());
        // The same answer again changes nothing.
        assert!(p.handle_response(now, reqs[0].0, &real).is_none());
    }
}
