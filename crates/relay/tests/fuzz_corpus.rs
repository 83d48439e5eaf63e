//! Replays what `cargo fuzz` found for this crate (`fuzz/`, run by `scripts/fuzz`)
//! on stable Rust, through the same bodies the fuzz targets call
//! (`drawbridge_relay::fuzz`): the stored, minimised seeds (`fuzz/seeds/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`, kept after the fix).

fn replay(target: &str, body: fn(&[u8])) {
    drawbridge_proto::fuzz::replay_stored(env!("CARGO_MANIFEST_DIR"), target, body);
}

#[test]
fn stored_token_verify_inputs_pass() {
    replay("token_verify", drawbridge_relay::fuzz::token_verify);
}

#[test]
fn stored_bridge_input_inputs_pass() {
    replay("bridge_input", drawbridge_relay::fuzz::bridge_input);
}
