//! Root only: a standard WireGuard client (Debian's wireguard-go and wg tools)
//! joins a session from `drawbridge session export-wireguard` and reads the PLC
//! through the relay's UDP bridge; a client with any other key gets nowhere.

use drawbridge_lab::netns::{run, unique};
use drawbridge_lab::topology::{ECHO, PLC};
use drawbridge_lab::{Client, Lab, Nat, Proc, Stream, plc, wait};
use std::process::{Command, Stdio};
use std::time::Duration;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_standard_wireguard_client_reads_the_plc_through_the_relay_bridge_with_its_registered_key_only()
{
    if !drawbridge_lab::available("a_standard_wireguard_client_reads_the_plc") {
        return;
    }
    for tool in ["wireguard-go", "wg", "wg-quick"] {
        if !have(tool) {
            if std::env::var("DRAWBRIDGE_REQUIRE_LAB").is_ok_and(|v| v == "1") {
                panic!(
                    "{tool} is required in the lab (apt-get install wireguard-go wireguard-tools)"
                );
            }
            eprintln!("SKIPPED a_standard_wireguard_client_reads_the_plc: {tool} is not installed");
            return;
        }
    }
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let sid = lab.session("stock-wireguard");
    let client = Client::login(
        &lab.office.host,
        &lab.server,
        &lab.dir.path().join("client"),
    );
    let iface = unique("dbwg");
    let conf = lab.dir.path().join(format!("{iface}.conf"));
    let out = client
        .command()
        .args(["session", "export-wireguard", &sid, "--output"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&conf).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config holds a private key");
    }
    assert!(
        text.contains("Endpoint = 10.0.0.1:51820"),
        "the relay's bridge is the endpoint:\n{text}"
    );
    let address = text
        .lines()
        .find_map(|l| l.strip_prefix("Address = "))
        .expect("Address")
        .to_string();

    // What wg-quick up does, with the userspace implementation, in the office.
    let ns = &lab.office.host;
    let _wg = Proc::spawn(
        ns.command("wireguard-go")
            .args(["-f", &iface])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait("wireguard-go made its interface", || {
        Command::new("ip")
            .args(["-n", ns.name(), "link", "show", &iface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let stripped = lab.dir.path().join("stripped.conf");
    std::fs::write(
        &stripped,
        run(Command::new("wg-quick").arg("strip").arg(&conf)),
    )
    .unwrap();
    run(ns.command("wg").args(["setconf", &iface]).arg(&stripped));
    ns.ip(&["addr", "add", &address, "dev", &iface]);
    ns.ip(&["link", "set", "mtu", "1420", "up", "dev", &iface]);
    ns.ip(&["route", "add", "192.168.1.10/32", "dev", &iface]);

    let plc_addr = Lab::addr(PLC);
    wait("the PLC answers through the standard client", || {
        lab.office_rt
            .run(plc::read_registers(plc_addr))
            .is_ok_and(|r| r == plc::EXPECTED)
    });
    let stream = Stream::start(&lab.office_rt, Lab::addr(ECHO)).unwrap();
    stream.advances(200, "a numbered stream flows through the bridge");
    stream.finish();
    // The edge shows the standard client on the relay's bridge (its status file
    // is rewritten every few seconds).
    wait("the edge reports the bridged peer", || {
        let peer = &lab.edge.status()["sessions"][0]["peers"][0];
        peer["path"] == "relay"
            && peer["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("bridge")
    });

    // The same config with any other private key is not admitted.
    let other = run(Command::new("wg").arg("genkey"));
    let key_file = lab.dir.path().join("other.key");
    std::fs::write(&key_file, other.trim()).unwrap();
    run(ns
        .command("wg")
        .args(["set", &iface, "private-key"])
        .arg(&key_file));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.office_rt.run(plc::read_registers(plc_addr)).is_err(),
        "an unregistered key reaches nothing"
    );
}
