//! The real `drawbridge-edge` against the real `drawbridge-server` on loopback:
//! enrolment, the outbound channel, the site switch (sessions only while it is
//! on; off ends them within seconds), on-site approval, reconnection after the
//! control plane restarts.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn the_switch_gates_sessions_and_turning_it_off_ends_them_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, device, state) = setup(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the identity key is private");
    }
    let _agent = edge_run(&state);
    wait("the device is online", || {
        api.get(&format!("/devices/{device}"))["status"]["online"] == true
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let s = session(&api, &device, &me);
    let (code, v) = api.post(&format!("/sessions/{s}/start"), json!({}));
    assert_eq!(code, 409, "the switch is OFF after enrolment: {v}");
    let out = edge(&state, &["switch", "on"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ON"));
    wait("the server sees the switch on", || {
        api.get(&format!("/devices/{device}"))["status"]["switch_on"] == true
    });
    let (code, v) = api.post(&format!("/sessions/{s}/start"), json!({}));
    assert_eq!(code, 200, "{v}");
    wait("the edge runs the session", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v["sessions"].as_array().is_some_and(|a| a.len() == 1))
    });
    // The status also says how much memory the agent's data takes.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let out = edge(&state, &["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let heap = v["heap_bytes"].as_u64().expect("heap_bytes in the status");
        assert!((64 * 1024..1024 * 1024 * 1024).contains(&heap), "{heap}");
        let text = String::from_utf8_lossy(&edge(&state, &["status"]).stdout).to_string();
        assert!(text.contains("memory in use: "), "{text}");
    }
    let off = Instant::now();
    edge(&state, &["switch", "off"]);
    let mut ended = false;
    while off.elapsed() < Duration::from_secs(5) {
        if api.get(&format!("/sessions/{s}"))["state"] == "ended" {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ended, "switching off ends the session within 5 s");
    assert_eq!(
        api.get(&format!("/sessions/{s}"))["end_reason"],
        "site_switch"
    );
}

#[test]
fn on_site_approval_and_reconnection_after_the_control_plane_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, device, state) = setup(dir.path());
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let (code, _) = api.call(
        reqwest::Method::PATCH,
        "/account",
        Some(json!({"settings": {"dual_control": true}})),
    );
    assert_eq!(code, 200);
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let s = session(&api, &device, &me);
    let (_, v) = api.post(&format!("/sessions/{s}/start"), json!({}));
    assert_eq!(v["state"], "pending_approval");
    wait("the edge shows the pending session", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v["sessions"][0]["state"] == "pending_approval")
    });
    let out = edge(&state, &["approve", &s]);
    assert!(out.status.success());
    wait("approved on site", || {
        api.get(&format!("/sessions/{s}"))["state"] == "active"
    });
    let (_, audit) = api.call(reqwest::Method::GET, "/audit?action=session.approve", None);
    assert_eq!(audit[0]["actor"], format!("device:{device}"));
    // The control plane goes away: the edge keeps its session, says so, and comes back.
    server.stop();
    wait("the edge notices", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            v["connected"] == false && v["sessions"].as_array().is_some_and(|a| a.len() == 1)
        })
    });
    let server = Server::start(&server.data.clone(), server.port);
    let api = Api::login(&server);
    wait("the edge reconnects", || {
        api.get(&format!("/devices/{device}"))["status"]["online"] == true
    });
    wait("and is connected again", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["connected"] == true)
    });
}

#[test]
fn a_client_connects_to_the_edge_through_the_relay_and_the_session_end_tears_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let s = session(&api, &device, &me);
    let config = dir.path().join("client");
    login(&server, &config);
    // `connect` starts the prepared session itself and stays in the foreground.
    let connect = Proc(
        client(&config)
            // Userspace mode (no TUN even when the tests run as root).
            .args([
                "connect",
                &s,
                "--for-seconds",
                "60",
                "--socks5",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the session is active", || {
        api.get(&format!("/sessions/{s}"))["state"] == "active"
    });
    // A WireGuard session forms between the client and the edge: both report a handshake on a path.
    wait("the edge sees the client's tunnel", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            let p = &v["sessions"][0]["peers"][0];
            (p["path"] == "relay" || p["path"] == "direct") && p["handshake_secs_ago"].is_u64()
        })
    });
    wait("the client shows its tunnel", || {
        let out = client(&config).args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            let d = &v[0]["devices"][0];
            (d["path"] == "relay" || d["path"] == "direct") && d["handshake_secs_ago"].is_u64()
        })
    });
    // Ending the session ends the client's tunnel and the edge's.
    let (code, _) = api.post(&format!("/sessions/{s}/end"), json!({}));
    assert_eq!(code, 200);
    let mut connect = connect;
    wait("connect exits", || connect.0.try_wait().unwrap().is_some());
    wait("the edge drops the session", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v["sessions"].as_array().is_some_and(|a| a.is_empty()))
    });
    let (_, audit) = api.call(reqwest::Method::GET, "/audit?action=tunnel.", None);
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        vec!["tunnel.up", "tunnel.down"],
        "the tunnel is on the record"
    );
}

