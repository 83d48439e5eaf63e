//! The production topology on one machine (docs/deployment.md): PostgreSQL, three
//! control-plane replicas behind HAProxy (Debian's package: TCP round robin, health
//! checks on /healthz), two standalone relays, the replicas' embedded relays on
//! standby. The edge and the clients reach the control plane through HAProxy only.
//! A numbered TCP stream over a relayed tunnel, another over a direct one and a
//! Modbus poll run while faults come in turn: the replica the edge is connected
//! to dies, the relay the session uses dies, the database goes away and comes
//! back, every replica dies. Needs the test PostgreSQL and HAProxy (scripts/test
//! provides both); skips visibly without them.

use crate::common;

use common::cluster::{self, edges_connected};
use common::*;
use serde_json::{Value, json};
use sqlx::Connection;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Modbus reads through `port` every 100 ms: (good reads, failed reads).
struct Poll {
    ok: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl Poll {
    fn start(port: u16) -> Poll {
        let ok = Arc::new(AtomicU32::new(0));
        let failed = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            while !s.load(Ordering::Relaxed) {
                match rt.block_on(read_registers(addr)) {
                    Ok(r) if r == vec![1000, 1001, 1002, 1003] => o.fetch_add(1, Ordering::Relaxed),
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Poll { ok, failed, stop }
    }
    fn ok(&self) -> u32 {
        self.ok.load(Ordering::Relaxed)
    }
    fn failed(&self) -> u32 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for Poll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `stream` has moved on by `n` numbers, for at most `secs`.
fn flows(stream: &NumberedStream, n: u32, secs: u64) -> bool {
    let start = stream.count();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if stream.count() >= start + n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn sessions_on_edge(state: &Path) -> Vec<String> {
    let out = edge(state, &["status", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            v["sessions"].as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s["session_id"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn connect(config: &Path, sid: &str, relay_only: bool, forwards: &[String]) -> Proc {
    let mut cmd = client(config);
    cmd.args(["connect", sid, "--for-seconds", "600"]);
    if relay_only {
        cmd.arg("--relay-only");
    }
    for f in forwards {
        cmd.args(["-L", f]);
    }
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_cluster_behind_haproxy_keeps_tunnels_through_replica_relay_and_database_faults() {
    let Some((base, haproxy)) = cluster::cluster_tools(
        "a_cluster_behind_haproxy_keeps_tunnels_through_replica_relay_and_database_faults",
    ) else {
        return;
    };
    let database = cluster::TestDatabase::create(&base);
    let (db, db_url) = (database.name.clone(), database.url.clone());
    let admin_db = |sql: String| database.sql(&sql);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dbf = ["--database", db_url.as_str()];

    // Three replicas on one data directory (one CA, one secrets key) and one
    // database, each with its own embedded relay on standby; HAProxy in front.
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster::Cluster::start(dir.path(), &haproxy, &db_url, 3, true);
    let (data, public, metrics) = (cl.data.clone(), cl.public.clone(), cl.metrics.clone());
    let via_lb = Server {
        proc: None,
        data: data.clone(),
        port: cl.via_lb.port,
    };
    let api = Api::login(&via_lb);

    // Two standalone relays.
    let key = server_cli(&data, &["relay-key", "--database", &db_url])
        .trim()
        .to_string();
    let mut relay_procs = vec![
        (
            "eu-1",
            start_relay(dir.path(), &public, &data, &dbf, "eu-1", &key).1,
        ),
        (
            "eu-2",
            start_relay(dir.path(), &public, &data, &dbf, "eu-2", &key).1,
        ),
    ];
    wait("both relays are heard from", || {
        let r = relays(&data, &dbf);
        ["eu-1", "eu-2"]
            .iter()
            .all(|n| r.iter().any(|(name, st, _)| name == n && st == "up"))
    });

    // A device with a PLC and an echo service, its edge enrolled through HAProxy.
    let plc = plc_simulator();
    let echo = echo_server();
    let targets = json!([
        {"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()},
        {"address": "127.0.0.1", "protocol": "tcp", "ports": echo.port().to_string()},
    ]);
    let (s, v) = api.post(
        "/devices",
        json!({"name": "press-1", "lan_subnets": ["127.0.0.0/8"], "firewall": targets}),
    );
    assert_eq!(s, 200, "{v}");
    let device = v["device"]["id"].as_str().unwrap().to_string();
    let activation = v["activation"]["key"].as_str().unwrap().to_string();
    let state = dir.path().join("edge");
    let ca = data.join("ca.pem");
    let out = edge(
        &state,
        &[
            "enroll",
            "--server",
            &public,
            "--activation-key",
            &activation,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Online through HAProxy, and a session releasing both services.
    let (sid, _agent) = lan_session(&api, &device, &state, &[plc.port(), echo.port()], json!([]));
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();

    // One client relayed (numbered stream and Modbus), one on the direct path.
    let config = dir.path().join("client");
    login(&via_lb, &config);
    let (relayed_port, modbus_port, direct_port) = (free_port(), free_port(), free_port());
    let _relayed = connect(
        &config,
        &sid,
        true,
        &[
            format!("127.0.0.1:{relayed_port}:{echo}"),
            format!("127.0.0.1:{modbus_port}:{plc}"),
        ],
    );
    let config2 = dir.path().join("client2");
    login(&via_lb, &config2);
    let _direct = connect(
        &config2,
        &sid,
        false,
        &[format!("127.0.0.1:{direct_port}:{echo}")],
    );
    for c in [&config, &config2] {
        wait("the client's tunnel has a handshake", || {
            let out = client(c).args(["status", "--json"]).output().unwrap();
            serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| v[0]["devices"][0]["handshake_secs_ago"].is_u64())
        });
    }
    let relayed = NumberedStream::start(relayed_port);
    let direct = NumberedStream::start(direct_port);
    let poll = Poll::start(modbus_port);
    for (what, s, c) in [
        ("relayed", &relayed, &config),
        ("direct", &direct, &config2),
    ] {
        assert!(
            flows(s, 100, 20),
            "the {what} stream flows: {} numbers, broken: {:?}, client: {}, edge: {}",
            s.count(),
            s.broken(),
            String::from_utf8_lossy(
                &client(c)
                    .args(["status", "--json"])
                    .output()
                    .unwrap()
                    .stdout
            ),
            String::from_utf8_lossy(&edge(&state, &["status", "--json"]).stdout),
        );
    }
    wait("Modbus reads", || poll.ok() > 5);
    let relay_of = |sid: &str| -> Option<String> {
        rt.block_on(async {
            let mut c = sqlx::postgres::PgConnection::connect(&db_url).await.ok()?;
            sqlx::query_scalar("SELECT relay FROM sessions WHERE id = $1")
                .bind(sid)
                .fetch_one(&mut c)
                .await
                .ok()?
        })
    };
    let on_relay = relay_of(&sid).expect("the session has a relay");
    assert!(on_relay.starts_with("eu-"), "{on_relay}");

    // Fault 1: the replica holding the edge's channel dies. The edge reconnects
    // through HAProxy to another; the tunnels never notice; pushes still arrive.
    let holder = (0..3)
        .find(|i| edges_connected(metrics[*i]) == 1)
        .expect("one replica holds the edge");
    cl.kill(holder);
    let killed = Instant::now();
    wait("the edge is back on another replica", || {
        (0..3)
            .filter(|i| *i != holder)
            .map(|i| edges_connected(metrics[i]))
            .sum::<u32>()
            == 1
    });
    println!("edge back on another replica after {:?}", killed.elapsed());
    assert!(flows(&relayed, 100, 10) && flows(&direct, 100, 10));
    let (s, v) = api.post(
        "/sessions",
        json!({"name": "probe", "devices": [{"device_id": device, "targets": targets}], "users": [me]}),
    );
    assert_eq!(s, 200, "{v}");
    let probe = v["id"].as_str().unwrap().to_string();
    let (s, v) = api.post(&format!("/sessions/{probe}/start"), json!({}));
    assert_eq!(s, 200, "{v}");
    wait("the edge hears of a new session", || {
        sessions_on_edge(&state).contains(&probe)
    });
    cl.restart(holder);

    // Fault 2: the relay the session uses dies: moved within 10 s, the stream intact.
    let killed = Instant::now();
    relay_procs.retain(|(name, _)| *name != on_relay);
    let other = if on_relay == "eu-1" { "eu-2" } else { "eu-1" };
    wait("the session is on the other relay", || {
        relay_of(&sid).as_deref() == Some(other)
    });
    let moved = killed.elapsed();
    println!("relay {on_relay} killed: session moved after {moved:?}");
    assert!(moved <= Duration::from_secs(10), "{moved:?}");
    assert!(flows(&relayed, 100, 30), "the relayed stream goes on");
    assert_eq!(relayed.broken(), None);

    // Fault 3: the database goes away for 5 s and comes back. The replicas recover
    // on their own; what was committed is there once, the audit chain verifies,
    // and pushes cross replicas again.
    let audit_count = || -> i64 {
        rt.block_on(async {
            let mut c = sqlx::postgres::PgConnection::connect(&db_url)
                .await
                .unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
                .fetch_one(&mut c)
                .await
                .unwrap()
        })
    };
    let audit_before = audit_count();
    admin_db(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    admin_db(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        flows(&relayed, 50, 10) && flows(&direct, 50, 10),
        "tunnels go on without the database"
    );
    admin_db(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    wait("the API answers again through HAProxy", || {
        api.http
            .get(format!("{}/api/v1/me", api.base))
            .bearer_auth(&api.token)
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let (s, v) = api.post(&format!("/sessions/{probe}/end"), json!({}));
    assert_eq!(s, 200, "{v}");
    wait("the edge hears the probe session end", || {
        !sessions_on_edge(&state).contains(&probe)
    });
    // Each call through whichever replica HAProxy picks; the edge sits on one of them.
    for round in 0..3 {
        let (s, v) = api.post(
            "/sessions",
            json!({"name": format!("probe-{round}"), "devices": [{"device_id": device, "targets": targets}], "users": [me]}),
        );
        assert_eq!(s, 200, "{v}");
        let next = v["id"].as_str().unwrap().to_string();
        let (s, v) = api.post(&format!("/sessions/{next}/start"), json!({}));
        assert_eq!(s, 200, "{v}");
        wait("the edge hears the next probe session", || {
            sessions_on_edge(&state).contains(&next)
        });
        let (s, v) = api.post(&format!("/sessions/{next}/end"), json!({}));
        assert_eq!(s, 200, "{v}");
        wait("and its end", || !sessions_on_edge(&state).contains(&next));
    }
    let audit_after = audit_count();
    assert!(audit_after > audit_before, "{audit_before} → {audit_after}");
    let verify = server_cli(&data, &["audit", "verify", "--database", &db_url]);
    assert!(!verify.to_lowercase().contains("broken"), "{verify}");

    // Fault 4: every replica dies. Relayed and direct tunnels and the Modbus poll
    // go on; the switch at the machine still ends the session's tunnels.
    for i in 0..3 {
        cl.kill(i);
    }
    let polled = poll.ok();
    assert!(flows(&relayed, 300, 15), "relayed without any replica");
    assert!(flows(&direct, 300, 15), "direct without any replica");
    assert!(poll.ok() > polled + 10, "Modbus without any replica");
    assert_eq!(relayed.broken(), None);
    assert_eq!(direct.broken(), None);
    edge(&state, &["switch", "off"]);
    let failed = poll.failed();
    wait(
        "the switch stops the session's tunnel at the machine",
        || {
            let out = edge(&state, &["status", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
                v["switch_on"] == false
                    && v["sessions"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|s| s["state"] != "running"))
            })
        },
    );
    let stopped = (relayed.count(), direct.count());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        relayed.count() <= stopped.0 + 1 && direct.count() <= stopped.1 + 1,
        "nothing flows after the switch"
    );
    wait("and the Modbus poll fails", || poll.failed() > failed);
    drop(poll);
    let _ = relayed.stop();
    let _ = direct.stop();
}
