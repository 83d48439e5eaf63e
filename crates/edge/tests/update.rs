//! Signed edge updates end to end, with the real binaries: the server stores
//! releases signed offline (keys made here with `drawbridge-release`), an
//! admin rolls them out, and a copy of build A of the edge updates itself to
//! build B (the same code with another version string), verified, swapped and
//! online again, on the audit chain. Refused with nothing changed: a tampered
//! binary, a forged signature, an expired signing key, an older version. A
//! build that cannot connect is rolled back within the health window; no
//! update while a session is active; canaries first.
//!
//! Build B comes from `scripts/test` (`DRAWBRIDGE_TEST_EDGE_B`); without it
//! these tests say so and pass. Each edge runs from a stripped COPY in a
//! temporary directory: it replaces itself.

use crate::common;

use common::*;
use drawbridge_release::{PrivateKey, ReleaseMeta, SigningKeyCert};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const B_VAR: &str = "DRAWBRIDGE_TEST_EDGE_B";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `f` within `secs` seconds, or a panic naming `what` (and the logs).
fn wait_for(what: &str, secs: u64, logs: &[&Path], mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut tail = String::new();
    for l in logs {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        tail.push_str(&format!("\n--- {} ---\n", l.display()));
        tail.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    panic!("timed out waiting until {what}{tail}");
}

/// A stripped copy of `from` at `to`; answers its `--version`.
fn stripped_copy(from: &Path, to: &Path) -> String {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let out = Command::new("strip")
        .arg("-o")
        .arg(to)
        .arg(from)
        .output()
        .expect("strip");
    if !out.status.success() {
        std::fs::copy(from, to).unwrap();
    }
    let out = Command::new(to).arg("--version").output().unwrap();
    let v = String::from_utf8(out.stdout).unwrap();
    v.trim()
        .strip_prefix("drawbridge-edge ")
        .expect("--version names the binary")
        .to_string()
}

/// The operator's offline keys.
struct Keys {
    root: PrivateKey,
    signing: PrivateKey,
    cert: drawbridge_release::Envelope,
}

impl Keys {
    fn new(not_after: i64) -> Keys {
        let root = PrivateKey::generate();
        let signing = PrivateKey::generate();
        let cert = certify(&root, &signing, not_after);
        Keys {
            root,
            signing,
            cert,
        }
    }
}

fn certify(
    root: &PrivateKey,
    signing: &PrivateKey,
    not_after: i64,
) -> drawbridge_release::Envelope {
    drawbridge_release::certify(
        root,
        &SigningKeyCert {
            name: "release-test".into(),
            public_key: signing.public(),
            not_before: now() - 60,
            not_after,
        },
    )
}

/// `binary`'s signature file as `drawbridge-release sign` writes it.
fn sign(
    signing: &PrivateKey,
    cert: &drawbridge_release::Envelope,
    binary: &Path,
    version: &str,
) -> String {
    let bytes = std::fs::read(binary).unwrap();
    drawbridge_release::sign_release(
        signing,
        cert.clone(),
        &ReleaseMeta {
            product: drawbridge_release::PRODUCT_EDGE.into(),
            version: version.into(),
            target: drawbridge_release::this_target(),
            size: bytes.len() as u64,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
            created: now(),
            downgrade: false,
        },
    )
    .to_json()
}

/// One server with a release root, build A and build B.
struct Rig {
    tmp: tempfile::TempDir,
    server: Server,
    api: Api,
    keys: Keys,
    /// `press-1`, enrolled before the server had a root (nothing pinned).
    first: (String, PathBuf),
    a: PathBuf,
    a_version: String,
    b: PathBuf,
    b_version: String,
}

/// The rig, or `None` (and a SKIP line) without build B.
fn rig() -> Option<Rig> {
    let Some(b_build) = std::env::var_os(B_VAR).map(PathBuf::from) else {
        eprintln!(
            "SKIP: {B_VAR} is not set; the update tests need a second edge build with another version: \
             run scripts/test (it builds one), or by hand: \
             DRAWBRIDGE_EDGE_VERSION=99.0.0-test cargo build -p drawbridge-edge --bin drawbridge-edge && \
             cp target/debug/drawbridge-edge target/edge-b/ && cargo build -p drawbridge-edge --bin drawbridge-edge && \
             {B_VAR}=target/edge-b/drawbridge-edge cargo test -p drawbridge-edge --test integration -- update::"
        );
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("builds/a/drawbridge-edge");
    let a_version = stripped_copy(&edge_bin(), &a);
    let b = tmp.path().join("builds/b/drawbridge-edge");
    let b_version = stripped_copy(&b_build, &b);
    assert_ne!(
        a_version, b_version,
        "{B_VAR} must be a build with another version"
    );
    let (server, api, device, state) = setup(tmp.path());
    let keys = Keys::new(now() + 86_400);
    server_cli(
        &server.data,
        &["release", "root", &keys.root.public().to_string()],
    );
    Some(Rig {
        tmp,
        server,
        api,
        keys,
        first: (device, state),
        a,
        a_version,
        b,
        b_version,
    })
}

/// The files next to the binary, whether update.json exists, device.json.
type Snapshot = (Vec<(String, Vec<u8>)>, bool, Vec<u8>);

/// An edge running from its own copy of a build.
struct Edge {
    id: String,
    state: PathBuf,
    exe: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A new device, enrolled now (it pins the server's root), with its own copy of A.
    fn enrol(&self, name: &str) -> Edge {
        let (code, v) = self.api.post(
            "/devices",
            json!({"name": name, "lan_subnets": ["192.168.1.0/24"], "firewall": [{"address": "192.168.1.10", "protocol": "tcp", "ports": "502"}]}),
        );
        assert_eq!(code, 200, "{v}");
        let id = v["device"]["id"].as_str().unwrap().to_string();
        let key = v["activation"]["key"].as_str().unwrap();
        let state = self.path(&format!("{name}/state"));
        let ca = self.server.data.join("ca.pem");
        let out = edge(
            &state,
            &[
                "enroll",
                "--server",
                &self.server.url(),
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
        let pinned = device_json(&state)["release_root"].clone();
        assert_eq!(
            pinned,
            json!(self.keys.root.public().to_string()),
            "pinned at enrolment"
        );
        self.edge_of(name, id, state)
    }

    /// `press-1` (enrolled before the root was set) with its own copy of A.
    fn first_edge(&self) -> Edge {
        let (id, state) = self.first.clone();
        assert_eq!(device_json(&state)["release_root"], Value::Null);
        self.edge_of("press-1", id, state)
    }

    fn edge_of(&self, name: &str, id: String, state: PathBuf) -> Edge {
        let exe = self.path(&format!("{name}/bin/drawbridge-edge"));
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::copy(&self.a, &exe).unwrap();
        Edge {
            id,
            state,
            exe,
            log: self.path(&format!("{name}/edge.log")),
            proc: None,
        }
    }

    /// Stores `binary` as `version`, signed by `signing` under `cert`; its id.
    fn add_release_signed(
        &self,
        binary: &Path,
        version: &str,
        signing: &PrivateKey,
        cert: &drawbridge_release::Envelope,
    ) -> String {
        let sig = binary.with_extension("release.json");
        std::fs::write(&sig, sign(signing, cert, binary, version)).unwrap();
        let out = server_cli(
            &self.server.data,
            &[
                "release",
                "add",
                binary.to_str().unwrap(),
                "--signature",
                sig.to_str().unwrap(),
            ],
        );
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"release"), "{out}");
        assert_eq!(f.get(2), Some(&version), "{out}");
        f[1].to_string()
    }

    fn add_release(&self, binary: &Path, version: &str) -> String {
        self.add_release_signed(binary, version, &self.keys.signing, &self.keys.cert)
    }

    /// `POST /rollouts`; its id.
    fn rollout(&self, body: Value) -> String {
        let (code, v) = self.api.post("/rollouts", body);
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// A device's row in a rollout.
    fn row(&self, rollout: &str, device: &str) -> Value {
        let v = self.api.get(&format!("/rollouts/{rollout}"));
        v["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["device_id"] == device).cloned())
            .unwrap_or(Value::Null)
    }

    fn device(&self, id: &str) -> Value {
        self.api.get(&format!("/devices/{id}"))
    }

    /// Waits until `e` is online running `version`.
    fn wait_online(&self, e: &Edge, version: &str, secs: u64) {
        wait_for(
            &format!("{} online with version {version}", e.id),
            secs,
            &[&e.log],
            || {
                let d = self.device(&e.id);
                d["status"]["online"] == true && d["status"]["agent_version"] == version
            },
        );
    }

    /// The device's `update.*` audit entries, oldest first: (seq, action, details).
    fn audit(&self, device: &str) -> Vec<(i64, String, String)> {
        let v = self
            .api
            .get(&format!("/audit?action=update.&device={device}&limit=500"));
        let mut out: Vec<(i64, String, String)> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["seq"].as_i64().unwrap_or(0),
                            e["action"].as_str().unwrap_or("").to_string(),
                            e["details"].to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Changes the server's database behind its back (a compromised server).
    fn tamper(&self, sql: &str, binds: &[&str]) {
        use sqlx::Connection;
        let url = format!(
            "sqlite://{}",
            self.server.data.join("drawbridge.db").display()
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(*b);
            }
            let r = q.execute(&mut c).await.unwrap();
            assert!(r.rows_affected() >= 1, "{sql}");
        });
    }

    fn chunk0(&self, release: &str) -> String {
        use sqlx::Connection;
        let url = format!(
            "sqlite://{}",
            self.server.data.join("drawbridge.db").display()
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_scalar("SELECT data FROM release_chunks WHERE release_id = $1 AND seq = 0")
                .bind(release)
                .fetch_one(&mut c)
                .await
                .unwrap()
        })
    }
}

fn device_json(state: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state.join("device.json")).unwrap()).unwrap()
}

impl Edge {
    /// `run` from its copy, with `extra` arguments and environment.
    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.exe);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.env_remove("DRAWBRIDGE_PROXY");
        self.proc = Some(Proc(
            cmd.arg("--state-dir")
                .arg(&self.state)
                .arg("run")
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    /// The files next to the binary, with their contents.
    fn bin_dir(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.exe.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// What an update would change: the binaries, update.json, device.json.
    fn snapshot(&self) -> Snapshot {
        (
            self.bin_dir(),
            self.state.join("update.json").exists(),
            std::fs::read(self.state.join("device.json")).unwrap(),
        )
    }

    fn update_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("update.json")).unwrap()).unwrap()
    }

    /// `drawbridge-edge status` of its own binary.
    fn status(&self) -> String {
        let out = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn an_edge_is_updated_from_build_a_to_build_b_verified_swapped_online_and_audited() {
    let Some(rig) = rig() else { return };
    let mut e = rig.enrol("press-2");
    e.start(&[]);
    rig.wait_online(&e, &rig.a_version, 30);
    let release = rig.add_release(&rig.b, &rig.b_version);
    let rollout = rig.rollout(json!({"release_id": release, "devices": [e.id]}));
    rig.wait_online(&e, &rig.b_version, 120);
    wait_for("the rollout done", 30, &[&e.log], || {
        rig.row(&rollout, &e.id)["state"] == "succeeded"
            && rig.api.get(&format!("/rollouts/{rollout}"))["state"] == "done"
    });
    // The binary is B's bytes, A's kept as .previous, nothing else left.
    assert_eq!(
        std::fs::read(&e.exe).unwrap(),
        std::fs::read(&rig.b).unwrap()
    );
    let names: Vec<String> = e.bin_dir().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["drawbridge-edge", "drawbridge-edge.previous"]);
    assert_eq!(
        std::fs::read(e.exe.with_file_name("drawbridge-edge.previous")).unwrap(),
        std::fs::read(&rig.a).unwrap()
    );
    let u = e.update_json();
    assert_eq!(u["state"], "succeeded", "{u}");
    assert_eq!(u["from"], rig.a_version.as_str());
    assert_eq!(u["to"], rig.b_version.as_str());
    wait_for("the success reported", 10, &[&e.log], || {
        e.update_json()["reported"] == true
    });
    // The same process (exec keeps the pid) runs B now, and says so.
    let out = Command::new(&e.exe).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&rig.b_version));
    wait_for("status shows the update", 20, &[&e.log], || {
        let s = e.status();
        s.contains(&format!("version {}", rig.b_version))
            && s.contains(&format!("update to {}: succeeded", rig.b_version))
    });
    // On the audit chain: offered, downloading, installing, succeeded (as B).
    let steps: Vec<String> = rig.audit(&e.id).into_iter().map(|(_, a, _)| a).collect();
    for s in [
        "update.offer",
        "update.downloading",
        "update.installing",
        "update.succeeded",
    ] {
        assert!(steps.contains(&s.to_string()), "{s} in {steps:?}");
    }
    let audit = rig.audit(&e.id);
    assert!(
        audit
            .iter()
            .any(|(_, a, d)| a == "update.succeeded" && d.contains(&rig.b_version)),
        "{audit:?}"
    );
    let (code, verify) = rig.api.call(reqwest::Method::GET, "/audit/verify", None);
    assert_eq!(code, 200, "{verify}");
    // A restart later is no trial: B stays, online.
    e.stop();
    e.start(&[]);
    rig.wait_online(&e, &rig.b_version, 30);
}

