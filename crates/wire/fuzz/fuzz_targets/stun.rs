#![no_main]
//! See `drawbridge_wire::fuzz::stun` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_wire::fuzz::stun(data));
