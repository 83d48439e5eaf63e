//! The real `drawbridge-loadtest` against the real `drawbridge-server` with a
//! handful of edges: it reports sensible figures, quickly.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drawbridge-loadtest"))
}

/// `drawbridge-server` next to the tool (where the tool looks for it); built
/// once when missing (`cargo test --workspace` has built it already).
fn server_bin() -> PathBuf {
    let dir = tool().parent().expect("bin dir").to_path_buf();
    let bin = dir.join("drawbridge-server");
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "drawbridge-server"])
            .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    bin
}

#[test]
fn twenty_edges_connect_and_every_session_push_arrives() {
    server_bin();
    let started = Instant::now();
    let out = Command::new(tool())
        .args([
            "--edges",
            "20",
            "--sessions",
            "5",
            "--idle-secs",
            "1",
            "--json",
        ])
        .args(["--connect-timeout-secs", "30"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run drawbridge-loadtest");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["edges"], 20);
    assert_eq!(r["online"], 20, "{r:#}");
    assert_eq!(r["database"], "SQLite");
    let all_online = r["all_online_secs"].as_f64().expect("all online");
    assert!(all_online > 0.0 && all_online < 30.0, "{all_online}");
    assert!(r["all_switched_on_secs"].as_f64().is_some(), "{r:#}");
    assert_eq!(r["connect_failures"], 0, "{r:#}");
    assert_eq!(r["edge_handshake"]["count"], 20);
    // Every push arrived, in a plausible time, and never before the start was sent.
    assert_eq!(r["push"]["count"], 5, "{r:#}");
    assert_eq!(r["push_timeouts"], 0);
    let (p50, p99, max) = (
        r["push"]["p50_ms"].as_f64().unwrap(),
        r["push"]["p99_ms"].as_f64().unwrap(),
        r["push"]["max_ms"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 10_000.0,
        "{r:#}"
    );
    // Five samples of the server, with memory, CPU time that only grows, and
    // the edges' connections among its descriptors once they are connected.
    let samples = r["server_samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 5);
    let cpu: Vec<f64> = samples
        .iter()
        .map(|s| s["cpu_secs"].as_f64().unwrap())
        .collect();
    assert!(cpu.windows(2).all(|w| w[0] <= w[1]), "{cpu:?}");
    assert!(
        samples
            .iter()
            .all(|s| s["rss_kib"].as_u64().unwrap() > 1024)
    );
    let fds = |i: usize| samples[i]["open_fds"].as_u64().unwrap();
    assert!(fds(2) >= fds(1) + 20, "{r:#}");
    let phases = r["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 4);
    let idle = &phases[2];
    assert!(idle["server_cpu_percent"].as_f64().is_some(), "{r:#}");
    assert!(idle["wall_secs"].as_f64().unwrap() >= 1.0);
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