/// Waits until `e`'s row of `rollout` is `refused`; answers its message.
fn refused(rig: &Rig, e: &Edge, rollout: &str) -> String {
    wait_for(&format!("rollout {rollout} refused"), 90, &[&e.log], || {
        rig.row(rollout, &e.id)["state"] == "refused"
    });
    rig.row(rollout, &e.id)["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn tampered_forged_expired_and_older_releases_are_refused_with_nothing_changed() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let Some(rig) = rig() else { return };
    let mut e = rig.enrol("press-2");
    e.start(&[]);
    rig.wait_online(&e, &rig.a_version, 30);
    let before = e.snapshot();
    let unchanged = |e: &Edge, what: &str| {
        assert_eq!(e.snapshot(), before, "{what} changed something on disk");
        assert!(
            !e.exe.with_file_name(".drawbridge-edge.download").exists(),
            "{what}: a download was left"
        );
        rig.wait_online(e, &rig.a_version, 10);
    };

    // A tampered binary: the server's stored bytes differ from the signed hash.
    let b1 = rig.path("releases/b1/drawbridge-edge");
    std::fs::create_dir_all(b1.parent().unwrap()).unwrap();
    std::fs::copy(&rig.b, &b1).unwrap();
    let tampered = rig.add_release(&b1, "90.0.0");
    let mut bytes = STANDARD.decode(rig.chunk0(&tampered)).unwrap();
    bytes[4096] ^= 0xff;
    rig.tamper(
        "UPDATE release_chunks SET data = $1 WHERE release_id = $2 AND seq = 0",
        &[&STANDARD.encode(&bytes), &tampered],
    );
    let r = rig.rollout(json!({"release_id": tampered, "devices": [e.id]}));
    let msg = refused(&rig, &e, &r);
    assert!(msg.contains("SHA-256"), "{msg}");
    unchanged(&e, "the tampered binary");

    // A forged signature: the server's record is replaced by one an attacker's
    // root signed, after the rollout was made (the server checks the release's
    // signature when a rollout is created) and before the edge hears of it.
    let forged = rig.add_release(&b1, "91.0.0");
    let attacker = Keys::new(now() + 86_400);
    e.stop();
    let r = rig.rollout(json!({"release_id": forged, "devices": [e.id]}));
    rig.tamper(
        "UPDATE releases SET signed = $1 WHERE id = $2",
        &[
            &sign(&attacker.signing, &attacker.cert, &b1, "91.0.0"),
            &forged,
        ],
    );
    e.start(&[]);
    let msg = refused(&rig, &e, &r);
    assert!(msg.contains("signature"), "{msg}");
    unchanged(&e, "the forged signature");

    // An expired signing key: valid when the release was added and the rollout
    // made (the server refuses to roll out an expired one), expired when the
    // edge hears of it.
    let until = now() + 8;
    let short = certify(&rig.keys.root, &rig.keys.signing, until);
    let expired = rig.add_release_signed(&b1, "92.0.0", &rig.keys.signing, &short);
    e.stop();
    let r = rig.rollout(json!({"release_id": expired, "devices": [e.id]}));
    while now() <= until + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    e.start(&[]);
    let msg = refused(&rig, &e, &r);
    assert!(msg.contains("expired"), "{msg}");
    unchanged(&e, "the expired signing key");

    // An older version (a rollback attack): the server's database claims the
    // release was signed as a downgrade and the rollout asks for one; the
    // signature says otherwise.
    let older = rig.add_release(&b1, "0.0.1");
    rig.tamper("UPDATE releases SET downgrade = 1 WHERE id = $1", &[&older]);
    let r = rig.rollout(json!({"release_id": older, "devices": [e.id], "downgrade": true}));
    let msg = refused(&rig, &e, &r);
    assert!(msg.contains("older"), "{msg}");
    unchanged(&e, "the older version");
    let audit = rig.audit(&e.id);
    assert_eq!(
        audit
            .iter()
            .filter(|(_, a, _)| a == "update.refused")
            .count(),
        4,
        "{audit:?}"
    );
}

#[test]
fn a_build_that_cannot_connect_is_rolled_back_within_the_health_window() {
    let Some(rig) = rig() else { return };
    let mut e = rig.enrol("press-2");
    const HEALTH: u64 = 5;
    e.start(&["--update-health-secs", &HEALTH.to_string()]);
    rig.wait_online(&e, &rig.a_version, 30);
    // The "release": a shell script that runs the real build B behind a proxy
    // nobody answers (a closed port on loopback), signed like any release. B
    // starts, holds the trial and never authenticates, so its timer puts A
    // back and executes it — without the proxy variable the script added,
    // which A did not have (update.json names A's proxy variables).
    let real_b = rig.path("builds/b-real/drawbridge-edge");
    std::fs::create_dir_all(real_b.parent().unwrap()).unwrap();
    std::fs::copy(&rig.b, &real_b).unwrap();
    let script = rig.path("releases/cannot-connect/drawbridge-edge");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nDRAWBRIDGE_PROXY=http://127.0.0.1:{}\nexport DRAWBRIDGE_PROXY\nexec '{}' \"$@\"\n",
            free_port(),
            real_b.display()
        ),
    )
    .unwrap();
    let release = rig.add_release(&script, "98.0.0");
    let rollout = rig.rollout(json!({"release_id": release, "devices": [e.id]}));
    wait_for("installing", 60, &[&e.log], || {
        e.state.join("update.json").exists()
    });
    let swapped = Instant::now();
    assert_eq!(e.update_json()["state"], "trial");
    wait_for("rolled back", HEALTH + 10, &[&e.log], || {
        e.update_json()["state"] == "rolled_back"
    });
    let took = swapped.elapsed();
    assert!(
        took <= Duration::from_secs(HEALTH + 5),
        "rolled back after {took:?}, the window is {HEALTH} s"
    );
    assert_eq!(
        std::fs::read(&e.exe).unwrap(),
        std::fs::read(&rig.a).unwrap()
    );
    rig.wait_online(&e, &rig.a_version, 30);
    wait_for("the rollback reported", 30, &[&e.log], || {
        rig.row(&rollout, &e.id)["state"] == "rolled_back"
    });
    let msg = rig.row(&rollout, &e.id)["message"].to_string();
    assert!(msg.contains("did not come online within"), "{msg}");
    assert_eq!(e.update_json()["reported"], true);
    // One failure at the threshold (1) pauses the rollout for the admins.
    let r = rig.api.get(&format!("/rollouts/{rollout}"));
    assert_eq!(r["state"], "paused", "{r}");
    assert!(e.status().contains("rolled_back"), "{}", e.status());
}

