//! Root only: a session that releases everything (`0.0.0.0/0`) still reaches
//! nothing of the edge itself (loopback, link-local, its overlay address) nor
//! another session's clients, in both forwarding modes (userspace forwarder and
//! kernel mode, where sessions get neighbouring blocks of 100.64.0.0/10).

use drawbridge_lab::netns::NsRuntime;
use drawbridge_lab::topology::ECHO;
use drawbridge_lab::{Client, Lab, Nat, Proc, wait};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A service of the edge host itself, on every address it has.
const EDGE_SERVICE: &str = "0.0.0.0:7200";

/// Local `-L` port → (target through the tunnel, what it is).
const FORWARDS: &[(u16, &str, &str)] = &[
    (17001, ECHO, "the LAN echo service (released)"),
    (17002, "127.0.0.1:7200", "the edge's loopback"),
    (
        17003,
        "169.254.77.1:7200",
        "the edge's link-local TUN address",
    ),
    (17004, "100.64.0.1:7200", "the edge's overlay address"),
    (
        17005,
        "100.65.0.2:7100",
        "the second session's client block",
    ),
];

/// True when a line written to `addr` comes back within 3 s.
fn echoes(rt: &NsRuntime, addr: SocketAddr) -> bool {
    rt.run(async move {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"ping\n").await?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await?;
            Ok::<bool, std::io::Error>(&buf == b"ping\n")
        };
        tokio::time::timeout(Duration::from_secs(3), attempt)
            .await
            .is_ok_and(|r| r.is_ok_and(|same| same))
    })
}

/// The edge's status entry of session `sid`.
fn session_status(lab: &Lab, sid: &str) -> Value {
    lab.edge.status()["sessions"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["session_id"] == sid).cloned())
        .unwrap_or(Value::Null)
}

fn counter(lab: &Lab, sid: &str, name: &str) -> u64 {
    session_status(lab, sid)["forwarder"][name]
        .as_u64()
        .unwrap_or(0)
}

fn connect(lab: &Lab, name: &str, sid: &str, forwards: &[(u16, &str)]) -> Proc {
    let client = Client::login(&lab.office.host, &lab.server, &lab.dir.path().join(name));
    let mut cmd = client.command();
    cmd.args(["connect", sid, "--for-seconds", "300"]);
    for (port, target) in forwards {
        cmd.args(["-L", &format!("127.0.0.1:{port}:{target}")]);
    }
    Proc::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))
}

fn a_wide_release_reaches_neither_the_edge_nor_another_session(edge_args: &[&str]) {
    let lab = Lab::with_edge_args(Nat::Cone, Nat::Cone, edge_args);
    let everything = json!([{"address": "0.0.0.0/0", "protocol": "tcp", "ports": "1-65535"}]);
    let (s, v) = lab.api.patch(
        &format!("/devices/{}", lab.device_id),
        json!({"firewall": everything}),
    );
    assert_eq!(s, 200, "{v}");
    let plant_rt = lab.plant.host.runtime();
    plant_rt.spawn(drawbridge_lab::topology::echo(
        EDGE_SERVICE.parse().unwrap(),
    ));
    // The edge host's service is there (so a refusal below is the edge's doing).
    assert!(echoes(&plant_rt, Lab::addr("127.0.0.1:7200")));

    // Session A releases everything; it starts first (kernel mode: slot 0).
    let wide = lab.session_with("wide", everything.clone());
    let forwards: Vec<(u16, &str)> = FORWARDS.iter().map(|(p, t, _)| (*p, *t)).collect();
    let _a = connect(&lab, "a", &wide, &forwards);
    wait("the wide session reaches the LAN", || {
        echoes(&lab.office_rt, Lab::addr("127.0.0.1:17001"))
    });
    // Session B, with a client of its own (kernel mode: slot 1, 100.65.0.0/16).
    let other = lab.session("other");
    let _b = connect(&lab, "b", &other, &[(17010, ECHO)]);
    wait("the other session works", || {
        echoes(&lab.office_rt, Lab::addr("127.0.0.1:17010"))
    });
    // B's own figures settle (the edge writes its status every few seconds).
    let mut other_out = 0;
    wait("the other session's figures settle", || {
        let now = counter(&lab, &other, "packets_out");
        let settled = now > 0 && now == other_out;
        other_out = now;
        std::thread::sleep(Duration::from_secs(3));
        settled
    });

    for (port, target, what) in &FORWARDS[1..] {
        let before = counter(&lab, &wide, "dropped_not_released");
        assert!(
            !echoes(&lab.office_rt, Lab::addr(&format!("127.0.0.1:{port}"))),
            "{what} ({target}) must be unreachable"
        );
        wait(&format!("the edge refuses {what} ({target})"), || {
            counter(&lab, &wide, "dropped_not_released") > before
        });
    }
    // Nothing of A's reached B's tunnel meanwhile.
    assert_eq!(counter(&lab, &other, "packets_out"), other_out);
    // The release still works for what it is for.
    assert!(echoes(&lab.office_rt, Lab::addr("127.0.0.1:17001")));
}

#[test]
fn kernel_mode_wide_release_reaches_neither_the_edge_nor_another_session() {
    if !drawbridge_lab::available("kernel_mode_wide_release_reaches_neither") {
        return;
    }
    a_wide_release_reaches_neither_the_edge_nor_another_session(&["--tun"]);
}

#[test]
fn userspace_wide_release_reaches_neither_the_edge_nor_another_session() {
    if !drawbridge_lab::available("userspace_wide_release_reaches_neither") {
        return;
    }
    a_wide_release_reaches_neither_the_edge_nor_another_session(&[]);
}
