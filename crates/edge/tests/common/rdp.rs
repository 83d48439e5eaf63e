//! RDP desktops in real Chromium with the real binaries: Debian's `xrdp` as
//! a machine's RDP server on the "machine LAN" (127.0.0.5), run by the test
//! with its own configuration, certificate and log (no root, no sesman, no
//! login: its `libvnc` backend shows a TigerVNC `Xvnc` of the test's own,
//! see `common::vnc`), marked `rdp` on a site; Devolutions' IronRDP web client
//! from npm for the server to serve; and the browser steps of the RDP viewer.

use super::vnc::*;
use super::*;
use drawbridge_testnet::browser::have_browser;
use fantoccini::Client;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use std::net::SocketAddrV4;

/// Where Debian installs xrdp (not on a user's PATH).
const XRDP: &str = "/usr/sbin/xrdp";

/// The IronRDP web client for the server: `DRAWBRIDGE_TEST_IRONRDP_DIR`, else
/// the npm install scripts/test makes in `target/ironrdp/node_modules`.
pub fn ironrdp_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DRAWBRIDGE_TEST_IRONRDP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ironrdp/node_modules")
        });
    dir.join("@devolutions/iron-remote-desktop-rdp/iron-remote-desktop-rdp.js")
        .is_file()
        .then_some(dir)
}

/// True when Chromium, the X tools, xrdp, openssl and the IronRDP web client
/// are there; otherwise a visible SKIPPED line, or a panic under
/// `DRAWBRIDGE_REQUIRE_RDP=1` (scripts/test sets it once it installed them).
pub fn have_rdp_tools(test: &str) -> bool {
    let require = std::env::var("DRAWBRIDGE_REQUIRE_RDP").as_deref() == Ok("1");
    if !require && (!have_browser(test) || !have_desktop_tools(test, false)) {
        return false;
    }
    let mut missing = Vec::new();
    if !Path::new(XRDP).is_file() {
        missing.push("xrdp (apt-get install xrdp)".to_string());
    }
    if Command::new("openssl").arg("version").output().is_err() {
        missing.push("openssl".to_string());
    }
    if ironrdp_dir().is_none() {
        missing.push(
            "the IronRDP web client (npm install --prefix target/ironrdp \
             @devolutions/iron-remote-desktop@0.11.0 @devolutions/iron-remote-desktop-rdp@0.7.0)"
                .to_string(),
        );
    }
    if missing.is_empty() {
        return true;
    }
    if require {
        panic!("DRAWBRIDGE_REQUIRE_RDP=1 but missing: {missing:?}");
    }
    eprintln!("SKIPPED {test}: missing {}", missing.join(", "));
    false
}

/// A running xrdp showing `Xvnc`, killed (this PID only) when dropped. One
/// process (`fork=false`), TLS only (xrdp 0.9 has no NLA), bitmaps
/// uncompressed (IronRDP 0.7.0 draws xrdp's compressed ones garbled).
pub struct Xrdp {
    child: Child,
    pub addr: SocketAddrV4,
    dir: tempfile::TempDir,
    /// The VNC password is the one the RDP client logs on with (`password=ask`).
    ask: bool,
}

