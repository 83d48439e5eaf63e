//! Taking rights away reaches running tunnels (DESIGN §2.10), end to end with
//! the real server, edge and clients on loopback: traffic flows through a
//! user's tunnel, an admin narrows their rights, and within 5 s the tunnel no
//! longer carries traffic to the target, while another user's session on the
//! same edge keeps flowing.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What narrows anna's rights.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// She becomes an auditor (tunnel closed by the server, peer dropped by the edge).
    Role,
    /// Her pool loses the device.
    Pool,
    /// The device's firewall no longer covers her target (the edge's forwarder cuts the flow).
    Firewall,
    /// The 1:1 NAT she reaches her target through goes away (the edge's forwarder cuts the flow).
    Nat,
}

/// An echo server on `ip` ("machine LAN" on loopback).
fn echo_on(ip: [u8; 4]) -> SocketAddr {
    let l = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

fn tcp_target(a: SocketAddr) -> Value {
    json!({"address": a.ip().to_string(), "protocol": "tcp", "ports": a.port().to_string()})
}

/// One round trip through a connection; false on any error, timeout or mismatch.
fn echoes(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(700)));
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// A connection through the local forward at `port` that echoes, within 20 s.
fn flowing(port: u16) -> TcpStream {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port))
            && echoes(&mut s)
        {
            return s;
        }
        assert!(
            Instant::now() < end,
            "no traffic through the forward at {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ok(code: u16, v: &Value) {
    assert!((200..300).contains(&code), "{code} {v}");
}

/// A user with their own group, pool and full grant on `device`; returns (user id, group, pool).
fn user_with_grant(api: &Api, name: &str, device: &str) -> (String, String, String) {
    let (code, v) = api.post(
        "/users",
        json!({"username": name, "role": "user", "password": PASSWORD}),
    );
    ok(code, &v);
    let id = v["id"].as_str().unwrap().to_string();
    let (_, g) = api.post("/groups", json!({"name": format!("g-{name}")}));
    let (_, p) = api.post("/pools", json!({"name": format!("p-{name}")}));
    let (g, p) = (g["id"].as_str().unwrap(), p["id"].as_str().unwrap());
    let (code, v) = api.call(
        reqwest::Method::PUT,
        &format!("/groups/{g}/members/{id}"),
        None,
    );
    ok(code, &v);
    let (code, v) = api.call(
        reqwest::Method::PUT,
        &format!("/pools/{p}/devices/{device}"),
        None,
    );
    ok(code, &v);
    let (code, v) = api.post(
        "/grants",
        json!({"group_id": g, "pool_id": p, "level": "full", "targets": []}),
    );
    ok(code, &v);
    (id, g.to_string(), p.to_string())
}

