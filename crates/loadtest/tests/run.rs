//! The real `drawbridge-loadtest` against the real `drawbridge-server` with a
//! handful of edges: it reports sensible figures, quickly. Cluster mode on the
//! test PostgreSQL; `--data` on a throwaway PostgreSQL of its own, with a
//! real polling edge.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drawbridge-loadtest"))
}

/// Binary `name` of package `package` next to the tool (where the tool looks
/// for it); built once when missing (`cargo test --workspace` has built it already).
fn sibling_bin(package: &str, name: &str) -> PathBuf {
    let dir = tool().parent().expect("bin dir").to_path_buf();
    let bin = dir.join(name);
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", package])
            .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    bin
}

fn server_bin() -> PathBuf {
    sibling_bin("drawbridge-server", "drawbridge-server")
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

fn haproxy() -> Option<PathBuf> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs `sql` on the test PostgreSQL's maintenance database.
fn admin_sql(base: &str, sql: &str) {
    use sqlx::Connection;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = sqlx::postgres::PgConnection::connect(base)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(sql).execute(&mut c).await.expect(sql);
    });
}

/// Drops the test's database when the test ends, also when it fails.
struct Database {
    base: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        admin_sql(
            &self.base,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[test]
fn two_replicas_behind_haproxy_take_over_the_edges_of_a_killed_one() {
    let base = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL").ok();
    let haproxy = haproxy();
    let required = |v: &str| std::env::var(v).as_deref() == Ok("1");
    if base.is_none() && required("DRAWBRIDGE_REQUIRE_POSTGRES") {
        panic!("DRAWBRIDGE_REQUIRE_POSTGRES=1 but DRAWBRIDGE_TEST_POSTGRES_URL is not set");
    }
    if haproxy.is_none() && required("DRAWBRIDGE_REQUIRE_HAPROXY") {
        panic!("DRAWBRIDGE_REQUIRE_HAPROXY=1 but haproxy is not installed");
    }
    let (Some(base), Some(haproxy)) = (base, haproxy) else {
        eprintln!(
            "SKIPPED two_replicas_behind_haproxy_take_over_the_edges_of_a_killed_one: \
             needs DRAWBRIDGE_TEST_POSTGRES_URL and haproxy (scripts/test provides both)"
        );
        return;
    };
    server_bin();
    let db = Database {
        base: base.clone(),
        name: format!("lt_{:016x}", std::process::id() as u64 * 7919 + now_nanos()),
    };
    admin_sql(&base, &format!("CREATE DATABASE {}", db.name));
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db.name);
    let out = Command::new(tool())
        .args(["--edges", "40", "--sessions", "5", "--idle-secs", "1"])
        .args(["--replicas", "2", "--kill-replica", "--json"])
        .args(["--source-ips", "127.0.0.2-127.0.0.3"])
        .args(["--connect-timeout-secs", "60"])
        .arg("--database")
        .arg(url.as_str())
        .arg("--haproxy-bin")
        .arg(&haproxy)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run drawbridge-loadtest");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["online"], 40, "{r:#}");
    assert_eq!(
        (r["replicas"].clone(), r["source_ips"].clone()),
        (2.into(), 2.into())
    );
    assert_eq!(r["database"], "PostgreSQL");
    assert_eq!(r["push"]["count"], 5, "{r:#}");
    // Both replicas took edges through HAProxy, and every edge is on one of them.
    let replicas = r["cluster"]["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2);
    let on: Vec<u64> = replicas
        .iter()
        .map(|p| p["edges_connected"].as_u64().expect("edges_connected"))
        .collect();
    assert!(
        on.iter().all(|&e| e > 0) && on.iter().sum::<u64>() == 40,
        "{r:#}"
    );
    assert!(r["cluster"]["haproxy"]["samples"].as_array().unwrap().len() == 7);
    // The killed replica's edges came back on the other one; pushes still arrive.
    let kill = &r["kill"];
    assert_eq!(kill["replica"], "replica-1");
    assert_eq!(kill["edges_on_it"].as_u64(), Some(on[0]), "{r:#}");
    assert!(kill["dropped"].as_u64().unwrap() >= on[0], "{r:#}");
    let back = kill["all_back_online_secs"]
        .as_f64()
        .expect("all back online");
    assert!(back > 0.0 && back < 60.0, "{back}");
    assert!(replicas[0]["edges_connected_after_kill"].is_null(), "{r:#}");
    assert_eq!(replicas[1]["edges_connected_after_kill"], 40, "{r:#}");
    assert_eq!(kill["push"]["count"], 5, "{r:#}");
    assert_eq!(kill["push_timeouts"], 0);
    assert_eq!(r["phases"].as_array().unwrap().len(), 6);
    let kill_phase = &r["phases"][4];
    assert!(kill_phase["replica_cpu_percent"][0].is_null(), "{r:#}");
    assert!(
        kill_phase["replica_cpu_percent"][1].as_f64().is_some(),
        "{r:#}"
    );
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// PostgreSQL's server binaries, which `--data` starts a throwaway cluster with.
fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").exists())
}

#[test]
fn data_mode_stores_and_syncs_every_pushed_point_once_and_measures_a_polling_edge() {
    if !postgres_installed() {
        assert!(
            std::env::var("DRAWBRIDGE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "DRAWBRIDGE_REQUIRE_POSTGRES=1 but PostgreSQL's server binaries are not installed"
        );
        eprintln!(
            "SKIPPED data_mode_stores_and_syncs_every_pushed_point_once_and_measures_a_polling_edge: \
             needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin; scripts/test installs them)"
        );
        return;
    }
    server_bin();
    sibling_bin("drawbridge-edge", "drawbridge-edge");
    // A tiny run: 3 edges push 100-record messages until 3,000 points are
    // stored (one in 50 samples bad, so qualities and absent values travel
    // too); the sync pulls them 500 a page; one real edge polls 20 tags.
    let out = Command::new(tool())
        .args(["--data", "--json", "--data-edges", "3", "--data-tags", "7"])
        .args([
            "--data-batch",
            "100",
            "--data-points",
            "3000",
            "--data-bad-every",
            "50",
        ])
        .args(["--data-warmup-secs", "0.2", "--data-secs", "1"])
        .args(["--data-sync-limit", "500"])
        .args(["--data-edge-tags", "20", "--data-edge-warmup-secs", "1"])
        .args(["--data-edge-secs", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run drawbridge-loadtest");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["complete"], true, "{r:#}");
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r:#}");
    assert!(
        r["database"].as_str().unwrap().contains("PostgreSQL"),
        "{r:#}"
    );
    // Every acknowledged point is in the database, and came back once, as sent.
    let ingest = &r["ingest"];
    let total = ingest["total_points"].as_u64().unwrap();
    assert!(total >= 3000 && total.is_multiple_of(100), "{r:#}");
    assert_eq!(ingest["stored_points"].as_u64(), Some(total), "{r:#}");
    assert_eq!(ingest["edges"], 3);
    assert!(ingest["window_secs"].as_f64().unwrap() >= 1.0, "{r:#}");
    assert!(ingest["points_per_sec"].as_f64().is_some(), "{r:#}");
    assert!(ingest["server_cpu_percent"].as_f64().is_some(), "{r:#}");
    assert!(ingest["postgres_cpu_percent"].as_f64().is_some(), "{r:#}");
    let sync = &r["sync"];
    assert_eq!(sync["points"].as_u64(), Some(total), "{r:#}");
    assert!(sync["pages"].as_u64().unwrap() >= total / 500, "{r:#}");
    for p in [
        "unknown",
        "duplicates",
        "changed",
        "missing",
        "out_of_order",
    ] {
        assert_eq!(sync["problems"][p], 0, "{p}: {r:#}");
    }
    assert!(sync["target_secs"].as_f64().is_some(), "{r:#}");
    // The real edge polled all 20 tags from the simulated PLC, all good.
    let edge = &r["edge"];
    assert_eq!(edge["tags"], 20, "{r:#}");
    assert_eq!(edge["polled"], 20, "{r:#}");
    assert_eq!(edge["qualities"]["good"], 20, "{r:#}");
    assert!(edge["reads_per_sec"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(edge["cpu_percent"].as_f64().unwrap() >= 0.0, "{r:#}");
    assert!(edge["rss_mib_max"].as_f64().unwrap() > 1.0, "{r:#}");
}
