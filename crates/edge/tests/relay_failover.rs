//! The relay tier end to end with the real binaries: a control plane whose own
//! relay is on standby, two standalone relays (`drawbridge-server relay
//! --public-url`, TLS) announcing themselves, an edge and a relay-only client.
//! A numbered TCP stream runs through the relayed tunnel while the relay it uses
//! is killed: the session moves to the other relay within 10 s and the stream
//! goes on without a gap or a duplicate.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_relayed_tcp_stream_survives_the_death_of_its_relay() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let (server, api, device, state) = setup_with(
        dir.path(),
        free_port(),
        &[
            "--relay-standby".to_string(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
        ],
    );
    let data = server.data.clone();
    let key = server_cli(&data, &["relay-key"]).trim().to_string();
    let relay_metrics = [free_port(), free_port()];
    // Each drains up to 30 s when stopped with SIGTERM.
    let flags = |i: usize| {
        [
            "--metrics-listen".to_string(),
            format!("127.0.0.1:{}", relay_metrics[i]),
            "--drain-secs".into(),
            "30".into(),
        ]
    };
    let (f1, f2) = (flags(0), flags(1));
    let (f1, f2): (Vec<&str>, Vec<&str>) = (
        f1.iter().map(String::as_str).collect(),
        f2.iter().map(String::as_str).collect(),
    );
    let (url1, mut eu1) =
        start_relay_with(dir.path(), &server.url(), &data, &[], "eu-1", &key, &f1);
    let (url2, mut eu2) =
        start_relay_with(dir.path(), &server.url(), &data, &[], "eu-2", &key, &f2);
    wait("both relays are heard from", || {
        let r = relays(&data, &[]);
        ["eu-1", "eu-2"]
            .iter()
            .all(|n| r.iter().any(|(name, st, _)| name == n && st == "up"))
    });

    let plc = echo_server();
    let (sid, _agent) = lan_session(&api, &device, &state, &[plc.port()], json!([]));
    let config = dir.path().join("client");
    login(&server, &config);
    let lport = free_port();
    let _connect = Proc(
        client(&config)
            .args([
                "connect",
                &sid,
                "--relay-only",
                "--for-seconds",
                "120",
                "-L",
            ])
            .arg(format!("127.0.0.1:{lport}:{plc}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the client shows its tunnel with a handshake", || {
        let out = client(&config).args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v[0]["devices"][0]["handshake_secs_ago"].is_u64())
    });
    let on = relays(&data, &[])
        .into_iter()
        .find(|(_, _, n)| *n == 1)
        .map(|(name, _, _)| name)
        .expect("the session is on a relay");
    assert!(
        on == "eu-1" || on == "eu-2",
        "the session is on a standalone relay, not the standby one: {}",
        server_cli(&data, &["relays", "list"])
    );

    // A numbered stream through the tunnel: 4-byte counters, echoed back by the PLC.
    let stream = NumberedStream::start(lport);
    wait("the stream flows", || stream.count() > 100);

    // Both sides count: the relay its connections and sessions, the control plane
    // every relay's health.
    let on_metrics = relay_metrics[if on == "eu-1" { 0 } else { 1 }];
    wait("the relay's metrics show the session", || {
        let t = metrics_text(on_metrics);
        t.contains("relay_connections 2") && t.contains("relay_sessions 1")
    });
    let cp = metrics_text(metrics);
    assert!(
        cp.contains(&format!("relay_up{{relay=\"{on}\"}} 1")),
        "{cp}"
    );
    // Kill the relay the session is on.
    let killed = Instant::now();
    if on == "eu-1" {
        eu1.0.kill().unwrap();
    } else {
        eu2.0.kill().unwrap();
    }
    let other = if on == "eu-1" { "eu-2" } else { "eu-1" };
    let at_kill = stream.count();
    let mut moved = None;
    let mut resumed = None;
    while killed.elapsed() < Duration::from_secs(45) && (moved.is_none() || resumed.is_none()) {
        if moved.is_none()
            && relays(&data, &[])
                .iter()
                .any(|(name, _, n)| name == other && *n == 1)
        {
            moved = Some(killed.elapsed());
        }
        if resumed.is_none() && stream.count() > at_kill + 200 {
            resumed = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stream.broken(),
        None,
        "the stream has no gap and no duplicate"
    );
    let moved = moved.expect("the session moved to the other relay");
    println!("relay killed: session moved after {moved:?}, stream flowing again after {resumed:?}");
    assert!(moved <= Duration::from_secs(10), "moved after {moved:?}");
    let cp = metrics_text(metrics);
    assert!(
        cp.contains(&format!("relay_up{{relay=\"{on}\"}} 0")),
        "{cp}"
    );
    let resumed = resumed.expect("the stream flows again over the other relay");
    assert!(
        resumed <= Duration::from_secs(30),
        "resumed after {resumed:?}"
    );
    // Still relayed, on the new relay (both sides' status name it); the same session.
    let out = client(&config).args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["devices"][0]["path"], "relay", "{v}");
    let other_url = if on == "eu-1" { &url2 } else { &url1 };
    // (The status files are rewritten every second.)
    wait("both sides' status name the new relay", || {
        let c: Value = serde_json::from_slice(
            &client(&config)
                .args(["status", "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap_or_default();
        let e: Value =
            serde_json::from_slice(&edge(&state, &["status", "--json"]).stdout).unwrap_or_default();
        c[0]["relay"] == other_url.as_str() && e["sessions"][0]["relay"] == other_url.as_str()
    });
    assert_eq!(api.get(&format!("/sessions/{sid}"))["state"], "active");

    // The other relay is stopped as a service manager stops it (SIGTERM): it
    // drains. The session moves to the embedded standby relay, and the relay
    // exits by itself once its peers have left, long before its 30 s.
    let survivor = if on == "eu-1" { &mut eu2 } else { &mut eu1 };
    let asked = Instant::now();
    let at_term = stream.count();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &survivor.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait("the session moves to the standby relay", || {
        relays(&data, &[])
            .iter()
            .any(|(name, _, n)| name == "local" && *n == 1)
    });
    let moved_off = asked.elapsed();
    wait("the drained relay exits by itself", || {
        survivor.0.try_wait().unwrap().is_some()
    });
    let exited = asked.elapsed();
    assert!(survivor.0.wait().unwrap().success());
    println!("relay drained: session moved after {moved_off:?}, relay exited after {exited:?}");
    assert!(moved_off <= Duration::from_secs(5), "{moved_off:?}");
    assert!(exited < Duration::from_secs(30), "{exited:?}");
    wait("the stream flows on the standby relay", || {
        stream.count() > at_term + 200
    });
    assert_eq!(
        stream.stop(),
        None,
        "the stream has no gap and no duplicate"
    );
}
