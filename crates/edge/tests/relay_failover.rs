//! The relay tier end to end with the real binaries: a control plane whose own
//! relay is on standby, two standalone relays (`drawbridge-server relay
//! --public-url`, TLS) announcing themselves, an edge and a relay-only client.
//! A numbered TCP stream runs through the relayed tunnel while the relay it uses
//! is killed: the session moves to the other relay within 10 s and the stream
//! goes on without a gap or a duplicate.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `drawbridge-server ARGS --data-dir DATA`'s standard output.
fn server_cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `relays list` as (name, state, sessions).
fn relays(data: &Path) -> Vec<(String, String, u64)> {
    server_cli(data, &["relays", "list"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.to_string(),
                f.get(5)?.parse().ok()?,
            ))
        })
        .collect()
}

/// A standalone relay with TLS (the server's certificate) announcing itself as `name`.
fn start_relay(dir: &Path, server: &Server, name: &str, key: &str) -> (String, Proc) {
    let data = &server.data;
    let cred = dir.join(format!("{name}.cred"));
    std::fs::write(
        &cred,
        server_cli(data, &["relay-credential", "--name", name]),
    )
    .unwrap();
    let port = free_port();
    let url = format!("wss://127.0.0.1:{port}/relay/v1");
    let mut cmd = Command::new(server_bin());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let child = cmd
        .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--stun-listen", &format!("127.0.0.1:{}", free_udp_port())])
        .args(["--verifying-key", key, "--tls-cert"])
        .arg(data.join("server.pem"))
        .arg("--tls-key")
        .arg(data.join("server.key"))
        .args(["--control-url", &server.url(), "--credential-file"])
        .arg(&cred)
        .arg("--ca-file")
        .arg(data.join("ca.pem"))
        .args([
            "--public-url",
            &url,
            "--region",
            "eu-central",
            "--drain-secs",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (url, Proc(child))
}

#[test]
fn a_relayed_tcp_stream_survives_the_death_of_its_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) =
        setup_with(dir.path(), free_port(), &["--relay-standby".to_string()]);
    let data = server.data.clone();
    let key = server_cli(&data, &["relay-key"]).trim().to_string();
    let (_, mut eu1) = start_relay(dir.path(), &server, "eu-1", &key);
    let (_, mut eu2) = start_relay(dir.path(), &server, "eu-2", &key);
    wait("both relays are heard from", || {
        let r = relays(&data);
        ["eu-1", "eu-2"]
            .iter()
            .all(|n| r.iter().any(|(name, st, _)| name == n && st == "up"))
    });

    let plc = echo_server();
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"firewall": [{"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()}]})),
    );
    assert_eq!(code, 200, "{v}");
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let (s, v) = api.post(
        "/sessions",
        json!({"name": "plc", "devices": [{"device_id": device, "targets": [{"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()}]}], "users": [me]}),
    );
    assert_eq!(s, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
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
    let on = relays(&data)
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
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = conn.try_clone().unwrap();
    let sent = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let sent = sent.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if conn.write_all(&n.to_be_bytes()).is_err() {
                    return;
                }
                n += 1;
                sent.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // (count received, time of the last one); a gap or a duplicate ends the reader.
    let got = Arc::new(Mutex::new((0u32, Instant::now(), None::<String>)));
    {
        let got = got.clone();
        std::thread::spawn(move || {
            let mut expect = 0u32;
            let mut b = [0u8; 4];
            while reader.read_exact(&mut b).is_ok() {
                let n = u32::from_be_bytes(b);
                let mut g = got.lock().unwrap();
                if n != expect {
                    g.2 = Some(format!("expected {expect}, got {n}"));
                    return;
                }
                expect += 1;
                g.0 = expect;
                g.1 = Instant::now();
            }
        });
    }
    wait("the stream flows", || got.lock().unwrap().0 > 100);

    // Kill the relay the session is on.
    let killed = Instant::now();
    if on == "eu-1" {
        eu1.0.kill().unwrap();
    } else {
        eu2.0.kill().unwrap();
    }
    let other = if on == "eu-1" { "eu-2" } else { "eu-1" };
    let at_kill = got.lock().unwrap().0;
    let mut moved = None;
    let mut resumed = None;
    while killed.elapsed() < Duration::from_secs(45) && (moved.is_none() || resumed.is_none()) {
        if moved.is_none()
            && relays(&data)
                .iter()
                .any(|(name, _, n)| name == other && *n == 1)
        {
            moved = Some(killed.elapsed());
        }
        if resumed.is_none() && got.lock().unwrap().0 > at_kill + 200 {
            resumed = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let (count, _, broken) = got.lock().unwrap().clone();
    assert_eq!(broken, None, "the stream has no gap and no duplicate");
    let moved = moved.expect("the session moved to the other relay");
    println!(
        "relay killed: session moved after {moved:?}, stream flowing again after {resumed:?}; {count} numbers through"
    );
    assert!(moved <= Duration::from_secs(10), "moved after {moved:?}");
    let resumed = resumed.expect("the stream flows again over the other relay");
    assert!(
        resumed <= Duration::from_secs(30),
        "resumed after {resumed:?}"
    );
    // Still relayed, on the new relay; the same session.
    let out = client(&config).args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["devices"][0]["path"], "relay", "{v}");
    assert_eq!(api.get(&format!("/sessions/{sid}"))["state"], "active");
}