#[test]
fn released_targets_are_reachable_through_the_tunnel_by_forward_and_socks5_and_nothing_else() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let plc = echo_server();
    let other = echo_server(); // on the same "LAN", but not released
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
    let sport = free_port();
    let _connect = Proc(
        client(&config)
            .args(["connect", &sid, "--for-seconds", "60", "-L"])
            .arg(format!("127.0.0.1:{lport}:{plc}"))
            .args(["--socks5", &format!("127.0.0.1:{sport}")])
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
    // Through the -L forward: a 1 MB round trip, byte for byte.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let data = payload.clone();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == payload, "the echo through the tunnel is exact");
    // Through SOCKS5: the released target works, the other port and another address do not.
    let (code, mut s5) = socks_connect(([127, 0, 0, 1], sport).into(), plc);
    assert_eq!(code, 0, "released target via SOCKS5");
    s5.write_all(b"modbus?").unwrap();
    let mut buf = [0u8; 7];
    s5.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"modbus?");
    let (code, _) = socks_connect(([127, 0, 0, 1], sport).into(), other);
    assert_ne!(code, 0, "a port that is not released is unreachable");
    let (code, _) = socks_connect(
        ([127, 0, 0, 1], sport).into(),
        ([127, 0, 0, 2], plc.port()).into(),
    );
    assert_ne!(code, 0, "an address that is not released is unreachable");
    // The edge counted the traffic.
    wait("the edge reports bytes", || {
        let out = edge(&state, &["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            v["sessions"][0]["peers"][0]["bytes_to_device"]
                .as_u64()
                .unwrap_or(0)
                > 1_000_000
                && v["sessions"][0]["forwarder"]["tcp_flows_total"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 2
        })
    });
}

#[test]
fn a_relay_only_client_keeps_its_tunnel_on_the_relay_where_a_direct_path_would_work() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
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
            .args(["connect", &sid, "--relay-only", "--for-seconds", "60", "-L"])
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
    let payload = vec![7u8; 200_000];
    let mut c = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == payload, "the echo through the tunnel is exact");
    // On one host a direct path answers within a second or two when candidates
    // are exchanged (the direct-path upgrade takes about 0.1 s); give it longer.
    std::thread::sleep(Duration::from_secs(4));
    let out = client(&config).args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["devices"][0]["path"], "relay", "{v}");
    let out = edge(&state, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sessions"][0]["peers"][0]["path"], "relay", "{v}");
}

#[test]
fn modbus_polling_goes_on_when_the_control_plane_dies_and_the_tunnel_comes_back_after_an_edge_restart()
 {
    use tokio_modbus::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, device, state) = setup(dir.path());
    let plc = plc_simulator();
    let target =
        json!([{"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()}]);
    let (code, _) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"firewall": target})),
    );
    assert_eq!(code, 200);
    edge(&state, &["switch", "on"]);
    let agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let (_, v) = api.post("/sessions", json!({"name": "plc", "devices": [{"device_id": device, "targets": target}], "users": [me]}));
    let sid = v["id"].as_str().unwrap().to_string();
    let config = dir.path().join("client");
    login(&server, &config);
    let lport = free_port();
    let sport = free_port();
    let _connect = Proc(
        client(&config)
            .args(["connect", &sid, "--for-seconds", "120", "-L"])
            .arg(format!("{lport}:{plc}"))
            .args(["--socks5", &sport.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let local: std::net::SocketAddr = ([127, 0, 0, 1], lport).into();
    wait("the PLC answers through the -L forward", || {
        rt.block_on(read_registers(local))
            .is_ok_and(|r| r == vec![1000, 1001, 1002, 1003])
    });
    // Through SOCKS5 as well: the Modbus client speaks over the proxied stream.
    let (code, s5) = socks_connect(([127, 0, 0, 1], sport).into(), plc);
    assert_eq!(code, 0);
    s5.set_nonblocking(true).unwrap();
    let regs = rt.block_on(async {
        let stream = tokio::net::TcpStream::from_std(s5).unwrap();
        let mut ctx = tcp::attach(stream);
        ctx.read_holding_registers(2, 2).await
    });
    assert_eq!(regs.unwrap().unwrap(), vec![1002, 1003]);
    // With STUN on loopback both ends find each other directly.
    wait("the tunnel goes direct", || {
        let out = client(&config).args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v[0]["devices"][0]["path"] == "direct")
    });
    // Keep one Modbus connection polling while the control plane (and its relay) goes away.
    let mut ctx = rt.block_on(tcp::connect(local)).unwrap();
    server.stop();
    let mut last = 0;
    for _ in 0..20 {
        let v = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(100, 1)).await
        });
        let v = v
            .expect("answer in time")
            .expect("transport")
            .expect("no exception")[0];
        assert!(v >= last, "the PLC's counter moves on");
        last = v;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The control plane comes back; then the edge restarts: the tunnel comes back, on
    // the same session key (kept in the state directory, private to the agent).
    let server = Server::start(&server.data.clone(), server.port);
    let api = Api::login(&server);
    wait("the edge reconnects", || {
        api.get(&format!("/devices/{device}"))["status"]["online"] == true
    });
    let key_file = state.join("session-keys").join(&sid);
    let key_before = std::fs::read_to_string(&key_file).expect("the session key is kept");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the session key is readable by others: {mode:o}"
        );
    }
    drop(agent);
    let _agent = edge_run(&state);
    wait("polling works again after the edge restart", || {
        rt.block_on(read_registers(local))
            .is_ok_and(|r| r.len() == 4)
    });
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key_before,
        "the edge kept its session key across the restart"
    );
    assert_eq!(api.get(&format!("/sessions/{sid}"))["state"], "active");
    // The session ends: its key is deleted.
    let (code, _) = api.post(&format!("/sessions/{sid}/end"), json!({}));
    assert_eq!(code, 200);
    wait("the ended session's key is deleted", || !key_file.exists());
}

