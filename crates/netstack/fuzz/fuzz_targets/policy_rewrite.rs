#![no_main]
//! See `drawbridge_netstack::fuzz::policy_rewrite` (the body, shared with the replay test).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drawbridge_netstack::fuzz::policy_rewrite(data));
