#![no_main]
//! STUN parsing on both sides (server answering, client reading responses): never panics.
use drawbridge_tunnel::stun::{answer_binding_request, parse_binding_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from = "127.0.0.1:3478".parse().expect("literal");
    if let Some(resp) = answer_binding_request(data, from) {
        assert!(parse_binding_response(&resp).is_some());
    }
    let _ = parse_binding_response(data);
});