impl Drop for Xrdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new self-signed certificate and key for xrdp in `dir`.
fn new_certificate(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=xrdp-test", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// xrdp's configuration: its `vncfixed` section logs on to `vnc` with
/// [`VNC_PASSWORD`], or with `ask` with the password in the client's Client
/// Info PDU (xrdp takes it when the client asks for autologon): then only
/// the right RDP password shows the desktop.
fn ini(dir: &Path, addr: SocketAddrV4, vnc: SocketAddrV4, ask: bool) -> String {
    let d = dir.display();
    let password = if ask { "ask" } else { VNC_PASSWORD };
    format!(
        "[Globals]\nini_version=1\nfork=false\nport=tcp://{addr}\nuse_vsock=false\n\
         tcp_nodelay=true\ntcp_keepalive=true\nsecurity_layer=tls\ncrypt_level=none\n\
         certificate={d}/cert.pem\nkey_file={d}/key.pem\nssl_protocols=TLSv1.2, TLSv1.3\n\
         autorun=vncfixed\nallow_channels=true\nallow_multimon=false\nbitmap_cache=true\n\
         bitmap_compression=false\nbulk_compression=false\nmax_bpp=32\nnew_cursors=true\n\
         use_fastpath=both\n\n[Logging]\nLogFile={d}/xrdp.log\nLogLevel=INFO\n\
         EnableSyslog=false\nEnableConsole=false\n\n[Channels]\nrdpdr=false\nrdpsnd=false\n\
         drdynvc=false\ncliprdr=false\nrail=false\nxrdpvr=false\ntcutils=false\n\n\
         [vncfixed]\nname=vncfixed\nlib=libvnc.so\nip={}\nport={}\nusername=na\npassword={password}\n",
        vnc.ip(),
        vnc.port()
    )
}

impl Xrdp {
    /// Starts xrdp on [`LAN_IP`] and a free port (or `port`), showing `xvnc`
    /// (with the RDP client's password when `ask`).
    pub fn start(xvnc: &Xvnc, port: Option<u16>, ask: bool) -> Xrdp {
        let dir = tempfile::tempdir().unwrap();
        new_certificate(dir.path());
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind((LAN_IP, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        });
        let addr = SocketAddrV4::new(LAN_IP, port);
        let config = dir.path().join("xrdp.ini");
        std::fs::write(&config, ini(dir.path(), addr, xvnc.addr, ask)).unwrap();
        let child = Command::new(XRDP)
            .arg("--nodaemon")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("xrdp.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start xrdp");
        let mut x = Xrdp {
            child,
            addr,
            dir,
            ask,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return x;
            }
            if let Ok(Some(status)) = x.child.try_wait() {
                panic!("xrdp exited ({status}):\n{}", x.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "xrdp never listened:\n{}",
                x.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops this xrdp and starts another on the same address with a new certificate.
    pub fn with_new_certificate(self, xvnc: &Xvnc) -> Xrdp {
        let (port, ask) = (self.addr.port(), self.ask);
        drop(self);
        Xrdp::start(xvnc, Some(port), ask)
    }

    pub fn log_text(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("xrdp.out"), read("xrdp.log"))
    }
}

/// A site (see `common::vnc::Site`) whose machine has one RDP desktop: xrdp
/// (released by the device firewall, marked `rdp`) showing Xvnc (painted
/// magenta, not released: only xrdp reaches it).
pub struct RdpSite {
    pub site: Site,
    pub xrdp: Option<Xrdp>,
}

impl RdpSite {
    pub fn start() -> RdpSite {
        RdpSite::start_with(false)
    }

    /// A site whose xrdp logs on to Xvnc with the RDP client's password.
    pub fn start_asking_password() -> RdpSite {
        RdpSite::start_with(true)
    }

    fn start_with(ask: bool) -> RdpSite {
        let dir = tempfile::tempdir().unwrap();
        let ironrdp = ironrdp_dir().expect("have_rdp_tools checked it");
        let (server, api, device, state) = setup_with(
            dir.path(),
            free_port(),
            &["--ironrdp-dir".into(), ironrdp.display().to_string()],
        );
        let xvnc = Xvnc::start();
        xvnc.paint(MAGENTA);
        let xrdp = Xrdp::start(&xvnc, None, ask);
        let target = xrdp.addr;
        let (code, v) = api.call(
            reqwest::Method::PATCH,
            &format!("/devices/{device}"),
            Some(json!({
                "firewall": [{"address": target.ip().to_string(), "protocol": "tcp", "ports": target.port().to_string()}],
                "web_services": [{"target": target.to_string(), "scheme": "rdp"}],
            })),
        );
        assert_eq!(code, 200, "{v}");
        edge(&state, &["switch", "on"]);
        let agent = edge_run(&state);
        wait("online with the switch on", || {
            let d = api.get(&format!("/devices/{device}"));
            d["status"]["online"] == true && d["status"]["switch_on"] == true
        });
        RdpSite {
            site: Site {
                agent,
                desktops: vec![xvnc],
                api,
                device,
                server,
                dir,
            },
            xrdp: Some(xrdp),
        }
    }

    pub fn target(&self) -> SocketAddrV4 {
        self.xrdp.as_ref().unwrap().addr
    }

    /// Stores (admin) RDP credentials for the desktop: the server logs on with them.
    pub fn store_credentials(&self, username: &str, password: &str) {
        let (code, v) = self.site.api.call(
            reqwest::Method::PUT,
            &format!("/devices/{}/desktop-passwords", self.site.device),
            Some(json!({"target": self.target().to_string(), "username": username, "password": password})),
        );
        assert_eq!(code, 204, "{v}");
    }

    pub fn xrdp_log(&self) -> String {
        self.xrdp.as_ref().map(Xrdp::log_text).unwrap_or_default()
    }

    /// xrdp restarted with a new certificate (its pin no longer matches).
    pub fn change_certificate(&mut self) {
        let old = self.xrdp.take().unwrap();
        self.xrdp = Some(old.with_new_certificate(self.site.xvnc()));
    }
}

/// The web client's element (its canvas is in its shadow root).
pub const SCREEN: &str = "#screen iron-remote-desktop";

/// Logs on in the RDP viewer's form (the page must show it).
pub async fn rdp_log_on(c: &Client, user: &str, password: &str) {
    wait_js(
        c,
        "return !document.getElementById('login').hidden;",
        "the viewer shows its log-on form",
        30,
    )
    .await;
    find(c, "#user").await.send_keys(user).await.unwrap();
    find(c, "#pass").await.send_keys(password).await.unwrap();
    find(c, "#login button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
}

/// Waits until the viewer says `want`, failing at once on a refusal or a close.
pub async fn rdp_connected(c: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c).await;
        if s == want {
            return;
        }
        assert!(
            !s.starts_with("Closed") && !s.starts_with("Refused") && !s.contains("did not start"),
            "the viewer says {s:?}"
        );
        assert!(Instant::now() < deadline, "the viewer still says {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the status starts with `prefix`; answers it.
pub async fn rdp_status_starting(c: &Client, prefix: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(c).await;
        if s.starts_with(prefix) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer says {s:?}, not {prefix:?}…, after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (`secs` at most) until the centre of the RDP desktop on screen shows `colour`.
pub async fn rdp_wait_colour(c: &Client, colour: (&str, [u8; 3]), who: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = match find(c, SCREEN).await.screenshot().await {
            Ok(png) => centre_pixel(&png),
            Err(_) => [0, 0, 0],
        };
        if got.iter().zip(colour.1).all(|(x, y)| x.abs_diff(y) <= 40) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: the RDP desktop's centre shows {got:?}, not {} {:?}, after {secs} s (status {:?})",
            colour.0,
            colour.1,
            status(c).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks into the RDP desktop and types `keys` (real key events from Chromium).
pub async fn rdp_type(c: &Client, keys: &str) {
    find(c, SCREEN).await.click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut actions = KeyActions::new("keyboard".into());
    for k in keys.chars() {
        actions = actions
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k });
    }
    c.perform_actions(actions).await.unwrap();
}
