//! A relay's heartbeat: with every poll of the revocation feed a standalone relay
//! says where peers reach it (its own instance URL, not a load balancer's), its
//! region, its STUN and bridge addresses, whether it is draining and how many
//! connections it carries. The control plane keeps the relays it hears from as
//! its relay tier and hands each session one of the live ones.
//!
//! Pure: the query pairs the relay sends ([`Heartbeat::to_query`]) and the
//! control plane's checked reading of them ([`Heartbeat::from_query`]). Every
//! field is bounded; a malformed heartbeat is refused as a whole.

use thiserror::Error;

use crate::RELAY_PATH;

/// Longest relay URL.
pub const MAX_URL_LEN: usize = 256;
/// Longest region name.
pub const MAX_REGION_LEN: usize = 32;
/// Most STUN addresses one relay announces.
pub const MAX_STUN: usize = 4;
/// Longest `host:port`.
pub const MAX_HOST_PORT_LEN: usize = 128;

/// Where peers reach one relay instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// `wss://host[:port]/relay/v1` (or `ws://` behind a TLS-terminating proxy).
    pub url: String,
    /// Lower-case letters, digits and `-` (e.g. `eu-central`); empty: no region.
    pub region: String,
    /// STUN servers as `host:port`.
    pub stun: Vec<String>,
    /// The UDP bridge for standard WireGuard clients, `host:port`, when it runs one.
    pub bridge: Option<String>,
}

/// One heartbeat: the announcement and the relay's state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub announce: Announce,
    /// The relay is stopping: move its sessions elsewhere, give it no new ones.
    pub draining: bool,
    /// Peer connections it carries now.
    pub connections: u64,
}

/// Why an announcement was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AnnounceError {
    #[error(
        "the relay URL must be wss://host[:port]{RELAY_PATH} (or ws://), at most {MAX_URL_LEN} bytes"
    )]
    Url,
    #[error("the region must be at most {MAX_REGION_LEN} lower-case letters, digits or '-'")]
    Region,
    #[error("at most {MAX_STUN} STUN addresses, each host:port")]
    Stun,
    #[error("the bridge address must be host:port")]
    Bridge,
    #[error("a heartbeat field is malformed or repeated")]
    Malformed,
}

impl Announce {
    /// Checks every field (at the relay's start and on the control plane).
    pub fn check(&self) -> Result<(), AnnounceError> {
        check_url(&self.url)?;
        if self.region.len() > MAX_REGION_LEN
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(AnnounceError::Region);
        }
        if self.stun.len() > MAX_STUN || !self.stun.iter().all(|s| host_port(s)) {
            return Err(AnnounceError::Stun);
        }
        if self.bridge.as_deref().is_some_and(|b| !host_port(b)) {
            return Err(AnnounceError::Bridge);
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), AnnounceError> {
    if url.len() > MAX_URL_LEN {
        return Err(AnnounceError::Url);
    }
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or(AnnounceError::Url)?;
    let host = rest.strip_suffix(RELAY_PATH).ok_or(AnnounceError::Url)?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(AnnounceError::Url);
    }
    Ok(())
}

