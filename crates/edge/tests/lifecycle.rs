//! A session's end enforced by the edge itself, with the real binaries on
//! loopback: at `valid_until` and when the wired site switch (`run
//! --switch-file`, as a GPIO value) turns off — also while the control plane
//! is down — and what the control plane records once it is back.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// One echo round trip through the client's `-L` forward at `lport`.
fn echo_works(lport: u16) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], lport).into(),
        Duration::from_secs(2),
    ) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
    if c.write_all(b"ping-through-the-tunnel").is_err() {
        return false;
    }
    let mut buf = [0u8; 23];
    c.read_exact(&mut buf).is_ok() && &buf == b"ping-through-the-tunnel"
}

/// The edge's own view of a session: `running` while its tunnel is up.
fn edge_session_state(state: &Path, session: &str) -> Option<String> {
    let out = edge(state, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["session_id"] == session)
        .and_then(|s| s["state"].as_str().map(str::to_string))
}

/// Releases a loopback echo "PLC" on the device and prepares a session for the
/// admin, valid for `secs` from now; returns (session id, PLC address).
fn plc_session(
    api: &Api,
    device: &str,
    secs: i64,
) -> (String, std::net::SocketAddr, std::time::SystemTime) {
    let plc = echo_server();
    let target =
        json!({"address": "127.0.0.1", "protocol": "tcp", "ports": plc.port().to_string()});
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({ "firewall": [target] })),
    );
    assert_eq!(code, 200, "{v}");
    let me = api.get("/me")["user"]["id"].as_str().unwrap().to_string();
    let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let (s, v) = api.post(
        "/sessions",
        json!({
            "name": "plc",
            "devices": [{"device_id": device, "targets": [target]}],
            "users": [me],
            "valid_until": until.format(&time::format_description::well_known::Rfc3339).unwrap(),
        }),
    );
    assert_eq!(s, 200, "{v}");
    let until = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(until.unix_timestamp()).unwrap());
    (v["id"].as_str().unwrap().to_string(), plc, until)
}

/// `drawbridge connect SESSION -L 127.0.0.1:LPORT:PLC` as the admin; waits for the echo.
fn connect(server: &Server, dir: &Path, session: &str, plc: std::net::SocketAddr) -> (Proc, u16) {
    let config = dir.join("client");
    login(server, &config);
    let lport = free_port();
    let proc = Proc(
        client(&config)
            .args(["connect", session, "-L"])
            .arg(format!("127.0.0.1:{lport}:{plc}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait("the PLC answers through the tunnel", || echo_works(lport));
    // The relay is part of the server these tests stop: only a direct path
    // outlives it (relayed tunnels surviving a relay are the relay tier's work).
    wait("the tunnel takes the direct path", || {
        let out = client(&config).args(["status", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v[0]["devices"][0]["path"] == "direct")
    });
    (proc, lport)
}

fn session_view(api: &Api, id: &str) -> Value {
    api.get(&format!("/sessions/{id}"))
}

#[test]
fn a_session_ends_at_valid_until_on_both_ends_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, device, state) = setup(dir.path());
    edge(&state, &["switch", "on"]);
    let _agent = edge_run(&state);
    wait("online with the switch on", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let (sid, plc, until) = plc_session(&api, &device, 25);
    let (mut client, lport) = connect(&server, dir.path(), &sid, plc);
    assert_eq!(edge_session_state(&state, &sid).as_deref(), Some("running"));

    // The control plane goes away; the tunnel carries on until the session's end.
    let port = server.port;
    server.stop();
    assert!(echo_works(lport), "the tunnel outlives the control plane");

    // valid_until passes with nobody to tell the ends: each stops by itself.
    if let Ok(left) = until.duration_since(std::time::SystemTime::now()) {
        assert!(echo_works(lport), "still up before valid_until");
        std::thread::sleep(left);
    }
    wait("the edge stops the tunnel at valid_until", || {
        edge_session_state(&state, &sid).as_deref() != Some("running")
    });
    wait("the client's connect ends at valid_until", || {
        client.0.try_wait().unwrap().is_some()
    });
    assert!(!echo_works(lport), "nothing reaches the PLC any more");

    // Back up, the control plane records the end as an expiry.
    let data = dir.path().join("server");
    let _server = Server::start(&data, port);
    let api = Api::login(&_server);
    wait("the session is ended for expiry", || {
        let v = session_view(&api, &sid);
        v["state"] == "ended" && v["end_reason"] == "expiry"
    });
}

#[test]
fn the_wired_switch_file_gates_sessions_and_off_cuts_the_tunnel_even_while_the_control_plane_is_down()
 {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, device, state) = setup(dir.path());
    // A key switch wired to a GPIO input, read from its value file.
    let gpio = dir.path().join("gpio-value");
    std::fs::write(&gpio, "0\n").unwrap();
    let _agent = edge_run_with(&state, &["--switch-file", gpio.to_str().unwrap()]);
    wait("online with the switch off", || {
        let d = api.get(&format!("/devices/{device}"));
        d["status"]["online"] == true && d["status"]["switch_on"] == false
    });
    let (sid, plc, _) = plc_session(&api, &device, 3600);
    let (code, v) = api.post(&format!("/sessions/{sid}/start"), json!({}));
    assert_eq!(code, 409, "no session while the key switch is off: {v}");

    std::fs::write(&gpio, "1\n").unwrap();
    wait("the server sees the switch on", || {
        api.get(&format!("/devices/{device}"))["status"]["switch_on"] == true
    });
    let (_client, lport) = connect(&server, dir.path(), &sid, plc);

    // Turning the key while the control plane is down still cuts the tunnel.
    let port = server.port;
    server.stop();
    assert!(echo_works(lport), "the tunnel outlives the control plane");
    std::fs::write(&gpio, "0\n").unwrap();
    wait(
        "the edge stops the tunnel when the switch turns off",
        || edge_session_state(&state, &sid).as_deref() != Some("running"),
    );
    assert!(
        !echo_works(lport),
        "nothing reaches the PLC with the switch off"
    );

    // Back up, the control plane hears the switch is off and ends the session for it.
    let data = dir.path().join("server");
    let _server = Server::start(&data, port);
    let api = Api::login(&_server);
    wait("the session is ended by the site switch", || {
        let v = session_view(&api, &sid);
        v["state"] == "ended" && v["end_reason"] == "site_switch"
    });
    // And a new start is refused while the key stays off.
    let (sid2, _, _) = plc_session(&api, &device, 3600);
    let (code, _) = api.post(&format!("/sessions/{sid2}/start"), json!({}));
    assert_eq!(code, 409);
}