/// The scenario every change runs; see the file's documentation.
fn revocation_stops_traffic_within_5_s(change: Change) {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    // anna's target on 127.0.0.1, bob's on 127.0.0.2; with `Nat`, anna reaches
    // hers at a virtual address through 1:1 NAT.
    let plc = echo_on([127, 0, 0, 1]);
    let hmi = echo_on([127, 0, 0, 2]);
    let mut body = json!({"firewall": [tcp_target(plc), tcp_target(hmi)]});
    let virt: SocketAddr = ([10, 77, 1, 1], plc.port()).into();
    if matches!(change, Change::Nat) {
        body["nat"] = json!([{"real": "127.0.0.1/32", "virtual_subnet": "10.77.1.1/32"}]);
    }
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(body),
    );
    ok(code, &v);
    let (anna, _, anna_pool) = user_with_grant(&api, "anna", &device);
    let (bob, _, _) = user_with_grant(&api, "bob", &device);
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    // Each user connects to their own session with a local forward to their target.
    let mut forwards = Vec::new();
    for (name, id, target, dial) in [
        (
            "anna",
            &anna,
            plc,
            if matches!(change, Change::Nat) {
                virt
            } else {
                plc
            },
        ),
        ("bob", &bob, hmi, hmi),
    ] {
        let (code, v) = api.post(
            "/sessions",
            json!({"name": name, "devices": [{"device_id": device, "targets": [tcp_target(target)]}], "users": [id]}),
        );
        ok(code, &v);
        let sid = v["id"].as_str().unwrap().to_string();
        let config = dir.path().join(name);
        login_as(&server, &config, "acme", name);
        let lport = free_port();
        let proc = Proc(
            client(&config)
                .args(["connect", &sid, "--for-seconds", "120", "-L"])
                .arg(format!("127.0.0.1:{lport}:{dial}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        forwards.push((lport, proc));
    }
    let (anna_port, bob_port) = (forwards[0].0, forwards[1].0);
    let mut anna_flow = flowing(anna_port);
    let mut bob_flow = flowing(bob_port);

    let started = Instant::now();
    let (code, v) = match change {
        Change::Role => api.call(
            reqwest::Method::PATCH,
            &format!("/users/{anna}"),
            Some(json!({"role": "auditor"})),
        ),
        Change::Pool => api.call(
            reqwest::Method::DELETE,
            &format!("/pools/{anna_pool}/devices/{device}"),
            None,
        ),
        Change::Firewall => api.call(
            reqwest::Method::PATCH,
            &format!("/devices/{device}"),
            Some(json!({"firewall": [tcp_target(hmi)]})),
        ),
        Change::Nat => api.call(
            reqwest::Method::PATCH,
            &format!("/devices/{device}"),
            Some(json!({"nat": []})),
        ),
    };
    ok(code, &v);
    // anna's running connection stops carrying traffic within 5 s ...
    while echoes(&mut anna_flow) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{change:?}: anna's tunnel still carries traffic after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and a new one gets nothing through either.
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", anna_port)) {
        assert!(
            !echoes(&mut s),
            "{change:?}: a new connection still gets through"
        );
    }
    // bob's session on the same edge is untouched: his running connection and a new one flow.
    assert!(
        echoes(&mut bob_flow),
        "{change:?}: bob's running connection was cut"
    );
    let mut again = TcpStream::connect(("127.0.0.1", bob_port)).unwrap();
    assert!(
        echoes(&mut again),
        "{change:?}: bob cannot open a new connection"
    );
    let (_, audit) = api.call(reqwest::Method::GET, "/audit?action=session.narrow", None);
    let narrowed = audit.as_array().is_some_and(|a| !a.is_empty());
    let (_, audit) = api.call(reqwest::Method::GET, "/audit?action=tunnel.cut", None);
    let cut = audit.as_array().is_some_and(|a| !a.is_empty());
    match change {
        Change::Role | Change::Pool => assert!(cut, "{change:?}: no tunnel.cut on the record"),
        Change::Firewall => assert!(narrowed, "no session.narrow on the record"),
        Change::Nat => {}
    }
}

#[test]
fn a_role_without_sessions_stops_the_users_traffic_within_5_s() {
    revocation_stops_traffic_within_5_s(Change::Role);
}

#[test]
fn a_pool_losing_the_device_stops_the_users_traffic_within_5_s() {
    revocation_stops_traffic_within_5_s(Change::Pool);
}

#[test]
fn a_narrower_firewall_cuts_running_flows_to_the_removed_target_within_5_s() {
    revocation_stops_traffic_within_5_s(Change::Firewall);
}

#[test]
fn a_removed_nat_mapping_cuts_running_flows_through_it_within_5_s() {
    revocation_stops_traffic_within_5_s(Change::Nat);
}

/// A session narrowed on request (`POST /sessions/{id}/narrow`): anna's session
/// releases two machines and she has a connection open to each; the admin removes
/// one from the session. Within 5 s the connection to the removed machine stops
/// carrying traffic and a new one gets nothing, while the other machine of the
/// same session keeps working, and bob's session on the same edge is untouched.
#[test]
fn narrowing_a_session_cuts_flows_to_the_removed_target_within_5_s() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let plc = echo_on([127, 0, 0, 1]);
    let hmi = echo_on([127, 0, 0, 2]);
    let drive = echo_on([127, 0, 0, 3]);
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"firewall": [tcp_target(plc), tcp_target(hmi), tcp_target(drive)]})),
    );
    ok(code, &v);
    let (anna, _, _) = user_with_grant(&api, "anna", &device);
    let (bob, _, _) = user_with_grant(&api, "bob", &device);
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let mut procs = Vec::new();
    let mut session_of = Vec::new();
    let mut ports = Vec::new();
    for (name, id, targets) in [("anna", &anna, vec![plc, drive]), ("bob", &bob, vec![hmi])] {
        let t: Vec<Value> = targets.iter().map(|a| tcp_target(*a)).collect();
        let (code, v) = api.post(
            "/sessions",
            json!({"name": name, "devices": [{"device_id": device, "targets": t}], "users": [id]}),
        );
        ok(code, &v);
        let sid = v["id"].as_str().unwrap().to_string();
        let config = dir.path().join(name);
        login_as(&server, &config, "acme", name);
        let mut cmd = client(&config);
        cmd.args(["connect", &sid, "--for-seconds", "120"]);
        for a in &targets {
            let lport = free_port();
            cmd.arg("-L").arg(format!("127.0.0.1:{lport}:{a}"));
            ports.push(lport);
        }
        procs.push(Proc(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        session_of.push(sid);
    }
    let (plc_port, drive_port, hmi_port) = (ports[0], ports[1], ports[2]);
    let mut plc_flow = flowing(plc_port);
    let mut drive_flow = flowing(drive_port);
    let mut hmi_flow = flowing(hmi_port);

    let started = Instant::now();
    let (code, v) = api.post(
        &format!("/sessions/{}/narrow", session_of[0]),
        json!({"devices": [{"device_id": device, "targets": [tcp_target(plc)]}]}),
    );
    ok(code, &v);
    while echoes(&mut drive_flow) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the flow to the removed target still carries traffic after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", drive_port)) {
        assert!(
            !echoes(&mut s),
            "a new connection to the removed target gets through"
        );
    }
    // The target anna keeps still works, running and new; bob is untouched.
    assert!(
        echoes(&mut plc_flow),
        "the kept target's running flow was cut"
    );
    let mut again = TcpStream::connect(("127.0.0.1", plc_port)).unwrap();
    assert!(
        echoes(&mut again),
        "the kept target refuses a new connection"
    );
    assert!(echoes(&mut hmi_flow), "bob's running connection was cut");
    let mut again = TcpStream::connect(("127.0.0.1", hmi_port)).unwrap();
    assert!(echoes(&mut again), "bob cannot open a new connection");
    let (_, audit) = api.call(reqwest::Method::GET, "/audit?action=session.narrow", None);
    assert!(
        audit.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["object"] == format!("session:{}", session_of[0]))),
        "no session.narrow on the record: {audit}"
    );
}
