#![no_main]
//! Relay frame decoder and source rewrite: must never panic, and a decoded DATA frame must
//! re-encode to the same bytes.
use drawbridge_tunnel::frame::{Frame, rewrite_data_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::decode(data) {
        let again = f.encode().expect("a decoded frame re-encodes");
        assert_eq!(again, data);
    }
    let mut buf = data.to_vec();
    let _ = rewrite_data_source(&mut buf, &[7; 32]);
});