#[test]
fn no_update_while_a_session_is_active_it_waits_then_updates_after_the_session_ends() {
    let Some(rig) = rig() else { return };
    let mut e = rig.enrol("press-2");
    edge(&e.state, &["switch", "on"]);
    e.start(&[]);
    wait_for("online with the switch on", 30, &[&e.log], || {
        let d = rig.device(&e.id);
        d["status"]["online"] == true && d["status"]["switch_on"] == true
    });
    let me = rig.api.get("/me")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = session(&rig.api, &e.id, &me);
    let (code, v) = rig.api.post(&format!("/sessions/{sid}/start"), json!({}));
    assert_eq!(code, 200, "{v}");
    let release = rig.add_release(&rig.b, &rig.b_version);
    let rollout = rig.rollout(json!({"release_id": release, "devices": [e.id]}));
    // The server holds the offer back while the session is active…
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(rig.row(&rollout, &e.id)["state"], "pending");
    // …and so does the edge, when an offer reaches it anyway (here: the
    // server's row forced to `offered`, and the edge reconnecting to hear it).
    rig.tamper(
        "UPDATE rollout_devices SET state = 'offered' WHERE rollout_id = $1",
        &[&rollout],
    );
    e.stop();
    e.start(&[]);
    wait_for("the edge waits", 30, &[&e.log], || {
        rig.row(&rollout, &e.id)["state"] == "waiting"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rig.row(&rollout, &e.id)["state"], "waiting");
    assert_eq!(
        std::fs::read(&e.exe).unwrap(),
        std::fs::read(&rig.a).unwrap()
    );
    assert!(!e.exe.with_file_name(".drawbridge-edge.download").exists());
    assert_eq!(rig.api.get(&format!("/sessions/{sid}"))["state"], "active");
    wait_for("status shows the wait", 20, &[&e.log], || {
        e.status()
            .contains(&format!("update to {}: waiting", rig.b_version))
    });
    // The session ends: the update goes ahead.
    let (code, v) = rig.api.post(&format!("/sessions/{sid}/end"), json!({}));
    assert_eq!(code, 200, "{v}");
    rig.wait_online(&e, &rig.b_version, 120);
    wait_for("succeeded", 30, &[&e.log], || {
        rig.row(&rollout, &e.id)["state"] == "succeeded"
    });
    let steps: Vec<String> = rig.audit(&e.id).into_iter().map(|(_, a, _)| a).collect();
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} in {steps:?}"))
    };
    assert!(at("update.waiting") < at("update.downloading"), "{steps:?}");
}

