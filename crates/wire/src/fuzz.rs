//! Bodies of the `cargo fuzz` targets in `crates/wire/fuzz`, shared with the
//! replay test (`tests/fuzz_corpus.rs`) that runs the stored corpus and every
//! crash found on stable Rust. Not part of the API.

use crate::frame::{Frame, rewrite_data_source};
use crate::stun::{answer_binding_request, parse_binding_response};

/// `fuzz_targets/relay_frame.rs`: the relay frame decoder and source rewrite never
/// panic, and a decoded frame re-encodes to the same bytes.
pub fn relay_frame(data: &[u8]) {
    if let Ok(f) = Frame::decode(data) {
        let again = f.encode().expect("a decoded frame re-encodes");
        assert_eq!(again, data);
    }
    let mut buf = data.to_vec();
    let _ = rewrite_data_source(&mut buf, &[7; 32]);
}

/// `fuzz_targets/stun.rs`: STUN parsing on both sides (server answering, client
/// reading responses) never panics; an answer parses.
pub fn stun(data: &[u8]) {
    let from = "127.0.0.1:3478".parse().expect("literal");
    if let Some(resp) = answer_binding_request(data, from) {
        assert!(parse_binding_response(&resp).is_some());
    }
    let _ = parse_binding_response(data);
}
