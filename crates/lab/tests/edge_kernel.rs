//! Root only: the edge in kernel forwarding mode (`drawbridge-edge run --tun`).
//! Released flows go through the host's kernel at full speed; everything else is
//! still refused; the machine LAN reaches no client; stopping the edge removes
//! its interface and nftables table and restores IPv4 forwarding.

use drawbridge_lab::topology::{ECHO, PLC};
use drawbridge_lab::{Client, Lab, Nat, Proc, Stream, plc, wait};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn kernel_mode_forwards_released_flows_only_and_cleans_up_when_the_edge_stops() {
    if !drawbridge_lab::available("kernel_mode_forwards_released_flows_only") {
        return;
    }
    let mut lab = Lab::with_edge_args(Nat::Cone, Nat::Cone, &["--tun"]);
    let plant = &lab.plant.host;
    assert_eq!(
        plant
            .command("cat")
            .arg("/proc/sys/net/ipv4/ip_forward")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap(),
        "1",
        "kernel mode turned forwarding on"
    );
    assert_eq!(
        lab.edge.status()["forwarding"]
            .as_str()
            .map(|s| s.starts_with("kernel")),
        Some(true)
    );
    let sid = lab.session("kernel");
    let client = Client::login(
        &lab.office.host,
        &lab.server,
        &lab.dir.path().join("client"),
    );
    let _connect = Proc::spawn(
        client
            .command()
            .args(["connect", &sid, "--tun", "--for-seconds", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait("Modbus through the kernel path", || {
        lab.office_rt
            .run(plc::read_registers(Lab::addr(PLC)))
            .is_ok_and(|r| r == plc::EXPECTED)
    });
    let stream = Stream::start(&lab.office_rt, Lab::addr(ECHO)).unwrap();
    stream.advances(200, "a numbered stream through the kernel path");
    stream.finish();
    // Not released: refused before the kernel sees it, and counted.
    assert!(
        lab.office_rt
            .run(plc::read_registers(Lab::addr("192.168.1.10:503")))
            .is_err()
    );
    wait("the edge counts the refusal", || {
        lab.edge.status()["sessions"][0]["forwarder"]["dropped_not_released"]
            .as_u64()
            .is_some_and(|d| d > 0)
    });
    // Nothing on the machine LAN can open a connection towards a client.
    let office_rt = lab.office_rt.clone();
    office_rt.spawn(drawbridge_lab::topology::echo(
        "0.0.0.0:7100".parse().unwrap(),
    ));
    for dst in ["100.64.0.2:7100", "192.168.10.2:7100"] {
        let a: std::net::SocketAddr = dst.parse().unwrap();
        let reached = lab.lan_rt.run(async move {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(a))
                .await
                .is_ok_and(|r| r.is_ok())
        });
        assert!(!reached, "LAN → {dst} must be blocked");
    }
    // The operator stops the edge: interface, table and forwarding are as before.
    lab.edge.terminate();
    let tables = lab
        .plant
        .host
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("drawbridge_edge"));
    let links = lab.plant.host.ip(&["-o", "link", "show"]);
    assert!(!links.contains("tun"), "{links}");
    let fwd = lab
        .plant
        .host
        .command("cat")
        .arg("/proc/sys/net/ipv4/ip_forward")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
}