/// `host:port` with a DNS name, an IPv4 address or a bracketed IPv6 address.
fn host_port(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_HOST_PORT_LEN {
        return false;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    port_ok && host_ok
}

impl Heartbeat {
    /// The query keys a heartbeat uses (the feed's own `after` aside).
    pub const KEYS: [&'static str; 6] =
        ["url", "region", "stun", "bridge", "draining", "connections"];

    /// The query pairs a relay adds to its feed request.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let a = &self.announce;
        let mut q = vec![
            ("url", a.url.clone()),
            ("region", a.region.clone()),
            ("stun", a.stun.join(",")),
            ("draining", u8::from(self.draining).to_string()),
            ("connections", self.connections.to_string()),
        ];
        if let Some(b) = &a.bridge {
            q.push(("bridge", b.clone()));
        }
        q
    }

    /// Reads a heartbeat from the feed request's query pairs (other keys are the
    /// caller's); `Ok(None)` when the relay announces nothing (an older relay, or
    /// one without `--public-url`).
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Option<Heartbeat>, AnnounceError> {
        let (mut url, mut region, mut stun, mut bridge, mut draining, mut connections) =
            (None, None, None, None, None, None);
        fn once<'a>(slot: &mut Option<&'a str>, v: &'a str) -> Result<(), AnnounceError> {
            match slot.replace(v) {
                None => Ok(()),
                Some(_) => Err(AnnounceError::Malformed),
            }
        }
        for (k, v) in pairs {
            match k {
                "url" => once(&mut url, v)?,
                "region" => once(&mut region, v)?,
                "stun" => once(&mut stun, v)?,
                "bridge" => once(&mut bridge, v)?,
                "draining" => once(&mut draining, v)?,
                "connections" => once(&mut connections, v)?,
                _ => {}
            }
        }
        let Some(url) = url else {
            return match (region, stun, bridge, draining, connections) {
                (None, None, None, None, None) => Ok(None),
                _ => Err(AnnounceError::Malformed),
            };
        };
        let stun: Vec<String> = match stun.unwrap_or("") {
            "" => Vec::new(),
            s => {
                if s.len() > MAX_STUN * (MAX_HOST_PORT_LEN + 1) {
                    return Err(AnnounceError::Stun);
                }
                s.split(',').map(str::to_string).collect()
            }
        };
        let announce = Announce {
            url: url.to_string(),
            region: region.unwrap_or("").to_string(),
            stun,
            bridge: bridge.map(str::to_string),
        };
        announce.check()?;
        let draining = match draining.unwrap_or("0") {
            "0" => false,
            "1" => true,
            _ => return Err(AnnounceError::Malformed),
        };
        let connections = match connections {
            None => 0,
            Some(c) if c.len() <= 20 => c.parse().map_err(|_| AnnounceError::Malformed)?,
            Some(_) => return Err(AnnounceError::Malformed),
        };
        Ok(Some(Heartbeat {
            announce,
            draining,
            connections,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> Heartbeat {
        Heartbeat {
            announce: Announce {
                url: "wss://relay-eu-1.example.com:8443/relay/v1".into(),
                region: "eu-central".into(),
                stun: vec![
                    "relay-eu-1.example.com:3478".into(),
                    "[2001:db8::1]:3478".into(),
                ],
                bridge: Some("198.51.100.7:51820".into()),
            },
            draining: true,
            connections: 1234,
        }
    }

    fn pairs<'a>(q: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        q.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn a_heartbeat_survives_its_query_unchanged() {
        let b = beat();
        let q = b.to_query();
        assert!(q.iter().all(|(k, _)| Heartbeat::KEYS.contains(k)), "{q:?}");
        assert_eq!(Heartbeat::from_query(pairs(&q)), Ok(Some(b)));
        // Only the cursor: an older relay, nothing announced.
        assert_eq!(Heartbeat::from_query([("after", "")]), Ok(None));
    }

    #[test]
    fn malformed_or_oversized_heartbeats_are_refused_whole() {
        let good = beat().to_query();
        let with = |k: &'static str, v: &str| {
            let mut q: Vec<(&'static str, String)> =
                good.iter().filter(|(x, _)| *x != k).cloned().collect();
            q.push((k, v.to_string()));
            q
        };
        for (k, v) in [
            ("url", "https://relay.example.com/relay/v1"),
            ("url", "wss://relay.example.com/other"),
            ("url", "wss:///relay/v1"),
            ("url", "wss://a b/relay/v1"),
            ("url", &format!("wss://{}/relay/v1", "a".repeat(300))),
            ("region", "EU"),
            ("region", &"a".repeat(33)),
            ("region", "eu central"),
            ("stun", "a:1,b:2,c:3,d:4,e:5"),
            ("stun", "host-without-port"),
            ("stun", "host:0"),
            ("stun", "host:99999"),
            ("stun", "[not-v6]:3478"),
            ("bridge", "bridge.example.com"),
            ("draining", "yes"),
            ("connections", "-1"),
            ("connections", &"9".repeat(40)),
        ] {
            let q = with(k, v);
            assert!(Heartbeat::from_query(pairs(&q)).is_err(), "{k}={v}");
        }
        // A field twice, or fields without a URL.
        let mut twice = good.clone();
        twice.push(("region", "eu".into()));
        assert_eq!(
            Heartbeat::from_query(pairs(&twice)),
            Err(AnnounceError::Malformed)
        );
        assert_eq!(
            Heartbeat::from_query([("region", "eu")]),
            Err(AnnounceError::Malformed)
        );
    }
}
