#![no_main]
//! See `drawbridge_proto::fuzz::api_requests` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_proto::fuzz::api_requests(data));