/// A test HTTP proxy on loopback that only does CONNECT with basic auth
/// (`plant:secret`); counts the tunnels it opened and the refusals.
fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let ok = std::sync::Arc::new(AtomicUsize::new(0));
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let (ok2, refused2) = (ok.clone(), refused.clone());
    // base64("plant:secret")
    const AUTH: &str = "Basic cGxhbnQ6c2VjcmV0";
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (ok, refused) = (ok2.clone(), refused2.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let target = head
                    .first()
                    .and_then(|l| l.strip_prefix("CONNECT "))
                    .and_then(|l| l.split(' ').next())
                    .map(str::to_string);
                let authed = head.iter().any(|h| {
                    h.to_ascii_lowercase().starts_with("proxy-authorization:") && h.ends_with(AUTH)
                });
                let mut w = c.try_clone().unwrap();
                let (Some(target), true) = (target, authed) else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = w.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                };
                let Ok(up) = std::net::TcpStream::connect(target.as_str()) else {
                    return;
                };
                ok.fetch_add(1, Ordering::SeqCst);
                let _ = w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut up_r, mut up_w) = (up.try_clone().unwrap(), up);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut w);
                });
                let _ = std::io::copy(&mut reader, &mut up_w);
            });
        }
    });
    (addr, ok, refused)
}

