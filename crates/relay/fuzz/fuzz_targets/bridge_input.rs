#![no_main]
//! See `drawbridge_relay::fuzz::bridge_input` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_relay::fuzz::bridge_input(data));
