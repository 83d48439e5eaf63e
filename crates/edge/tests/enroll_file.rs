//! Enrolment with nothing else at hand, with the real binaries against a server
//! on its self-signed defaults: the file `drawbridge device config-file`
//! writes (server, activation key, the server's CA and its SHA-256) enrols an
//! edge with `enroll --config` alone, also when the file appears only later
//! (`--watch`), and loses its used key; a file whose CA was changed enrols
//! nothing. A gateway enrolled with the fleet key waits for an admin's
//! approval, then comes online by itself.

use crate::common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// A server (account acme, admin root) and the client logged in; answers them
/// with a device `name` (no edge yet).
fn server_with_device(dir: &Path, name: &str) -> (Server, Api, std::path::PathBuf, String) {
    let data = dir.join("server");
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = std::process::Command::new(server_bin())
        .args([
            "init",
            "--account",
            "acme",
            "--admin-user",
            "root",
            "--admin-password-file",
        ])
        .arg(&pw)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&data, free_port());
    let api = Api::login(&server);
    let (s, v) = api.post(
        "/devices",
        json!({"name": name, "lan_subnets": ["192.168.1.0/24"], "firewall": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}),
    );
    assert_eq!(s, 200, "{v}");
    let config = dir.join("client");
    login(&server, &config);
    let id = v["device"]["id"].as_str().unwrap().to_string();
    (server, api, config, id)
}

fn config_file(config: &Path, device: &str, out: &Path) {
    let o = client(config)
        .args(["device", "config-file", device, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "config-file: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_config_file_alone_enrols_an_edge_once_and_loses_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, config, id) = server_with_device(dir.path(), "press-1");
    let file = dir.path().join("usb").join("drawbridge-edge.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    config_file(&config, "press-1", &file);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("activation_key")
            && text.contains("ca_certificate")
            && text.contains("ca_sha256"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file holds a key");
    }
    // Writing over an existing file is refused.
    let again = client(&config)
        .args(["device", "config-file", "press-1", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // A copy whose CA was swapped (another server's) enrols nothing.
    let forged = dir.path().join("forged.toml");
    let other_ca = rcgen::generate_simple_self_signed(vec!["evil".into()]).unwrap();
    let start = text.find("ca_certificate = '''\n").unwrap() + "ca_certificate = '''\n".len();
    let end = start + text[start..].find("'''").unwrap();
    std::fs::write(
        &forged,
        format!("{}{}{}", &text[..start], other_ca.cert.pem(), &text[end..]),
    )
    .unwrap();
    let out = edge(
        &dir.path().join("edge-forged"),
        &["enroll", "--config", forged.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = api.get(&format!("/devices/{id}"));
    assert_eq!(d["status"]["enrolled"], false, "{d}");

    // The real file: no --server, no --ca-file, nothing else.
    let state = dir.path().join("edge");
    let out = edge(&state, &["enroll", "--config", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let left = std::fs::read_to_string(&file).unwrap();
    assert!(
        !left.contains("activation_key ="),
        "the used key is gone: {left}"
    );
    assert!(left.contains("server ="), "the rest stays: {left}");
    // The edge keeps the CA and runs with it: online without any flag.
    let _run = edge_run(&state);
    wait("the edge online", || {
        api.get(&format!("/devices/{id}"))["status"]["online"] == true
    });
    // The file cannot enrol another gateway.
    let out = edge(
        &dir.path().join("edge-2"),
        &["enroll", "--config", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no activation key"));
}

#[test]
fn a_watching_edge_enrols_when_the_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, config, id) = server_with_device(dir.path(), "press-2");
    let mount = dir.path().join("media");
    let file = mount.join("drawbridge-edge.toml");
    let state = dir.path().join("edge");
    let mut cmd = std::process::Command::new(edge_bin());
    cmd.args([
        "--state-dir",
        state.to_str().unwrap(),
        "enroll",
        "--watch",
        "--config",
        file.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The medium is mounted: the file appears (written whole, then moved in).
    std::fs::create_dir_all(&mount).unwrap();
    config_file(&config, "press-2", &dir.path().join("staged.toml"));
    std::fs::rename(dir.path().join("staged.toml"), &file).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let d = api.get(&format!("/devices/{id}"));
    assert_eq!(d["status"]["enrolled"], true, "{d}");
}

#[test]
fn a_fleet_key_gateway_waits_for_approval_then_comes_online() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, _config, _) = server_with_device(dir.path(), "unused");
    let (s, v) = api.post(
        "/fleet-keys",
        json!({"name": "line-3", "expires_in_days": 5}),
    );
    assert_eq!(s, 200, "{v}");
    let fleet = v["key"].as_str().unwrap().to_string();
    let state = dir.path().join("edge");
    let ca = server.data.join("ca.pem");
    let out = edge(
        &state,
        &[
            "enroll",
            "--server",
            &server.url(),
            "--fleet-key",
            &fleet,
            "--name",
            "press-9",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for an admin's approval"));
    let devices = api.get("/devices");
    let d = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "press-9")
        .unwrap_or_else(|| panic!("the gateway is listed: {devices}"))
        .clone();
    let id = d["id"].as_str().unwrap().to_string();
    // Running before the approval: not online.
    let _run = edge_run(&state);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        api.get(&format!("/devices/{id}"))["status"]["online"],
        false
    );
    let (s, v) = api.post(&format!("/devices/{id}/approve"), json!({}));
    assert_eq!(s, 200, "{v}");
    wait("the approved gateway online", || {
        api.get(&format!("/devices/{id}"))["status"]["online"] == true
    });
}
