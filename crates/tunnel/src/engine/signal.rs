//! The candidate signal: what one side tells the other through the control plane (where it
//! may be reached, and how its NAT behaves), and its compact binary codec.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::MAX_CANDIDATES;

/// How the node's own NAT behaves, as far as STUN tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    /// Not measured yet (or only one STUN server answered).
    Unknown,
    /// The mapped address equals a local address: no NAT.
    Open,
    /// Endpoint-independent mapping: hole punching can work.
    Easy,
    /// Endpoint-dependent ("symmetric") mapping: different STUN servers saw different ports.
    Hard,
    /// No STUN server answered: UDP is blocked.
    UdpBlocked,
}

impl NatKind {
    fn to_u8(self) -> u8 {
        match self {
            NatKind::Unknown => 0,
            NatKind::Open => 1,
            NatKind::Easy => 2,
            NatKind::Hard => 3,
            NatKind::UdpBlocked => 4,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => NatKind::Unknown,
            1 => NatKind::Open,
            2 => NatKind::Easy,
            3 => NatKind::Hard,
            4 => NatKind::UdpBlocked,
            _ => return None,
        })
    }
}

/// What one side tells the other through the control plane: where it may be reached.
/// Carry it as [`Signal::encode`] bytes or as JSON (serde); the receiver bounds it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub candidates: Vec<SocketAddr>,
    pub nat: NatKind,
}

/// A signalling message that could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("signal truncated")]
    Truncated,
    #[error("unsupported signal version {0}")]
    Version(u8),
    #[error("too many candidates")]
    TooMany,
    #[error("bad field")]
    Bad,
}

impl Signal {
    /// Compact binary form (version 1), at most 2 + 1 + 8 * 19 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![1, self.nat.to_u8()];
        let cands: Vec<_> = self.candidates.iter().take(MAX_CANDIDATES).collect();
        v.push(cands.len() as u8);
        for c in cands {
            match c.ip() {
                IpAddr::V4(ip) => {
                    v.push(4);
                    v.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    v.push(6);
                    v.extend_from_slice(&ip.octets());
                }
            }
            v.extend_from_slice(&c.port().to_be_bytes());
        }
        v
    }

    /// Decodes [`Signal::encode`]'s output; rejects anything malformed.
    pub fn decode(buf: &[u8]) -> Result<Self, SignalError> {
        let mut it = buf.iter().copied();
        let mut next = || it.next().ok_or(SignalError::Truncated);
        let ver = next()?;
        if ver != 1 {
            return Err(SignalError::Version(ver));
        }
        let nat = NatKind::from_u8(next()?).ok_or(SignalError::Bad)?;
        let n = usize::from(next()?);
        if n > MAX_CANDIDATES {
            return Err(SignalError::TooMany);
        }
        let mut candidates = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match next()? {
                4 => {
                    let mut o = [0u8; 4];
                    for b in &mut o {
                        *b = next()?;
                    }
                    IpAddr::from(o)
                }
                6 => {
                    let mut o = [0u8; 16];
                    for b in &mut o {
                        *b = next()?;
                    }
                    IpAddr::from(o)
                }
                _ => return Err(SignalError::Bad),
            };
            let port = u16::from_be_bytes([next()?, next()?]);
            candidates.push(SocketAddr::new(ip, port));
        }
        if next().is_ok() {
            return Err(SignalError::Bad);
        }
        Ok(Signal { candidates, nat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_round_trips_and_rejects_garbage() {
        let s = Signal {
            candidates: vec![
                "192.0.2.1:51820".parse().unwrap(),
                "[2001:db8::1]:9".parse().unwrap(),
            ],
            nat: NatKind::Hard,
        };
        assert_eq!(Signal::decode(&s.encode()).unwrap(), s);
        assert!(Signal::decode(&[]).is_err());
        assert!(Signal::decode(&[2, 0, 0]).is_err());
        assert!(Signal::decode(&[1, 9, 0]).is_err());
        assert!(Signal::decode(&[1, 0, 9]).is_err());
        let mut long = s.encode();
        long.push(0);
        assert!(Signal::decode(&long).is_err());
    }

    #[test]
    fn signal_travels_as_json_too() {
        let s = Signal {
            candidates: vec!["192.0.2.1:51820".parse().unwrap()],
            nat: NatKind::Easy,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"candidates":["192.0.2.1:51820"],"nat":"easy"}"#);
        assert_eq!(serde_json::from_str::<Signal>(&j).unwrap(), s);
    }
}
