//! The bridge against a real VNC server: TigerVNC's `Xvnc` (Debian's
//! `tigervnc-standalone-server`, passwords made with `vncpasswd` from
//! `tigervnc-tools`). The test plays the browser the way noVNC 1.3 does and
//! carries the server's bytes over a blocking TCP connection.
//!
//! Without `Xvnc` the tests say "SKIPPED: Xvnc not installed" and pass.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use des::Des;
use des::cipher::{Array, BlockCipherEncrypt, KeyInit};
use drawbridge_desktop::{Auth, Bridge, Config, Desktop, RfbError};

const V38: &[u8] = b"RFB 003.008\n";
const OK: &[u8] = &[0, 0, 0, 0];
const PASSWORD: &str = "drawbr1dge";

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A running `Xvnc`, killed (this PID only) when dropped.
struct Xvnc {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Xvnc {
    /// Starts Xvnc with `-SecurityTypes VncAuth` and [`PASSWORD`], or with
    /// `-SecurityTypes None`; None if the programs are missing (the test
    /// then reports itself skipped).
    fn start(vnc_auth: bool) -> Option<Xvnc> {
        if !on_path("Xvnc") {
            println!("SKIPPED: Xvnc not installed");
            return None;
        }
        if vnc_auth && !on_path("vncpasswd") {
            println!("SKIPPED: vncpasswd not installed");
            return None;
        }
        // The port picked here may be taken by someone else before Xvnc
        // binds it: then Xvnc exits and the next attempt picks another.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let passwd = dir.path().join("passwd");
            if vnc_auth {
                write_password_file(&passwd, PASSWORD);
            }
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let log = dir.path().join("xvnc.log");
            let mut cmd = Command::new("Xvnc");
            // -displayfd lets the X server pick a free display number itself.
            cmd.args(["-displayfd", "1", "-nolisten", "tcp"])
                .args(["-rfbport", &port.to_string(), "-interface", "127.0.0.1"])
                .args(["-geometry", "640x480", "-depth", "24"])
                .args(["-BlacklistThreshold", "1000"]);
            if vnc_auth {
                cmd.args(["-SecurityTypes", "VncAuth", "-PasswordFile"])
                    .arg(&passwd);
            } else {
                cmd.args(["-SecurityTypes", "None"]);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("log file"))
                .spawn()
                .expect("start Xvnc");
            let mut xvnc = Xvnc {
                child,
                port,
                log,
                _dir: dir,
            };
            if xvnc.wait_listening() {
                return Some(xvnc);
            }
        }
        panic!("Xvnc did not start in 5 attempts (logs above)");
    }

    /// True once the RFB port answers; false if Xvnc exited first.
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("Xvnc exited early ({status}):\n{}", self.log_text());
                return false;
            }
            if let Ok(mut probe) = TcpStream::connect(("127.0.0.1", self.port)) {
                // Read the greeting so Xvnc does not log a half-open client.
                let _ = probe.set_read_timeout(Some(Duration::from_secs(2)));
                let mut greeting = [0u8; 12];
                if probe.read_exact(&mut greeting).is_ok() && greeting.starts_with(b"RFB ") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Xvnc did not listen within 20 s:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `vncpasswd -f`: the password on stdin, the obfuscated file on stdout.
fn write_password_file(path: &Path, password: &str) {
    let mut child = Command::new("vncpasswd")
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vncpasswd");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.len() == 8,
        "vncpasswd -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).unwrap();
}

/// VNC Authentication computed here, independently of the bridge: DES with
/// the password (8 bytes, zero-padded) as key, every key byte's bits
/// reversed, each half of the challenge on its own.
fn vnc_response(password: &str, challenge: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password.as_bytes()) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(&Array::from(key));
    let mut out = Vec::new();
    for half in challenge.chunks(8) {
        let mut block = Array::<u8, _>::try_from(half).unwrap();
        cipher.encrypt_block(&mut block);
        out.extend_from_slice(&block);
    }
    out
}

/// The bridge with the VNC server on one side and the test, playing the
/// browser, on the other.
struct Session {
    bridge: Bridge,
    server: TcpStream,
    /// Everything the bridge sent the browser, and how much the test read.
    inbox: Vec<u8>,
    read: usize,
}

impl Session {
    fn connect(xvnc: &Xvnc, auth: Auth, view_only: bool) -> Session {
        let server = TcpStream::connect(("127.0.0.1", xvnc.port)).expect("connect Xvnc");
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Session {
            bridge: Bridge::new(Config { auth, view_only }),
            server,
            inbox: Vec::new(),
            read: 0,
        }
    }

    fn flush(&mut self) {
        let out = self.bridge.take_to_server();
        if !out.is_empty() {
            self.server.write_all(&out).expect("write to Xvnc");
        }
        self.inbox.extend(self.bridge.take_to_browser());
    }

