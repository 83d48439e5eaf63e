#![no_main]
//! See `drawbridge_tunnel::fuzz::engine_input` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_tunnel::fuzz::engine_input(data));
