//! Replays what `cargo fuzz` found for this crate (`fuzz/`, run by `scripts/fuzz`)
//! on stable Rust, through the same bodies the fuzz targets call
//! (`drawbridge_wire::fuzz`): the stored, minimised seeds (`fuzz/seeds/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`, kept after the fix).

fn replay(target: &str, body: fn(&[u8])) {
    drawbridge_proto::fuzz::replay_stored(env!("CARGO_MANIFEST_DIR"), target, body);
}

#[test]
fn stored_relay_frame_inputs_pass() {
    replay("relay_frame", drawbridge_wire::fuzz::relay_frame);
}

#[test]
fn stored_stun_inputs_pass() {
    replay("stun", drawbridge_wire::fuzz::stun);
}
