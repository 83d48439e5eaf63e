//! Replays what `cargo fuzz` found for this crate (`fuzz/`, run by `scripts/fuzz`)
//! on stable Rust, through the same bodies the fuzz targets call
//! (`drawbridge_proto::fuzz`): the stored, minimised seeds (`fuzz/seeds/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`, kept after the fix).

fn replay(target: &str, body: fn(&[u8])) {
    drawbridge_proto::fuzz::replay_stored(env!("CARGO_MANIFEST_DIR"), target, body);
}

#[test]
fn stored_channel_messages_inputs_pass() {
    replay("channel_messages", drawbridge_proto::fuzz::channel_messages);
}

#[test]
fn stored_api_requests_inputs_pass() {
    replay("api_requests", drawbridge_proto::fuzz::api_requests);
}
