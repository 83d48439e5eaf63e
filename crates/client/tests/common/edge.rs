//! A real `drawbridge-edge` for the data commands' tests, and a PLC on
//! loopback for it to poll: a small Modbus TCP server whose holding register 0
//! counts the reads it answered, so every sample is a new value and a point
//! repeated or out of order shows.

use super::{Cli, ENV_VARS, Server, client_bin};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The edge binary next to the client's; built once if it is missing.
pub fn edge_bin() -> PathBuf {
    let client = client_bin();
    let dir = client.parent().expect("binary directory");
    let bin = dir.join(format!("drawbridge-edge{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let target_dir = dir.parent().expect("target directory");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "drawbridge-edge"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p drawbridge-edge");
        assert!(status.success(), "cargo build -p drawbridge-edge failed");
    }
    bin
}

/// A running edge agent, killed (by its own handle) when dropped.
pub struct Edge {
    child: Child,
    pub state: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// Creates `device` with the LAN 127.0.0.0/8 through `admin`'s `drawbridge`,
    /// enrols an edge for it with the printed activation key and runs it.
    pub fn for_new_device(server: &Server, admin: &Cli, device: &str) -> Edge {
        let created = admin
            .run(
                &["device", "create", device, "--lan", "127.0.0.0/8", "--json"],
                None,
            )
            .json();
        let key = created["activation"]["key"]
            .as_str()
            .expect("activation key");
        let state = tempfile::tempdir().expect("tempdir");
        let out = edge_command(state.path())
            .args([
                "enroll",
                "--server",
                &server.url,
                "--activation-key",
                key,
                "--ca-file",
            ])
            .arg(&server.ca)
            .output()
            .expect("run drawbridge-edge enroll");
        assert!(
            out.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(state.path().join("edge.log")).unwrap();
        let child = edge_command(state.path())
            .arg("run")
            .env("RUST_LOG", "warn")
            // The "machine LAN" of these tests is loopback.
            .env("DRAWBRIDGE_EDGE_LOOPBACK_LAN", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start drawbridge-edge");
        Edge { child, state }
    }
}

fn edge_command(state: &Path) -> Command {
    let mut cmd = Command::new(edge_bin());
    for v in ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.env_remove("DRAWBRIDGE_EDGE_DIR");
    cmd.arg("--state-dir").arg(state);
    cmd
}

/// Starts the counting PLC on `ip` (a loopback address) and returns where it listens.
pub fn counting_plc(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind the PLC");
    let addr = listener.local_addr().unwrap();
    let reads = Arc::new(AtomicU16::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let reads = reads.clone();
            std::thread::spawn(move || {
                let _ = serve(conn, &reads);
            });
        }
    });
    addr
}

/// One Modbus TCP connection: MBAP header (transaction, protocol, length,
/// unit), then the request. Only "read holding register 0, one register" is
/// answered (with the count); anything else gets exception 2 (illegal address).
fn serve(mut s: TcpStream, reads: &AtomicU16) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 7];
        s.read_exact(&mut head)?;
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        if !(2..=254).contains(&len) {
            return Ok(());
        }
        let mut pdu = vec![0u8; len - 1];
        s.read_exact(&mut pdu)?;
        let reply: Vec<u8> = if pdu == [3, 0, 0, 0, 1] {
            let v = reads.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            vec![3, 2, v[0], v[1]]
        } else {
            vec![pdu[0] | 0x80, 2]
        };
        let mut out = head[..4].to_vec();
        out.extend_from_slice(&(reply.len() as u16 + 1).to_be_bytes());
        out.push(head[6]);
        out.extend_from_slice(&reply);
        s.write_all(&out)?;
    }
}

/// Waits up to `secs` for `f`, then fails naming `what`.
#[track_caller]
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {secs}s waiting until {what}");
}
