//! Relay frame codec (the binary WebSocket messages between a peer and a relay).
//!
//! Every frame starts with a one-byte type:
//!
//! | type | direction | body |
//! |---|---|---|
//! | `0x01` DATA | peer → relay | 32-byte destination public key, then one WireGuard packet |
//! | `0x01` DATA | relay → peer | 32-byte *source* public key (rewritten by the relay), then the packet |
//! | `0x02` PING | peer → relay | 8 opaque bytes |
//! | `0x03` PONG | relay → peer | the 8 bytes of the ping |
//! | `0x04` BRIDGE | relay → edge | 8-byte tag (u64 big-endian), then one WireGuard datagram that arrived on the relay's UDP bridge from the endpoint the tag names |
//! | `0x04` BRIDGE | edge → relay | 8-byte tag, then one WireGuard packet for the relay to send to that endpoint |
//! | `0x05` TOKEN | peer → relay | a fresh admission token for the same key and session (e.g. naming a client that joined later); replaces the connection's grants without a reconnect |
//!
//! A BRIDGE tag is chosen by the relay and names one standard WireGuard client's UDP
//! endpoint as seen by one edge; it carries no authority of its own (the relay checks that
//! it belongs to the connection using it, and WireGuard authenticates the packet).
//!
//! The payload of a DATA or BRIDGE frame is non-empty and bounded by [`MAX_PAYLOAD`];
//! anything else is malformed.

use thiserror::Error;

/// Length of a WireGuard (x25519) public key.
pub const KEY_LEN: usize = 32;
/// Largest WireGuard packet carried in one frame.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest frame on the wire.
pub const MAX_FRAME: usize = 1 + KEY_LEN + MAX_PAYLOAD;
/// Read buffer of a relay WebSocket (both ends). tungstenite zero-fills the whole spare
/// read buffer before every read; its 128 KiB default made that memset about 6 % of the
/// relay's CPU under a bulk transfer, while one read over TLS returns a record or two
/// (16 KiB each).
pub const READ_BUFFER: usize = 32 * 1024;

const T_DATA: u8 = 0x01;
const T_PING: u8 = 0x02;
const T_PONG: u8 = 0x03;
const T_BRIDGE: u8 = 0x04;
const T_TOKEN: u8 = 0x05;
/// Length of a BRIDGE frame's tag.
pub const TAG_LEN: usize = 8;

/// A decoded relay frame borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A WireGuard packet; `peer` is the destination (peer → relay) or source (relay → peer).
    Data {
        peer: [u8; KEY_LEN],
        payload: &'a [u8],
    },
    /// Keep-alive / RTT probe to the relay.
    Ping([u8; 8]),
    /// The relay's answer to [`Frame::Ping`].
    Pong([u8; 8]),
    /// A plain WireGuard datagram to or from a standard WireGuard client that reaches the
    /// edge through the relay's UDP bridge; `tag` names the client's endpoint.
    Bridge { tag: u64, payload: &'a [u8] },
    /// A fresh admission token (its text) for the connection it is sent on.
    Token(&'a [u8]),
}

/// Why a frame could not be decoded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("truncated frame")]
    Truncated,
    #[error("frame without payload")]
    EmptyPayload,
}

impl<'a> Frame<'a> {
    /// Decodes one frame. Never panics; rejects anything not exactly well formed.
    pub fn decode(buf: &'a [u8]) -> Result<Self, FrameError> {
        if buf.len() > MAX_FRAME {
            return Err(FrameError::TooLong(buf.len()));
        }
        let (&ty, rest) = buf.split_first().ok_or(FrameError::Empty)?;
        match ty {
            T_DATA => {
                if rest.len() < KEY_LEN {
                    return Err(FrameError::Truncated);
                }
                let (key, payload) = rest.split_at(KEY_LEN);
                if payload.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                let mut peer = [0u8; KEY_LEN];
                peer.copy_from_slice(key);
                Ok(Frame::Data { peer, payload })
            }
            T_PING | T_PONG => {
                let v: [u8; 8] = rest.try_into().map_err(|_| FrameError::Truncated)?;
                Ok(if ty == T_PING {
                    Frame::Ping(v)
                } else {
                    Frame::Pong(v)
                })
            }
            T_BRIDGE => {
                let (tag, payload) = rest
                    .split_at_checked(TAG_LEN)
                    .ok_or(FrameError::Truncated)?;
                if payload.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong(buf.len()));
                }
                let tag = u64::from_be_bytes(tag.try_into().map_err(|_| FrameError::Truncated)?);
                Ok(Frame::Bridge { tag, payload })
            }
            T_TOKEN => {
                if rest.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                if rest.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong(buf.len()));
                }
                Ok(Frame::Token(rest))
            }
            other => Err(FrameError::UnknownType(other)),
        }
    }

    /// Encodes the frame. Fails only when a data, bridge or token payload exceeds
    /// [`MAX_PAYLOAD`] or is empty.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        match self {
            Frame::Data { peer, payload } => {
                if payload.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong(1 + KEY_LEN + payload.len()));
                }
                let mut v = Vec::with_capacity(1 + KEY_LEN + payload.len());
                v.push(T_DATA);
                v.extend_from_slice(peer);
                v.extend_from_slice(payload);
                Ok(v)
            }
            Frame::Bridge { tag, payload } => {
                if payload.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong(1 + TAG_LEN + payload.len()));
                }
                let mut v = Vec::with_capacity(1 + TAG_LEN + payload.len());
                v.push(T_BRIDGE);
                v.extend_from_slice(&tag.to_be_bytes());
                v.extend_from_slice(payload);
                Ok(v)
            }
            Frame::Token(t) => {
                if t.is_empty() {
                    return Err(FrameError::EmptyPayload);
                }
                if t.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLong(1 + t.len()));
                }
                Ok([&[T_TOKEN][..], t].concat())
            }
            Frame::Ping(b) => Ok([&[T_PING][..], &b[..]].concat()),
            Frame::Pong(b) => Ok([&[T_PONG][..], &b[..]].concat()),
        }
    }
}

