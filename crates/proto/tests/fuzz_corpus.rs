//! Replays what `cargo fuzz` found for this crate (`fuzz/`, run by `scripts/fuzz`)
//! on stable Rust, through the same bodies the fuzz targets call
//! (`drawbridge_proto::fuzz`): the stored, minimised seeds (`fuzz/seeds/<target>/`) and
//! every crash ever found (`fuzz/regressions/<target>/`, kept after the fix).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("read a stored input");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{} fails again", path.display());
            }
            seeds += usize::from(dir == "seeds");
        }
    }
    assert!(seeds > 0, "no stored seeds for {target}");
}

#[test]
fn stored_channel_messages_inputs_pass() {
    replay("channel_messages", drawbridge_proto::fuzz::channel_messages);
}

#[test]
fn stored_api_requests_inputs_pass() {
    replay("api_requests", drawbridge_proto::fuzz::api_requests);
}
