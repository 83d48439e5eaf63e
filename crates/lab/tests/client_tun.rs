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