/// Rewrites a DATA frame's destination key into the source key in place (the relay's job).
/// Returns the destination that was named. The buffer must be a valid DATA frame.
pub fn rewrite_data_source(
    buf: &mut [u8],
    source: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], FrameError> {
    match Frame::decode(buf)? {
        Frame::Data { peer, .. } => {
            buf[1..1 + KEY_LEN].copy_from_slice(source);
            Ok(peer)
        }
        _ => Err(FrameError::UnknownType(buf[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn data_frame_round_trips() {
        let f = Frame::Data {
            peer: [7; 32],
            payload: b"hello",
        };
        let bytes = f.encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn ping_pong_round_trip_and_wrong_length_is_rejected() {
        let b = Frame::Ping([1; 8]).encode().unwrap();
        assert_eq!(Frame::decode(&b).unwrap(), Frame::Ping([1; 8]));
        assert_eq!(Frame::decode(&b[..5]), Err(FrameError::Truncated));
        let p = Frame::Pong([2; 8]).encode().unwrap();
        assert_eq!(Frame::decode(&p).unwrap(), Frame::Pong([2; 8]));
    }

    #[test]
    fn oversized_truncated_and_unknown_frames_are_rejected() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[1; 20]), Err(FrameError::Truncated));
        assert_eq!(Frame::decode(&[1; 33]), Err(FrameError::EmptyPayload));
        assert_eq!(Frame::decode(&[9, 0]), Err(FrameError::UnknownType(9)));
        let big = vec![1u8; MAX_FRAME + 1];
        assert_eq!(Frame::decode(&big), Err(FrameError::TooLong(MAX_FRAME + 1)));
        let payload = vec![0u8; MAX_PAYLOAD + 1];
        assert!(
            Frame::Data {
                peer: [0; 32],
                payload: &payload
            }
            .encode()
            .is_err()
        );
    }

    #[test]
    fn token_frame_round_trips_and_is_bounded() {
        let f = Frame::Token(b"drt1.abc.def");
        let enc = f.encode().unwrap();
        assert_eq!(enc[0], 0x05);
        assert_eq!(Frame::decode(&enc).unwrap(), f);
        assert_eq!(Frame::decode(&[0x05]), Err(FrameError::EmptyPayload));
        let big = vec![b'a'; MAX_PAYLOAD + 1];
        assert!(Frame::Token(&big).encode().is_err());
        assert!(Frame::decode(&[&[0x05][..], &big[..]].concat()).is_err());
    }

    #[test]
    fn bridge_frame_round_trips_with_a_big_endian_tag() {
        let f = Frame::Bridge {
            tag: 0x0102_0304_0506_0708,
            payload: b"wg",
        };
        let bytes = f.encode().unwrap();
        assert_eq!(bytes, [4, 1, 2, 3, 4, 5, 6, 7, 8, b'w', b'g']);
        assert_eq!(Frame::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn bridge_frame_bounds_are_enforced() {
        // Tag cut short, or no payload after it.
        assert_eq!(Frame::decode(&[4, 1, 2, 3]), Err(FrameError::Truncated));
        assert_eq!(Frame::decode(&[4; 9]), Err(FrameError::EmptyPayload));
        // The largest payload fits; one byte more does not, either way.
        let max = vec![1u8; MAX_PAYLOAD];
        let f = Frame::Bridge {
            tag: 9,
            payload: &max,
        };
        let bytes = f.encode().unwrap();
        assert_eq!(bytes.len(), 1 + TAG_LEN + MAX_PAYLOAD);
        assert_eq!(Frame::decode(&bytes).unwrap(), f);
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Frame::decode(&long),
            Err(FrameError::TooLong(2 + TAG_LEN + MAX_PAYLOAD))
        );
        let over = vec![1u8; MAX_PAYLOAD + 1];
        assert!(
            Frame::Bridge {
                tag: 9,
                payload: &over
            }
            .encode()
            .is_err()
        );
        assert_eq!(
            Frame::Bridge {
                tag: 9,
                payload: &[]
            }
            .encode(),
            Err(FrameError::EmptyPayload)
        );
        // A bridge frame is not a data frame: the relay's rewrite refuses it.
        let mut b = Frame::Bridge {
            tag: 1,
            payload: &[0; 40],
        }
        .encode()
        .unwrap();
        assert!(rewrite_data_source(&mut b, &[0; 32]).is_err());
    }

    #[test]
    fn rewrite_replaces_destination_with_source() {
        let mut b = Frame::Data {
            peer: [1; 32],
            payload: b"x",
        }
        .encode()
        .unwrap();
        let dst = rewrite_data_source(&mut b, &[2; 32]).unwrap();
        assert_eq!(dst, [1; 32]);
        assert_eq!(
            Frame::decode(&b).unwrap(),
            Frame::Data {
                peer: [2; 32],
                payload: b"x"
            }
        );
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if let Some(b) = buf.first_mut() {
                *b %= 6;
            }
            let _ = Frame::decode(&buf);
            let _ = rewrite_data_source(&mut buf, &[0; 32]);
        }
    }
}