    /// Carries server bytes until the browser has `n` unread bytes; returns them.
    fn browser_read(&mut self, n: usize) -> Result<Vec<u8>, RfbError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 16 * 1024];
        loop {
            self.flush();
            if self.inbox.len() - self.read >= n {
                let got = self.inbox[self.read..self.read + n].to_vec();
                self.read += n;
                return Ok(got);
            }
            assert!(Instant::now() < deadline, "timed out waiting for {n} bytes");
            match self.server.read(&mut buf) {
                Ok(0) => panic!("Xvnc closed the connection without a bridge error"),
                Ok(len) => {
                    let result = self.bridge.from_server(&buf[..len]);
                    self.flush();
                    result?;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from Xvnc: {e}"),
            }
        }
    }

    fn browser_send(&mut self, bytes: &[u8]) {
        self.bridge
            .from_browser(bytes)
            .expect("browser bytes accepted");
        self.flush();
    }

    /// ClientInit and ServerInit, as noVNC does them (shared flag 0: the
    /// bridge makes it shared anyway).
    fn init(&mut self) -> Result<Desktop, RfbError> {
        self.browser_send(&[0]);
        let init = self.browser_read(24)?;
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let name = self.browser_read(name_len as usize)?;
        let desktop = self
            .bridge
            .desktop()
            .cloned()
            .expect("desktop after ServerInit");
        assert_eq!(desktop.name.as_bytes(), &name[..]);
        assert_eq!(u16::from_be_bytes([init[0], init[1]]), desktop.width);
        Ok(desktop)
    }

    /// Asks for a picture of the top left corner and checks that a
    /// FramebufferUpdate comes back.
    fn picture_flows(&mut self) {
        self.browser_send(&[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]);
        let header = self.browser_read(4).unwrap();
        assert_eq!(header[0], 0, "FramebufferUpdate");
    }
}

fn assert_640x480(desktop: &Desktop) {
    assert_eq!((desktop.width, desktop.height), (640, 480), "{desktop:?}");
    assert!(!desktop.name.is_empty());
}

#[test]
fn stored_password_gets_through_to_server_init() {
    let Some(xvnc) = Xvnc::start(true) else {
        return;
    };
    let mut s = Session::connect(&xvnc, Auth::Stored(PASSWORD.into()), false);
    assert_eq!(s.browser_read(12).unwrap(), V38);
    s.browser_send(V38);
    // The browser is offered None only: the password stays with the bridge.
    assert_eq!(s.browser_read(2).unwrap(), [1, 1]);
    s.browser_send(&[1]);
    assert_eq!(s.browser_read(4).unwrap(), OK);
    assert_640x480(&s.init().unwrap());
    s.picture_flows();
}

#[test]
fn wrong_stored_password_is_refused_with_the_server_reason() {
    let Some(xvnc) = Xvnc::start(true) else {
        return;
    };
    let mut s = Session::connect(&xvnc, Auth::Stored("not-it".into()), false);
    assert_eq!(s.browser_read(12).unwrap(), V38);
    s.browser_send(V38);
    assert_eq!(s.browser_read(2).unwrap(), [1, 1]);
    s.browser_send(&[1]);
    let err = s.browser_read(4).unwrap_err();
    assert!(matches!(err, RfbError::PasswordRefused(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the VNC server refused the password: "),
        "{err}"
    );
    println!("refusal as users see it: {err}");
}

#[test]
fn typed_password_is_relayed_and_a_correct_response_gets_through() {
    let Some(xvnc) = Xvnc::start(true) else {
        return;
    };
    let mut s = Session::connect(&xvnc, Auth::Typed, false);
    assert_eq!(s.browser_read(12).unwrap(), V38);
    s.browser_send(V38);
    // The browser is offered VNC Authentication and answers the challenge
    // itself, as noVNC does when the user types the password.
    assert_eq!(s.browser_read(2).unwrap(), [1, 2]);
    s.browser_send(&[2]);
    let challenge = s.browser_read(16).unwrap();
    s.browser_send(&vnc_response(PASSWORD, &challenge));
    assert_eq!(s.browser_read(4).unwrap(), OK);
    assert_640x480(&s.init().unwrap());
    s.picture_flows();
}

#[test]
fn typed_wrong_password_reaches_the_browser_as_a_failed_security_result() {
    let Some(xvnc) = Xvnc::start(true) else {
        return;
    };
    let mut s = Session::connect(&xvnc, Auth::Typed, false);
    assert_eq!(s.browser_read(12).unwrap(), V38);
    s.browser_send(V38);
    assert_eq!(s.browser_read(2).unwrap(), [1, 2]);
    s.browser_send(&[2]);
    let challenge = s.browser_read(16).unwrap();
    s.browser_send(&vnc_response("not-it", &challenge));
    let err = s.browser_read(4).unwrap_err();
    let RfbError::PasswordRefused(reason) = &err else {
        panic!("{err:?}");
    };
    // What noVNC reads: status 1, then the reason string (RFB 3.8).
    let mut expected = vec![0, 0, 0, 1];
    expected.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    expected.extend_from_slice(reason.as_bytes());
    assert_eq!(&s.inbox[s.read..], &expected[..]);
}

#[test]
fn security_none_server_works_with_either_auth_and_view_only() {
    let Some(xvnc) = Xvnc::start(false) else {
        return;
    };
    for auth in [Auth::Typed, Auth::Stored("unused".into())] {
        let mut s = Session::connect(&xvnc, auth, false);
        assert_eq!(s.browser_read(12).unwrap(), V38);
        s.browser_send(V38);
        assert_eq!(s.browser_read(2).unwrap(), [1, 1]);
        s.browser_send(&[1]);
        assert_eq!(s.browser_read(4).unwrap(), OK);
        assert_640x480(&s.init().unwrap());
        s.picture_flows();
    }

    // View-only: the pointer event is dropped, the session carries on.
    let mut s = Session::connect(&xvnc, Auth::Typed, true);
    s.browser_read(12).unwrap();
    s.browser_send(V38);
    s.browser_read(2).unwrap();
    s.browser_send(&[1]);
    s.browser_read(4).unwrap();
    s.init().unwrap();
    s.browser_send(&[5, 1, 0, 10, 0, 10]);
    s.browser_send(&[4, 1, 0, 0, 0, 0, 0, 0x61]);
    assert_eq!(s.bridge.dropped_inputs(), 2);
    s.picture_flows();
}
