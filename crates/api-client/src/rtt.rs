//! Round-trip times to the relays the control plane names (an edge's
//! `Sessions.relays`, a client's `JoinResponse.relays`): the time a TCP
//! connection to the relay takes (one round trip), the best of three, measured
//! in the background whenever the list changes and every five minutes. The
//! edge reports them in its status, a client on its session channel; the
//! control plane gives a new session the relay nearest its peers.

use drawbridge_proto::channel::{MAX_RELAY_PROBES, RelayProbe, RelayRtt};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Time between two rounds.
pub const EVERY: Duration = Duration::from_secs(300);
const TRIES: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(3);

/// The relays to measure and the last round's results.
#[derive(Default)]
pub struct Probes {
    relays: Vec<RelayProbe>,
    results: Vec<RelayRtt>,
    last: Option<Instant>,
    running: Option<oneshot::Receiver<Vec<RelayRtt>>>,
}

impl Probes {
    /// The relays as the control plane names them now; a changed list is
    /// measured at the next tick.
    pub fn set_relays(&mut self, mut relays: Vec<RelayProbe>) {
        relays.truncate(MAX_RELAY_PROBES);
        if relays != self.relays {
            self.relays = relays;
            self.last = None;
        }
    }

    /// The last round's results.
    pub fn results(&self) -> Vec<RelayRtt> {
        self.results.clone()
    }

    /// Called every tick: collects a finished round (answers true: report it) and
    /// starts the next one when it is due.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut done = false;
        if let Some(rx) = &mut self.running {
            match rx.try_recv() {
                Ok(r) => {
                    self.results = r;
                    self.running = None;
                    done = true;
                }
                Err(oneshot::error::TryRecvError::Closed) => self.running = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        let due = self.last.is_none_or(|t| now.duration_since(t) >= EVERY);
        if self.running.is_none() && due && !self.relays.is_empty() {
            self.last = Some(now);
            let relays = self.relays.clone();
            let (tx, rx) = oneshot::channel();
            self.running = Some(rx);
            tokio::spawn(async move {
                let mut out = Vec::new();
                for r in relays {
                    if let Some(d) = measure(&r.url).await {
                        out.push(RelayRtt {
                            relay: r.name,
                            rtt_ms: u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1),
                        });
                    }
                }
                let _ = tx.send(out);
            });
        }
        done
    }
}

/// `host:port` of a `wss://host[:port]/…` (or `ws://`) URL.
fn authority(url: &str) -> Option<String> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("wss://") {
        (r, 443)
    } else {
        (url.strip_prefix("ws://")?, 80)
    };
    let host = rest.split('/').next()?;
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rfind(']') {
        Some(i) => host[i..].contains(':'),
        None => host.contains(':'),
    };
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    })
}

/// The best of a few TCP connects to the relay (None: unreachable directly, e.g.
/// only through the plant's proxy).
async fn measure(url: &str) -> Option<Duration> {
    let addr = tokio::net::lookup_host(authority(url)?)
        .await
        .ok()?
        .next()?;
    let mut best: Option<Duration> = None;
    for _ in 0..TRIES {
        let start = Instant::now();
        if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await
        {
            let d = start.elapsed();
            best = Some(best.map_or(d, |b| b.min(d)));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_give_host_and_port() {
        assert_eq!(
            authority("wss://relay.example.com/relay/v1").as_deref(),
            Some("relay.example.com:443")
        );
        assert_eq!(
            authority("wss://relay.example.com:8443/relay/v1").as_deref(),
            Some("relay.example.com:8443")
        );
        assert_eq!(
            authority("ws://127.0.0.1:9/relay/v1").as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(
            authority("wss://[2001:db8::1]/relay/v1").as_deref(),
            Some("[2001:db8::1]:443")
        );
        assert_eq!(
            authority("wss://[2001:db8::1]:8443/relay/v1").as_deref(),
            Some("[2001:db8::1]:8443")
        );
        assert_eq!(authority("https://x/relay/v1"), None);
        assert_eq!(authority("wss:///relay/v1"), None);
    }

    #[tokio::test]
    async fn a_round_measures_the_reachable_relays_and_reports_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        tokio::spawn(async move { while l.accept().await.is_ok() {} });
        // A port nobody listens on: refused, so not measured.
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut p = Probes::default();
        p.set_relays(vec![
            RelayProbe {
                name: "up".into(),
                url: format!("ws://{up}/relay/v1"),
            },
            RelayProbe {
                name: "down".into(),
                url: format!("ws://{down}/relay/v1"),
            },
        ]);
        let start = Instant::now();
        assert!(!p.tick(start), "started, not done");
        let mut done = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if p.tick(start) {
                done = true;
                break;
            }
        }
        assert!(done);
        let r = p.results();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].relay, "up");
        // Not again before EVERY, unless the list changes.
        assert!(!p.tick(start + Duration::from_secs(10)));
        assert!(p.running.is_none());
        p.set_relays(vec![RelayProbe {
            name: "up".into(),
            url: format!("ws://{up}/relay/v1"),
        }]);
        p.tick(start + Duration::from_secs(11));
        assert!(p.running.is_some(), "a changed list is measured at once");
    }
}
