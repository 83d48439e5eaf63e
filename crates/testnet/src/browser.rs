//! Real Chromium in tests: chromedriver in a process group of its own, and
//! the certificate pin that makes the browser trust exactly a test server's
//! key. Tests skip with a visible line when Chromium is not installed, unless
//! `DRAWBRIDGE_REQUIRE_BROWSER=1`.

use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// True when Chromium and chromedriver are installed; otherwise prints a
/// SKIPPED line for `test` (or panics under `DRAWBRIDGE_REQUIRE_BROWSER=1`).
pub fn have_browser(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var("DRAWBRIDGE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("DRAWBRIDGE_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing");
    }
    eprintln!("SKIPPED {test}: no {CHROMIUM} / {CHROMEDRIVER} (install chromium chromium-driver)");
    false
}

/// WebDriver capabilities for headless Chromium with its own profile,
/// trusting only the key pinned by `spki` (see [`spki_hash`]).
pub fn chrome_caps(
    profile: &Path,
    spki: &str,
    downloads: Option<&Path>,
) -> serde_json::Map<String, Value> {
    let mut opts = json!({
        "binary": CHROMIUM,
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1280,900",
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={spki}"),
        ],
    });
    if let Some(d) = downloads {
        opts["prefs"] = json!({
            "download.default_directory": d.display().to_string(),
            "download.prompt_for_download": false,
        });
    }
    let caps = json!({ "browserName": "chrome", "goog:chromeOptions": opts });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    caps
}

/// chromedriver (and the Chromium it starts) in a process group of its own,
/// killed by that group's id when dropped, also when the test fails.
pub struct Driver {
    child: Child,
    pub port: u16,
}

impl Driver {
    pub fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group that chromedriver leads (it and the browser it
        // started), by that group's own id, never anything else.
        let pgid = self.child.id() as libc::pid_t;
        if pgid > 1 {
            // SAFETY: killpg only sends a signal to the group `pgid`.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM
/// file, for Chromium's `--ignore-certificate-errors-spki-list`: the browser
/// then trusts exactly our server's key and nothing else.
pub fn spki_hash(pem: &Path) -> String {
    let text = std::fs::read_to_string(pem).expect("certificate");
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM");
    // DER: (tag, whole element, content, rest).
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | *x as usize),
                2 + n,
            )
        };
        (tag, &b[..hdr + len], &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, _, cert, _) = tlv(&der);
    let (_, _, tbs, _) = tlv(cert);
    let mut rest = tbs;
    if rest[0] == 0xa0 {
        rest = tlv(rest).3; // version
    }
    for _ in 0..5 {
        rest = tlv(rest).3; // serial, signature, issuer, validity, subject
    }
    let spki = tlv(rest).1;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}