#[test]
fn the_edge_and_the_client_reach_the_server_through_an_http_proxy_with_basic_auth() {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let (proxy, tunnels, refusals) = connect_proxy();
    let plc = echo_server();
    let target =
        json!([{"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()}]);
    api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"firewall": target})),
    );
    edge(&state, &["switch", "on"]);
    // Wrong credentials: the proxy refuses and the edge stays offline.
    let bad = Proc(
        Command::new(edge_bin())
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
            .env("DRAWBRIDGE_PROXY", format!("http://plant:wrong@{proxy}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the proxy refuses the wrong credentials", || {
        refusals.load(Ordering::SeqCst) > 0
    });
    assert_eq!(
        api.get(&format!("/devices/{device}"))["status"]["online"],
        false
    );
    drop(bad);
    let _agent = Proc(
        Command::new(edge_bin())
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
            .env("DRAWBRIDGE_PROXY", format!("http://plant:secret@{proxy}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("online through the proxy", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    assert!(tunnels.load(Ordering::SeqCst) >= 1);
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let (_, v) = api.post("/sessions", json!({"name": "plc", "devices": [{"device_id": device, "targets": target}], "users": [me]}));
    let sid = v["id"].as_str().unwrap().to_string();
    let config = dir.path().join("client");
    login(&server, &config);
    let before = tunnels.load(Ordering::SeqCst);
    let lport = free_port();
    let _connect = Proc(
        client(&config)
            .env("DRAWBRIDGE_PROXY", format!("http://plant:secret@{proxy}"))
            .args(["connect", &sid, "--for-seconds", "60", "-L"])
            .arg(format!("{lport}:{plc}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("data flows", || {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", lport)) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 5];
        c.write_all(b"hello").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"hello"
    });
    // The client's API calls, session channel and relay connection, and the edge's relay, all went through it.
    assert!(
        tunnels.load(Ordering::SeqCst) >= before + 3,
        "{} tunnels",
        tunnels.load(Ordering::SeqCst)
    );
}

/// An operator panel's web server on a machine-LAN address (127.0.0.7).
fn hmi_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.7:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let body = "<html><title>press-1 HMI</title><body>cycle count 4711</body></html>";
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn an_hmi_is_reached_over_http_only_by_the_sessions_user_and_no_other_account_sees_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let hmi = hmi_server();
    let target = json!([{"address": hmi.ip().to_string(), "protocol": "tcp", "ports": hmi.port().to_string()}]);
    let (code, _) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"firewall": target})),
    );
    assert_eq!(code, 200);
    // alice (role user) may use the device; bob (role user) too, but the session is alice's.
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let (code, v) = api.post(
            "/users",
            json!({"username": name, "role": "user", "password": PASSWORD}),
        );
        assert_eq!(code, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (_, g) = api.post("/groups", json!({"name": "service"}));
    let (_, p) = api.post("/pools", json!({"name": "presses"}));
    let (g, p) = (g["id"].as_str().unwrap(), p["id"].as_str().unwrap());
    for u in &ids {
        let (code, _) = api.call(
            reqwest::Method::PUT,
            &format!("/groups/{g}/members/{u}"),
            None,
        );
        assert!(code == 200 || code == 204, "{code}");
    }
    let (code, _) = api.call(
        reqwest::Method::PUT,
        &format!("/pools/{p}/devices/{device}"),
        None,
    );
    assert!(code == 200 || code == 204, "{code}");
    let (code, v) = api.post(
        "/grants",
        json!({"group_id": g, "pool_id": p, "level": "restricted", "targets": target}),
    );
    assert_eq!(code, 200, "{v}");
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let (code, v) = api.post(
        "/sessions",
        json!({"name": "hmi-check", "devices": [{"device_id": device, "targets": target}], "users": [ids[0]]}),
    );
    assert_eq!(code, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();

    // A second account on the same server, with its own admin.
    let pw = dir.path().join("rival.pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = Command::new(server_bin())
        .args([
            "init",
            "--account",
            "rival",
            "--admin-user",
            "boss",
            "--admin-password-file",
        ])
        .arg(&pw)
        .arg("--data-dir")
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rival = dir.path().join("rival");
    login_as(&server, &rival, "rival", "boss");
    let listed = client(&rival).args(["sessions"]).output().unwrap();
    assert!(listed.status.success());
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("hmi-check"));
    for args in [
        vec!["session", "show", sid.as_str()],
        vec!["session", "start", sid.as_str()],
        vec![
            "connect",
            sid.as_str(),
            "--for-seconds",
            "5",
            "--socks5",
            "127.0.0.1:0",
        ],
    ] {
        let out = client(&rival).args(&args).output().unwrap();
        assert!(!out.status.success(), "another account: {args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no session") || err.contains("not found"),
            "{args:?}: the session does not exist for them: {err}"
        );
    }

    // alice connects and reads the HMI page through a local forward.
    let alice = dir.path().join("alice");
    login_as(&server, &alice, "acme", "alice");
    let lport = free_port();
    let mut connect = Proc(
        client(&alice)
            .args(["connect", &sid, "--for-seconds", "60", "-L"])
            .arg(format!("{lport}:{hmi}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    wait("the HMI page comes through the tunnel", || {
        http.get(format!("http://127.0.0.1:{lport}/"))
            .timeout(Duration::from_secs(5))
            .send()
            .and_then(|r| r.text())
            .is_ok_and(|t| t.contains("press-1 HMI") && t.contains("4711"))
    });
    // bob, a user of the same account, may neither join nor end alice's session.
    let bob = dir.path().join("bob");
    login_as(&server, &bob, "acme", "bob");
    let out = client(&bob)
        .args(["session", "end", &sid])
        .output()
        .unwrap();
    assert!(!out.status.success(), "bob cannot end alice's session");
    let out = client(&bob)
        .args([
            "connect",
            &sid,
            "--for-seconds",
            "5",
            "--socks5",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "bob cannot join alice's session");
    assert_eq!(api.get(&format!("/sessions/{sid}"))["state"], "active");
    // A service manager stops alice's `connect` (SIGTERM): it takes the same clean way
    // out as Ctrl-C and exits 0 instead of dying by the signal.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(connect.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait("connect exits after SIGTERM", || {
        connect.0.try_wait().unwrap().is_some()
    });
    let status = connect.0.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "connect stopped cleanly: {status:?}"
    );
    // alice can end her own.
    let out = client(&alice)
        .args(["session", "end", &sid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