#[test]
fn a_staged_rollout_updates_the_canary_first_then_the_rest() {
    let Some(rig) = rig() else { return };
    let mut canary = rig.enrol("press-2");
    // The other one was enrolled before the server had a root: it trusts the
    // root of its first offer (over its authenticated channel) and pins it.
    let mut rest = rig.first_edge();
    canary.start(&[]);
    rest.start(&[]);
    rig.wait_online(&canary, &rig.a_version, 30);
    rig.wait_online(&rest, &rig.a_version, 30);
    let release = rig.add_release(&rig.b, &rig.b_version);
    let rollout = rig.rollout(json!({
        "release_id": release, "devices": [canary.id, rest.id], "canaries": [canary.id], "soak_minutes": 0,
    }));
    let v = rig.api.get(&format!("/rollouts/{rollout}"));
    assert_eq!(v["stage"], "canary", "{v}");
    // Until the canary has succeeded, the rest is not even offered the update.
    wait_for("the canary succeeded", 120, &[&canary.log], || {
        let c = rig.row(&rollout, &canary.id)["state"].clone();
        if c != "succeeded" {
            assert_eq!(
                rig.row(&rollout, &rest.id)["state"],
                "pending",
                "canary is {c}"
            );
        }
        c == "succeeded"
    });
    rig.wait_online(&canary, &rig.b_version, 30);
    rig.wait_online(&rest, &rig.b_version, 120);
    wait_for("the rest succeeded", 30, &[&rest.log], || {
        rig.row(&rollout, &rest.id)["state"] == "succeeded"
    });
    // The audit chain has the order: the canary offered and succeeded, then the rest offered.
    let seq = |action: &str, dev: &str| {
        let entries = rig.audit(dev);
        entries
            .iter()
            .find(|(_, a, _)| a == action)
            .map(|(s, _, _)| *s)
            .unwrap_or_else(|| panic!("{action} of {dev} in {entries:?}"))
    };
    assert!(seq("update.offer", &canary.id) < seq("update.succeeded", &canary.id));
    assert!(seq("update.succeeded", &canary.id) < seq("update.offer", &rest.id));
    assert_eq!(
        device_json(&rest.state)["release_root"],
        json!(rig.keys.root.public().to_string()),
        "pinned on first use"
    );
    assert_eq!(
        std::fs::read(&rest.exe).unwrap(),
        std::fs::read(&rig.b).unwrap()
    );
}
