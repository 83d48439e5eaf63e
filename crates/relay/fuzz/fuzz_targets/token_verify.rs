#![no_main]
//! See `drawbridge_relay::fuzz::token_verify` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_relay::fuzz::token_verify(data));
