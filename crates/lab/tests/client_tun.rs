//! Root only: `drawbridge connect` in TUN mode. The service PC (office namespace,
//! with the control plane) reaches a Modbus PLC on the machine LAN behind the edge
//! (plant namespace) through a kernel TUN interface whose only routes are the
//! session's released targets; Ctrl-C removes interface and routes.

use drawbridge_lab::{Client, Edge, Netns, Proc, Server, plc, veth, wait};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Stdio;

const PLC: &str = "192.168.1.10:502";

#[test]
fn tun_mode_routes_only_the_released_targets_and_cleans_up_on_ctrl_c() {
    if !drawbridge_lab::available("tun_mode_routes_only_the_released_targets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let office = Netns::new("o");
    let plant = Netns::new("p");
    veth(&office, "10.99.0.1/24", &plant, "10.99.0.2/24");
    // The machine LAN: the PLC and a second device that is not released.
    plant.ip(&["addr", "add", "192.168.1.10/32", "dev", "lo"]);
    plant.ip(&["addr", "add", "192.168.1.11/32", "dev", "lo"]);
    let plant_rt = plant.runtime();
    for addr in [PLC, "192.168.1.10:503", "192.168.1.11:502"] {
        let a: SocketAddr = addr.parse().unwrap();
        plant_rt.spawn(plc::serve(a));
    }

    let server = Server::start(&office, "10.99.0.1", &dir.path().join("server"));
    let api = server.admin();
    let (device, key) = api.device(
        "press-1",
        "192.168.1.0/24",
        json!([{"address": "192.168.1.0/24", "protocol": "tcp", "ports": "502-503"}]),
    );
    let edge = Edge::enroll_and_run(&plant, &server, &key, &dir.path().join("edge"));
    wait("the edge is online with its switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = api.me();
    let (s, v) = api.post(
        "/sessions",
        json!({"name": "fix-press", "devices": [{"device_id": device, "targets": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}], "users": [me]}),
    );
    assert_eq!(s, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();

    let client = Client::login(&office, &server, &dir.path().join("client"));
    let log = std::fs::File::create(dir.path().join("connect.log")).unwrap();
    let mut connect = Proc::spawn(
        client
            .command()
            .args(["connect", &sid, "--tun", "--for-seconds", "120"])
            .stdout(Stdio::null())
            .stderr(log),
    );
    let mut iface = String::new();
    wait("the client reports its TUN interface", || {
        match client.status()[0]["interface"].as_str() {
            Some(i) => {
                iface = i.to_string();
                true
            }
            None => false,
        }
    });
    // Split tunnel: the released target and nothing else goes into the interface.
    let routes = office.ip(&["route", "show", "dev", &iface]);
    let lines: Vec<&str> = routes.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("192.168.1.10 "),
        "routes via {iface}: {routes}"
    );
    assert!(!office.ip(&["route", "show"]).contains("default"));
    // With offloads, one read is at most as many segments as tun-rs splits at once.
    let link = office.ip(&["-d", "link", "show", "dev", &iface]);
    let segs: Option<usize> = link
        .split_whitespace()
        .skip_while(|w| *w != "gso_max_segs")
        .nth(1)
        .and_then(|v| v.parse().ok());
    assert!(
        segs.is_some_and(|n| n <= drawbridge_tun::BATCH),
        "gso_max_segs of {iface}: {link}"
    );

    let office_rt = office.runtime();
    let plc: SocketAddr = PLC.parse().unwrap();
    wait("Modbus registers read through the TUN interface", || {
        office_rt
            .run(plc::read_registers(plc))
            .is_ok_and(|r| r == plc::EXPECTED)
    });
    // A port of the released address that is not released: routed into the
    // tunnel, dropped by the edge.
    let other_port: SocketAddr = "192.168.1.10:503".parse().unwrap();
    assert!(office_rt.run(plc::read_registers(other_port)).is_err());
    // An address that is not released: not even routed.
    let other_host: SocketAddr = "192.168.1.11:502".parse().unwrap();
    assert!(office_rt.run(plc::read_registers(other_host)).is_err());
    wait("the edge counts the drop", || {
        edge.status()["sessions"][0]["forwarder"]["dropped_not_released"]
            .as_u64()
            .is_some_and(|d| d > 0)
    });

    // Ctrl-C: the interface and its routes are gone.
    connect.interrupt();
    assert!(!office.ip(&["route", "show"]).contains("192.168.1.10"));
    assert!(!office.ip(&["link", "show"]).contains(&iface));
    assert!(
        office_rt.run(plc::read_registers(plc)).is_err(),
        "no route after the tunnel is down"
    );
}

/// The routes through the client's TUN interface `iface`, one network per line.
fn routes_via(office: &Netns, iface: &str) -> String {
    office.ip(&["route", "show", "dev", iface])
}

#[test]
fn tun_mode_follows_the_devices_approved_and_dropped_while_connected() {
    if !drawbridge_lab::available("tun_mode_follows_the_devices_approved_and_dropped") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let office = Netns::new("o");
    let plant_a = Netns::new("pa");
    let plant_b = Netns::new("pb");
    veth(&office, "10.99.0.1/24", &plant_a, "10.99.0.2/24");
    veth(&office, "10.98.0.1/24", &plant_b, "10.98.0.2/24");
    // Site B reaches the control plane's address through the office's other leg.
    plant_b.ip(&["route", "add", "10.99.0.0/24", "via", "10.98.0.1"]);
    plant_a.ip(&["addr", "add", "192.168.1.10/32", "dev", "lo"]);
    plant_b.ip(&["addr", "add", "192.168.2.10/32", "dev", "lo"]);
    let (rt_a, rt_b) = (plant_a.runtime(), plant_b.runtime());
    let plc_a: SocketAddr = PLC.parse().unwrap();
    let echo_a: SocketAddr = "192.168.1.10:7000".parse().unwrap();
    let plc_b: SocketAddr = "192.168.2.10:502".parse().unwrap();
    rt_a.spawn(plc::serve(plc_a));
    rt_a.spawn(drawbridge_lab::topology::echo(echo_a));
    rt_b.spawn(plc::serve_with_base(plc_b, 2000));

    let server = Server::start(&office, "10.99.0.1", &dir.path().join("server"));
    let api = server.admin();
    let (s, v) = api.patch("/account", json!({"settings": {"dual_control": true}}));
    assert_eq!(s, 200, "{v}");
    let (dev_a, key_a) = api.device(
        "press-a",
        "192.168.1.0/24",
        json!([{"address": "192.168.1.0/24", "protocol": "tcp", "ports": "502"},
               {"address": "192.168.1.0/24", "protocol": "tcp", "ports": "7000"}]),
    );
    let (dev_b, key_b) = api.device(
        "press-b",
        "192.168.2.0/24",
        json!([{"address": "192.168.2.0/24", "protocol": "tcp", "ports": "502"}]),
    );
    let edge_a = Edge::enroll_and_run(&plant_a, &server, &key_a, &dir.path().join("edge-a"));
    let edge_b = Edge::enroll_and_run(&plant_b, &server, &key_b, &dir.path().join("edge-b"));
    for d in [&dev_a, &dev_b] {
        wait("both edges are online with their switches on", || {
            let v = api.get(&format!("/devices/{d}"));
            v["status"]["online"] == true && v["status"]["switch_on"] == true
        });
    }
    let me = api.me();
    let (s, v) = api.post(
        "/sessions",
        json!({"name": "two-presses", "users": [me], "devices": [
            {"device_id": dev_a, "targets": [
                {"address": "192.168.1.10", "protocol": "tcp", "ports": "502"},
                {"address": "192.168.1.10", "protocol": "tcp", "ports": "7000"}]},
            {"device_id": dev_b, "targets": [
                {"address": "192.168.2.10", "protocol": "tcp", "ports": "502"}]}]}),
    );
    assert_eq!(s, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
    let (s, v) = api.post(&format!("/sessions/{sid}/start"), json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "pending_approval");
    // Site A approves: the session is active for A only; B still waits.
    wait("site A sees the request", || {
        edge_a.status()["sessions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    });
    edge_a.approve(&sid);
    wait("the session is active for A", || {
        api.get(&format!("/sessions/{sid}"))["state"] == "active"
    });

    let client = Client::login(&office, &server, &dir.path().join("client"));
    let log = std::fs::File::create(dir.path().join("connect.log")).unwrap();
    let mut connect = Proc::spawn(
        client
            .command()
            .args(["connect", &sid, "--tun", "--for-seconds", "180"])
            .stdout(Stdio::null())
            .stderr(log),
    );
    let mut iface = String::new();
    wait("the client reports its TUN interface", || {
        match client.status()[0]["interface"].as_str() {
            Some(i) => {
                iface = i.to_string();
                true
            }
            None => false,
        }
    });
    let routes = routes_via(&office, &iface);
    assert!(
        routes.contains("192.168.1.10 ") && !routes.contains("192.168.2.10"),
        "A routed, B not yet: {routes}"
    );
    let office_rt = office.runtime();
    wait("A's PLC answers through the TUN interface", || {
        office_rt
            .run(plc::read_registers(plc_a))
            .is_ok_and(|r| r == plc::EXPECTED)
    });
    assert!(
        office_rt.run(plc::read_registers(plc_b)).is_err(),
        "B is not approved: not reachable"
    );
    // A flow to A that must live through B joining and leaving.
    let stream = drawbridge_lab::Stream::start(&office_rt, echo_a).unwrap();
    stream.advances(20, "the stream to A runs");

    // Site B approves while the client is connected: B's route and peer come.
    edge_b.approve(&sid);
    wait("B's target is routed into the same TUN interface", || {
        routes_via(&office, &iface).contains("192.168.2.10 ")
    });
    wait("B's PLC answers through the TUN interface", || {
        office_rt
            .run(plc::read_registers(plc_b))
            .is_ok_and(|r| r == [2000, 2001, 2002, 2003])
    });
    assert_eq!(
        client.status()[0]["interface"].as_str(),
        Some(iface.as_str()),
        "the tunnel was not restarted"
    );
    stream.advances(20, "the stream to A goes on while B joins");

    // A rights change cuts B's target (its firewall no longer releases it): B's
    // route and peer go, A goes on.
    let (s, v) = api.patch(
        &format!("/devices/{dev_b}"),
        json!({"firewall": [{"address": "192.168.2.0/24", "protocol": "tcp", "ports": "503"}]}),
    );
    assert_eq!(s, 200, "{v}");
    wait("B's route is removed from the TUN interface", || {
        !routes_via(&office, &iface).contains("192.168.2.10")
    });
    assert!(
        office_rt.run(plc::read_registers(plc_b)).is_err(),
        "B is dropped: not reachable any more"
    );
    wait("the client runs A only", || {
        client.status()[0]["devices"]
            .as_array()
            .is_some_and(|d| d.len() == 1 && d[0]["device"] == "press-a")
    });
    assert!(routes_via(&office, &iface).contains("192.168.1.10 "));
    assert!(
        office_rt
            .run(plc::read_registers(plc_a))
            .is_ok_and(|r| r == plc::EXPECTED),
        "A still answers"
    );
    stream.advances(20, "the stream to A goes on after B is dropped");
    let sent = stream.finish();
    assert!(sent > 60, "{sent} records");
    connect.interrupt();
}
