//! STUN (RFC 5389/8489) binding helpers on top of the `stun_codec` crate.
//!
//! Used by the engine (client side: build requests, read XOR-MAPPED-ADDRESS) and by the
//! relay crate's STUN service and the simulated network (server side: answer requests).

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, XorMappedAddress};
use stun_codec::rfc5389::{Attribute, methods::BINDING};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

/// Largest STUN message we are willing to parse.
pub const MAX_STUN_LEN: usize = 1024;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Cheap classification for demultiplexing STUN and WireGuard on one socket:
/// STUN messages have the two top bits clear, a length multiple of 4 and the magic cookie.
pub fn looks_like_stun(buf: &[u8]) -> bool {
    buf.len() >= 20
        && buf.len() <= MAX_STUN_LEN
        && buf[0] & 0xC0 == 0
        && buf[4..8] == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 20 == buf.len()
}

fn decode(buf: &[u8]) -> Option<Message<Attribute>> {
    if !looks_like_stun(buf) {
        return None;
    }
    let mut decoder = MessageDecoder::<Attribute>::new();
    decoder.decode_from_bytes(buf).ok()?.ok()
}

/// Encodes a binding request with the given transaction id.
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let msg = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .unwrap_or_default()
}

/// Parses a binding success response: returns its transaction id and the mapped address
/// (XOR-MAPPED-ADDRESS preferred, MAPPED-ADDRESS accepted). `None` for anything else.
pub fn parse_binding_response(buf: &[u8]) -> Option<([u8; 12], SocketAddr)> {
    let msg = decode(buf)?;
    if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
        return None;
    }
    let addr = msg
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()))?;
    let mut txid = [0u8; 12];
    txid.copy_from_slice(msg.transaction_id().as_bytes());
    Some((txid, addr))
}

/// Server side: answers a binding request from `from` with a success response carrying
/// XOR-MAPPED-ADDRESS. Returns `None` (ignore) for anything that is not a valid binding request.
pub fn answer_binding_request(buf: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let req = decode(buf)?;
    if req.class() != MessageClass::Request || req.method() != BINDING {
        return None;
    }
    let mut resp =
        Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, req.transaction_id());
    resp.add_attribute(XorMappedAddress::new(from));
    MessageEncoder::new().encode_into_bytes(resp).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn binding_request_is_answered_with_the_observed_address() {
        let req = binding_request([9; 12]);
        assert!(looks_like_stun(&req));
        let from: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let resp = answer_binding_request(&req, from).unwrap();
        assert_eq!(parse_binding_response(&resp), Some(([9; 12], from)));
        let from6: SocketAddr = "[::1]:5353".parse().unwrap();
        let resp6 = answer_binding_request(&req, from6).unwrap();
        assert_eq!(parse_binding_response(&resp6), Some(([9; 12], from6)));
    }

    #[test]
    fn responses_and_wireguard_packets_are_not_answered() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let resp = answer_binding_request(&binding_request([1; 12]), from).unwrap();
        assert!(answer_binding_request(&resp, from).is_none());
        let wg = [
            1u8, 0, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
        ];
        assert!(!looks_like_stun(&wg));
        assert!(answer_binding_request(&wg, from).is_none());
        assert!(parse_binding_response(&binding_request([1; 12])).is_none());
    }

    #[test]
    fn random_and_mutated_bytes_never_panic_the_parsers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let valid = answer_binding_request(&binding_request([3; 12]), from).unwrap();
        for i in 0..20_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..120);
                let mut b: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                if b.len() >= 8 {
                    b[4..8].copy_from_slice(&MAGIC_COOKIE);
                    b[0] &= 0x3F;
                }
                b
            } else {
                let mut b = valid.clone();
                let idx = rng.gen_range(0..b.len());
                b[idx] = rng.r#gen();
                b
            };
            let _ = answer_binding_request(&buf, from);
            let _ = parse_binding_response(&buf);
        }
    }
}
