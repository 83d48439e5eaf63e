//! Replays what `cargo fuzz` found for this crate (`fuzz/`, run by `scripts/fuzz`)
//! on stable Rust, through the same bodies the fuzz targets call
//! (`drawbridge_tunnel::fuzz`): the stored, minimised seeds (`fuzz/seeds/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`, kept after the fix).

fn replay(target: &str, body: fn(&[u8])) {
    drawbridge_proto::fuzz::replay_stored(env!("CARGO_MANIFEST_DIR"), target, body);
}

#[test]
fn stored_engine_input_inputs_pass() {
    replay("engine_input", drawbridge_tunnel::fuzz::engine_input);
}

#[test]
fn stored_signal_inputs_pass() {
    replay("signal", drawbridge_tunnel::fuzz::signal);
}
