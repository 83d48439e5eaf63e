//! Bodies of the `cargo fuzz` targets in `crates/proto/fuzz`, shared with the
//! replay test (`tests/fuzz_corpus.rs`) that runs the stored corpus and every
//! crash found on stable Rust. Not part of the API.

use crate::api::*;
use crate::channel::*;
use crate::model::{AccountSettings, NatMapping, Target};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Whatever parses writes back as JSON that parses again to the same value, and
/// the value's own checks run without panicking.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8], check: impl Fn(&T)) {
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return;
    };
    check(&v);
    let once = serde_json::to_vec(&v).expect("an accepted value serialises");
    let again: T = serde_json::from_slice(&once)
        .unwrap_or_else(|e| panic!("what was accepted is accepted again: {e}"));
    assert_eq!(
        serde_json::to_vec(&again).expect("serialises"),
        once,
        "round trip changed the value"
    );
}

fn targets(ts: &[Target]) {
    for t in ts {
        let again: Target = t.to_string().parse().expect("a target's text parses");
        assert_eq!(&again, t);
        let _ = t.covers(t);
    }
}

fn nat(ms: &[NatMapping]) {
    for m in ms {
        let _ = m.check();
    }
}

/// `fuzz_targets/channel_messages.rs`: one text frame as every message type of the
/// edge and client channels (both directions).
pub fn channel_messages(data: &[u8]) {
    round_trip::<EdgeToServer>(data, |_| {});
    round_trip::<ServerToEdge>(data, |m| {
        if let ServerToEdge::Sessions { sessions, .. } = m {
            for s in sessions {
                targets(&s.targets);
                nat(&s.nat);
            }
        }
    });
    round_trip::<ClientToServer>(data, |_| {});
    round_trip::<ServerToClient>(data, |m| {
        if let ServerToClient::Update(j) = m {
            for d in &j.devices {
                targets(&d.targets);
            }
        }
    });
    round_trip::<JoinRequest>(data, |_| {});
}

/// `fuzz_targets/api_requests.rs`: one body as every request type of `/api/v1`.
pub fn api_requests(data: &[u8]) {
    round_trip::<SetupRequest>(data, |_| {});
    round_trip::<LoginRequest>(data, |_| {});
    round_trip::<TotpCode>(data, |_| {});
    round_trip::<PasswordChangeRequest>(data, |_| {});
    round_trip::<UpdateAccount>(data, |_| {});
    round_trip::<CreateUser>(data, |_| {});
    round_trip::<UpdateUser>(data, |_| {});
    round_trip::<CreateApiToken>(data, |_| {});
    round_trip::<CreateNamed>(data, |_| {});
    round_trip::<CreateGrant>(data, |_| {});
    round_trip::<CreateDevice>(data, |d| {
        targets(&d.firewall);
        nat(&d.nat);
    });
    round_trip::<UpdateDevice>(data, |d| {
        targets(d.firewall.as_deref().unwrap_or_default());
        nat(d.nat.as_deref().unwrap_or_default());
    });
    round_trip::<CreateLogEntry>(data, |_| {});
    round_trip::<CreateFleetKey>(data, |_| {});
    round_trip::<EnrollRequest>(data, |_| {});
    round_trip::<CertificateFetch>(data, |_| {});
    round_trip::<SessionDevice>(data, |d| targets(&d.targets));
    round_trip::<PrepareSession>(data, |s| {
        for d in &s.devices {
            targets(&d.targets);
        }
    });
    round_trip::<AdhocSession>(data, |_| {});
    round_trip::<SessionFilter>(data, |_| {});
    round_trip::<AuditQuery>(data, |_| {});
    round_trip::<Decision>(data, |_| {});
    round_trip::<AccountSettings>(data, |s| {
        let _ = s.check();
    });
}

/// Replays the stored inputs of one fuzz target of the crate at `crate_dir`
/// (`fuzz/seeds/<target>/`, the minimised corpus, and `fuzz/regressions/<target>/`,
/// every crash ever found) through `body` on stable Rust; panics naming the first
/// input that fails, or when the target has no stored seeds. Each crate's
/// `tests/fuzz_corpus.rs` calls it with its own targets.
pub fn replay_stored(crate_dir: &str, target: &str, body: fn(&[u8])) {
    let root = std::path::Path::new(crate_dir).join("fuzz");
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
