//! Dual control per device with two real edge agents and a real client: each
//! site approves (or refuses) for its own device; the client reaches exactly
//! the devices approved so far, and a device approved later joins the running
//! session.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A second device releasing `target` (loopback), enrolled into its own state dir.
fn enrolled_device(server: &Server, api: &Api, dir: &Path, name: &str) -> (String, PathBuf) {
    let (s, v) = api.post("/devices", json!({"name": name}));
    assert_eq!(s, 200, "{v}");
    let device = v["device"]["id"].as_str().unwrap().to_string();
    let key = v["activation"]["key"].as_str().unwrap();
    let state = dir.join(name);
    let ca = server.data.join("ca.pem");
    let out = edge(
        &state,
        &[
            "enroll",
            "--server",
            &server.url(),
            "--activation-key",
            key,
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (device, state)
}

/// Releases `target` in the device's firewall; returns it as session targets.
fn release(api: &Api, device: &str, target: std::net::SocketAddr) -> Value {
    let t = json!([{"address": target.ip().to_string(), "protocol": "tcp", "ports": target.port().to_string()}]);
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({ "firewall": t })),
    );
    assert_eq!(code, 200, "{v}");
    t
}

/// An echo server on another loopback address than `echo_server`'s: two
/// devices' targets must not overlap (the client routes by address).
fn echo_server_at(ip: [u8; 4]) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).unwrap();
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

/// One round trip through a local forward: true when the echo comes back.
fn echoes(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 5];
    c.write_all(b"hello").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"hello"
}

fn connect(config: &Path, sid: &str, forwards: &[(u16, std::net::SocketAddr)]) -> Proc {
    let mut cmd = client(config);
    cmd.args(["connect", sid, "--for-seconds", "120"]);
    for (port, target) in forwards {
        cmd.arg("-L").arg(format!("127.0.0.1:{port}:{target}"));
    }
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn approval(api: &Api, sid: &str, device: &str) -> String {
    let v = api.get(&format!("/sessions/{sid}"));
    v["approvals"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["device_id"] == device))
        .and_then(|x| x["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn each_site_approves_its_own_device_and_the_client_reaches_only_approved_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, a, state_a) = setup(dir.path());
    let (b, state_b) = enrolled_device(&server, &api, dir.path(), "press-b");
    let (plc_a, plc_b) = (echo_server(), echo_server_at([127, 0, 0, 2]));
    let targets_a = release(&api, &a, plc_a);
    let targets_b = release(&api, &b, plc_b);
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        "/account",
        Some(json!({"settings": {"dual_control": true}})),
    );
    assert_eq!(code, 200, "{v}");
    for s in [&state_a, &state_b] {
        edge(s, &["switch", "on"]);
    }
    let _agent_a = edge_run(&state_a);
    let _agent_b = edge_run(&state_b);
    wait("both edges online with the switch on", || {
        [&a, &b].iter().all(|d| {
            let d = api.get(&format!("/devices/{d}"));
            d["status"]["online"] == true && d["status"]["switch_on"] == true
        })
    });
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let session = |name: &str| {
        let (s, v) = api.post(
            "/sessions",
            json!({"name": name, "devices": [{"device_id": a, "targets": targets_a}, {"device_id": b, "targets": targets_b}], "users": [me]}),
        );
        assert_eq!(s, 200, "{v}");
        let sid = v["id"].as_str().unwrap().to_string();
        let (s, v) = api.post(&format!("/sessions/{sid}/start"), json!({}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["state"], "pending_approval");
        sid
    };
    let config = dir.path().join("client");
    login(&server, &config);

    // Site A waits for the request and approves it: A runs, B still waits.
    let sid = session("two sites");
    let out = edge(&state_a, &["approve", "--wait", "--timeout", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&sid) && said.contains("requested by root"),
        "{said}"
    );
    wait("A approved, the session active", || {
        approval(&api, &sid, &a) == "approved"
            && api.get(&format!("/sessions/{sid}"))["state"] == "active"
    });
    let status_b = edge(&state_b, &["status"]);
    let shown = String::from_utf8_lossy(&status_b.stdout);
    assert!(
        shown.contains("waits for on-site approval") && shown.contains(&sid),
        "B's status shows the request: {shown}"
    );
    let (la, lb) = (free_port(), free_port());
    let _c1 = connect(&config, &sid, &[(la, plc_a), (lb, plc_b)]);
    wait("the tunnel to A carries traffic", || echoes(la));
    assert!(!echoes(lb), "B is not reachable before its site approves");

    // Site B approves: B joins the running session.
    let out = edge(&state_b, &["approve", "--wait", &sid, "--timeout", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait("the tunnel to B carries traffic once approved", || {
        echoes(lb)
    });
    assert!(echoes(la));

    // A second session: A approves, B's site refuses; B is dropped, A goes on.
    let sid2 = session("refused at B");
    wait("both edges show the request", || {
        [&state_a, &state_b].iter().all(|s| {
            let out = edge(s, &["status", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
                v["sessions"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|x| x["session_id"] == sid2.as_str()))
            })
        })
    });
    assert!(edge(&state_a, &["approve", &sid2]).status.success());
    wait("A approved", || approval(&api, &sid2, &a) == "approved");
    let (la2, lb2) = (free_port(), free_port());
    let _c2 = connect(&config, &sid2, &[(la2, plc_a), (lb2, plc_b)]);
    wait("the tunnel to A carries traffic", || echoes(la2));
    assert!(edge(&state_b, &["refuse", &sid2]).status.success());
    wait("B refused and dropped from B's edge", || {
        let out = edge(&state_b, &["status", "--json"]);
        approval(&api, &sid2, &b) == "refused"
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
                v["sessions"]
                    .as_array()
                    .is_some_and(|x| x.iter().all(|x| x["session_id"] != sid2.as_str()))
            })
    });
    assert_eq!(api.get(&format!("/sessions/{sid2}"))["state"], "active");
    assert!(echoes(la2), "A still works after B's refusal");
    assert!(!echoes(lb2), "B stays unreachable");
    // The first session was not touched.
    assert!(echoes(la) && echoes(lb));
    let audit = api.get("/audit?action=session.");
    let on_site: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["actor"]
                .as_str()
                .is_some_and(|x| x.starts_with("device:"))
        })
        .filter_map(|e| Some((e["action"].as_str()?, e["object"].as_str()?)))
        .collect();
    for want in [
        ("session.approve", format!("session:{sid}")),
        ("session.refuse", format!("session:{sid2}")),
    ] {
        assert!(
            on_site.iter().any(|(a, o)| *a == want.0 && *o == want.1),
            "{want:?} in {on_site:?}"
        );
    }
}
